r"""The paper's Word2Vec experiment: every optimizer, both models, an lr grid.

For each model and optimizer (and, for CBOW, each gradient convention of
`--cbow_gradients`), trains on Brown with each learning rate of the
optimizer's grid (4 values a factor √10 apart), picks the one with the
lowest final *validation* loss, and reports that run's *test* loss. Runs are
appended to `<out>/sweep.json` as they finish, and a rerun skips the ones
already there. Then `--report` draws the loss curves and writes the tables:

  python -m examples.word2vec.compare --out=examples/word2vec/results
  python -m examples.word2vec.gensim_peer \
      --sweep=examples/word2vec/results/sweep.json \
      --out=examples/word2vec/results/peer.json
  python -m examples.word2vec.compare --out=examples/word2vec/results --report
"""

import dataclasses
import json
import os
from typing import Optional

from absl import app
from absl import flags
from absl import logging
import numpy as np

from examples.common import cli
from examples.common import files
from examples.common import machine as machine_lib
from examples.common import plotting
from examples.word2vec import corpora
from examples.word2vec import gensim_peer
from examples.word2vec import quality
from examples.word2vec import train

OUT = flags.DEFINE_string('out', None, 'Results folder.')
_EPOCHS = flags.DEFINE_integer('epochs', 2, 'Passes over the corpus.')
_BATCH_SIZE = flags.DEFINE_integer(
    'batch_size', None, 'One batch size for every model (default '
    'BATCH_SIZE: 1024); e.g. a larger one for an accelerator.')
MODELS = flags.DEFINE_list('models', ['skipgram', 'cbow'], 'Models.')
_OPTIMIZERS = flags.DEFINE_list(
    'optimizers', list(train.optimizers.OPTIMIZERS), 'Optimizers.')
_CAPPED = flags.DEFINE_list(
    'capped', [], 'Also sweep these (fa_sgd, cf_sgd) with η_max set to the '
    'tuned SGD learning rate of the same model: the largest per-row step '
    'plain SGD tolerated, standing in for the paper\'s 1/(4L); or to '
    '--max_learning_rate.')
_MAX_LEARNING_RATE = flags.DEFINE_float(
    'max_learning_rate', None, 'η_max of the --capped optimizers, in place '
    'of SGD\'s tuned rate (a sweep can hold several caps).')
_CBOW_GRADIENTS = flags.DEFINE_list(
    'cbow_gradients', list(train.model_lib.CBOW_GRADIENTS),
    'CBOW\'s gradient conventions to sweep (word2vec: each context row gets '
    'the hidden vector\'s gradient; autodiff: the mean\'s).')
_SCHEDULE = flags.DEFINE_enum(
    'learning_rate_schedule', 'constant', train.optimizers.SCHEDULES,
    'Every run\'s learning-rate schedule (linear: word2vec.c\'s decay). '
    'A sweep keeps one schedule: give each its own --out.')
_REFINE = flags.DEFINE_bool(
    'refine', False, 'After each grid (and its extensions), also try the '
    'best learning rate times 10^(±1/4).')
_REPORT = flags.DEFINE_bool('report', False,
                            'Only draw plots and write RESULTS.md.')

# Each model's batch: skip-gram examples are (center, context) pairs, CBOW
# examples whole windows (about 6 pairs' worth of rows each). On this
# project's 2-core CPU a Skip-gram step of 1024 pairs took 0.8 ms and one of
# 4096 pairs 5.4 ms (1.6 times longer per pair: its arrays leave the cache).
BATCH_SIZE = {'skipgram': 1024, 'cbow': 1024}
# Grid centres, from the scale of each rule: fa/cf_sgd's α is SGD's lr times
# sqrt(T·p), optax's Adagrad starts from an accumulator of 0.1 (so small
# gradients see about lr/0.3), row-wise Adagrad and Adam are scale-free.
GRID_CENTRE = {'sgd': 30.0, 'adagrad': 10.0, 'adam': 0.01,
               'rowwise_adagrad': 0.03, 'fa_sgd': 1000.0, 'cf_sgd': 1000.0}
