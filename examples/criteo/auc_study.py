"""AUC of the tables' optimizers on synthetic planted data, tuned and seeded.

The same DeepFM trained for one pass over synthetic Criteo-format data
(synthetic.py: Zipf categorical values, labels from a planted model), with
the tables' optimizer varied: SGD, Adagrad, Adam, row-wise Adagrad and CF-SGD;
the dense part (MLP, integer features' vectors, bias) uses Adam at
--dense_learning_rate in every run, so runs differ only in what updates the
tables. SGD, row-wise Adagrad and CF-SGD run on the sparse path, Adagrad and
Adam on the dense one (they have no sparse path; the paths compute the same).

1. Tuning: for each optimizer, one run per learning rate of a half-decade
   grid (seed 0; or --grid), scored by validation AUC; a run that diverges
   scores worst. When the best rate is at an edge of the grid, the grid
   grows past that edge until it is not.
2. Seeds: each optimizer at its rate for --num_seeds seeds; seed s draws its
   own training file from the planted model and its own initialisation.
   Test AUC and log loss: mean ± standard deviation over seeds.

Each run's result is cached as JSON in --workdir, so an interrupted study
rerun with the same flags picks up where it stopped.

  python -m examples.criteo.auc_study --output_dir=examples/criteo/results
"""

import math
import os
import sys
import time

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np

from examples.common import files
from examples.common import machine
from examples.common import plotting
from examples.common import training
from examples.criteo import config as config_lib
from examples.criteo import synthetic
from examples.criteo import placement
from examples.criteo import train

_WORKDIR = flags.DEFINE_string('workdir', os.path.join('runs', 'criteo_auc'),
                               'Synthetic data and cached runs.')
_OUTPUT_DIR = flags.DEFINE_string(
    'output_dir', None, 'auc.json, auc.md and plots (default: --workdir).')
_OPTIMIZERS = flags.DEFINE_list('optimizers', list(config_lib.OPTIMIZERS),
                                'Tables\' optimizers to compare.')
_TRAIN_LINES = flags.DEFINE_integer('train_lines', 1_000_000,
                                    'Lines of each training file (one pass).')
_EVAL_LINES = flags.DEFINE_integer('eval_lines', 100_000,
                                   'Lines of the validation and test files.')
_VOCABULARY = flags.DEFINE_integer(
    'vocabulary', 100_000, 'Values of the largest categorical feature.')
