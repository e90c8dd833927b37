"""Per-row occurrence counting and the per-row step size of DESIGN.md §2-3.

Shared by the dense transformations and the sparse path so that both compute
the same counts and step sizes from the same state layout.
"""

from typing import Any, Optional

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from fasgd_optax._src import checks

INT32_MAX = jnp.iinfo(jnp.int32).max


def num_rows(leaf: Any) -> int:
  """Rows of a parameter leaf: its leading dimension; a scalar is one row."""
  return leaf.shape[0] if leaf.ndim >= 1 else 1


def row_shape(leaf: Any) -> tuple[int, ...]:
  """Shape of a per-row state leaf: ``leaf.shape[:1]``, () for a scalar."""
  return tuple(leaf.shape[:1])


def check_row_state(path: str, grad: Any, row_state: Any, name: str,
                    dtype: Any) -> None:
  """Raises a ValueError unless `row_state` has one `dtype` entry per row.

  A state made by `init` for parameters of another shape (a grown vocabulary)
  would otherwise fail deep inside the update, naming no parameter; one of
  another dtype (a state cast with the parameters, another optimizer's) would
  count wrongly: bfloat16 counts stop growing at 256, float32 ones at 2^24.
  """
  have = tuple(jnp.shape(row_state))
  if have != row_shape(grad):
    raise ValueError(
        f"The optimizer state's {name} for parameter '{path or '<root>'}' "
        f'has shape {have}, but the parameter (shape {tuple(grad.shape)}) '
        f'needs {row_shape(grad)}: was the state made by `init` for '
        'parameters of another shape?')
  have_dtype = jnp.result_type(row_state)
  if have_dtype != jnp.dtype(dtype):
    raise ValueError(
        f"The optimizer state's {name} for parameter '{path or '<root>'}' "
        f'has dtype {have_dtype}, but this optimizer keeps them as '
        f'{jnp.dtype(dtype)}: was the state cast, or made by another '
        'optimizer (or another `count_half_life` setting)? Make it with '
        '`init`.')


def row_state_leaves(treedef: Any, row_state: Any, name: str) -> list[Any]:
  """`row_state`'s per-leaf entries along the updates' `treedef`.

  Raises:
    ValueError: naming the state's part when its tree is not the updates'
      (parameters added or removed after `init`).
  """
  try:
    return treedef.flatten_up_to(row_state)
  except (ValueError, TypeError) as error:
    raise ValueError(
        f"The optimizer state's {name} do not have the tree of the updates "
        f'({error}): was the state made by `init` for other parameters? Make '
        'it with `init` for these.') from None


def saturating_add(counts: jax.Array, increments: jax.Array) -> jax.Array:
  """int32 ``counts + increments`` (increments ≥ 0) that stops at 2^31 - 1."""
  overflow = counts > INT32_MAX - increments
  return jnp.where(overflow, INT32_MAX, counts + increments)


def id_increments(ids: jax.Array, rows: int) -> jax.Array:
  """Occurrences of each row in `ids`, with multiplicity, shape (rows,).

  Ids outside [0, rows) are dropped: JAX would otherwise wrap negative indices
  and clamp large ones into other rows. Ids sharded over a data axis of an
  Explicit mesh are gathered whole first: every row's count needs all of them.
  """
  flat = jnp.ravel(replicated(ids))
  valid = (flat >= 0) & (flat < rows)
  # `rows` is out of bounds, so mode='drop' discards it; a negative id would
  # instead be wrapped by JAX's index normalisation before the scatter.
  safe = jnp.where(valid, flat, rows).astype(jnp.int32)
  return jnp.zeros((rows,), jnp.int32).at[safe].add(1, mode='drop')


def presence_increments(grad: jax.Array) -> jax.Array:
  """1 for each row with any non-zero gradient element, else 0."""
  if grad.ndim == 0:
    return (grad != 0).astype(jnp.int32)
  return jnp.any(grad != 0, axis=tuple(range(1, grad.ndim))).astype(jnp.int32)


