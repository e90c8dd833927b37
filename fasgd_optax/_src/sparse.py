"""The sparse path (DESIGN.md §6): update only the rows a batch touched.

Autodiff through ``table[ids]`` builds a dense N×d gradient, and a dense Optax
update reads and writes all N×d values every step. Here the gradient is taken
with respect to the gathered rows, ``row_grads = d loss / d table[ids]``, and
only the touched rows of the table and of the per-row state are read and
written, so a step costs O(batch), not O(N). The arithmetic is the dense
transformations' (`fasgd_optax._src.counting`), and so is the state layout, so
a user can switch between the dense and the sparse path mid-training.
"""

from typing import Any, Callable, NamedTuple, Optional

import jax
from jax import lax
import jax.numpy as jnp
import optax

from fasgd_optax._src import checks
from fasgd_optax._src import counting
from fasgd_optax._src import rowwise_adagrad as rowwise_adagrad_lib
from fasgd_optax._src import transform

ScalarOrSchedule = transform.ScalarOrSchedule

# Names the table in error messages (a sparse transformation has one table).
_TABLE = 'table'


class SparseTransformation(NamedTuple):
  """An optimizer for one embedding table that updates only touched rows.

  Attributes:
    init: ``init(table) -> state``; `table` may be a `jax.ShapeDtypeStruct`.
    apply: ``apply(table, state, ids, row_grads) -> (table, state)``, where
      ``ids`` is an integer array of any shape and ``row_grads`` has shape
      ``ids.shape + table.shape[1:]`` (the gradient with respect to
      ``table[ids]``). Duplicate ids have their gradients summed and count with
      multiplicity. Called outside `jit`, ``table`` and ``state`` are donated:
      their buffers are reused for the results and must not be used again.
  """
  init: Callable[[Any], Any]
  apply: Callable[[Any, Any, Any, Any], tuple[Any, Any]]


class TouchedRows(NamedTuple):
  """A batch's distinct rows and, for each occurrence, its row's slot.

  ``rows`` and ``multiplicities`` have the flattened batch's length B; the
  ``B - U`` slots past the U distinct rows (and the slot collecting
  out-of-range ids) hold the out-of-bounds row ``num_rows``, which gathers
  read as 0 and scatters drop.
  """
  rows: jax.Array  # shape=(B,), int32, ascending: the distinct rows.
  multiplicities: jax.Array  # shape=(B,), int32; occurrences of each row.
  ids: jax.Array  # shape=(B,), int32; each occurrence's row (or num_rows).
  slots: jax.Array  # shape=(B,), int32; each occurrence's index into rows.
  grads: jax.Array  # shape=(B,) + row shape, float32; each occurrence's.


def gather_replicas(x: jax.Array, axis_name: Any) -> jax.Array:
  """Concatenates every replica's `x` along axis 0, the same on all replicas.

  `shard_map` must know the result is replica-invariant for a replicated
  table to come out replicated: `all_gather` does not say so, and
  `all_gather_invariant` is not public in every JAX, so without it each
  replica writes its block into zeros and a `psum` combines them.
  """
  all_gather_invariant = getattr(lax, 'all_gather_invariant', None)
  if all_gather_invariant is not None:
    return all_gather_invariant(x, axis_name, tiled=True)
  num_replicas = lax.psum(1, axis_name)
  blocks = jnp.zeros((num_replicas,) + x.shape, x.dtype)
  blocks = lax.dynamic_update_index_in_dim(
      blocks, x, lax.axis_index(axis_name), axis=0)
  blocks = lax.psum(blocks, axis_name)
  return blocks.reshape((num_replicas * x.shape[0],) + x.shape[1:])


