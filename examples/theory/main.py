r"""Theory check: per-row convergence of SGD, FA-SGD and CF-SGD (Corollary 3).

  python -m examples.theory.main --output_dir=examples/theory/results

writes theory.json, summary.md, ratio_vs_rank.png and grad_norms_by_rank.png
(the default --output_dir replaces the committed results).
"""

import os
import platform
import sys
import time

from absl import app
from absl import flags
import jax

from examples.common import cli
from examples.common import files
from examples.common import machine
from examples.theory import analysis
from examples.theory import plots
from examples.theory import train

_DEFAULTS = train.Setup()

flags.DEFINE_integer('num_users', _DEFAULTS.num_users, 'Rows of the user table.')
flags.DEFINE_integer('num_items', _DEFAULTS.num_items, 'Rows of the item table.')
flags.DEFINE_integer('dim', _DEFAULTS.dim, 'Embedding dimension d.')
flags.DEFINE_enum('distribution', _DEFAULTS.distribution,
                  ['exponential', 'zipf'],
                  'Frequency tail: p_n ∝ exp(-tau n) or p_n ∝ n^-zipf_exponent.')
flags.DEFINE_float('tau', _DEFAULTS.tau, 'τ of the exponential tail.')
flags.DEFINE_float('zipf_exponent', _DEFAULTS.zipf_exponent,
                   'Exponent s of the Zipf tail.')
flags.DEFINE_float('planted_norm', _DEFAULTS.planted_norm,
                   'Norm of every planted row; logits lie in ±planted_norm².')
flags.DEFINE_float('init_norm', _DEFAULTS.init_norm,
                   'Norm of every initial row (random directions).')
flags.DEFINE_integer('batch_size', _DEFAULTS.batch_size,
                     'Samples per step B (the paper analyses B = 1).')
flags.DEFINE_integer('num_steps', _DEFAULTS.num_steps, 'Horizon T.')
flags.DEFINE_integer('num_evals', _DEFAULTS.num_evals,
                     'K evenly spaced iterates at which ‖∇_k f‖² is evaluated; '
                     'must divide num_steps.')
flags.DEFINE_integer('num_seeds', 10, 'Evaluation seeds (reported).',
                     lower_bound=1)
flags.DEFINE_integer('num_tuning_seeds', 5, 'Seeds used only to choose α.',
                     lower_bound=1)
flags.DEFINE_float('alpha_log2_min', -8.0,
                   'Smallest α on the grid, as log2(α / (sqrt(T)/(4L))).')
flags.DEFINE_float('alpha_log2_max', 0.0, 'Largest α on the grid, likewise.')
flags.DEFINE_integer('alpha_points_per_octave', 2, 'Grid density in α.')
flags.DEFINE_string('output_dir', 'examples/theory/results',
                    'Where theory.json, summary.md and the PNGs go (the '
                    'default replaces the committed results).')

FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    setup = train.Setup(
        num_users=FLAGS.num_users, num_items=FLAGS.num_items, dim=FLAGS.dim,
        distribution=FLAGS.distribution, tau=FLAGS.tau,
        zipf_exponent=FLAGS.zipf_exponent, planted_norm=FLAGS.planted_norm,
        init_norm=FLAGS.init_norm, batch_size=FLAGS.batch_size,
        num_steps=FLAGS.num_steps, num_evals=FLAGS.num_evals)
  except ValueError as error:  # Names the field, which is the flag's name.
    raise app.UsageError(str(error)) from None
  if FLAGS.alpha_points_per_octave < 1:
    raise app.UsageError('--alpha_points_per_octave must be >= 1; got '
                         f'{FLAGS.alpha_points_per_octave}.')
  if FLAGS.alpha_log2_max < FLAGS.alpha_log2_min:
    raise app.UsageError(
        f'--alpha_log2_max ({FLAGS.alpha_log2_max}) must be >= '
        f'--alpha_log2_min ({FLAGS.alpha_log2_min}).')
  alphas = train.alpha_grid(setup, FLAGS.alpha_log2_min, FLAGS.alpha_log2_max,
                            FLAGS.alpha_points_per_octave)
  started = time.perf_counter()
  try:
    results = train.run_experiment(setup, alphas, num_seeds=FLAGS.num_seeds,
                                   num_tuning_seeds=FLAGS.num_tuning_seeds)
  except analysis.FitError as error:
    sys.exit(f'error: {error} With --num_steps={setup.num_steps}, too few '
             'rows get a larger step from FA-SGD than from SGD to fit the '
             f'tail; use a longer horizon (default {_DEFAULTS.num_steps}).')
  results['seconds'] = time.perf_counter() - started
  results['command'] = 'python -m examples.theory.main ' + ' '.join(
      arg for arg in sys.argv[1:])
  results['machine'] = {
      'description': machine.describe_machine(),
      'platform': platform.platform(),
      'cpu_count': os.cpu_count(),
      'jax_backend': jax.default_backend(),
      'jax_version': jax.__version__,
  }
  os.makedirs(FLAGS.output_dir, exist_ok=True)
  files.write_json(os.path.join(FLAGS.output_dir, 'theory.json'), results,
                   indent=1)
  files.write_text(os.path.join(FLAGS.output_dir, 'summary.md'),
                   analysis.markdown_summary(results))
  plots.plot_ratio_vs_rank(
      results, os.path.join(FLAGS.output_dir, 'ratio_vs_rank.png'))
  plots.plot_grad_norms_by_rank(
      results, os.path.join(FLAGS.output_dir, 'grad_norms_by_rank.png'))

  for method, values in results['methods'].items():
    print(f"{method:7s} α = {values['alpha']:.4g} "
          f"({values['alpha_over_reference']:.3g} × sqrt(T)/(4L)), final "
          f"f - f* = {values['final_excess_loss_mean']:.5f}")
  for method, fits in results['fits'].items():
    hinge = fits['mean_grad_sq']['hinge']
    tail = fits['mean_grad_sq']['tail']
    print(f"SGD/{method}: slope of ln ratio vs ln(p_1/p_k): hinge "
          f"{hinge['slope']:.3f} [{hinge['ci95'][0]:.3f}, {hinge['ci95'][1]:.3f}]"
          f" (knee at ln(p_1/p_k) = {hinge['knee']:.2f}); tail rows "
          f"({tail['num_rows']}) {tail['slope']:.3f} [{tail['ci95'][0]:.3f}, "
          f"{tail['ci95'][1]:.3f}]; bounds predict 0.5, Corollary 3 states 1")
  print(f"wrote {FLAGS.output_dir} in {results['seconds']:.0f} s")


if __name__ == '__main__':
  cli.run(main)
