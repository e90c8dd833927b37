"""Optimizers by name, with embedding tables and dense layers split apart.

Every example builds its optimizer here, so that "sgd" or "cf_sgd" means the
same thing everywhere. All returned transformations accept extra arguments
(`ids=...`), so a training step can call ``tx.update(grads, state, params,
ids=ids)`` whatever the optimizer; those that do not use ids ignore them.

Learning-rate conventions (see DESIGN.md §2): with a horizon T, CF-SGD and
FA-SGD give a row seen every step the rate α/sqrt(T), so their α sits on the
scale of SGD's lr × sqrt(T). The examples put all optimizers on one wide log
grid of α and let validation pick.

Learning-rate schedules (`SCHEDULES`): 'constant', or 'linear', word2vec.c's
decay from the learning rate at the first step to 10^-4 of it at the last
(`learning_rate_schedule`).
"""

from collections.abc import Callable, Mapping
from typing import Any, Optional

import jax
import numpy as np
import optax

import fasgd_optax

OPTIMIZERS = ('sgd', 'adagrad', 'adam', 'rowwise_adagrad', 'fa_sgd', 'cf_sgd')
FREQUENCY_AWARE = ('fa_sgd', 'cf_sgd')
# Optimizers with a sparse path (fasgd_optax.sparse_*): the table's update
# reads and writes only the rows of the batch.
SPARSE = ('sgd', 'rowwise_adagrad', 'fa_sgd', 'cf_sgd')

EMBEDDING = 'embedding'
DENSE = 'dense'

SCHEDULES = ('constant', 'linear')
# word2vec.c's floor: its rate never falls below 10^-4 of the starting one.
LINEAR_DECAY_FLOOR = 1e-4


def learning_rate_schedule(schedule: str, learning_rate: float,
                           num_steps: Optional[int]) -> optax.ScalarOrSchedule:
  """`learning_rate` as `schedule` says: a float, or an Optax schedule.

  Args:
    schedule: 'constant' (returns `learning_rate` itself) or 'linear'
      (word2vec.c's: from `learning_rate` at step 0 down to
      `LINEAR_DECAY_FLOOR` × `learning_rate` at step `num_steps`, then flat).
    learning_rate: the rate at the first step.
    num_steps: the run's steps; required for 'linear'.

  Raises:
    ValueError: an unknown schedule, or 'linear' without a positive
      `num_steps`.
  """
  if schedule == 'constant':
    return learning_rate
  if schedule == 'linear':
    if num_steps is None or num_steps < 1:
      raise ValueError('The linear learning-rate schedule needs num_steps '
                       f'>= 1; got {num_steps!r}.')
    return optax.linear_schedule(learning_rate,
                                 LINEAR_DECAY_FLOOR * learning_rate,
                                 num_steps)
  raise ValueError(f'learning-rate schedule must be one of '
                   f'{", ".join(SCHEDULES)}; got {schedule!r}.')


def make_optimizer(
    name: str,
    learning_rate: float,
    *,
    num_steps: Optional[int] = None,
    frequencies: Any = None,
    schedule: str = 'constant',
) -> optax.GradientTransformationExtraArgs:
  """Returns the optimizer called `name`.

  Args:
    name: one of `OPTIMIZERS`.
    learning_rate: the learning rate (α for fa_sgd / cf_sgd).
    num_steps: the horizon T for fa_sgd (required) and cf_sgd (None selects
      CF-SGD's no-horizon variant); ignored by the others.
    frequencies: fa_sgd's per-row frequencies (expected occurrences per step)
      in any form `fasgd_optax.fa_sgd` accepts; required for fa_sgd.
    schedule: the learning rate's schedule (`learning_rate_schedule`;
      'linear' needs `num_steps`).

  Returns:
    An `optax.GradientTransformationExtraArgs` that accepts (and, unless
    frequency-aware, ignores) `ids=...`.

  Raises:
    ValueError: for an unknown name, a non-positive learning rate, or fa_sgd
      without frequencies or num_steps.
  """
  if not learning_rate > 0:
    raise ValueError(
        f'learning_rate for optimizer {name!r} must be > 0, got '
        f'{learning_rate!r}.'
    )
  learning_rate = learning_rate_schedule(schedule, learning_rate, num_steps)
  if name == 'sgd':
    tx = optax.sgd(learning_rate)
  elif name == 'adagrad':
    tx = optax.adagrad(learning_rate)
  elif name == 'adam':
    tx = optax.adam(learning_rate)
  elif name == 'rowwise_adagrad':
    if not hasattr(fasgd_optax, 'rowwise_adagrad'):
      raise ValueError(
          "optimizer 'rowwise_adagrad' needs fasgd_optax.rowwise_adagrad, "
          'which this version of fasgd_optax does not have.'
      )
    tx = fasgd_optax.rowwise_adagrad(learning_rate)
  elif name == 'fa_sgd':
    if frequencies is None or num_steps is None:
      raise ValueError(
          "optimizer 'fa_sgd' needs `frequencies` (e.g. training-set counts "
          'per row / batches per epoch) and `num_steps`; got '
          f'frequencies={"None" if frequencies is None else "given"}, '
          f'num_steps={num_steps!r}.'
      )
    tx = fasgd_optax.fa_sgd(learning_rate, frequencies, num_steps=num_steps)
  elif name == 'cf_sgd':
    tx = fasgd_optax.cf_sgd(learning_rate, num_steps=num_steps)
  else:
    raise ValueError(
        f'Unknown optimizer {name!r}; expected one of {", ".join(OPTIMIZERS)}.'
    )
  return optax.with_extra_args_support(tx)