GRID_FACTORS = (10**-0.5, 1.0, 10**0.5, 10.0)


# A grid whose best value is at an end is extended by one step that way (up
# to this many times), so no optimizer is judged at the edge of its grid.
MAX_EXTENSIONS = 2
# --refine: then the best value's neighbours half a grid step away.
REFINE_FACTORS = (10**-0.25, 10**0.25)


def grid(optimizer: str) -> list[float]:
  return [_rounded(GRID_CENTRE[optimizer] * f) for f in GRID_FACTORS]


def _rounded(learning_rate: float) -> float:
  return float(f'{learning_rate:.3g}')


def extension(runs: list[dict]) -> Optional[float]:
  """The next learning rate to try when the best one is at the grid's end."""
  if len(runs) >= len(GRID_FACTORS) + MAX_EXTENSIONS:
    return None
  runs = sorted(runs, key=lambda r: r['learning_rate'])
  best = min(range(len(runs)),
             key=lambda i: runs[i]['final_validation_loss'])
  if best == 0:
    return _rounded(runs[0]['learning_rate'] / 10**0.5)
  if best == len(runs) - 1:
    return _rounded(runs[-1]['learning_rate'] * 10**0.5)
  return None


def settings(model: str) -> dict:
  return dataclasses.asdict(train.Config(
      model=model, epochs=_EPOCHS.value,
      batch_size=_BATCH_SIZE.value or BATCH_SIZE[model], evals_per_epoch=4,
      learning_rate_schedule=_SCHEDULE.value))


def update_for(optimizer: str) -> str:
  """The library's sparse path where the optimizer has one, else dense."""
  return 'sparse' if optimizer in train.SPARSE_OPTIMIZERS else 'dense'


def gradient_of(run: dict) -> Optional[str]:
  """A CBOW run's gradient convention (runs before the option: autodiff)."""
  if run['model'] != 'cbow':
    return None
  return run.get('cbow_gradient', 'autodiff')


def variants(model: str) -> list[Optional[str]]:
  """The gradient conventions swept for `model` (None: not applicable)."""
  return list(_CBOW_GRADIENTS.value) if model == 'cbow' else [None]


def update_of(run: dict) -> str:
  # Early sweep runs recorded a boolean `sparse` (the library's sparse path).
  return run.get('update') or ('sparse' if run.get('sparse') else 'dense')


def machine() -> str:
  return (f'{machine_lib.describe_machine()}, "this machine" (shared with '
          'other jobs while measured)')


def next_learning_rate(runs: list[dict], optimizer: str,
                       refine: bool) -> Optional[float]:
  """The next learning rate to try, given the runs so far; None when done.

  The grid first, then extensions past an end that won (`extension`), then
  with `refine` the two points a factor 10^(1/4) either side of the best.
  """
  def done(learning_rate):
    # Within rounding: 0.00316 / 10^0.5 is 0.000999 and 0.00178 / 10^0.25
    # is 0.001.
    return any(abs(r['learning_rate'] / learning_rate - 1) < 0.01
               for r in runs)

  for learning_rate in grid(optimizer):
    if not done(learning_rate):
      return learning_rate
  next_rate = extension(runs)
  if next_rate is not None and not done(next_rate):
    return next_rate
  if refine:
    best = min(runs, key=lambda r: r['final_validation_loss'])
    for factor in REFINE_FACTORS:
      learning_rate = _rounded(best['learning_rate'] * factor)
      if not done(learning_rate):
        return learning_rate
  return None


