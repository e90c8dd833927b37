"""The sparse path (DESIGN.md §6): update only the rows a batch touched.

Autodiff through ``table[ids]`` builds a dense N×d gradient, and a dense Optax
update reads and writes all N×d values every step. Here the gradient is taken
with respect to the gathered rows, ``row_grads = d loss / d table[ids]``, and
only the touched rows of the table and of the per-row state are read and
written, so a step costs O(batch), not O(N). The arithmetic is the dense
transformations' (`fasgd_optax._src.counting`), and so is the state layout, so
a user can switch between the dense and the sparse path mid-training.

Each rule is written per distinct row, whose occurrences the designs of
`fasgd_optax._src.rows` sum (``'scatter'``, the CPU's; ``'reduce'``, the
accelerators'), and, where it allows, per occurrence (``'occurrences'``,
inexact for small steps); the ``duplicates`` argument picks, and
`sparse_apply` builds ``apply`` from them.
"""

from typing import Any, Optional

import jax.numpy as jnp
import optax

from fasgd_optax._src import checks
from fasgd_optax._src import counting
from fasgd_optax._src import rows as rows_lib
from fasgd_optax._src import rowwise_adagrad as rowwise_adagrad_lib
from fasgd_optax._src import sparse_apply
from fasgd_optax._src import transform

ScalarOrSchedule = transform.ScalarOrSchedule
SparseTransformation = sparse_apply.SparseTransformation


def sparse_sgd(
    learning_rate: ScalarOrSchedule,
    *,
    axis_name: Optional[str] = None,
    checkify_ids: bool = False,
    duplicates: str = 'auto',
) -> SparseTransformation:
  r"""Plain SGD on one embedding table, touching only the batch's rows.

  Row k moves by :math:`-\alpha_t g_k`, where :math:`g_k` sums the gradients
  of all of k's occurrences: what `optax.sgd` does with the dense gradient
  (rows not in ``ids`` have zero gradients there and do not move).

  Args:
    learning_rate: α, a float or an Optax schedule (called with the number
      of earlier updates).
    axis_name: under `pmap`/`shard_map` data parallelism, the mapped axis
      over which ids and row gradients are gathered (gradients averaged), as
      in `sparse_cf_sgd`.
    checkify_ids: add a checkify check for out-of-range ids under `jit`, as
      in `sparse_cf_sgd`.
    duplicates: how repeated ids are combined, as in `sparse_cf_sgd`.

  Returns:
    A `SparseTransformation` whose state is ``optax.sgd(learning_rate)
    .init(table)``, so dense and sparse states are interchangeable.
  """
  checks.check_positive('learning_rate', learning_rate)
  dense = optax.sgd(learning_rate)

  def init(table):
    sparse_apply.check_table(table)
    return counting.replicate_scalars(dense.init(table), table)

  def step_size(state):
    trace_state, schedule_state = state
    if not callable(learning_rate):
      return learning_rate, state
    return learning_rate(schedule_state.count), (
        trace_state, optax.ScaleByScheduleState(
            count=optax.safe_increment(schedule_state.count)))

  def each_occurrence(table, state, ids, grads):
    alpha, state = step_size(state)
    table = rows_lib.add_scaled_occurrences(
        table, ids, grads, sparse_apply.per_slot(alpha, ids.shape[0]))
    return table, state

  def each_row(table, state, batch):
    alpha, state = step_size(state)
    table = rows_lib.subtract_scaled_rows(
        table, batch, sparse_apply.per_slot(alpha, batch.rows.shape[0]))
    return table, state

  return SparseTransformation(init, sparse_apply.make_apply(
      each_row, init=init, each_occurrence=each_occurrence,
      duplicates=duplicates, axis_name=axis_name, checkify_ids=checkify_ids))


