"""Frequency-aware per-row step sizes as Optax gradient transformations."""

from typing import Any, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fasgd_optax._src import checks
from fasgd_optax._src import counting
from fasgd_optax._src import tree_args

ScalarOrSchedule = Union[float, jax.Array, optax.Schedule]


class ScaleByCountedFrequencyState(NamedTuple):
  """State of `scale_by_counted_frequency` (CF-SGD): online per-row counts."""
  count: jax.typing.ArrayLike  # shape=(), dtype=jnp.int32; updates so far.
  row_counts: optax.Params  # per leaf: shape=leaf.shape[:1], int32 (float32 with a half-life).
  row_last_step: Optional[optax.Params]  # like row_counts, int32; None without a half-life.


class ScaleByKnownFrequencyState(NamedTuple):
  """State of `scale_by_known_frequency` (FA-SGD): the update count."""
  count: jax.typing.ArrayLike  # shape=(), dtype=jnp.int32; updates so far.


def _check_common(learning_rate, num_steps, max_learning_rate):
  checks.check_positive('learning_rate', learning_rate)
  checks.check_positive('num_steps', num_steps, integer=True, allow_none=True)
  checks.check_positive('max_learning_rate', max_learning_rate,
                        allow_none=True)


def _check_counted_state(state: Any, count_half_life: Optional[float]) -> None:
  """Raises unless `state` is a `ScaleByCountedFrequencyState` of this kind."""
  if not isinstance(state, ScaleByCountedFrequencyState):
    raise TypeError(
        'scale_by_counted_frequency (cf_sgd) needs the state its `init` made, '
        f'a ScaleByCountedFrequencyState; got {type(state).__name__}.')
  if (state.row_last_step is None) != (count_half_life is None):
    raise ValueError(
        'The state was made by an optimizer '
        + ('without' if state.row_last_step is None else 'with')
        + ' `count_half_life`, but this one has count_half_life='
        f'{count_half_life!r}: make the state with this optimizer\'s `init`.')


