"""Reading and writing a batch's rows of a table, and its duplicate ids.

The sparse path (`fasgd_optax._src.sparse`) reads and writes only the rows a
batch touched. A batch drawn from a power law repeats its hot rows many times,
and backends differ in how cheaply they combine repeats (DESIGN.md §6):

- ``'scatter'``: scatter-adds sum each row's occurrences into a batch-sized
  buffer, then each distinct row is written once. The rows' slots in the
  buffer are found without a sort (`sum_duplicates_by_tagging`): fastest on
  CPU, where a scatter is a serial loop and a sort costs more. Compiled for
  another backend, it finds them by a sort (`sum_duplicates_for_scatter`).
- ``'occurrences'``: each occurrence's scaled gradient goes straight into
  the table, as word2vec.c and Hogwild-style trainers (FBGEMM's non-exact
  optimizers) do: about half the update's cost on CPU, but each add rounds
  against the row's value, so a hot row's many small steps lose precision
  (tests/test_sparse.py: 4096 steps of 2.4e-9 on a float32 row of 0.5 move
  it more than 10% off on a CPU; the other designs within one float32
  spacing). On a GPU, XLA's scatter determinism expander
  (``--xla_gpu_enable_scatter_determinism_expander``, which the test suite
  turns on) sums the repeats first.
  Rules that need each row's summed gradient, and tables narrower than
  float32, take ``'scatter'`` instead.
- ``'reduce'``: repeats are summed without scatter-adds (a sort, then blocked
  segment sums as small matrix products), and each distinct row is written
  once, by a scatter with unique indices. On a GPU, the atomic adds of
  hundreds of occurrences of one hot row serialize: issue 10 measured, on an
  H200 (B = 4096, d = 64, Zipf 1.1), that one scatter at 540-605 µs of a step
  whose other kernels took about 20 µs.
- ``'auto'``: ``'scatter'`` when the step is compiled for a CPU,
  ``'reduce'`` for any other backend, chosen when the step is lowered
  (`jax.lax.platform_dependent`), so one jitted function is right on each.
"""

import math
from typing import Any, Callable, NamedTuple, Optional

import jax
from jax import lax
import jax.numpy as jnp

from fasgd_optax._src import counting

DUPLICATE_MODES = ('auto', 'scatter', 'reduce', 'occurrences')

# Rows per block of the segment sums: a block's (128 × 128) mask times its
# (128 × d) gradients is a small matrix product on any backend.
_BLOCK = 128


# The design each platform takes under 'auto'; others take the default.
_DESIGN_BY_PLATFORM = {'cpu': 'scatter'}
_DEFAULT_DESIGN = 'reduce'


def check_duplicates(duplicates: str) -> None:
  if duplicates not in DUPLICATE_MODES:
    raise ValueError(
        f'`duplicates` must be one of {DUPLICATE_MODES}; got {duplicates!r}.')


def resolve_duplicates(duplicates: str = 'auto',
                       platform: Optional[str] = None) -> str:
  """The design that `duplicates` stands for on `platform`.

  A sparse transformation made with ``duplicates='auto'`` holds both designs
  and keeps, when its step is lowered, the one for the platform it is
  lowered for (`jax.lax.platform_dependent`): right wherever the step runs,
  but every trace of the step traces both. A program that knows where its
  steps run can pass the design itself and trace one. On this project's
  2-core CPU a `sparse_cf_sgd` step (B = 4096, d = 64) traced in 19 ms with
  'auto', 7 ms with 'scatter' and 16 ms with 'reduce', medians of 9
  (benchmarks/trace_cost.py, benchmarks/results/trace_cost_cpu.json).

  Example:
    >>> import fasgd_optax
    >>> fasgd_optax.resolve_duplicates('auto', 'cpu')
    'scatter'
    >>> fasgd_optax.resolve_duplicates('auto', 'gpu')
    'reduce'

  Args:
    duplicates: one of ``'auto'``, ``'scatter'``, ``'reduce'``,
      ``'occurrences'``.
    platform: where the step runs: a backend name as `jax.default_backend()`
      gives it ('cpu', 'gpu', 'tpu') or a platform name ('cuda', 'rocm');
      None: `jax.default_backend()`.

  Returns:
    `duplicates` itself unless it is 'auto': then ``'scatter'`` or
    ``'reduce'``.

  Raises:
    ValueError: `duplicates` is not one of `DUPLICATE_MODES`.
  """
  check_duplicates(duplicates)
  if duplicates != 'auto':
    return duplicates
  if platform is None:
    platform = jax.default_backend()
  return _DESIGN_BY_PLATFORM.get(platform, _DEFAULT_DESIGN)