def sparse_cf_sgd(
    learning_rate: ScalarOrSchedule,
    *,
    num_steps: Optional[int],
    max_learning_rate: Optional[float] = None,
    axis_name: Optional[str] = None,
    count_half_life: Optional[float] = None,
    checkify_ids: bool = False,
    duplicates: str = 'auto',
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
    duplicates: how repeated ids are combined (`fasgd_optax._src.rows`):
      ``'auto'`` (the default) picks per backend when the step is compiled;
      ``'scatter'``, the CPU's design, sums each row's occurrences by
      scatter-adds into a batch-sized buffer, with no sort, and writes each
      distinct row once; ``'reduce'``, the accelerators', sums them without
      scatter-adds, so a hot row's hundreds of occurrences do not serialize
      in atomic adds. Both give the same result up to float rounding.
      ``'occurrences'`` adds each occurrence's scaled gradient straight into
      the table (word2vec.c's and Hogwild's way): about half the update's
      cost on CPU, but each add rounds against the row's value, so a hot
      row's many small steps move it by the wrong amount (tested: 4096 steps
      of 2.4e-9 on a row of 0.5 move it more than 10% off, the other designs
      within one float32 spacing); bfloat16 and float16 tables are summed
      there too.
      Sums and step sizes are float32: a float64 table (64-bit mode) gets
      updates of float32 precision, where the dense path keeps float64.

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
    sparse_apply.check_table(table)
    return dense.init(table)

  def step_sizes(counts_now, step, alpha):
    return counting.step_sizes(
        counting.effective_counts(counts_now.astype(jnp.float32), step,
                                  num_steps, count_half_life),
        alpha, max_learning_rate)

  def each_occurrence(table, state, ids, grads):
    # Each occurrence is added to its row's count and its scaled gradient to
    # its row: O(B) gathers and scatters, no sort to find distinct rows.
    step = optax.safe_increment(state.count)
    alpha = counting.learning_rate_at(learning_rate, state.count)
    occurrences = jnp.ones(ids.shape, state.row_counts.dtype)
    # Every scatter into a state array below either comes before any gather
    # from it or writes values computed from that gather: otherwise XLA may
    # order them either way and copies the whole array to be safe (O(N)).
    if count_half_life is None:
      row_counts = rows_lib.scatter_rows(state.row_counts, ids, occurrences,
                                         add=True)
      counts_now = rows_lib.gather_rows(row_counts, ids)
      # Counts are never negative, so a negative one was pushed past 2^31 - 1
      # and wrapped around: pin it at the maximum.
      wrapped = counts_now < 0
      counts_now = jnp.where(wrapped, counting.INT32_MAX, counts_now)
      row_counts = rows_lib.scatter_rows(
          row_counts, jnp.where(wrapped, ids, table.shape[0]), counts_now)
      row_last_step = None
    else:
      # Decay each touched row's stored count to this step, then add.
      last_seen = rows_lib.gather_rows(state.row_last_step, ids)
      decayed = (rows_lib.gather_rows(state.row_counts, ids)
                 * counting.decay_factor(step - last_seen, count_half_life))
      row_counts = rows_lib.scatter_rows(state.row_counts, ids, decayed)
      row_counts = rows_lib.scatter_rows(row_counts, ids, occurrences,
                                         add=True)
      # max(last_seen, step) is `step`, written from the gathered value.
      row_last_step = rows_lib.scatter_rows(state.row_last_step, ids,
                                            jnp.maximum(last_seen, step))
      counts_now = rows_lib.gather_rows(row_counts, ids)
    eta = step_sizes(counts_now, step, alpha)
    table = rows_lib.add_scaled_occurrences(table, ids, grads, eta)
    return table, transform.ScaleByCountedFrequencyState(
        count=step, row_counts=row_counts, row_last_step=row_last_step)

  def each_row(table, state, batch):
    # The dense transformation's count update, on the gathered rows only.
    step = optax.safe_increment(state.count)
    alpha = counting.learning_rate_at(learning_rate, state.count)
    last_seen = None
    if count_half_life is not None:
      last_seen = rows_lib.gather_rows(state.row_last_step, batch.rows)
    counts, last, counts_now = counting.updated_counts(
        rows_lib.gather_rows(state.row_counts, batch.rows), last_seen,
        batch.multiplicities, step, count_half_life)
    row_counts = rows_lib.set_distinct_rows(state.row_counts, batch.rows,
                                            counts)
    row_last_step = None
    if count_half_life is not None:
      row_last_step = rows_lib.set_distinct_rows(state.row_last_step,
                                                 batch.rows, last)
    table = rows_lib.subtract_scaled_rows(table, batch,
                                          step_sizes(counts_now, step, alpha))
    return table, transform.ScaleByCountedFrequencyState(
        count=step, row_counts=row_counts, row_last_step=row_last_step)

  return SparseTransformation(init, sparse_apply.make_apply(
      each_row, init=init, each_occurrence=each_occurrence,
      duplicates=duplicates, axis_name=axis_name, checkify_ids=checkify_ids))