def leaf_increments(
    grad: jax.Array,
    ids: Optional[Any],
    leaf_path: str,
    axis_name: Optional[str],
    checkify_ids: bool = False,
) -> jax.Array:
  """This step's count increments for one leaf, shape ``row_shape(grad)``.

  With ids, occurrences are counted with multiplicity and summed over
  `axis_name`; without, a row counts once if present on any replica (`pmax`),
  matching a single-device run over the concatenated batch either way.
  """
  if ids is None:
    increments = presence_increments(grad)
    if axis_name is not None:
      increments = lax.pmax(increments, axis_name)
    return increments
  ids = checks.check_ids_dtype(ids, leaf_path)
  rows = num_rows(grad)
  checks.check_ids_in_range(ids, rows, leaf_path,
                            checkify_traced=checkify_ids)
  increments = id_increments(ids, rows)
  if axis_name is not None:
    increments = lax.psum(increments, axis_name)
  return _sharded_like_rows(increments.reshape(row_shape(grad)), grad)


def _sharded_like_rows(values: jax.Array, leaf: jax.Array) -> jax.Array:
  """Per-row `values` on `leaf`'s rows' axis when its type has one (Explicit).

  Counted from the whole batch, the increments come out replicated; on an
  Explicit mesh, ops that mix them with the row-sharded counts (a `where`)
  need both sharded alike.
  """
  spec = _explicit_row_spec(leaf)
  if spec is None:
    return values
  return _placed(values, leaf, spec)


def _placed(values: jax.Array, like: jax.Array,
            spec: jax.sharding.PartitionSpec) -> jax.Array:
  """`values` with `spec` on the mesh of `like` (whose type has one).

  Traced, by `reshard` to the type's (abstract) mesh. Eagerly, by
  `device_put` to `like`'s concrete mesh: `values` may sit on one device
  outside the mesh (made from unsharded inputs), which `reshard` refuses
  without `jax.set_mesh`.
  """
  if checks.is_traced(values) or checks.is_traced(like):
    try:
      return jax.sharding.reshard(values, jax.sharding.NamedSharding(
          explicit_sharding(like).mesh, spec))
    except ValueError:
      # Traced outside `jit` (an eager `vmap`) and outside `jax.set_mesh`,
      # where JAX cannot reshard; the eager ops that follow take the values
      # where they are.
      return values
  return jax.device_put(
      values, jax.sharding.NamedSharding(like.sharding.mesh, spec))


def decay_factor(steps_elapsed: jax.Array, half_life: Any) -> jax.Array:
  """f^steps_elapsed, f = 2^(-1/half_life) rounded to float32 (f for 1 step).

  Every decay is a power of the one float32 factor by which a row seen every
  step decays each step, so rows seen every step and rows seen now and then
  decay at the same rate, and `decayed_step_count` (the same geometric sum
  of f) matches both. Powers of the exact 2^(-1/H) would be off f's rate by
  its rounding, which near 1 is up to 6e-8/(1 - f) relative per count: 0.05%
  after 60,000 steps at H = 1e5 for rows not seen every step (test_rule's
  `test_rows_seen_now_and_then_decay_at_the_same_rate`, run on that code). f^k is exp(k·log1p(f - 1)),
  accurate since f - 1 is exact for f ≥ 0.5.
  """
  steps = jnp.asarray(steps_elapsed, jnp.float32)
  per_step = jnp.exp2(-1.0 / jnp.asarray(half_life, jnp.float32))
  return jnp.where(steps == 1, per_step,
                   jnp.exp(steps * jnp.log1p(per_step - 1.0)))


def decayed_step_count(step: jax.Array, half_life: Any) -> jax.Array:
  """sum_{s=1..t} f^(t-s) with f = 2^(-1/H): the step count t under a half-life.

  f is the float32 factor by which a row seen every step has its count
  decayed each step (`decay_factor(1, H)`), so that such a row's count n
  equals this t and its c = T·n/t is T. The geometric sum (1 - f^t) / (1 - f)
  is computed without cancellation: 1 - f is exact in float32 for f ≥ 0.5
  (H ≥ 1), and 1 - f^t = -expm1(t·log1p(f - 1)). Written as
  (1 - 2^(-t/H)) / (1 - f), it lost digits for large H (η 1.5% off at
  H = 1e6 in test_rule's `test_a_row_seen_every_step`, run on that code) and
  broke once f rounds to 1 (H above ln2·2^25, about 2.3e7).
  There, counts do not decay in float32 at all, and neither does t: t is
  the step. Below that, f's rounding makes the half-life in effect differ
  from H by up to about 6e-8·H relative (3% at 1e6), the same for every row
  (`decay_factor`).
  """
  steps = jnp.asarray(step, jnp.float32)
  ratio = decay_factor(1, half_life)
  one_minus_ratio = 1.0 - ratio
  decays = one_minus_ratio > 0
  summed = -jnp.expm1(steps * jnp.log1p(-one_minus_ratio)) / jnp.where(
      decays, one_minus_ratio, 1.0)
  return jnp.where(decays, summed, steps)


