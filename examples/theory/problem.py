"""A synthetic embedding-learning problem in the form of Li et al. (ICLR 2022).

    f(Θ) = E_{(i, j, y) ~ D} ℓ(⟨θ_i, θ_j⟩; y),   ℓ(z; y) = log(1 + exp(-y z)),

over a user table U (rows θ_i) and an item table V (rows θ_j). A sample draws
user i with probability π_i and, independently, item j with probability ρ_j,
both with a chosen tail (exponential, π_n ∝ exp(-τ n), or Zipf, π_n ∝ n^-s,
with n the frequency rank), and a label y = ±1 with P(y = +1) = σ(⟨θ*_i, θ*_j⟩)
from a planted table Θ*. Labels are drawn afresh for every sample, so the
stochastic gradients stay noisy at the optimum (as in the paper's theorems),
and the full-batch objective is the cross-entropy

    f(Θ) = Σ_ij π_i ρ_j [s_ij softplus(-z_ij) + (1 - s_ij) softplus(z_ij)],
    z_ij = ⟨θ_i, θ_j⟩,  s_ij = σ(⟨θ*_i, θ*_j⟩),

whose minimum f* is attained at Θ*. Row n of each table is the row of
frequency rank n (id 0 is the most frequent).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

DISTRIBUTIONS = ('exponential', 'zipf')


class Problem(NamedTuple):
  """One planted problem: sampling probabilities and the planted tables."""
  user_probs: jax.Array  # shape=(num_users,), π_i, sums to 1, decreasing.
  item_probs: jax.Array  # shape=(num_items,), ρ_j, sums to 1, decreasing.
  true_users: jax.Array  # shape=(num_users, dim), rows of norm `planted_norm`.
  true_items: jax.Array  # shape=(num_items, dim), rows of norm `planted_norm`.


def rank_probabilities(
    num_rows: int,
    distribution: str,
    *,
    tau: float = 0.3,
    zipf_exponent: float = 1.0,
) -> np.ndarray:
  """Sampling probabilities by frequency rank n = 1..num_rows, summing to 1.

  Args:
    num_rows: how many rows (users or items).
    distribution: 'exponential' (p_n ∝ exp(-τ n)) or 'zipf' (p_n ∝ n^-s).
    tau: τ > 0 of the exponential tail.
    zipf_exponent: s > 0 of the Zipf tail.

  Returns:
    float64 array of shape (num_rows,), decreasing, summing to 1.
  """
  if not isinstance(num_rows, (int, np.integer)) or num_rows < 1:
    raise ValueError(f'num_rows must be a positive int; got {num_rows!r}.')
  ranks = np.arange(1, num_rows + 1, dtype=np.float64)
  if distribution == 'exponential':
    if not tau > 0:
      raise ValueError(f'tau must be > 0 for the exponential tail; got {tau}.')
    weights = np.exp(-tau * (ranks - 1))
  elif distribution == 'zipf':
    if not zipf_exponent > 0:
      raise ValueError(
          f'zipf_exponent must be > 0 for the Zipf tail; got {zipf_exponent}.')
    weights = ranks ** -zipf_exponent
  else:
    raise ValueError(
        f'distribution must be one of {DISTRIBUTIONS}; got {distribution!r}.')
  return weights / weights.sum()


def _rows_of_norm(key: jax.Array, num_rows: int, dim: int,
                  norm: float) -> jax.Array:
  """Rows drawn uniformly on the sphere of radius `norm`."""
  rows = jax.random.normal(key, (num_rows, dim))
  return norm * rows / jnp.linalg.norm(rows, axis=1, keepdims=True)


def make_problem(
    key: jax.Array,
    user_probs: np.ndarray,
    item_probs: np.ndarray,
    *,
    dim: int,
    planted_norm: float,
) -> Problem:
  """Draws planted tables whose rows have norm `planted_norm`.

  Fixing the row norms fixes the logit range (|z*| ≤ planted_norm²) and the
  smoothness estimate `smoothness_at_planted` for every seed.
  """
  user_key, item_key = jax.random.split(key)
  return Problem(
      user_probs=jnp.asarray(user_probs, jnp.float32),
      item_probs=jnp.asarray(item_probs, jnp.float32),
      true_users=_rows_of_norm(user_key, len(user_probs), dim, planted_norm),
      true_items=_rows_of_norm(item_key, len(item_probs), dim, planted_norm),
  )


def init_params(key: jax.Array, problem: Problem,
                init_norm: float) -> dict[str, jax.Array]:
  """Initial tables, independent of the planted ones, rows of norm `init_norm`."""
  user_key, item_key = jax.random.split(key)
  dim = problem.true_users.shape[1]
  return {
      'users': _rows_of_norm(user_key, problem.true_users.shape[0], dim,
                             init_norm),
      'items': _rows_of_norm(item_key, problem.true_items.shape[0], dim,
                             init_norm),
  }


def smoothness_at_planted(planted_norm: float) -> float:
  """L, a bound on the per-sample Hessian of ℓ(⟨u, v⟩; y) in (u, v) at Θ*.

  The Hessian is ℓ''(z) w wᵀ + ℓ'(z) [[0, I], [I, 0]] with w = (v, u); as
  ℓ'' ≤ 1/4 and |ℓ'| ≤ 1 its norm is at most (‖u‖² + ‖v‖²)/4 + 1. The bilinear
  loss is not globally smooth, so this is the value at rows of the planted
  norm, used for the paper's step-size cap 1/(4L).
  """
  return planted_norm ** 2 / 2.0 + 1.0


def sample_batch(
    key: jax.Array, problem: Problem, batch_size: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Draws `batch_size` samples (i, j, y) from D.

  Returns:
    (user_ids, item_ids, labels): int32, int32 and float32 (±1) arrays of
    shape (batch_size,).
  """
  user_key, item_key, label_key = jax.random.split(key, 3)
  user_ids = jax.random.categorical(
      user_key, jnp.log(problem.user_probs), shape=(batch_size,))
  item_ids = jax.random.categorical(
      item_key, jnp.log(problem.item_probs), shape=(batch_size,))
  true_logits = jnp.sum(
      problem.true_users[user_ids] * problem.true_items[item_ids], axis=1)
  positive = jax.random.bernoulli(label_key, jax.nn.sigmoid(true_logits))
  labels = jnp.where(positive, 1.0, -1.0)
  return user_ids.astype(jnp.int32), item_ids.astype(jnp.int32), labels