def flat_batch(
    ids: jax.Array,
    row_grads: jax.Array,
    num_rows: int,
    axis_name: Optional[str] = None,
) -> tuple[jax.Array, jax.Array]:
  """The batch as (B,) int32 ids and (B,) + row shape float32 gradients.

  Args:
    ids: integer ids, any shape.
    row_grads: shape ``ids.shape + row_shape``.
    num_rows: the table's rows; ids outside [0, num_rows) become ``num_rows``,
      which gathers read as 0 and scatters drop (JAX would otherwise wrap
      negative indices and clamp large ones into real rows).
    axis_name: a mapped axis; if set, ids and gradients of all replicas are
      gathered, and the gradients averaged over the replicas (as ``pmean`` of
      dense gradients would be), so every replica computes the same update.

  Returns:
    ``(ids, grads)``, flattened.
  """
  row_shape = row_grads.shape[ids.ndim:]
  flat_ids = jnp.ravel(ids)
  flat_grads = row_grads.reshape((flat_ids.size,) + row_shape).astype(
      jnp.float32)
  if axis_name is not None:
    flat_ids = gather_replicas(flat_ids, axis_name)
    flat_grads = gather_replicas(flat_grads, axis_name)
    flat_grads = flat_grads / lax.psum(1, axis_name)
  valid = (flat_ids >= 0) & (flat_ids < num_rows)
  return jnp.where(valid, flat_ids, num_rows).astype(jnp.int32), flat_grads


def touched_rows(keys: jax.Array, grads: jax.Array,
                 num_rows: int) -> TouchedRows:
  """Finds the distinct rows of a batch: a sort of the ids, O(B log B).

  Args:
    keys: (B,) ids from `flat_batch`, out-of-range ones set to `num_rows`.
    grads: (B,) + row shape, each occurrence's gradient.
    num_rows: the table's rows.

  Returns:
    `TouchedRows`.
  """
  size = keys.shape[0]
  # Sorting the keys alone is several times faster on CPU than sorting
  # (key, position) pairs; each id then finds its row's slot by binary search.
  sorted_keys = lax.sort(keys)
  starts = jnp.ones((size,), jnp.bool_).at[1:].set(
      sorted_keys[1:] != sorted_keys[:-1])
  slots_of_sorted = jnp.cumsum(starts.astype(jnp.int32)) - 1
  rows = jnp.full((size,), num_rows, jnp.int32).at[slots_of_sorted].set(
      sorted_keys, indices_are_sorted=True)
  slots = slots_of_sorted[jnp.searchsorted(sorted_keys, keys, side='left')]
  multiplicities = jax.ops.segment_sum(
      jnp.ones((size,), jnp.int32), slots, num_segments=size)
  return TouchedRows(rows, multiplicities, keys, slots, grads)


def summed_grads(touched: TouchedRows) -> jax.Array:
  """Each distinct row's gradient: its occurrences' gradients summed."""
  return jax.ops.segment_sum(touched.grads, touched.slots,
                             num_segments=touched.slots.shape[0])


def _explicit_sharding(values: jax.Array):
  """`values`' sharding when its type carries one (an Explicit mesh axis).

  On a mesh with Explicit axes, a gather from or a scatter into a sharded
  array needs its result's sharding spelled out; on Auto meshes, under `pmap`
  and without a mesh the compiler chooses and this returns None.
  """
  typeof = getattr(jax, 'typeof', None)
  if typeof is None:
    return None
  sharding = getattr(typeof(values), 'sharding', None)
  spec = getattr(sharding, 'spec', None)
  if spec is None or all(axis is None for axis in spec):
    return None
  return sharding


def gather_rows(values: jax.Array, rows: jax.Array) -> jax.Array:
  """``values[rows]``, with 0 for out-of-range rows, replicated on a mesh."""
  kwargs = {}
  sharding = _explicit_sharding(values)
  if sharding is not None:
    kwargs['out_sharding'] = jax.sharding.NamedSharding(
        sharding.mesh, jax.sharding.PartitionSpec())
  return values.at[rows].get(mode='fill', fill_value=0, **kwargs)


def _scatter_kwargs(values: jax.Array) -> dict[str, Any]:
  sharding = _explicit_sharding(values)
  return {} if sharding is None else {'out_sharding': sharding}