def updated_counts(
    row_counts: jax.Array,
    row_last_step: Optional[jax.Array],
    increments: jax.Array,
    step: jax.Array,
    half_life: Any,
) -> tuple[jax.Array, Optional[jax.Array], jax.Array]:
  """Adds this step's increments to the stored counts.

  Args:
    row_counts: stored counts; int32, or float32 decayed counts as of
      `row_last_step` when `half_life` is set.
    row_last_step: the step each row was last seen (half-life only).
    increments: int32 occurrences this step.
    step: t, this step's number (1 for the first update).
    half_life: None, or the half-life H in steps.

  Returns:
    (new row_counts, new row_last_step, n_k^t as float32) where n_k^t is every
    row's (decayed) count at step t, including step t.
  """
  if half_life is None:
    new_counts = saturating_add(row_counts, increments)
    return new_counts, None, new_counts.astype(jnp.float32)
  current = row_counts * decay_factor(step - row_last_step, half_life)
  current = current + increments.astype(jnp.float32)
  seen = increments > 0
  new_counts = jnp.where(seen, current, row_counts)
  new_last_step = jnp.where(seen, step, row_last_step)
  return new_counts, new_last_step, current


def effective_counts(
    counts_now: jax.Array,
    step: jax.Array,
    num_steps: Any,
    half_life: Any,
) -> jax.Array:
  """c_k^t of DESIGN.md §2: T·n/t with a horizon T, n without one."""
  if num_steps is None:
    return counts_now
  if half_life is None:
    steps_now = jnp.asarray(step, jnp.float32)
  else:
    steps_now = decayed_step_count(step, half_life)
  return jnp.asarray(num_steps, jnp.float32) * counts_now / steps_now


def step_sizes(
    counts: jax.Array,
    learning_rate: Any,
    max_learning_rate: Any,
) -> jax.Array:
  """η = min(η_max, α/sqrt(c)) where c > 0, and 0 where c = 0 (float32)."""
  counts = jnp.asarray(counts, jnp.float32)
  seen = counts > 0
  eta = jnp.asarray(learning_rate, jnp.float32) * lax.rsqrt(
      jnp.where(seen, counts, 1.0))
  if max_learning_rate is not None:
    eta = jnp.minimum(eta, jnp.asarray(max_learning_rate, jnp.float32))
  return jnp.where(seen, eta, 0.0)


def scale_rows(grad: jax.Array, row_scale: jax.Array) -> jax.Array:
  """``grad`` with row k multiplied by ``row_scale[k]``, in grad's dtype."""
  row_scale = row_scale.reshape(row_scale.shape + (1,) * (grad.ndim - row_scale.ndim))
  if grad.dtype == jnp.float32:
    return grad * row_scale
  # At least float32: bfloat16 gradients are scaled in float32, float64 ones
  # (64-bit mode) keep their precision.
  compute = jnp.promote_types(grad.dtype, jnp.float32)
  return (grad.astype(compute) * row_scale.astype(compute)).astype(grad.dtype)


def scale_counted_rows(grad: jax.Array, eta: jax.Array) -> jax.Array:
  """`scale_rows` by step sizes η, with the rows of η = 0 exactly zero.

  The dense path's rows that are not updated (never counted, p_k = 0, or
  α = 0) stay as they are whatever their gradient holds: 0 · NaN is NaN.
  The gradient is selected before it is scaled, so the scaling and the
  parameters' update compile as they did without the select (selecting the
  product instead changed XLA's CPU arithmetic, and MovieLens DeepFM's
  20-epoch test AUC moved from 0.7841 to 0.7847 in one run each).
  """
  keep = (eta > 0).reshape(eta.shape + (1,) * (grad.ndim - eta.ndim))
  return scale_rows(jnp.where(keep, grad, jnp.zeros((), grad.dtype)), eta)


