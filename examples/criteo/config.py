"""Settings of the Criteo example: the data format, table sizes, defaults.

The Criteo display-ads format (Kaggle `train.txt`, Criteo 1TB `day_0` …
`day_23`): one example per line, tab-separated: the label (0 or 1), 13 integer
features, 26 categorical features (32-bit hashes written as 8 hex digits).
Any feature may be empty.
"""

import dataclasses
import math
from typing import Optional

NUM_INTEGER = 13
NUM_CATEGORICAL = 26
NUM_FIELDS = 1 + NUM_INTEGER + NUM_CATEGORICAL

# Rows per categorical feature of MLPerf's DLRM on Criteo 1TB: each feature's
# distinct values, capped at 4·10^7 (the reference's `max_ind_range`), as in
# TorchRec's DLRM example (`--num_embeddings_per_feature`).
MLPERF_TABLE_ROWS = (
    40_000_000, 39_060, 17_295, 7_424, 20_265, 3, 7_122, 1_543, 63,
    40_000_000, 3_067_956, 405_282, 10, 2_209, 11_938, 155, 4, 976, 14,
    40_000_000, 40_000_000, 40_000_000, 590_152, 12_973, 108, 36,
)
MLPERF_ROW_CAP = 40_000_000

# Optimizers of the comparison. Those in SPARSE_OPTIMIZERS can update the
# tables on the sparse path (only the batch's rows); all can run the dense
# path (the whole model through one Optax optimizer).
OPTIMIZERS = ('sgd', 'adagrad', 'adam', 'rowwise_adagrad', 'cf_sgd')
SPARSE_OPTIMIZERS = ('sgd', 'rowwise_adagrad', 'cf_sgd')
UPDATES = ('sparse', 'dense')
BAD_LINES = ('skip', 'fail')


@dataclasses.dataclass(frozen=True)
class Config:
  """One training run. Every field changes results (checkpoints record them).

  Attributes:
    optimizer: the tables' optimizer (one of OPTIMIZERS).
    learning_rate: its learning rate (α for cf_sgd).
    dense_optimizer: the other parameters' optimizer (MLP, the integer
      features' vectors, the bias); None: `optimizer`.
    dense_learning_rate: its learning rate; None: `learning_rate`.
    update: 'sparse' (tables by `fasgd_optax.sparse_*`, touching only the
      batch's rows) or 'dense' (one Optax optimizer over all parameters, the
      tables' gradients dense N×d arrays).
    table_rows: rows of each categorical feature's table (26 values);
      categorical values are hashed into them.
    embedding_dim: d, the embedding (factor) dimension.
    mlp_features: widths of DeepFM's hidden layers.
    init_scale: standard deviation of the initial embeddings.
    batch_size: examples per step (global, over all devices and processes).
    num_steps: training steps; CF-SGD's horizon T.
    seed: parameter initialisation.
    data_shards: the training stream is split into this many shards by line
      (shard s reads lines s, s + S, …), each giving batch_size / S examples of
      every batch; a multi-process run needs a multiple of its processes.
  """

  optimizer: str = 'cf_sgd'
  learning_rate: float = 10.0
  dense_optimizer: Optional[str] = None
  dense_learning_rate: Optional[float] = None
  update: str = 'sparse'
  table_rows: tuple[int, ...] = (1 << 15,) * NUM_CATEGORICAL
  embedding_dim: int = 16
  mlp_features: tuple[int, ...] = (128, 64)
  init_scale: float = 0.01
  batch_size: int = 512
  num_steps: int = 1000
  seed: int = 0
  data_shards: int = 1

  def __post_init__(self):
    if self.optimizer not in OPTIMIZERS:
      raise ValueError(f'optimizer {self.optimizer!r}: expected one of '
                       f'{", ".join(OPTIMIZERS)}.')
    dense = self.dense_optimizer
    if dense is not None and dense not in OPTIMIZERS:
      raise ValueError(f'dense_optimizer {dense!r}: expected one of '
                       f'{", ".join(OPTIMIZERS)}.')
    if self.update not in UPDATES:
      raise ValueError(f'update {self.update!r}: expected one of {UPDATES}.')
    if self.update == 'sparse' and self.optimizer not in SPARSE_OPTIMIZERS:
      raise ValueError(
          f'optimizer {self.optimizer!r} has no sparse path; use update='
          f'\'dense\' or one of {", ".join(SPARSE_OPTIMIZERS)}.')
    if len(self.table_rows) != NUM_CATEGORICAL or min(self.table_rows) < 1:
      raise ValueError(
          f'table_rows must be {NUM_CATEGORICAL} positive row counts, one per '
          f'categorical feature; got {self.table_rows!r}.')
    for name in ('embedding_dim', 'batch_size', 'num_steps', 'data_shards'):
      if getattr(self, name) < 1:
        raise ValueError(f'{name} must be >= 1, got {getattr(self, name)}.')
    if not self.mlp_features or min(self.mlp_features) < 1:
      raise ValueError(f'mlp_features must be one or more widths >= 1; got '
                       f'{list(self.mlp_features)}.')
    for name in ('learning_rate', 'dense_learning_rate'):
      value = getattr(self, name)
      if value is not None and not 0 < value < math.inf:
        raise ValueError(f'{name} must be a positive finite number, got '
                         f'{value}.')
    if self.batch_size % self.data_shards:
      raise ValueError(
          f'batch_size {self.batch_size} must be a multiple of data_shards '
          f'{self.data_shards} (each shard gives an equal part of a batch).')

  def record(self) -> dict:
    """The settings as JSON data."""
    return {key: list(value) if isinstance(value, tuple) else value
            for key, value in dataclasses.asdict(self).items()}


# main.py's default learning rates of the tables' optimizers: those that
# auc_study.py picked by validation AUC (README.md: grid, command, results),
# for one pass of 976 steps of 1024 with the dense part on Adam(1e-3).
# CF-SGD's α scales with sqrt(T): retune for other horizons.
TUNED_LEARNING_RATES: dict[str, float] = {
    'sgd': 1.0,
    'adagrad': 1.0,
    'adam': 0.00316,
    'rowwise_adagrad': 0.0316,
    'cf_sgd': 316.0,
}