def by_backend(duplicates: str, scatter: Callable[..., Any],
               reduce: Callable[..., Any], occurrences: Callable[..., Any]
               ) -> Callable[..., Any]:
  """The implementation for `duplicates`, or per backend for ``'auto'``.

  Args:
    duplicates: one of `DUPLICATE_MODES`.
    scatter: the CPU design, ``scatter(*args)``.
    reduce: the accelerator design, ``reduce(*args)``, same results.
    occurrences: the per-occurrence design, ``occurrences(*args)``.

  Returns:
    A function of ``*args``; with ``'auto'`` it holds the scatter and reduce
    designs and compiles only the one for the platform it is lowered for.
  """
  check_duplicates(duplicates)
  designs = {'scatter': scatter, 'reduce': reduce,
             'occurrences': occurrences}
  if duplicates != 'auto':
    return designs[duplicates]
  per_platform = {platform: designs[design]
                  for platform, design in _DESIGN_BY_PLATFORM.items()}
  return lambda *args: lax.platform_dependent(
      *args, **per_platform, default=designs[_DEFAULT_DESIGN])


class DistinctRows(NamedTuple):
  """A batch with its duplicate ids combined: each touched row once.

  All fields have the flattened batch's length B. Where the batch has fewer
  than B distinct in-range rows, the other slots hold out-of-range rows of
  their own, ``num_rows + i``: gathers read them as 0, scatters drop them, and
  all of ``rows`` are unique, so a scatter may promise unique indices.
  """
  rows: jax.Array  # shape=(B,), int32.
  multiplicities: jax.Array  # shape=(B,), int32; occurrences of each row.
  grads: jax.Array  # shape=(B,) + row shape, float32; summed per row.


def _spare_rows(size: int, num_rows: int) -> jax.Array:
  """``num_rows + i`` for each slot: distinct out-of-range rows."""
  if num_rows + size > counting.INT32_MAX:
    raise ValueError(
        f'A table of {num_rows} rows and a batch of {size} ids leave no '
        'out-of-range int32 row for each slot; use a table with fewer than '
        f'{counting.INT32_MAX - size} rows.')
  return num_rows + lax.iota(jnp.int32, size)


def sum_duplicates_by_scatter(keys: jax.Array, grads: jax.Array,
                              num_rows: int) -> DistinctRows:
  """`DistinctRows` by a sort of the keys alone, then scatter-adds.

  The ``'scatter'`` design where the table cannot be tagged (`can_tag`), or
  is not on a CPU (`sum_duplicates_for_scatter`).

  Args:
    keys: (B,) ids from `flat_batch`, out-of-range ones set to `num_rows`.
    grads: (B,) + row shape, each occurrence's gradient.
    num_rows: the table's rows.

  Returns:
    `DistinctRows`, rows ascending in the first slots.
  """
  size = keys.shape[0]
  # Sorting the keys alone is several times faster on CPU than sorting
  # (key, position) pairs; each id then finds its row's slot by binary search.
  sorted_keys = lax.sort(keys)
  starts = jnp.ones((size,), jnp.bool_).at[1:].set(
      sorted_keys[1:] != sorted_keys[:-1])
  slots_of_sorted = jnp.cumsum(starts.astype(jnp.int32)) - 1
  distinct = jnp.where(sorted_keys < num_rows, sorted_keys, -1)
  rows = jnp.full((size,), -1, jnp.int32).at[slots_of_sorted].set(
      distinct, indices_are_sorted=True)
  rows = jnp.where(rows >= 0, rows, _spare_rows(size, num_rows))
  slots = slots_of_sorted[jnp.searchsorted(sorted_keys, keys, side='left')]
  multiplicities = jax.ops.segment_sum(
      jnp.ones((size,), jnp.int32), slots, num_segments=size)
  summed = jax.ops.segment_sum(grads, slots, num_segments=size)
  return DistinctRows(rows, multiplicities, summed)