_TABLE_ROWS = flags.DEFINE_integer('table_rows', 1 << 15, 'Rows per table.')
_EMBEDDING_DIM = flags.DEFINE_integer('embedding_dim', 16, 'Embedding dim d.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 1024, 'Examples per step.')
_DENSE_LEARNING_RATE = flags.DEFINE_float(
    'dense_learning_rate', 1e-3, 'Adam\'s rate on the dense part.')
_NUM_SEEDS = flags.DEFINE_integer('num_seeds', 3, 'Seeds per optimizer.')
_MAX_GRID_GROWTH = flags.DEFINE_integer(
    'max_grid_growth', 4, 'Grid points added past an edge, at most.')
_GRID = flags.DEFINE_list(
    'grid', None, 'Learning rates every optimizer\'s tuning starts from '
    '(default: its own half decades, INITIAL_GRIDS).')


def _positive_rates(values) -> bool:
  try:
    return values is None or (
        bool(values) and all(float(value) > 0 for value in values))
  except ValueError:
    return False


flags.register_validator('grid', _positive_rates,
                         message='--grid must list positive learning rates.')

# Where each optimizer's grid starts: half decades around rates that train.
INITIAL_GRIDS = {
    'sgd': (0.1, 0.316, 1.0, 3.16, 10.0),
    'adagrad': (0.01, 0.0316, 0.1, 0.316, 1.0),
    'adam': (1e-4, 3.16e-4, 1e-3, 3.16e-3, 1e-2),
    'rowwise_adagrad': (0.01, 0.0316, 0.1, 0.316, 1.0),
    'cf_sgd': (1.0, 3.16, 10.0, 31.6, 100.0),
}


def _half_decade(rate: float, direction: int) -> float:
  """The grid point `direction` half decades from `rate` (1, 3.16, 10, ...)."""
  exponent = round(2 * math.log10(rate)) + direction
  return float(f'{10 ** (exponent / 2):.3g}')


class Study:
  """Data files, run configs and the cache of finished runs."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.model = synthetic.PlantedModel(
        0, synthetic.default_vocabulary_sizes(_VOCABULARY.value))
    self.data_dir = os.path.join(workdir, 'data')
    os.makedirs(os.path.join(workdir, 'runs'), exist_ok=True)
    self.validation = self._file('validation', _EVAL_LINES.value, 1000)
    self.test = self._file('test', _EVAL_LINES.value, 2000)
    self.steps = _TRAIN_LINES.value // _BATCH_SIZE.value

  def _file(self, name: str, lines: int, seed: int) -> str:
    path = os.path.join(self.data_dir, f'{name}.txt')
    if not os.path.exists(path):
      synthetic.write(path, lines, seed=seed, model=self.model)
    return path

  def train_file(self, seed: int) -> str:
    return self._file(f'train_seed{seed}', _TRAIN_LINES.value, 100 + seed)

  def config(self, optimizer: str, learning_rate: float, seed: int):
    return config_lib.Config(
        optimizer=optimizer, learning_rate=learning_rate,
        update=('sparse' if optimizer in config_lib.SPARSE_OPTIMIZERS
                else 'dense'),
        dense_optimizer='adam',
        dense_learning_rate=_DENSE_LEARNING_RATE.value,
        table_rows=(_TABLE_ROWS.value,) * config_lib.NUM_CATEGORICAL,
        embedding_dim=_EMBEDDING_DIM.value, batch_size=_BATCH_SIZE.value,
        num_steps=self.steps, seed=seed)

  def run(self, optimizer: str, learning_rate: float, seed: int) -> dict:
    """One run's summary (cached)."""
    config = self.config(optimizer, learning_rate, seed)
    name = f'{optimizer}_lr{learning_rate:g}_seed{seed}'
    path = os.path.join(self.workdir, 'runs', name + '.json')
    summary = files.read_cached_summary(path)
    if summary is not None and summary['config'] == config.record():
      return summary
    start = time.perf_counter()
    try:
      results = train.train_and_evaluate(
          config, train.Data(train=[self.train_file(seed)],
                             validation=[self.validation], test=[self.test]),
          placement.make_mesh((1,), jax.devices()[:1]),
          log_every=max(self.steps // 50, 1))
    except training.Diverged as error:
      # A grid point past the optimizer's stable rates: scored as the worst.
      logging.warning('%s: %s', name, error)
      not_measured = {'auc': math.nan, 'log_loss': math.nan, 'examples': 0}
      summary = {
          'config': config.record(),
          'diverged': {'step': error.step, 'train_loss': error.loss},
          'validation': not_measured, 'test': not_measured,
          'seconds': time.perf_counter() - start,
      }
      self._save(path, summary)
      return summary
    summary = {
        'config': config.record(),
        'validation': results['validation'],
        'test': results['test'],
        'train_loss': results['train_loss'],
        'examples_per_second': results['timing'].get('examples_per_second'),
        'optimizer_state_bytes': results['optimizer_state_bytes'],
        'parameter_bytes': results['parameter_bytes'],
        'seconds': time.perf_counter() - start,
    }
    self._save(path, summary)
    logging.info('%s: validation AUC %.4f, test AUC %.4f (%.0f s)', name,
                 summary['validation']['auc'], summary['test']['auc'],
                 summary['seconds'])
    return summary

  def _save(self, path: str, summary: dict) -> None:
    files.write_json(path, summary)


def _score(summary) -> float:
  auc = summary['validation']['auc']
  return -math.inf if math.isnan(auc) else auc


def tune(study: Study, optimizer: str) -> dict:
  """The learning rate with the best validation AUC on seed 0."""
  grid = sorted(float(rate) for rate in _GRID.value or INITIAL_GRIDS[optimizer])
  scores = {rate: _score(study.run(optimizer, rate, 0)) for rate in grid}
  growth = 0
  while growth < _MAX_GRID_GROWTH.value:
    best = max(grid, key=lambda rate: scores[rate])
    if best == grid[0]:
      grid.insert(0, _half_decade(grid[0], -1))
      new = grid[0]
    elif best == grid[-1]:
      grid.append(_half_decade(grid[-1], +1))
      new = grid[-1]
    else:
      break
    scores[new] = _score(study.run(optimizer, new, 0))
    growth += 1
  best = max(grid, key=lambda rate: scores[rate])
  if scores[best] == -math.inf:
    raise FloatingPointError(
        f'{optimizer}: every learning rate tried ({", ".join(map(str, grid))})'
        ' diverged or scored no AUC; start its grid lower (INITIAL_GRIDS or '
        '--grid).')
  return {'grid': grid, 'validation_auc': [scores[r] for r in grid],
          'best': best, 'at_edge': best in (grid[0], grid[-1])}


def _mean_std(values):
  values = np.asarray(values, float)
  return {'mean': float(values.mean()),
          'std': float(values.std(ddof=1)) if values.size > 1 else 0.0}


def _tune_and_seed(study: Study):
  """(tuning, result rows, seed 0's loss curves) of every optimizer."""
  tuning, rows, curves = {}, [], {}
  for optimizer in _OPTIMIZERS.value:
    tuning[optimizer] = tune(study, optimizer)
    rate = tuning[optimizer]['best']
    runs = [study.run(optimizer, rate, seed)
            for seed in range(_NUM_SEEDS.value)]
    for seed, run in enumerate(runs):
      if 'diverged' in run:
        raise FloatingPointError(
            f'{optimizer} at its tuned rate {rate:g} diverged on seed {seed} '
            f'(step {run["diverged"]["step"]}): the study has no mean AUC '
            'for it; tune on more seeds or start its grid lower.')
    rows.append({
        'optimizer': optimizer,
        'path': study.config(optimizer, rate, 0).update,
        'learning_rate': rate,
        'test_auc': _mean_std([r['test']['auc'] for r in runs]),
        'test_log_loss': _mean_std([r['test']['log_loss'] for r in runs]),
        'validation_auc': _mean_std([r['validation']['auc'] for r in runs]),
        'seeds_test_auc': [r['test']['auc'] for r in runs],
        'optimizer_state_bytes': runs[0]['optimizer_state_bytes'],
        'parameter_bytes': runs[0]['parameter_bytes'],
        'examples_per_second': _mean_std([r['examples_per_second']
                                          for r in runs]),
    })
    steps, losses = zip(*runs[0]['train_loss'])
    curves[f'{optimizer} (lr {rate:g})'] = (steps, losses)
  return tuning, rows, curves


def main(argv):
  del argv
  logging.set_verbosity(logging.INFO)
  study = Study(_WORKDIR.value)
  output_dir = _OUTPUT_DIR.value or _WORKDIR.value
  os.makedirs(output_dir, exist_ok=True)
  bayes = synthetic.bayes_auc(_EVAL_LINES.value, seed=2000, model=study.model)
  try:
    tuning, rows, curves = _tune_and_seed(study)
  except FloatingPointError as error:
    raise SystemExit(f'error: {error}') from None
  command = 'python -m examples.criteo.auc_study ' + ' '.join(sys.argv[1:])
  report = {
      'command': command.strip(), 'machine': machine.describe_machine(),
      'load_average': os.getloadavg(), 'bayes_test_auc': bayes,
      'settings': {
          'train_lines': _TRAIN_LINES.value, 'eval_lines': _EVAL_LINES.value,
          'vocabulary': _VOCABULARY.value, 'table_rows': _TABLE_ROWS.value,
          'embedding_dim': _EMBEDDING_DIM.value,
          'batch_size': _BATCH_SIZE.value, 'steps': study.steps,
          'dense_optimizer': f'adam({_DENSE_LEARNING_RATE.value:g})',
          'num_seeds': _NUM_SEEDS.value},
      'tuning': tuning, 'results': rows,
  }
  table = markdown(report)
  print(table)
  files.write_json(os.path.join(output_dir, 'auc.json'), report, indent=1)
  files.write_text(os.path.join(output_dir, 'auc.md'), table)
  plotting.line_plot(
      os.path.join(output_dir, 'auc_learning_rate_sweep.png'),
      {name: (t['grid'], t['validation_auc']) for name, t in tuning.items()},
      xlabel='learning rate (α for cf_sgd)', ylabel='validation AUC (seed 0)',
      title='Learning-rate sweep, synthetic Criteo-format data', log_x=True)
  plotting.line_plot(
      os.path.join(output_dir, 'auc_train_loss.png'), curves,
      xlabel='step', ylabel='training loss (window mean)',
      title='Training loss at the tuned rates (seed 0)')


def markdown(report) -> str:
  settings = report['settings']
  lines = [
      f'`{report["command"]}` on {report["machine"]} (shared with other '
      f'jobs; load average at the end {report["load_average"][0]:.2f}). '
      f'DeepFM, 26 tables × {settings["table_rows"]} rows, d = '
      f'{settings["embedding_dim"]}, one pass over {settings["train_lines"]:,}'
      f' synthetic examples ({settings["steps"]} steps of '
      f'{settings["batch_size"]}); dense part on '
      f'{settings["dense_optimizer"]} in every run. Test AUC on '
      f'{settings["eval_lines"]:,} examples, mean ± std over '
      f'{settings["num_seeds"]} seeds (data and initialisation); the planted '
      f'model\'s own AUC on the test file is {report["bayes_test_auc"]:.4f}.',
      '',
      '| tables\' optimizer | path | learning rate | test AUC | test log loss '
      '| optimizer state (all) | grid (validation AUC, seed 0) |',
      '|---|---|---|---|---|---|---|',
  ]
  for row in report['results']:
    tuning = report['tuning'][row['optimizer']]
    grid = ', '.join(
        f'{rate:g}: ' + (f'{auc:.4f}' if math.isfinite(auc) else 'diverged')
        for rate, auc in zip(tuning['grid'], tuning['validation_auc']))
    edge = ' (best at the edge)' if tuning['at_edge'] else ''
    state_mib = row['optimizer_state_bytes'] / 2**20
    lines.append(
        f'| {row["optimizer"]} | {row["path"]} | {row["learning_rate"]:g} | '
        f'{row["test_auc"]["mean"]:.4f} ± {row["test_auc"]["std"]:.4f} | '
        f'{row["test_log_loss"]["mean"]:.4f} ± '
        f'{row["test_log_loss"]["std"]:.4f} | {state_mib:.1f} MiB | '
        f'{grid}{edge} |')
  by_name = {row['optimizer']: row for row in report['results']}
  if 'cf_sgd' in by_name:
    cf = by_name['cf_sgd']['test_auc']['mean']
    lines.append('')
    if 'sgd' in by_name:
      lines.append(f'- CF-SGD − SGD test AUC: '
                   f'{cf - by_name["sgd"]["test_auc"]["mean"]:+.4f}.')
    adaptive = [n for n in ('adam', 'adagrad') if n in by_name]
    if adaptive:
      best = max(adaptive, key=lambda n: by_name[n]['test_auc']['mean'])
      lines.append(f'- CF-SGD − best of Adam/Adagrad ({best}): '
                   f'{cf - by_name[best]["test_auc"]["mean"]:+.4f}.')
  return '\n'.join(lines) + '\n'


if __name__ == '__main__':
  app.run(main)