def _check_capped(sweep: dict, path: str) -> None:
  """Usage errors of --capped, before any data is read."""
  if _MAX_LEARNING_RATE.value is not None:
    if not _CAPPED.value:
      raise app.UsageError('--max_learning_rate is the η_max of --capped: '
                           'name the optimizers to cap with --capped.')
    if not _MAX_LEARNING_RATE.value > 0:
      raise app.UsageError('--max_learning_rate must be > 0; got '
                           f'{_MAX_LEARNING_RATE.value!r}.')
  for optimizer in _CAPPED.value:
    if optimizer not in ('fa_sgd', 'cf_sgd'):
      raise app.UsageError(f'--capped takes fa_sgd, cf_sgd; got {optimizer}')
    if _MAX_LEARNING_RATE.value is not None:
      continue  # Capped at the given η_max, not at SGD's rate.
    for model in MODELS.value:
      if 'sgd' not in _OPTIMIZERS.value and not any(
          r['model'] == model and r['optimizer'] == 'sgd'
          and 'diverged' not in r for r in sweep['runs']):
        raise app.UsageError(
            f'--capped={optimizer} caps at SGD\'s best rate, and {path} has '
            f'no {model} SGD run that trained: add sgd to --optimizers.')


def run_sweep(path: str) -> None:
  sweep = {'machine': machine(), 'settings': {}, 'runs': []}
  if os.path.exists(path):
    with open(path) as f:
      sweep = json.load(f)
  _check_capped(sweep, path)
  sentences = corpora.read_brown()
  wordsim_rows = quality.read_wordsim(
      quality.fetch_wordsim353())
  for model in MODELS.value:
    base = settings(model)
    has_runs = any(r['model'] == model for r in sweep['runs'])
    recorded = sweep['settings'].get(model, {}).get(
        'learning_rate_schedule', 'constant')
    if has_runs and recorded != base['learning_rate_schedule']:
      raise app.UsageError(
          f'{path} holds {model} runs with the {recorded} learning-rate '
          f'schedule; give the {base["learning_rate_schedule"]} schedule its '
          'own --out.')
    sweep['settings'][model] = base
    data = None
    plan = [(optimizer, None) for optimizer in _OPTIMIZERS.value]
    plan += [(optimizer, 'sgd') for optimizer in _CAPPED.value]
    for gradient, (optimizer, cap_from) in (
        (g, p) for g in variants(model) for p in plan):
      cap = None
      if cap_from is not None and _MAX_LEARNING_RATE.value is not None:
        cap = _MAX_LEARNING_RATE.value
      elif cap_from is not None:
        trained = best_runs(sweep, model, gradient)
        if cap_from not in trained:
          raise app.UsageError(
              f'--capped={optimizer} caps at {cap_from}\'s best rate, and no '
              f'{cap_from} run of {variant_name(model, gradient)} in {path} '
              f'trained: add {cap_from} to --optimizers.')
        cap = trained[cap_from]['learning_rate']

      def runs_so_far(optimizer=optimizer, cap=cap, gradient=gradient):
        return [r for r in sweep['runs']
                if (r['model'], r['optimizer'], r.get('max_learning_rate'),
                    gradient_of(r)) == (model, optimizer, cap, gradient)]

      while (learning_rate := next_learning_rate(
          runs_so_far(), optimizer, _REFINE.value)) is not None:
        config = train.Config(**dict(
            base, optimizer=optimizer, learning_rate=learning_rate,
            max_learning_rate=cap, update=update_for(optimizer),
            cbow_gradient=gradient or base['cbow_gradient']))
        if data is None:
          data = train.prepare_data(config, sentences)
        run = {'model': model, 'optimizer': optimizer,
               'learning_rate': learning_rate, 'max_learning_rate': cap,
               'update': config.update, 'cbow_gradient': gradient,
               'load_average_before': os.getloadavg()[0]}
        run.update(train.sweep_run(config, sentences, data, wordsim_rows))
        logging.info('%s %s lr=%g: validation %.4f test %.4f',
                     variant_name(model, gradient), label(run),
                     learning_rate, run['final_validation_loss'],
                     run['final_test_loss'])
        sweep['runs'].append(run)
        files.write_json(path, sweep, indent=1)


