"""The user-facing optimizers: CF-SGD and FA-SGD."""

from typing import Any, Optional

import optax

from fasgd_optax._src import transform

ScalarOrSchedule = transform.ScalarOrSchedule


def cf_sgd(
    learning_rate: ScalarOrSchedule,
    *,
    num_steps: Optional[int],
    max_learning_rate: Optional[float] = None,
    axis_name: Optional[str] = None,
    count_half_life: Optional[float] = None,
    checkify_ids: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""Counter-based frequency-aware SGD (CF-SGD).

  Row k of each parameter leaf moves by :math:`-\eta_k^t g_k^t` with
  :math:`\eta_k^t = \min(\eta_{max}, \alpha_t/\sqrt{T n_k^t / t})`, where
  :math:`n_k^t` counts the row's occurrences in steps 1..t (one int32 counter
  per row) and rows never seen are not moved. Rows seen every step get plain
  SGD's α/sqrt(T); rarer rows get larger steps.

  ``update(grads, state, params, ids=...)`` takes the rows each leaf touched
  this step: an integer array of any shape (duplicates count), a pytree
  mirroring the parameters with None for leaves counted by presence (a row
  counts once per step if its gradient is non-zero), or a dict keyed by leaf
  paths such as ``{'user_embed/embedding': user_ids}``. Presence counting
  under-counts rows that repeat within a batch; pass ids for embedding tables.

  Args:
    learning_rate: α, a positive float or an Optax schedule.
    num_steps: the horizon T (required). ``None`` selects the no-horizon
      variant c = n, whose step sizes keep decaying (see DESIGN.md §2); for
      continuous training prefer a horizon with ``count_half_life``.
    max_learning_rate: η_max (the paper's 1/(4L)); None for no cap.
    axis_name: the mapped axis over which count increments are combined under
      `pmap`/`shard_map` data parallelism.
    count_half_life: decay counts with this half-life in steps (float32
      counts plus one int32 "last seen" step per row).
    checkify_ids: add a `checkify.debug_check` for out-of-range ids under
      `jit` (off by default; see `scale_by_counted_frequency`).

  Returns:
    An `optax.GradientTransformationExtraArgs`.

  Example:
    >>> import jax.numpy as jnp, optax, fasgd_optax
    >>> params = {'embed': jnp.zeros((5, 2)), 'bias': jnp.zeros(())}
    >>> tx = fasgd_optax.cf_sgd(0.1, num_steps=100)
    >>> state = tx.init(params)
    >>> grads = {'embed': jnp.ones((5, 2)), 'bias': jnp.ones(())}
    >>> updates, state = tx.update(grads, state, params,
    ...                            ids={'embed': jnp.array([0, 0, 3])})
    >>> state[0].row_counts['embed'].tolist()
    [2, 0, 0, 1, 0]

  References:
    Li et al., `Frequency-aware SGD for Efficient Embedding Learning with
    Provable Benefits <https://arxiv.org/abs/2110.04844>`_, ICLR 2022.
  """
  return optax.chain(
      transform.scale_by_counted_frequency(
          learning_rate,
          num_steps=num_steps,
          max_learning_rate=max_learning_rate,
          axis_name=axis_name,
          count_half_life=count_half_life,
          checkify_ids=checkify_ids,
      ),
      optax.scale(-1.0),
  )


def fa_sgd(
    learning_rate: ScalarOrSchedule,
    frequencies: Any,
    *,
    num_steps: int,
    max_learning_rate: Optional[float] = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Frequency-aware SGD (FA-SGD) with known per-row frequencies.

  Row k moves by :math:`-\min(\eta_{max}, \alpha_t/\sqrt{T p_k})\, g_k`, where
  :math:`p_k` is the row's expected number of occurrences per step; rows with
  p = 0 are not moved, and leaves without a `frequencies` entry use p = 1.

  Args:
    learning_rate: α, a positive float or an Optax schedule.
    frequencies: per-row p_k ≥ 0, mirroring the parameters (None for p = 1),
      as a dict keyed by leaf paths, or a single array for a single-array
      parameter. `frequencies_from_counts` makes them from a dataset's counts.
    num_steps: the horizon T (required).
    max_learning_rate: η_max; None for no cap.

  Returns:
    An `optax.GradientTransformationExtraArgs`.

  Example:
    >>> import jax.numpy as jnp, fasgd_optax
    >>> counts = jnp.array([900, 90, 10])   # occurrences over 1,000 steps
    >>> freqs = fasgd_optax.frequencies_from_counts(counts, num_batches=1000)
    >>> tx = fasgd_optax.fa_sgd(0.1, freqs, num_steps=1000)
    >>> updates, _ = tx.update(jnp.ones((3, 2)), tx.init(jnp.zeros((3, 2))))

  References:
    Li et al., ICLR 2022 (arXiv 2110.04844).
  """
  return optax.chain(
      transform.scale_by_known_frequency(
          learning_rate,
          frequencies,
          num_steps=num_steps,
          max_learning_rate=max_learning_rate,
      ),
      optax.scale(-1.0),
  )