def can_tag(table: Any, size: int) -> bool:
  """Whether `sum_duplicates_by_tagging` can take this table and batch.

  Its tags are slot numbers written into the table as values: they must be
  exact in the table's type (float32 holds integers up to 2^24), and the
  table must have an element per row to hold them.
  """
  dtype = jnp.dtype(table.dtype)
  return (jnp.issubdtype(dtype, jnp.floating) and table.shape[0] > 0
          and math.prod(table.shape[1:]) > 0
          and size <= 2 ** (jnp.finfo(dtype).nmant + 1))


def sum_duplicates_by_tagging(table: jax.Array, keys: jax.Array,
                              grads: jax.Array
                              ) -> tuple[jax.Array, DistinctRows]:
  """`DistinctRows` for CPUs, with no sort: the table marks each row's slot.

  Each occurrence writes its slot number into its row's first element, and
  reads back what its row holds: one of its row's slots, the same for all
  of them (the last write wins). The elements are then put back, and the
  gradients summed into their rows' slots by scatter-adds into a batch-sized
  buffer. Summed before the table sees them, as the dense gradient of
  ``table[ids]`` sums them: added to the table one occurrence at a time, a
  hot row's small steps round against its value (``'occurrences'``).

  Args:
    table: (N, ...) floating table, `can_tag` true for it and the batch.
    keys: (B,) ids from `flat_batch`, out-of-range ones set to N.
    grads: (B,) + row shape, each occurrence's gradient.

  Returns:
    The table as it was (written to and restored in place when donated) and
    `DistinctRows` with each distinct row in the slot its occurrences read.
  """
  size, num_rows = keys.shape[0], table.shape[0]
  first = (keys,) + (0,) * (table.ndim - 1)
  kwargs, read = _scatter_kwargs(table), _gather_kwargs(table)
  saved = table.at[first].get(mode='fill', fill_value=0, **read)
  # Each write takes values computed from the reads it must follow (ours,
  # and the caller's through the gradients), by selects whose condition is
  # never true: a write XLA could order before a read of the same array
  # makes it copy the whole table (O(N)), and XLA's CPU compiler drops
  # optimization barriers.
  never = jnp.abs(saved) < -1
  if grads.size:
    never = never | (jnp.abs(grads.reshape(size, -1)[:, 0]) < -1)
  slots = lax.iota(jnp.int32, size)
  tagged = table.at[first].set(
      jnp.where(never, 0, slots).astype(table.dtype), mode='drop', **kwargs)
  tags = tagged.at[first].get(mode='fill', fill_value=0, **read)
  # Every occurrence puts back the value they all read.
  table = tagged.at[first].set(jnp.where(tags < 0, 0, saved), mode='drop',
                               **kwargs)
  slot = jnp.where(keys < num_rows, tags.astype(jnp.int32), size)
  multiplicities = jnp.zeros((size,), jnp.int32).at[slot].add(1, mode='drop')
  summed = jnp.zeros(grads.shape, jnp.float32).at[slot].add(
      grads.astype(jnp.float32), mode='drop')
  rows = jnp.where(slot == slots, keys, _spare_rows(size, num_rows))
  return table, DistinctRows(rows, multiplicities, summed)


def sum_duplicates_for_scatter(table: jax.Array, keys: jax.Array,
                               grads: jax.Array
                               ) -> tuple[jax.Array, DistinctRows]:
  """The ``'scatter'`` design's `DistinctRows`, found as suits the backend.

  Compiled for a CPU, `sum_duplicates_by_tagging` where `can_tag` allows:
  no sort. Compiled for any other backend, `sum_duplicates_by_scatter`,
  whose sort leaves the table alone: the tags' writes to the table and reads
  from it, ordered by data, kept XLA's CPU compiler from copying the table,
  but on an H200 (JAX 0.11.2) the GPU compiler copied it three times a step,
  O(N) each (tests/test_sparse.py's compiled-copies test, run there on
  2026-11-28).

  Args:
    table: (N, ...) table.
    keys: (B,) ids from `flat_batch`, out-of-range ones set to N.
    grads: (B,) + row shape, each occurrence's gradient.

  Returns:
    The table as it was, and `DistinctRows`.
  """
  def by_sorting(table, keys, grads):
    return table, sum_duplicates_by_scatter(keys, grads, table.shape[0])

  if not can_tag(table, keys.shape[0]):
    return by_sorting(table, keys, grads)
  return lax.platform_dependent(table, keys, grads,
                                cpu=sum_duplicates_by_tagging,
                                default=by_sorting)


