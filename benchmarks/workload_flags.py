"""The step's workload as flags: one definition for every benchmark script.

`embedding_step.py` times the step that `profile_ops.py` takes apart and
`trace_cost.py` traces; all build it (`workload.py`) from these, with the
same defaults (`timing.Settings`).
"""

from absl import app
from absl import flags

from benchmarks import timing
from benchmarks import workload

_DEFAULTS = timing.Settings()

DIM = flags.DEFINE_integer('dim', _DEFAULTS.dim, 'Embedding dimension d.',
                           lower_bound=1)
BATCH = flags.DEFINE_integer('batch', _DEFAULTS.batch, 'Ids per step B.',
                             lower_bound=1)
ZIPF_EXPONENT = flags.DEFINE_float(
    'zipf_exponent', _DEFAULTS.zipf_exponent,
    'Exponent s of the ids\' Zipf law, p(rank) ∝ rank^-s (0: uniform).',
    lower_bound=0.0)
NUM_BATCHES = flags.DEFINE_integer(
    'num_batches', _DEFAULTS.num_batches,
    'Distinct id batches cycled through.', lower_bound=1)
SEED = flags.DEFINE_integer('seed', _DEFAULTS.seed,
                            'Seed for ids and targets.')


def define_num_rows(default: list[str]) -> flags.FlagHolder:
  """--num_rows: the table sizes a script measures (read with `sizes`)."""
  return flags.DEFINE_list('num_rows', default,
                           'Table sizes N (rows); 1e6 and the like work.')


def define_optimizers(default: list[str]) -> flags.FlagHolder:
  """--optimizers, each with its duplicates mode (`sizes_and_optimizers`)."""
  return flags.DEFINE_list(
      'optimizers', default,
      f'Optimizers, from {", ".join(workload.ALL_OPTIMIZERS)}; a sparse one '
      'may name its duplicates mode (@scatter, @reduce; plain: auto, the '
      'backend\'s).')


def sizes(num_rows: list[str]) -> list[int]:
  """--num_rows parsed; a bad value is a usage error."""
  try:
    return workload.parse_sizes(num_rows)
  except ValueError as error:
    raise app.UsageError(f'--num_rows: {error}') from None


def sizes_and_optimizers(
    num_rows: list[str], optimizers: list[str]
) -> tuple[list[int], list[workload.Optimizer]]:
  """--num_rows and --optimizers parsed; a bad value is a usage error."""
  parsed_sizes = sizes(num_rows)
  try:
    parsed = [workload.parse(name) for name in optimizers]
  except ValueError as error:
    raise app.UsageError(f'--optimizers: {error}') from None
  return parsed_sizes, parsed
