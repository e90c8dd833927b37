"""The step's workload as flags: one definition for every benchmark script.

`embedding_step.py` times the step that `profile_ops.py` takes apart; both
build it (`workload.py`) from these, with the same defaults (`timing.Settings`).
"""

from absl import flags

from benchmarks import timing

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
