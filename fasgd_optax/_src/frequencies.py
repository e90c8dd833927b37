"""Turning a dataset's id counts into FA-SGD's per-row frequencies."""

from typing import Any

import jax
import numpy as np


def count_ids(ids: Any, num_rows: int) -> np.ndarray:
  """Occurrences of each row in `ids` (any shape, duplicates count).

  Args:
    ids: integer ids in [0, num_rows), e.g. a training set's item column.
    num_rows: rows of the table.

  Returns:
    An int64 NumPy array of shape (num_rows,).

  Raises:
    ValueError: for ids outside [0, num_rows) or non-integer ids.
  """
  if isinstance(num_rows, bool) or not isinstance(
      num_rows, (int, np.integer)) or num_rows <= 0:
    raise ValueError(f'num_rows must be a positive int; got {num_rows!r}.')
  ids = np.ravel(np.asarray(ids))
  if ids.size == 0:  # An empty list is float64 to NumPy.
    ids = ids.astype(np.int64)
  if not np.issubdtype(ids.dtype, np.integer):
    raise ValueError(f'ids must be integers; got dtype {ids.dtype}.')
  bad = (ids < 0) | (ids >= num_rows)
  if bad.any():
    raise ValueError(
        f'ids must be in [0, {num_rows}); got {int(ids[np.argmax(bad)])}.')
  return np.bincount(ids, minlength=num_rows)


def frequencies_from_counts(counts: Any, *, num_batches: int) -> Any:
  """Per-row expected occurrences per step, p_k = counts_k / num_batches.

  Args:
    counts: a row-count array (e.g. from `count_ids` over one epoch), or a
      pytree of them mirroring the parameters (None entries are kept).
    num_batches: the number of steps the counts were gathered over (batches
      per epoch when counting one epoch).

  Returns:
    float32 NumPy arrays in the structure of `counts`, ready for `fa_sgd`.
  """
  if isinstance(num_batches, bool) or not isinstance(
      num_batches, (int, np.integer)) or num_batches <= 0:
    raise ValueError(
        f'num_batches must be a positive int; got {num_batches!r}.')

  def to_frequency(count):
    count = np.asarray(count)
    if np.any(count < 0):
      raise ValueError('counts must be >= 0; got '
                       f'{count[count < 0].ravel()[0]}.')
    return (count / num_batches).astype(np.float32)

  return jax.tree.map(to_frequency, counts)