def scale_by_counted_frequency(
    learning_rate: ScalarOrSchedule,
    *,
    num_steps: Optional[int],
    max_learning_rate: Optional[float] = None,
    axis_name: Optional[str] = None,
    count_half_life: Optional[float] = None,
    checkify_ids: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""Scales each row's gradient by a step size from its online count (CF-SGD).

  At step t (t = 1 on the first update), row k of a leaf is scaled by

  .. math::
    \eta_k^t = \min(\eta_{max}, \alpha_t / \sqrt{c_k^t}),\quad
    c_k^t = T n_k^t / t \text{ (horizon T) or } n_k^t \text{ (no horizon)},

  and by 0 where :math:`c_k^t = 0`. :math:`n_k^t` counts the row's occurrences
  in steps 1..t: from ``ids`` passed to ``update`` (with multiplicity), or, for
  leaves without ids, one per step in which any element of the row's gradient
  is non-zero. The sign is kept; `cf_sgd` chains a sign flip.

  Args:
    learning_rate: α, a positive float or an Optax schedule (called with the
      number of earlier updates).
    num_steps: the horizon T, a positive int; None selects the no-horizon
      variant c = n, whose step sizes decay like α/sqrt(n).
    max_learning_rate: η_max, a cap on every step size; None for no cap.
    axis_name: a mapped axis (`pmap`, `shard_map`) over which the per-step
      count increments are combined, so every replica holds the counts of a
      single-device run over the concatenated batch.
    count_half_life: if set, n and t become sums decayed with this half-life
      (in steps), so step sizes follow a drifting frequency.
    checkify_ids: under `jit`, also add a `checkify.debug_check` that reports
      out-of-range ids (naming the leaf and the value) when the step is
      wrapped in `jax.experimental.checkify.checkify`. Off by default: a
      jitted step holding a check has an effect and loses JAX's fast dispatch
      path (0.1-0.3 ms a step in this project's CPU benchmark). Bad ids are dropped either way, and
      raise a ValueError outside `jit`.

  Returns:
    An `optax.GradientTransformationExtraArgs` whose ``update`` takes
    ``ids=`` (see `cf_sgd`).
  """
  _check_common(learning_rate, num_steps, max_learning_rate)
  checks.check_positive('count_half_life', count_half_life, allow_none=True)
  count_dtype = jnp.int32 if count_half_life is None else jnp.float32

  def init_fn(params):
    row_counts = counting.per_row_state(params, count_dtype)
    row_last_step = None
    if count_half_life is not None:
      row_last_step = counting.per_row_state(params, jnp.int32)
    return ScaleByCountedFrequencyState(
        count=counting.step_counter(params),
        row_counts=row_counts,
        row_last_step=row_last_step,
    )

  def update_fn(updates, state, params=None, *, ids=None, **extra_args):
    del params, extra_args
    _check_counted_state(state, count_half_life)
    leaves, treedef = tree_args.leaves_with_paths(updates)
    ids_per_leaf = tree_args.per_leaf(ids, updates, 'ids')
    counts_leaves = counting.row_state_leaves(treedef, state.row_counts,
                                              'row_counts')
    if count_half_life is None:
      last_leaves = [None] * len(leaves)
    else:
      last_leaves = counting.row_state_leaves(treedef, state.row_last_step,
                                              'row_last_step')

    step = optax.safe_increment(state.count)
    alpha = counting.learning_rate_at(learning_rate, state.count)

    new_updates, new_counts, new_last = [], [], []
    for (path, grad), leaf_ids, row_counts, row_last in zip(
        leaves, ids_per_leaf, counts_leaves, last_leaves):
      if isinstance(grad, optax.MaskedNode):
        new_updates.append(grad)
        new_counts.append(row_counts)
        new_last.append(row_last)
        continue
      counting.check_row_state(path, grad, row_counts, 'row_counts',
                               count_dtype)
      if row_last is not None:
        counting.check_row_state(path, grad, row_last, 'row_last_step',
                                 jnp.int32)
      increments = counting.leaf_increments(grad, leaf_ids, path, axis_name,
                                            checkify_ids)
      counts, last, counts_now = counting.updated_counts(
          row_counts, row_last, increments, step, count_half_life)
      eta = counting.step_sizes(
          counting.effective_counts(counts_now, step, num_steps,
                                    count_half_life),
          alpha, max_learning_rate)
      new_updates.append(counting.scale_counted_rows(grad, eta))
      new_counts.append(counting.keep_sharding(counts, row_counts))
      new_last.append(
          None if last is None else counting.keep_sharding(last, row_last))

    new_state = ScaleByCountedFrequencyState(
        count=counting.keep_sharding(step, state.count),
        row_counts=treedef.unflatten(new_counts),
        row_last_step=(None if count_half_life is None
                       else treedef.unflatten(new_last)),
    )
    return treedef.unflatten(new_updates), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _frequency_array(path: str, value: Any) -> Any:
  """Checks one `frequencies` entry; returns it as a float32 array."""
  name = path or '<root>'
  if checks.is_traced(value):
    return jnp.asarray(value, jnp.float32)
  array = np.asarray(value)
  if not checks.is_number_dtype(array.dtype):
    raise TypeError(
        f"frequencies for parameter '{name}' must be numeric; got dtype "
        f'{array.dtype}.')
  if array.ndim > 1:
    raise ValueError(
        f"frequencies for parameter '{name}' must be one value per row (a 1-D "
        f'array, or a scalar for a scalar leaf); got shape {array.shape}.')
  # Compared where finite: bfloat16's NaN warns in a comparison.
  finite = np.isfinite(array)
  good = finite & (np.where(finite, array, 0) >= 0)
  if not np.all(good):
    bad = array[~good].ravel()[0]
    raise ValueError(
        f"frequencies for parameter '{name}' must be finite and >= 0; got "
        f'{bad}.')
  return jnp.asarray(value, jnp.float32)


def _check_frequency_shapes(freqs_per_leaf, leaves) -> None:
  for (path, leaf), freq in zip(leaves, freqs_per_leaf):
    if freq is None or isinstance(leaf, optax.MaskedNode):
      continue
    if tuple(freq.shape) != counting.row_shape(leaf):
      raise ValueError(
          f"frequencies for parameter '{path or '<root>'}' must have shape "
          f'{counting.row_shape(leaf)} (one per row of the leaf of shape '
          f'{tuple(leaf.shape)}); got {tuple(freq.shape)}.')


def scale_by_known_frequency(
    learning_rate: ScalarOrSchedule,
    frequencies: Any,
    *,
    num_steps: int,
    max_learning_rate: Optional[float] = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Scales each row's gradient by a step size from its known frequency (FA-SGD).

  Row k of a leaf is scaled by
  :math:`\eta_k = \min(\eta_{max}, \alpha_t / \sqrt{T p_k})`, and by 0 where
  :math:`p_k = 0`. A leaf with no `frequencies` entry counts as seen every
  step (p = 1), i.e. plain SGD at rate α/sqrt(T). The sign is kept.

  Args:
    learning_rate: α, a positive float or an Optax schedule.
    frequencies: per-row expected occurrences per step, p_k ≥ 0: a 1-D array
      per leaf, mirroring the parameters (None for leaves with p = 1), a dict
      keyed by leaf paths, or a single array for a single-array parameter. See
      `frequencies_from_counts`.
    num_steps: the horizon T, a positive int (required).
    max_learning_rate: η_max, a cap on every step size; None for no cap.

  Returns:
    An `optax.GradientTransformationExtraArgs`; ``ids`` and other extra args
    are accepted and ignored.
  """
  _check_common(learning_rate, num_steps, max_learning_rate)
  if num_steps is None:
    raise ValueError(
        '`num_steps` must be a positive int for FA-SGD: its step size '
        'α/sqrt(T·p) needs the horizon T; got None.')
  frequencies = jax.tree_util.tree_map_with_path(
      lambda path, f: _frequency_array(tree_args.path_to_str(path), f),
      frequencies)

  def leaf_frequencies(tree):
    leaves, _ = tree_args.leaves_with_paths(tree)
    # A root list, for a single-array parameter, becomes its one array.
    freqs = [None if f is None else jnp.asarray(f, jnp.float32)
             for f in tree_args.per_leaf(frequencies, tree, 'frequencies')]
    _check_frequency_shapes(freqs, leaves)
    return leaves, freqs

  def init_fn(params):
    if jax.tree.leaves(params):  # Not optax.tree.map_params' placeholder.
      leaf_frequencies(params)
    return ScaleByKnownFrequencyState(count=counting.step_counter(params))

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    if not isinstance(state, ScaleByKnownFrequencyState):
      raise TypeError(
          'scale_by_known_frequency (fa_sgd) needs the state its `init` made, '
          f'a ScaleByKnownFrequencyState; got {type(state).__name__}.')
    leaves, freqs = leaf_frequencies(updates)
    _, treedef = tree_args.leaves_with_paths(updates)
    alpha = counting.learning_rate_at(learning_rate, state.count)
    total_steps = jnp.asarray(num_steps, jnp.float32)
    new_updates = []
    for (_, grad), freq in zip(leaves, freqs):
      if isinstance(grad, optax.MaskedNode):
        new_updates.append(grad)
        continue
      if freq is None:
        freq = jnp.ones(counting.row_shape(grad), jnp.float32)
      eta = counting.step_sizes(total_steps * freq, alpha, max_learning_rate)
      new_updates.append(counting.scale_counted_rows(grad, eta))
    return treedef.unflatten(new_updates), ScaleByKnownFrequencyState(
        count=counting.keep_sharding(optax.safe_increment(state.count),
                                     state.count))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