def make_sparse_optimizer(
    name: str,
    learning_rate: float,
    *,
    num_steps: Optional[int] = None,
    frequencies: Optional[np.ndarray] = None,
    max_learning_rate: Optional[float] = None,
    duplicates: str = 'auto',
    schedule: str = 'constant',
) -> 'fasgd_optax.SparseTransformation':
  """Returns the sparse-path optimizer called `name` for one embedding table.

  Args:
    name: one of `SPARSE`.
    learning_rate: the learning rate (α for fa_sgd / cf_sgd).
    num_steps: the horizon T (see `make_optimizer`).
    frequencies: fa_sgd's per-row frequencies of this table, shape (N,).
    max_learning_rate: fa_sgd's and cf_sgd's cap η_max (None: no cap).
    duplicates: how repeated ids are combined ('auto', 'scatter', 'reduce';
      see `fasgd_optax.sparse_cf_sgd`). 'auto' is resolved here, for the
      default backend, where the examples' steps run: their steps then trace
      one design, not both (`fasgd_optax.resolve_duplicates`).
    schedule: the learning rate's schedule (see `make_optimizer`).

  Returns:
    A `fasgd_optax.SparseTransformation`: ``init(table)`` and
    ``apply(table, state, ids, row_grads) -> (table, state)``.

  Raises:
    ValueError: for a name without a sparse path, or bad arguments.
  """
  if name not in SPARSE:
    raise ValueError(
        f'Optimizer {name!r} has no sparse path; the sparse path supports '
        f'{", ".join(SPARSE)}.'
    )
  if not learning_rate > 0:
    raise ValueError(
        f'learning_rate for optimizer {name!r} must be > 0, got '
        f'{learning_rate!r}.'
    )
  if max_learning_rate is not None and name not in FREQUENCY_AWARE:
    raise ValueError(
        f'max_learning_rate is for {", ".join(FREQUENCY_AWARE)}; got it with '
        f'optimizer {name!r}.'
    )
  learning_rate = learning_rate_schedule(schedule, learning_rate, num_steps)
  duplicates = fasgd_optax.resolve_duplicates(duplicates)
  if name == 'sgd':
    return fasgd_optax.sparse_sgd(learning_rate, duplicates=duplicates)
  if name == 'rowwise_adagrad':
    return fasgd_optax.sparse_rowwise_adagrad(learning_rate,
                                              duplicates=duplicates)
  if name == 'fa_sgd':
    if frequencies is None or num_steps is None:
      raise ValueError(
          "optimizer 'fa_sgd' needs `frequencies` and `num_steps`."
      )
    return fasgd_optax.sparse_fa_sgd(
        learning_rate, frequencies, num_steps=num_steps,
        max_learning_rate=max_learning_rate, duplicates=duplicates
    )
  return fasgd_optax.sparse_cf_sgd(learning_rate, num_steps=num_steps,
                                   max_learning_rate=max_learning_rate,
                                   duplicates=duplicates)


def label_embeddings(
    params: Any, is_embedding: Callable[[str], bool]
) -> Any:
  """Labels each leaf of `params` EMBEDDING or DENSE by its '/'-joined path."""

  def label(path, _):
    path_str = '/'.join(
        str(getattr(key, 'key', getattr(key, 'name', getattr(key, 'idx', key))))
        for key in path
    )
    return EMBEDDING if is_embedding(path_str) else DENSE

  return jax.tree_util.tree_map_with_path(label, params)


def make_split_optimizer(
    embedding_optimizer: optax.GradientTransformationExtraArgs,
    dense_optimizer: Optional[optax.GradientTransformationExtraArgs],
    param_labels: Any,
) -> optax.GradientTransformationExtraArgs:
  """Embedding tables get one optimizer and dense layers another.

  Args:
    embedding_optimizer: for leaves labelled EMBEDDING.
    dense_optimizer: for leaves labelled DENSE; None uses
      `embedding_optimizer` for every leaf (no partition).
    param_labels: a pytree like the parameters with EMBEDDING / DENSE labels
      (see `label_embeddings`).

  Returns:
    The combined transformation; `ids` reach both sides, and path-keyed ids of
    leaves a side does not own are ignored by it.
  """
  if dense_optimizer is None:
    return embedding_optimizer
  return optax.with_extra_args_support(
      optax.partition(
          {EMBEDDING: embedding_optimizer, DENSE: dense_optimizer},
          param_labels,
      )
  )


def frequencies_for_tables(
    counts_by_path: Mapping[str, np.ndarray], batches_per_epoch: int
) -> dict[str, np.ndarray]:
  """FA-SGD frequencies (occurrences per step) from training-set counts.

  Args:
    counts_by_path: for each embedding table's leaf path, how often each row
      occurs in one pass over the training set.
    batches_per_epoch: steps per pass.

  Returns:
    A dict keyed by the same paths, usable as `fasgd_optax.fa_sgd`'s
    `frequencies`; dense leaves are left out (p = 1).
  """
  return {
      path: fasgd_optax.frequencies_from_counts(
          counts, num_batches=batches_per_epoch
      )
      for path, counts in counts_by_path.items()
  }


def state_bytes(opt_state: Any) -> int:
  """Bytes held by an optimizer state (for the memory column of tables)."""
  return sum(
      int(np.prod(leaf.shape)) * leaf.dtype.itemsize
      for leaf in jax.tree.leaves(opt_state)
      if hasattr(leaf, 'dtype')
  )