def run_totals(sorted_keys: jax.Array, values: jax.Array) -> jax.Array:
  """For each position, the sum of `values` over its run of equal keys so far.

  At the last position of each run this is the run's total. Equal keys must
  be contiguous (e.g. sorted). No scatter: the batch is cut into blocks of
  `_BLOCK`; within a block, a (block × block) mask of "same key, not later"
  times the block's values gives the runs' partial sums; a run that began in
  earlier blocks adds their last partial sums, by a second, (blocks × blocks)
  product. Work O(B · block · width), all of it dense matrix products.

  A non-finite value stays in its own run and column, as a sum would leave
  it, though in a product a mask's 0 times another run's inf or NaN is NaN.
  So the products run on the values as they are, and only when that left a
  non-finite total (a non-finite value, a sum past float32's range, or what
  they spread: every such case leaves one) are the sums made again, by
  `_sums_with_flags`, which keeps each in its own run and column. A finite
  batch, the usual one, pays for the check and not for the flags. On an
  H200, a CBOW step at batch 16384 (examples/word2vec/profile_step.py,
  0.87 ms of traced ops) had four such products of 0.05-0.15 ms and two
  conversions of 0.05-0.08 ms (benchmarks/results/gpu_h200_word2vec); which
  of them were the flags' the profile did not say.

  Args:
    sorted_keys: (B,) int32, equal keys contiguous, all ≥ 0.
    values: (B, width) float32.

  Returns:
    (B, width) float32 inclusive running sums per run.
  """
  size, width = values.shape
  if size == 0:
    return values
  block = min(_BLOCK, size)
  padding = -size % block
  # Padding keys of -1 form a run of their own after the real keys.
  keys = jnp.pad(sorted_keys, (0, padding), constant_values=-1)
  num_blocks = keys.shape[0] // block
  keys = keys.reshape(num_blocks, block)
  values = jnp.pad(values, ((0, padding), (0, 0))).reshape(
      num_blocks, block, width)
  position = lax.iota(jnp.int32, block)
  first, last = keys[:, 0], keys[:, -1]
  block_index = lax.iota(jnp.int32, num_blocks)
  masks = _RunMasks(
      same_run_so_far=((keys[:, :, None] == keys[:, None, :])
                       & (position[:, None] >= position[None, :])),
      # Block b's first run continues every earlier block that ends in its
      # key: with contiguous keys, those blocks hold nothing but that run
      # after its start, so their last partial sums add up to what came
      # before block b.
      continues=((last[None, :] == first[:, None])
                 & (block_index[None, :] < block_index[:, None])),
      in_first_run=(keys == first[:, None])[:, :, None])
  partial = _masked_sums('bij,bjw->biw', masks.same_run_so_far, values)
  totals = masks.add_carried(
      partial, _masked_sums('ij,jw->iw', masks.continues, partial[:, -1, :]))
  totals = lax.cond(jnp.isfinite(totals).all(), lambda: totals,
                    lambda: _sums_with_flags(masks, values))
  return totals.reshape(num_blocks * block, width)[:size]


class _RunMasks(NamedTuple):
  """`run_totals`' 0/1 masks over a batch cut into blocks."""
  same_run_so_far: jax.Array  # (blocks, block, block): same key, not later
  continues: jax.Array  # (blocks, blocks): block b's first run began in b'
  in_first_run: jax.Array  # (blocks, block, 1): in its block's first run

  def add_carried(self, partial: jax.Array, carried: jax.Array) -> jax.Array:
    """Partial sums plus what each block's first run carries in."""
    return partial + jnp.where(self.in_first_run, carried[:, None, :], 0.0)


def _masked_sums(subscripts: str, mask: jax.Array,
                 values: jax.Array) -> jax.Array:
  """`einsum(subscripts, mask, values)` in full float32 precision."""
  return jnp.einsum(subscripts, mask.astype(values.dtype), values,
                    precision=lax.Precision.HIGHEST)