def set_rows(values: jax.Array, rows: jax.Array, new: jax.Array) -> jax.Array:
  """``values`` with ``values[rows] = new``, dropping out-of-range rows."""
  return values.at[rows].set(new.astype(values.dtype), mode='drop',
                             indices_are_sorted=True,
                             **_scatter_kwargs(values))


def add_to_rows(table: jax.Array, rows: jax.Array, delta: jax.Array, *,
                indices_are_sorted: bool = True) -> jax.Array:
  """``table`` with ``delta`` added to ``table[rows]``, in the table's dtype."""
  return table.at[rows].add(delta.astype(table.dtype), mode='drop',
                            indices_are_sorted=indices_are_sorted,
                            **_scatter_kwargs(table))


def add_scaled_occurrences(table: jax.Array, ids: jax.Array,
                           grads: jax.Array, scale: jax.Array) -> jax.Array:
  """``table`` minus ``scale[i] · grads[i]`` at row ``ids[i]``, per occurrence.

  With a per-row scale (every occurrence of a row gets the same), this equals
  adding each row's scaled summed gradient, without summing the B×d gradients
  or finding the distinct rows first: the costliest parts of a step on CPU.
  """
  return add_to_rows(table, ids, -counting.scale_rows(grads, scale),
                     indices_are_sorted=False)


def scatter_rows(values: jax.Array, ids: jax.Array, new: jax.Array, *,
                 add: bool = False) -> jax.Array:
  """``values[ids] = new`` (or ``+= new``) for unsorted, repeated `ids`.

  Out-of-range ids (``num_rows``) are dropped. Repeated ids of a set must
  carry equal values, so the write order does not matter.
  """
  at = values.at[ids]
  update = at.add if add else at.set
  return update(new.astype(values.dtype), mode='drop',
                **_scatter_kwargs(values))


def _check_table(table: Any) -> None:
  if getattr(table, 'ndim', 0) < 1:
    raise ValueError(
        'A sparse transformation needs a table with at least one dimension '
        f'(rows first); got shape {getattr(table, "shape", None)}.')


def _checked_arguments(table, ids, row_grads, checkify_ids: bool):
  """Validates `apply`'s arguments; returns `ids` as an integer array."""
  _check_table(table)
  ids = checks.check_ids_dtype(ids, _TABLE)
  row_grads = jnp.asarray(row_grads)
  expected = tuple(ids.shape) + tuple(table.shape[1:])
  if tuple(row_grads.shape) != expected:
    raise ValueError(
        f'row_grads must have shape ids.shape + table.shape[1:] = {expected} '
        f'(ids shape {tuple(ids.shape)}, table shape {tuple(table.shape)}); '
        f'got {tuple(row_grads.shape)}.')
  # Concrete ids raise a ValueError naming the bad value; traced ones get a
  # checkify check if asked for. Either way `flat_batch` sends them out of
  # bounds.
  checks.check_ids_in_range(ids, table.shape[0], _TABLE,
                            checkify_traced=checkify_ids)
  return ids, row_grads


def _make_apply(apply_rows: Callable[..., tuple[Any, Any]],
                axis_name: Optional[str] = None,
                constants: tuple[Any, ...] = (),
                checkify_ids: bool = False):
  """Builds ``apply(table, state, ids, row_grads)`` around `apply_rows`.

  Args:
    apply_rows: ``apply_rows(table, state, ids, grads, *constants) -> (table,
      state)`` for the flattened batch of `flat_batch`.
    axis_name: passed to `flat_batch`.
    constants: arrays `apply_rows` needs (e.g. per-row frequencies), passed
      as arguments so the jitted step does not embed them as constants.
    checkify_ids: add a checkify check for traced ids (see `sparse_cf_sgd`).

  Returns:
    The ``apply`` function. Its core is jitted with the table and the state
    donated; under an outer `jit` it is inlined and the outer function's
    donation decides.
  """

  def apply_impl(table, state, ids, row_grads, *constants):
    keys, grads = flat_batch(ids, row_grads, table.shape[0], axis_name)
    return apply_rows(table, state, keys, grads, *constants)

  jitted = jax.jit(apply_impl, donate_argnums=(0, 1), inline=True)

  def apply(table, state, ids, row_grads):
    ids, row_grads = _checked_arguments(table, ids, row_grads, checkify_ids)
    return jitted(table, state, ids, row_grads, *constants)

  return apply