def label(run: dict) -> str:
  """The optimizer, with its η_max when capped."""
  cap = run.get('max_learning_rate')
  return run['optimizer'] if cap is None else (
      f'{run["optimizer"]} η_max={cap:g}')


def variant_name(model: str, gradient: Optional[str]) -> str:
  return model if gradient is None else f'{model}, {gradient} gradient'


def best_runs(sweep: dict, model: str,
              gradient: Optional[str] = None) -> dict[str, dict]:
  """Each optimizer's (label's) run with the lowest final validation loss.

  Runs that diverged are left out: an optimizer whose every run diverged has
  no entry (`all_diverged` names it).
  """
  best = {}
  for run in sweep['runs']:
    if (run['model'] != model or gradient_of(run) != gradient
        or 'diverged' in run):
      continue
    current = best.get(label(run))
    if current is None or (run['final_validation_loss'] <
                           current['final_validation_loss']):
      best[label(run)] = run
  return best


def all_diverged(sweep: dict, model: str,
                 gradient: Optional[str] = None) -> dict[str, list[float]]:
  """{label: its learning rates} of the optimizers whose every run diverged."""
  rates, trained = {}, set(best_runs(sweep, model, gradient))
  for run in sweep['runs']:
    if (run['model'] == model and gradient_of(run) == gradient
        and label(run) not in trained):
      rates.setdefault(label(run), []).append(run['learning_rate'])
  return {name: sorted(lrs) for name, lrs in rates.items()}


def _rates(learning_rates: list[float]) -> str:
  return ', '.join(f'{rate:g}' for rate in learning_rates)


def report(out: str) -> None:
  with open(os.path.join(out, 'sweep.json')) as f:
    sweep = json.load(f)
  peer = None
  if os.path.exists(os.path.join(out, 'peer.json')):
    with open(os.path.join(out, 'peer.json')) as f:
      peer = json.load(f)
  loads = [r['load_average_before'] for r in sweep['runs']
           if 'load_average_before' in r]
  lines = ['# Word2Vec on Brown: results', '',
           f'Machine: {sweep["machine"]}; 1-minute load average before the '
           f'sweep\'s runs {min(loads):.1f} to {max(loads):.1f} (median '
           f'{np.median(loads):.1f}).', '',
           'Written by `python -m examples.word2vec.compare --out=<this folder> '
           '--report` from `sweep.json` (and `peer.json`).', '']
  for model in MODELS.value:
    for gradient in variants(model):
      best = best_runs(sweep, model, gradient)
      if best:
        lines += variant_report(out, sweep, model, gradient, best)
      elif diverged := all_diverged(sweep, model, gradient):
        lines += [f'## {variant_name(model, gradient)}', '',
                  'Every run diverged: ' + '; '.join(
                      f'{optimizer} at {_rates(lrs)}'
                      for optimizer, lrs in diverged.items()) + '.', '']
  if peer is not None:
    lines += gensim_peer.report_lines(peer)
  files.write_text(os.path.join(out, 'RESULTS.md'), '\n'.join(lines))


def _relative(loss: float, reference: Optional[float]) -> str:
  return '–' if reference is None else f'{100 * (loss / reference - 1):+.2f}%'