def _sums_with_flags(masks: _RunMasks, values: jax.Array) -> jax.Array:
  """`run_totals`' sums of values that are not all finite.

  The products see only finite values. Beside them, 0/1 flags mark +inf or
  NaN and -inf or NaN in each column; a run whose column has flags of either
  kind totals +inf or -inf there, of both, NaN. The flags go through the
  same masks in products of their own in bfloat16, exact for 0/1 operands
  with float32 sums. Finite values that sum past float32's range total what
  the products' order of summation gives (±inf, NaN, or a finite value when
  they cancel), as a float32 sum in some order would; no other run is
  touched.
  """
  no_flags = jnp.zeros_like(values)
  values, up, down = _flag_non_finite(values, no_flags, no_flags)
  flags = jnp.concatenate([up, down], axis=-1)
  partial = _masked_sums('bij,bjw->biw', masks.same_run_so_far, values)
  partial_flags = _count_flags('bij,bjw->biw', masks.same_run_so_far, flags)
  # Finite values can sum past float32's range (to ±inf, or NaN both ways):
  # carried into later blocks by a 0/1 product, that would be NaN for other
  # runs, so such sums are flagged like non-finite values.
  partial, up, down = _flag_non_finite(
      partial, *jnp.split(partial_flags, 2, axis=-1))
  partial_flags = jnp.concatenate([up, down], axis=-1)
  totals = masks.add_carried(
      partial, _masked_sums('ij,jw->iw', masks.continues, partial[:, -1, :]))
  total_flags = masks.add_carried(
      partial_flags,
      _count_flags('ij,jw->iw', masks.continues, partial_flags[:, -1, :]))
  sums, up, down = _flag_non_finite(totals,
                                    *jnp.split(total_flags, 2, axis=-1))
  up, down = up > 0, down > 0
  return jnp.where(up & down, jnp.nan,
                   jnp.where(up, jnp.inf, jnp.where(down, -jnp.inf, sums)))


def _count_flags(subscripts: str, mask: jax.Array,
                 flags: jax.Array) -> jax.Array:
  """`einsum(subscripts, mask, flags)` > 0 where any flag is set, in float32.

  Flags (counts) are clipped to 0/1, exact in bfloat16 like the 0/1 mask;
  the products sum in float32, exactly while under 2^24 terms.
  """
  return jnp.einsum(subscripts, mask.astype(jnp.bfloat16),
                    jnp.minimum(flags, 1.0).astype(jnp.bfloat16),
                    preferred_element_type=jnp.float32)