def sparse_cf_sgd(
    learning_rate: ScalarOrSchedule,
    *,
    num_steps: Optional[int],
    max_learning_rate: Optional[float] = None,
    axis_name: Optional[str] = None,
    count_half_life: Optional[float] = None,
    checkify_ids: bool = False,
) -> SparseTransformation:
  r"""CF-SGD on one embedding table, touching only the batch's rows.

  Computes what `cf_sgd` computes for a table whose gradient is that of a loss
  of ``table[ids]`` (DESIGN.md §2-3): row k moves by
  :math:`-\min(\eta_{max}, \alpha_t/\sqrt{c_k^t})\, g_k` with
  :math:`c_k^t = T n_k^t / t`, where :math:`g_k` sums the gradients of all of
  k's occurrences and :math:`n_k^t` counts them with multiplicity. Rows not in
  ``ids`` are neither read nor written; with ``count_half_life``, their stored
  counts decay lazily, as in the dense transformation.

  The state is ``cf_sgd(...).init(table)[0]``, a `ScaleByCountedFrequencyState`
  with ``row_counts`` of shape (N,), so dense and sparse states are
  interchangeable. A row-sharded table gets row-sharded counts.

  Args:
    learning_rate: α, a positive float or an Optax schedule.
    num_steps: the horizon T; None for the no-horizon variant c = n.
    max_learning_rate: η_max; None for no cap.
    axis_name: under `pmap`/`shard_map` data parallelism, the mapped axis.
      Each replica passes its own ids and row gradients; all are gathered,
      counts add up over replicas and gradients are averaged (as a ``pmean`` of
      dense gradients), so every replica applies the same update to its copy
      of the table: that of one device running the concatenated batch with a
      loss averaged over it.
    count_half_life: decay counts with this half-life in steps.
    checkify_ids: under an outer `jit`, also add a `checkify.debug_check`
      reporting out-of-range ids when the step is wrapped in
      `jax.experimental.checkify.checkify`. Off by default: a jitted step
      holding a check loses JAX's fast dispatch path (0.1-0.3 ms a step in
      this project's CPU benchmark).
      Bad ids are dropped either way, and raise a ValueError when `apply` is
      called outside `jit`.

  Returns:
    A `SparseTransformation`. ``apply`` donates the table and the state.

  Example:
    >>> import jax, jax.numpy as jnp, fasgd_optax
    >>> table = jnp.zeros((1000, 4))
    >>> sparse = fasgd_optax.sparse_cf_sgd(1.0, num_steps=100)
    >>> state = sparse.init(table)
    >>> ids = jnp.array([3, 7, 3])
    >>> def loss(rows):
    ...   return jnp.sum((rows.sum(-1) - 1.0) ** 2)
    >>> rows = table[ids]
    >>> table, state = sparse.apply(table, state, ids, jax.grad(loss)(rows))
    >>> state.row_counts[jnp.array([3, 7])].tolist()
    [2, 1]
  """
  dense = transform.scale_by_counted_frequency(
      learning_rate, num_steps=num_steps, max_learning_rate=max_learning_rate,
      axis_name=axis_name, count_half_life=count_half_life)

  def init(table):
    _check_table(table)
    return dense.init(table)

  def apply_rows(table, state, ids, grads):
    # Each occurrence is added to its row's count and its scaled gradient to
    # its row: O(B) gathers and scatters, no sort to find distinct rows.
    step = optax.safe_increment(state.count)
    alpha = counting.learning_rate_at(learning_rate, state.count)
    occurrences = jnp.ones(ids.shape, state.row_counts.dtype)
    # Every scatter into a state array below either comes before any gather
    # from it or writes values computed from that gather: otherwise XLA may
    # order them either way and copies the whole array to be safe (O(N)).
    if count_half_life is None:
      row_counts = scatter_rows(state.row_counts, ids, occurrences, add=True)
      counts_now = gather_rows(row_counts, ids)
      # Counts are never negative, so a negative one was pushed past 2^31 - 1
      # and wrapped around: pin it at the maximum.
      wrapped = counts_now < 0
      counts_now = jnp.where(wrapped, counting.INT32_MAX, counts_now)
      row_counts = scatter_rows(
          row_counts, jnp.where(wrapped, ids, table.shape[0]), counts_now)
      row_last_step = None
    else:
      # Decay each touched row's stored count to this step, then add.
      last_seen = gather_rows(state.row_last_step, ids)
      decayed = (gather_rows(state.row_counts, ids)
                 * counting.decay_factor(step - last_seen, count_half_life))
      row_counts = scatter_rows(state.row_counts, ids, decayed)
      row_counts = scatter_rows(row_counts, ids, occurrences, add=True)
      # max(last_seen, step) is `step`, written from the gathered value.
      row_last_step = scatter_rows(state.row_last_step, ids,
                                   jnp.maximum(last_seen, step))
      counts_now = gather_rows(row_counts, ids)
    eta = counting.step_sizes(
        counting.effective_counts(counts_now.astype(jnp.float32), step,
                                  num_steps, count_half_life),
        alpha, max_learning_rate)
    table = add_scaled_occurrences(table, ids, grads, eta)
    return table, transform.ScaleByCountedFrequencyState(
        count=step, row_counts=row_counts, row_last_step=row_last_step)

  return SparseTransformation(
      init, _make_apply(apply_rows, axis_name, checkify_ids=checkify_ids))