def learning_rate_at(learning_rate: Any, count: jax.Array) -> Any:
  """α_t: a schedule is called with the number of earlier updates."""
  if not callable(learning_rate):
    return learning_rate
  alpha = learning_rate(count)
  if jnp.ndim(alpha) != 0:
    # One α per step: a vector would scale rows elementwise, or broadcast a
    # scalar leaf's update into its shape.
    raise ValueError(
        'The learning_rate schedule must return a scalar; it returned shape '
        f'{jnp.shape(alpha)}.')
  return alpha


# ---------------------------------------------------------------------------
# Shardings: per-row state lives on the same mesh axis as the table's rows.


def row_sharding(leaf: Any) -> Optional[jax.sharding.NamedSharding]:
  """The mesh sharding for `leaf`'s per-row state; None if not on a mesh.

  Arrays on a single device get None: placing state there explicitly would
  commit it to that device, which `pmap` and multi-device `jit` then reject.
  """
  if checks.is_traced(leaf):
    return None
  try:
    sharding = getattr(leaf, 'sharding', None)
  except Exception:  # pylint: disable=broad-except
    return None
  if not isinstance(sharding, jax.sharding.NamedSharding):
    return None
  row_spec = tuple(sharding.spec)[:1] if leaf.ndim >= 1 else ()
  return jax.sharding.NamedSharding(
      sharding.mesh, jax.sharding.PartitionSpec(*row_spec))


def replicated_like(tree: Any) -> Optional[jax.sharding.NamedSharding]:
  """Replicated sharding on the mesh of the first mesh-sharded leaf, if any."""
  for leaf in jax.tree.leaves(tree):
    sharding = row_sharding(leaf)
    if sharding is not None:
      return jax.sharding.NamedSharding(sharding.mesh,
                                        jax.sharding.PartitionSpec())
  return None


def step_counter(params: Any) -> jax.Array:
  """A zero int32 step count, replicated on the parameters' mesh if any."""
  count = jnp.zeros([], jnp.int32)
  sharding = replicated_like(params)
  return count if sharding is None else jax.device_put(count, sharding)


def replicate_scalars(state: Any, params: Any) -> Any:
  """`state` with its scalar arrays (Optax's step counts) placed as
  `step_counter` places ours: replicated on the parameters' mesh, if any.

  Optax's own `init` leaves a count on one device; a jitted update returns it
  replicated on the mesh, and the second call, seeing another sharding,
  compiles again.
  """
  sharding = replicated_like(params)
  if sharding is None:
    return state
  return jax.tree.map(
      lambda x: (jax.device_put(x, sharding)
                 if isinstance(x, jax.Array) and x.ndim == 0
                 and not checks.is_traced(x) else x), state)


def zeros_for_rows(leaf: Any, dtype: Any) -> jax.Array:
  """Per-row zeros for `leaf`, sharded like its rows when it is sharded.

  Eagerly, the leaf's sharding says where its rows are. Under `jit` the leaf
  is a tracer: on a mesh with Explicit axes its type still carries the
  sharding, and the zeros are resharded to the rows' axis; on an Auto mesh it
  does not, and the compiler places the zeros (as it places Optax's own
  states). Making the zeros depend on the leaf's values would let the
  compiler follow the rows, but where the table is created in the same
  program that dependency cost several tables' worth of temporaries (the
  Criteo example's initialisation; its `InitialisationMemoryTest` guards
  this), so it is not done: use `init` outside `jit`,
  Flax partition metadata (see `per_row_state`), Explicit axes, or
  `out_shardings`.
  """
  zeros = jnp.zeros(row_shape(leaf), dtype)
  if checks.is_traced(leaf):
    spec = _explicit_row_spec(leaf)
    if spec is not None:
      zeros = jax.sharding.reshard(zeros, spec)
    return zeros
  sharding = row_sharding(leaf)
  if sharding is not None:
    zeros = jax.device_put(zeros, sharding)
  return zeros