def variant_report(out: str, sweep: dict, model: str,
                   gradient: Optional[str], best: dict) -> list[str]:
  """One model's (and CBOW gradient's) plots and table."""
  base = sweep['settings'][model]
  stem = model if gradient is None else f'{model}_{gradient}'
  name = variant_name(model, gradient)
  for curve in ('train_loss', 'test_loss'):
    series = {}
    for optimizer, run in best.items():
      if 'steps' not in run:
        continue
      # The untrained loss (4.15 at step 0) is left out: it would squash
      # the differences that matter into the bottom of the plot.
      series[f'{optimizer} (lr {run["learning_rate"]:g})'] = (
          run['steps'], run[curve])
    plotting.line_plot(
        os.path.join(out, f'{stem}_{curve}.png'), series, xlabel='step',
        ylabel=curve.replace('_', ' '),
        title=f'{name}: Brown, {base["epochs"]} epochs, batch '
              f'{base["batch_size"]}, best lr each')
  # Final validation loss against the learning rate, relative to each
  # optimizer's grid centre so that all fit one axis. Runs that ended above
  # the untrained loss are left out (they would squash the rest).
  series = {}
  for optimizer in best:
    same = sorted((r for r in sweep['runs'] if r['model'] == model and
                   gradient_of(r) == gradient and label(r) == optimizer and
                   r['final_validation_loss'] < r.get(
                       'initial_validation_loss', 0.0)),
                  key=lambda r: r['learning_rate'])
    series[optimizer] = (
        [r['learning_rate'] / GRID_CENTRE[r['optimizer']] for r in same],
        [r['final_validation_loss'] for r in same])
  plotting.line_plot(
      os.path.join(out, f'{stem}_learning_rates.png'), series,
      xlabel='learning rate / grid centre', ylabel='final validation loss',
      title=f'{name}: learning-rate grids (runs that diverged left out)',
      log_x=True)
  adaptive = min((best[o]['final_test_loss'] for o in ('adagrad', 'adam')
                  if o in best), default=None)
  lines = [
      f'## {name}', '',
      f'dim {base["dim"]}, window {base["window"]}, {base["negatives"]} '
      f'negatives, min count {base["min_count"]}, sample {base["sample"]}, '
      f'{base["epochs"]} epochs, batch {base["batch_size"]}, '
      f'{base.get("learning_rate_schedule", "constant")} learning-rate '
      'schedule; learning rate '
      'picked by the final validation loss among the grid. Grid centres: ' +
      ', '.join(f'{o} {c:g}' for o, c in GRID_CENTRE.items()) + '.', '',
      '| optimizer | lr grid | best lr | test loss | vs best of '
      'Adagrad/Adam | train loss | WordSim-353 ρ | words/s (sweep run) | '
      'optimizer state |',
      '|---|---|---|---|---|---|---|---|---|']
  for optimizer, run in best.items():
    same = [r for r in sweep['runs'] if r['model'] == model and
            gradient_of(r) == gradient and label(r) == optimizer]
    lrs = sorted(r['learning_rate'] for r in same)
    diverged = sum(1 for r in same if 'diverged' in r)
    lines.append(
        f'| {optimizer} ({update_of(run)}) | '
        f'{", ".join(f"{lr:g}" for lr in lrs)}'
        f'{f" ({diverged} diverged)" if diverged else ""} | '
        f'{run["learning_rate"]:g} | {run["final_test_loss"]:.4f} | '
        f'{_relative(run["final_test_loss"], adaptive)} | '
        f'{run["final_train_loss"]:.4f} | '
        f'{run["wordsim353"]["spearman"]:.3f} | '
        f'{run["words_per_second"]:,.0f} | '
        f'{run["optimizer_state_bytes"] / 1e6:.2f} MB |')
  diverged = [f'- {optimizer}: every run diverged (learning rates '
              f'{_rates(lrs)}).'
              for optimizer, lrs in all_diverged(sweep, model, gradient).items()]
  if diverged:
    lines += [''] + diverged
  lines += ['', f'![train loss]({stem}_train_loss.png) '
            f'![test loss]({stem}_test_loss.png) '
            f'![learning rates]({stem}_learning_rates.png)', '']
  neighbours = best.get('cf_sgd', {}).get('nearest_neighbours', {})
  if neighbours:
    lines += ['Nearest neighbours (cf_sgd, cosine, input vectors): ' +
              '; '.join(f'*{w}*: {", ".join(n)}'
                        for w, n in neighbours.items()), '']
  return lines


def main(argv):
  del argv
  os.makedirs(OUT.value, exist_ok=True)
  if not _REPORT.value:
    run_sweep(os.path.join(OUT.value, 'sweep.json'))
  report(OUT.value)


if __name__ == '__main__':
  flags.mark_flag_as_required('out')
  cli.run(main)
