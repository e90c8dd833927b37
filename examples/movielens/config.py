"""Default settings of the MovieLens example and the tuned learning rates.

`TUNED_LEARNING_RATES` holds, for each (model, optimizer), the learning rate
that the sweep (`python -m examples.movielens.main --sweep --num_seeds=3`)
picked by validation AUC on MovieLens-100K with the defaults below (see
README.md in this folder for the sweep's grid and results).
"""

import dataclasses
from typing import Optional

MODELS = ('fm', 'deepfm')


@dataclasses.dataclass(frozen=True)
class Config:
  """One training run.

  Attributes:
    model: 'fm' or 'deepfm'.
    optimizer: optimizer of the embedding tables (examples.common.optimizers).
    learning_rate: its learning rate (α for fa_sgd / cf_sgd).
    dense_optimizer: optimizer of the dense parameters (FM bias, DeepFM's
      MLP); None uses `optimizer` for everything.
    dense_learning_rate: its learning rate (None: `learning_rate`).
    batch_size: examples per step.
    num_epochs: passes over the training set; with fa_sgd / cf_sgd the horizon
      T is num_epochs × batches per epoch.
    embedding_dim: factor dimension k.
    mlp_features: DeepFM's hidden layer widths.
    init_scale: standard deviation of the initial embeddings.
    seed: parameter initialisation and data order.
    sparse: update the two embedding tables with the sparse path
      (`fasgd_optax.sparse_*`: gradients with respect to the gathered rows,
      only the batch's rows read and written); the dense parameters use
      `dense_optimizer` (or `optimizer`) as usual. Same result as the dense
      path, up to float rounding.
    checkpoint_fallback: when the latest checkpoint is corrupt, resume from
      the one before it (see examples.common.checkpointing.Options.fallback).
    async_checkpoints: write checkpoints in the background.
    The last two say how the run is checkpointed, not what it computes: they
    are not part of its recorded config, so changing them resumes the run.
  """

  model: str = 'fm'
  optimizer: str = 'cf_sgd'
  learning_rate: float = 1.0
  dense_optimizer: Optional[str] = None
  dense_learning_rate: Optional[float] = None
  batch_size: int = 256
  num_epochs: int = 20
  embedding_dim: int = 16
  mlp_features: tuple[int, ...] = (64, 32)
  init_scale: float = 0.05
  seed: int = 0
  sparse: bool = False
  checkpoint_fallback: bool = False
  async_checkpoints: bool = False


# Chosen by `python -m examples.movielens.main --sweep --num_seeds=3` on
# MovieLens-100K with the defaults above (results/results.json,
# 'learning_rate_selection').
TUNED_LEARNING_RATES: dict[tuple[str, str], float] = {
    ('fm', 'sgd'): 3.16,
    ('fm', 'adagrad'): 1.0,
    ('fm', 'adam'): 0.00316,
    ('fm', 'rowwise_adagrad'): 0.1,
    ('fm', 'fa_sgd'): 316.0,
    ('fm', 'cf_sgd'): 316.0,
    ('deepfm', 'sgd'): 1.0,
    ('deepfm', 'adagrad'): 0.316,
    ('deepfm', 'adam'): 0.00316,
    ('deepfm', 'rowwise_adagrad'): 0.0316,
    ('deepfm', 'fa_sgd'): 316.0,
    ('deepfm', 'cf_sgd'): 100.0,
}