def explicit_sharding(values: Any) -> Optional[jax.sharding.NamedSharding]:
  """`values`' sharding when its type carries one (an Explicit mesh axis).

  On a mesh with Explicit axes the sharding is part of an array's type, also
  under `jit`, and ops on sharded arrays must spell out their results'; on
  Auto meshes, under `pmap` and without a mesh, this returns None.
  """
  typeof = getattr(jax, 'typeof', None)
  if typeof is None:
    return None
  sharding = getattr(typeof(values), 'sharding', None)
  spec = getattr(sharding, 'spec', None)
  if spec is None or all(axis is None for axis in spec):
    return None
  return sharding


def replicated(values: jax.Array) -> jax.Array:
  """`values` replicated when its type says it is sharded (Explicit axes).

  The target is a `NamedSharding` on `values`' own mesh, so this works with
  or without a `jax.set_mesh` context.
  """
  if explicit_sharding(values) is None:
    return values
  return _placed(values, values, jax.sharding.PartitionSpec())


def _explicit_row_spec(leaf: jax.Array) -> Optional[jax.sharding.PartitionSpec]:
  """The rows' mesh axes from a traced leaf's type (Explicit axes only)."""
  sharding = explicit_sharding(leaf) if leaf.ndim else None
  if sharding is None or tuple(sharding.spec)[0] is None:
    return None
  return jax.sharding.PartitionSpec(tuple(sharding.spec)[0])


# Metadata under which wrappers of parameters (Flax's `nnx.Variable`) name a
# parameter's mesh axes, one entry per dimension.
_AXES_METADATA = ('out_sharding', 'sharding', 'sharding_names',
                  'optimizer_sharding')


def _is_wrapped(x: Any) -> bool:
  """Whether `x` wraps a parameter with metadata, as `nnx.Variable` does."""
  return all(hasattr(x, name) for name in ('get_metadata', 'get_value',
                                           'replace'))


def _row_axes(axes: Any) -> Any:
  """A parameter's mesh axes cut to its rows' axis (the first)."""
  if isinstance(axes, jax.sharding.NamedSharding):
    return jax.sharding.NamedSharding(
        axes.mesh, jax.sharding.PartitionSpec(*tuple(axes.spec)[:1]))
  if isinstance(axes, jax.sharding.PartitionSpec):
    return jax.sharding.PartitionSpec(*tuple(axes)[:1])
  if isinstance(axes, (tuple, list)):
    return tuple(axes)[:1]
  return axes


def per_row_state(params: Any, dtype: Any, fill: Any = 0) -> Any:
  """Per-row state for every leaf of `params`: `fill`, ``row_shape(leaf)``.

  Sharded like each leaf's rows (`zeros_for_rows`). A leaf that comes wrapped
  with metadata (Flax's `nnx.Optimizer` passes `nnx.Variable`s to `init`)
  keeps its wrapper, with the parameter's mesh axes cut to the rows' axis: a
  (N, d) table's ('rows', None) becomes ('rows',) for its (N,) counts, where
  Flax would otherwise apply a rank-2 sharding to a rank-1 array.
  """
  def state_of(leaf):
    state = zeros_for_rows(leaf, dtype)
    # `fill` is traced under `optax.inject_hyperparams` in `jit`/`eval_shape`.
    if not checks.is_traced(fill) and np.all(np.asarray(fill) == 0):
      return state
    return state + jnp.asarray(fill, dtype)

  def per_leaf(x):
    if not _is_wrapped(x):
      return state_of(x)
    if not jax.tree.leaves(x.get_value()):
      # A wrapper around no array: a leaf that `optax.masked` or
      # `optax.partition` masked out (`optax.MaskedNode`) keeps no state.
      return x
    row_metadata = {name: _row_axes(axes)
                    for name, axes in x.get_metadata().items()
                    if name in _AXES_METADATA and axes is not None}
    return x.replace(value=state_of(x.get_value()), **row_metadata)

  return jax.tree.map(per_leaf, params, is_leaf=_is_wrapped)


def keep_sharding(new: jax.Array, old: jax.Array) -> jax.Array:
  """`new` placed like `old` when both are concrete and placements differ.

  Under `jit`, propagation from `old` decides; eagerly, an op mixing a sharded
  state with unsharded increments may place its result elsewhere.
  """
  if checks.is_traced(new) or checks.is_traced(old):
    return new
  old_sharding = getattr(old, 'sharding', None)
  if (not isinstance(old_sharding, jax.sharding.NamedSharding)
      or new.sharding == old_sharding):
    return new
  return jax.device_put(new, old_sharding)