def batch_loss(params: dict[str, jax.Array], user_ids: jax.Array,
               item_ids: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean logistic loss of a batch: an unbiased estimate of f(Θ)."""
  logits = jnp.sum(params['users'][user_ids] * params['items'][item_ids],
                   axis=1)
  return jnp.mean(jax.nn.softplus(-labels * logits))


def _label_probs(problem: Problem) -> jax.Array:
  return jax.nn.sigmoid(problem.true_users @ problem.true_items.T)


def _pair_weights(problem: Problem) -> jax.Array:
  return problem.user_probs[:, None] * problem.item_probs[None, :]


def full_loss(params: dict[str, jax.Array], problem: Problem) -> jax.Array:
  """f(Θ): the expected loss over D, summed exactly over all pairs and labels."""
  logits = params['users'] @ params['items'].T
  label_probs = _label_probs(problem)
  losses = (label_probs * jax.nn.softplus(-logits)
            + (1.0 - label_probs) * jax.nn.softplus(logits))
  return jnp.sum(_pair_weights(problem) * losses)


def optimal_loss(problem: Problem) -> jax.Array:
  """f* = f(Θ*): the label entropy, Σ_ij π_i ρ_j H(s_ij)."""
  return full_loss({'users': problem.true_users, 'items': problem.true_items},
                   problem)


def full_row_gradients(params: dict[str, jax.Array],
                       problem: Problem) -> dict[str, jax.Array]:
  """∇f(Θ) in closed form: ∇_U f = A V, ∇_V f = Aᵀ U, A_ij = π_i ρ_j (σ(z_ij) - s_ij).

  Row k of each output is ∇_k f, the partial gradient the paper's theorems
  bound; it carries the factor p_k of the row's own frequency.
  """
  logits = params['users'] @ params['items'].T
  weighted_residuals = _pair_weights(problem) * (
      jax.nn.sigmoid(logits) - _label_probs(problem))
  return {
      'users': weighted_residuals @ params['items'],
      'items': weighted_residuals.T @ params['users'],
  }


def row_grad_sq_norms(params: dict[str, jax.Array],
                      problem: Problem) -> dict[str, jax.Array]:
  """‖∇_k f(Θ)‖² for every row k of each table: shapes (num_users,), (num_items,)."""
  return jax.tree.map(lambda g: jnp.sum(g * g, axis=1),
                      full_row_gradients(params, problem))