def sparse_fa_sgd(
    learning_rate: ScalarOrSchedule,
    frequencies: Any,
    *,
    num_steps: int,
    max_learning_rate: Optional[float] = None,
    axis_name: Optional[str] = None,
    checkify_ids: bool = False,
    duplicates: str = 'auto',
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
    duplicates: how repeated ids are combined, as in `sparse_cf_sgd`.

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
    sparse_apply.check_table(table)
    if table.shape[0] != frequencies.shape[0]:
      raise ValueError(
          f'frequencies has {frequencies.shape[0]} entries but the table has '
          f'{table.shape[0]} rows (shape {tuple(table.shape)}); pass one '
          'frequency per row.')

  def init(table):
    check_rows(table)
    return dense.init(table)

  def step_sizes(state, row_frequencies, rows):
    alpha = counting.learning_rate_at(learning_rate, state.count)
    return counting.step_sizes(
        jnp.asarray(num_steps, jnp.float32)
        * rows_lib.gather_rows(row_frequencies, rows),
        alpha, max_learning_rate)

  def next_state(state):
    return transform.ScaleByKnownFrequencyState(
        count=optax.safe_increment(state.count))

  def each_occurrence(table, state, ids, grads, row_frequencies):
    # Step sizes come from fixed frequencies: no need to find distinct rows.
    eta = step_sizes(state, row_frequencies, ids)
    return (rows_lib.add_scaled_occurrences(table, ids, grads, eta),
            next_state(state))

  def each_row(table, state, batch, row_frequencies):
    eta = step_sizes(state, row_frequencies, batch.rows)
    return rows_lib.subtract_scaled_rows(table, batch, eta), next_state(state)

  apply_rows = sparse_apply.make_apply(
      each_row, init=init, each_occurrence=each_occurrence,
      duplicates=duplicates,
      axis_name=axis_name, constants=(frequencies,),
      checkify_ids=checkify_ids)

  def apply(table, state, ids, row_grads):
    check_rows(table)
    return apply_rows(table, state, ids, row_grads)

  if hasattr(apply_rows, 'unchecked'):
    # `check_apply_arguments` checks the rows too: its check of the state
    # runs `init`, which runs `check_rows`.
    apply.unchecked = apply_rows.unchecked
  return SparseTransformation(init, apply)


def sparse_rowwise_adagrad(
    learning_rate: ScalarOrSchedule,
    *,
    epsilon: float = 1e-8,
    initial_accumulator_value: float = 0.0,
    axis_name: Optional[str] = None,
    checkify_ids: bool = False,
    duplicates: str = 'auto',
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
    duplicates: how repeated ids are summed before squaring: on CPU
      (``'scatter'``, and ``'occurrences'``, the same here) by scatter-adds
      into a batch-sized buffer; on accelerators (``'reduce'``) without
      scatter-adds. ``'auto'`` picks per backend, as in `sparse_cf_sgd`.

  Returns:
    A `SparseTransformation` whose state is ``rowwise_adagrad(...).init(table)``:
    ``(ScaleByRowwiseAdagradState, <scale_by_learning_rate state>)``, the
    latter holding the step count when `learning_rate` is a schedule.
  """
  dense = rowwise_adagrad_lib.rowwise_adagrad(
      learning_rate, epsilon=epsilon,
      initial_accumulator_value=initial_accumulator_value)

  def init(table):
    sparse_apply.check_table(table)
    return dense.init(table)

  def each_row(table, state, batch):
    adagrad_state, schedule_state = state
    if callable(learning_rate):
      alpha = learning_rate(schedule_state.count)
      schedule_state = optax.ScaleByScheduleState(
          count=optax.safe_increment(schedule_state.count))
    else:
      alpha = learning_rate
    accumulators = (
        rows_lib.gather_rows(adagrad_state.accumulators, batch.rows)
        + rowwise_adagrad_lib.row_mean_squares(batch.grads))
    scale = (jnp.asarray(alpha, jnp.float32)
             * rowwise_adagrad_lib.rowwise_scale(accumulators, epsilon))
    table = rows_lib.subtract_scaled_rows(table, batch, scale)
    new_adagrad_state = rowwise_adagrad_lib.ScaleByRowwiseAdagradState(
        accumulators=rows_lib.set_distinct_rows(adagrad_state.accumulators,
                                                batch.rows, accumulators))
    return table, (new_adagrad_state, schedule_state)

  return SparseTransformation(init, sparse_apply.make_apply(
      each_row, init=init, duplicates=duplicates, axis_name=axis_name,
      checkify_ids=checkify_ids))