def _flag_non_finite(sums: jax.Array, up: jax.Array,
                     down: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """`sums` with non-finite values set to 0 and recorded in the flags.

  `up` counts +inf or NaN, `down` -inf or NaN (0/1 flags, or sums of them);
  a NaN sets both, since +inf and -inf together sum to NaN.
  """
  nan = jnp.isnan(sums)
  up = jnp.where(nan | (sums == jnp.inf), 1.0, up)
  down = jnp.where(nan | (sums == -jnp.inf), 1.0, down)
  return jnp.where(jnp.isfinite(sums), sums, 0.0), up, down


def sum_duplicates_by_sorting(keys: jax.Array, grads: jax.Array,
                              num_rows: int) -> DistinctRows:
  """`DistinctRows` for accelerators: sort, then segment sums, no scatter-add.

  Args:
    keys: (B,) ids from `flat_batch`, out-of-range ones set to `num_rows`.
    grads: (B,) + row shape, each occurrence's gradient.
    num_rows: the table's rows.

  Returns:
    `DistinctRows`, each distinct row in the slot of its last occurrence in
    sorted order.
  """
  size = keys.shape[0]
  row_shape = grads.shape[1:]
  sorted_keys, order = lax.sort((keys, lax.iota(jnp.int32, size)),
                                num_keys=1)
  flat = grads.reshape((size, math.prod(row_shape)))[order]
  # One more column of ones counts each row's occurrences (exact in float32
  # up to 2^24 per batch).
  values = jnp.concatenate([flat, jnp.ones((size, 1), flat.dtype)], axis=1)
  totals = run_totals(sorted_keys, values)
  run_ends = jnp.ones((size,), jnp.bool_).at[:-1].set(
      sorted_keys[:-1] != sorted_keys[1:])
  keep = run_ends & (sorted_keys < num_rows)
  rows = jnp.where(keep, sorted_keys, _spare_rows(size, num_rows))
  multiplicities = jnp.where(keep, jnp.round(totals[:, -1]), 0).astype(
      jnp.int32)
  summed = totals[:, :-1].reshape((size,) + row_shape)
  return DistinctRows(rows, multiplicities, summed)


# ---------------------------------------------------------------------------
# Gathers and scatters of rows, on any mesh.


def _gather_kwargs(values: jax.Array) -> dict[str, Any]:
  """A gather's out_sharding from `values`: replicated on an Explicit mesh."""
  sharding = counting.explicit_sharding(values)
  if sharding is None:
    return {}
  return {'out_sharding': jax.sharding.NamedSharding(
      sharding.mesh, jax.sharding.PartitionSpec())}


def gather_rows(values: jax.Array, rows: jax.Array) -> jax.Array:
  """``values[rows]``, with 0 for out-of-range rows, replicated on a mesh."""
  return values.at[rows].get(mode='fill', fill_value=0,
                             **_gather_kwargs(values))


def lookup_rows(values: jax.Array, ids: jax.Array) -> jax.Array:
  """``values[ids]`` for a model's ids (`checks.check_ids_dtype`'s): 0 for
  any id outside [0, N).

  `gather_rows` alone would read row N - 1 for id -1: JAX wraps negative
  indices before its fill applies.
  """
  num_rows = values.shape[0]
  return gather_rows(
      values, jnp.where((ids >= 0) & (ids < num_rows), ids, num_rows))


def _scatter_kwargs(values: jax.Array) -> dict[str, Any]:
  sharding = counting.explicit_sharding(values)
  return {} if sharding is None else {'out_sharding': sharding}


def set_distinct_rows(values: jax.Array, rows: jax.Array,
                      new: jax.Array) -> jax.Array:
  """``values[rows] = new`` for unique `rows`, dropping out-of-range ones."""
  return values.at[rows].set(new.astype(values.dtype), mode='drop',
                             unique_indices=True, **_scatter_kwargs(values))


def add_to_distinct_rows(values: jax.Array, rows: jax.Array,
                         delta: jax.Array) -> jax.Array:
  """``values[rows] += delta`` for unique `rows`: one write per row."""
  return values.at[rows].add(delta.astype(values.dtype), mode='drop',
                             unique_indices=True, **_scatter_kwargs(values))


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


def add_scaled_occurrences(table: jax.Array, ids: jax.Array,
                           grads: jax.Array, scale: jax.Array) -> jax.Array:
  """``table`` minus ``scale[i] · grads[i]`` at row ``ids[i]``, per occurrence.

  With a per-row scale (every occurrence of a row gets the same), this equals
  subtracting each row's scaled summed gradient, without summing the B×d
  gradients or finding the distinct rows first: the costliest parts of a step
  on CPU.
  """
  return scatter_rows(table, ids, -counting.scale_rows(grads, scale),
                      add=True)


def subtract_scaled_rows(table: jax.Array, batch: DistinctRows,
                         scale: jax.Array) -> jax.Array:
  """``table`` minus ``scale[i] · batch.grads[i]`` at each distinct row."""
  return add_to_distinct_rows(table, batch.rows,
                              -counting.scale_rows(batch.grads, scale))


# ---------------------------------------------------------------------------
# The batch.


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
    ``(ids, grads)``, flattened, and replicated on an Explicit mesh.
  """
  row_shape = row_grads.shape[ids.ndim:]
  # A batch sharded over a data axis is gathered whole: every shard of a
  # row-sharded table needs each occurrence of its rows.
  flat_ids = jnp.ravel(counting.replicated(ids))
  flat_grads = counting.replicated(row_grads).reshape(
      (flat_ids.size,) + row_shape).astype(jnp.float32)
  if axis_name is not None:
    flat_ids = gather_replicas(flat_ids, axis_name)
    flat_grads = gather_replicas(flat_grads, axis_name)
    flat_grads = flat_grads / lax.psum(1, axis_name)
  valid = (flat_ids >= 0) & (flat_ids < num_rows)
  return jnp.where(valid, flat_ids, num_rows).astype(jnp.int32), flat_grads
