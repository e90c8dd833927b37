"""Plain NumPy statements of DESIGN.md §2-3, written for clarity, not speed.

The decayed counts are summed from the full history of increments rather than
updated lazily, so they check the package's lazy decay independently.
"""

from typing import Optional

import numpy as np

INT32_MAX = 2**31 - 1


def zipf_ids(rng: np.random.Generator, num_rows: int, size, exponent=1.1):
  """Ids with P(k) ∝ 1/(k+1)^exponent, the power law of item frequencies."""
  weights = 1.0 / np.arange(1, num_rows + 1) ** exponent
  return rng.choice(num_rows, size=size, p=weights / weights.sum()).astype(np.int32)


class ReferenceLeaf:
  """One parameter leaf under CF-SGD (or FA-SGD when `frequencies` is given)."""

  def __init__(self, rows: int, *, num_steps: Optional[int],
               half_life: Optional[float] = None,
               frequencies: Optional[np.ndarray] = None):
    self.rows = rows
    self.num_steps = num_steps
    self.half_life = half_life
    self.frequencies = frequencies
    self.history = []  # per-step increments, shape (rows,)

  def increments(self, grad: np.ndarray, ids: Optional[np.ndarray]):
    if ids is not None:
      return np.bincount(np.ravel(ids), minlength=self.rows).astype(np.int64)
    grad = grad.reshape(self.rows, -1)
    return np.any(grad != 0, axis=1).astype(np.int64)

  def counts(self) -> np.ndarray:
    """n_k^t: occurrences in steps 1..t, decayed when a half-life is set."""
    steps = len(self.history)
    if self.half_life is None:
      return np.minimum(np.sum(self.history, axis=0), INT32_MAX).astype(np.float64)
    weights = 2.0 ** (-(steps - np.arange(1, steps + 1)) / self.half_life)
    return np.tensordot(weights, np.asarray(self.history, np.float64), axes=1)

  def effective_counts(self) -> np.ndarray:
    steps = len(self.history)
    if self.frequencies is not None:
      return self.num_steps * self.frequencies.astype(np.float64)
    n = self.counts()
    if self.num_steps is None:
      return n
    if self.half_life is None:
      t = float(steps)
    else:
      t = np.sum(2.0 ** (-np.arange(steps) / self.half_life))
    return self.num_steps * n / t

  def update(self, grad: np.ndarray, ids, learning_rate: float,
             max_learning_rate: Optional[float]) -> np.ndarray:
    """Records this step and returns -η_k g_k for every row."""
    self.history.append(self.increments(grad, ids))
    c = self.effective_counts()
    with np.errstate(divide='ignore'):
      eta = np.where(c > 0, learning_rate / np.sqrt(np.where(c > 0, c, 1.0)), 0.0)
    if max_learning_rate is not None:
      eta = np.minimum(eta, max_learning_rate)
    eta = np.where(c > 0, eta, 0.0)
    shape = (self.rows,) + (1,) * (grad.ndim - 1) if grad.ndim else ()
    return -(eta.reshape(shape) if grad.ndim else eta.reshape(())) * grad