def sparse_fa_sgd(
    learning_rate: ScalarOrSchedule,
    frequencies: Any,
    *,
    num_steps: int,
    max_learning_rate: Optional[float] = None,
    axis_name: Optional[str] = None,
    checkify_ids: bool = False,
) -> SparseTransformation:
  r"""FA-SGD on one embedding table, touching only the batch's rows.

  Row k moves by :math:`-\min(\eta_{max}, \alpha_t/\sqrt{T p_k})\, g_k`, as in
  `fa_sgd`, with duplicates' gradients summed; rows with p = 0 do not move.

  Args:
    learning_rate: α, a positive float or an Optax schedule.
    frequencies: the table's per-row expected occurrences per step, shape (N,)
      (see `frequencies_from_counts`).
    num_steps: the horizon T (required).
    max_learning_rate: η_max; None for no cap.
    axis_name: under `pmap`/`shard_map`, the mapped axis over which ids and
      row gradients are gathered (gradients averaged), as in `sparse_cf_sgd`.
    checkify_ids: add a checkify check for out-of-range ids under `jit`, as
      in `sparse_cf_sgd`.

  Returns:
    A `SparseTransformation` whose state is ``fa_sgd(...).init(table)[0]``.
  """
  dense = transform.scale_by_known_frequency(
      learning_rate, frequencies, num_steps=num_steps,
      max_learning_rate=max_learning_rate)
  frequencies = transform._frequency_array('', frequencies)  # pylint: disable=protected-access
  if frequencies.ndim != 1:
    raise ValueError(
        'frequencies for a sparse table must be one value per row, shape (N,); '
        f'got shape {tuple(frequencies.shape)}.')

  def check_rows(table):
    _check_table(table)
    if table.shape[0] != frequencies.shape[0]:
      raise ValueError(
          f'frequencies has {frequencies.shape[0]} entries but the table has '
          f'{table.shape[0]} rows (shape {tuple(table.shape)}); pass one '
          'frequency per row.')

  def init(table):
    check_rows(table)
    return dense.init(table)

  def apply_rows(table, state, ids, grads, row_frequencies):
    # Step sizes come from fixed frequencies: no need to find distinct rows.
    alpha = counting.learning_rate_at(learning_rate, state.count)
    eta = counting.step_sizes(
        jnp.asarray(num_steps, jnp.float32) * gather_rows(row_frequencies, ids),
        alpha, max_learning_rate)
    table = add_scaled_occurrences(table, ids, grads, eta)
    return table, transform.ScaleByKnownFrequencyState(
        count=optax.safe_increment(state.count))

  apply_checked = _make_apply(apply_rows, axis_name, (frequencies,),
                              checkify_ids)

  def apply(table, state, ids, row_grads):
    check_rows(table)
    return apply_checked(table, state, ids, row_grads)

  return SparseTransformation(init, apply)


def sparse_rowwise_adagrad(
    learning_rate: ScalarOrSchedule,
    *,
    epsilon: float = 1e-8,
    initial_accumulator_value: float = 0.0,
    axis_name: Optional[str] = None,
    checkify_ids: bool = False,
) -> SparseTransformation:
  r"""Row-wise Adagrad on one embedding table, touching only the batch's rows.

  For each distinct row k of the batch, with :math:`g_k` the sum of its
  occurrences' gradients: :math:`a_k \mathrel{+}= \mathrm{mean}_j(g_{kj}^2)`,
  then row k moves by :math:`-\alpha_t g_k / (\sqrt{a_k} + \epsilon)`
  (FBGEMM's ``EXACT_ROWWISE_ADAGRAD``). Same result as `rowwise_adagrad` on the
  dense gradient, where untouched rows have zero gradients.

  Args:
    learning_rate: α, a float or an Optax schedule.
    epsilon: ε, added to sqrt(a_k).
    initial_accumulator_value: a_k before the first update (≥ 0).
    axis_name: under `pmap`/`shard_map`, the mapped axis over which ids and
      row gradients are gathered (gradients averaged), as in `sparse_cf_sgd`.
    checkify_ids: add a checkify check for out-of-range ids under `jit`, as
      in `sparse_cf_sgd`.

  Returns:
    A `SparseTransformation` whose state is ``rowwise_adagrad(...).init(table)``:
    ``(ScaleByRowwiseAdagradState, <scale_by_learning_rate state>)``, the
    latter holding the step count when `learning_rate` is a schedule.
  """
  dense = rowwise_adagrad_lib.rowwise_adagrad(
      learning_rate, epsilon=epsilon,
      initial_accumulator_value=initial_accumulator_value)

  def init(table):
    _check_table(table)
    return dense.init(table)

  def apply_rows(table, state, ids, grads):
    touched = touched_rows(ids, grads, table.shape[0])
    adagrad_state, schedule_state = state
    if callable(learning_rate):
      alpha = learning_rate(schedule_state.count)
      schedule_state = optax.ScaleByScheduleState(
          count=optax.safe_increment(schedule_state.count))
    else:
      alpha = learning_rate
    grads = summed_grads(touched)
    accumulators = (gather_rows(adagrad_state.accumulators, touched.rows)
                    + rowwise_adagrad_lib.row_mean_squares(grads))
    scale = (jnp.asarray(alpha, jnp.float32)
             * rowwise_adagrad_lib.rowwise_scale(accumulators, epsilon))
    table = add_to_rows(table, touched.rows,
                        -counting.scale_rows(grads, scale))
    new_adagrad_state = rowwise_adagrad_lib.ScaleByRowwiseAdagradState(
        accumulators=set_rows(adagrad_state.accumulators, touched.rows,
                              accumulators))
    return table, (new_adagrad_state, schedule_state)

  return SparseTransformation(
      init, _make_apply(apply_rows, axis_name, checkify_ids=checkify_ids))
