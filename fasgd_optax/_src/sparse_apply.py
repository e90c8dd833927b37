"""The sparse path's contract and the `apply` its rules share.

`SparseTransformation` is what every sparse rule (`fasgd_optax._src.sparse`)
returns. `make_apply` turns a rule's bodies (per distinct row, and per
occurrence where the rule allows it) into its ``apply``: arguments checked
outside `jit` with errors that name them, duplicate ids combined by the
backend's design (`fasgd_optax._src.rows`), the table and state donated.
"""

from typing import Any, Callable, NamedTuple, Optional
import weakref

import jax
import jax.numpy as jnp

from fasgd_optax._src import checks
from fasgd_optax._src import rows as rows_lib

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
      multiplicity. ``state`` must have the layout ``init(table)`` gives (a
      ValueError names the leaf otherwise, e.g. for a state made for a table
      of another size). Called outside `jit`, ``table`` and ``state`` are
      donated: their buffers are reused for the results and must not be used
      again.
  """
  init: Callable[[Any], Any]
  apply: Callable[[Any, Any, Any, Any], tuple[Any, Any]]


def check_table(table: Any) -> None:
  """Raises unless `table` is a floating-point array of ≥ 1 dimension."""
  if getattr(table, 'ndim', 0) < 1:
    raise ValueError(
        'A sparse transformation needs a table with at least one dimension '
        f'(rows first); got shape {getattr(table, "shape", None)}.')
  if not jnp.issubdtype(table.dtype, jnp.floating):
    # An integer table would take every step rounded to 0 while the counts
    # advanced.
    raise TypeError(
        'A sparse transformation needs a floating-point table; got dtype '
        f'{table.dtype}.')


def _checked_arguments(table, ids, row_grads, checkify_ids: bool,
                       name: str = _TABLE):
  """Validates `apply`'s arguments; returns `ids` as an integer array."""
  check_table(table)
  ids = checks.check_ids_dtype(ids, name)
  row_grads = jnp.asarray(row_grads)
  expected = tuple(ids.shape) + tuple(table.shape[1:])
  if tuple(row_grads.shape) != expected:
    raise ValueError(
        f'row_grads must have shape ids.shape + table.shape[1:] = {expected} '
        f'(ids shape {tuple(ids.shape)}, table shape {tuple(table.shape)}); '
        f'got {tuple(row_grads.shape)}.')
  if not jnp.issubdtype(row_grads.dtype, jnp.floating):
    # A complex gradient would lose its imaginary part, an integer or bool
    # one is no gradient of a floating-point table.
    raise TypeError(f'row_grads must be floating-point, as the table is; got '
                    f'{row_grads.dtype}.')
  # Concrete ids raise a ValueError naming the bad value; traced ones get a
  # checkify check if asked for. Either way `flat_batch` sends them out of
  # bounds.
  checks.check_ids_in_range(ids, table.shape[0], name,
                            checkify_traced=checkify_ids)
  return ids, row_grads


def check_apply_arguments(tx: SparseTransformation, table: Any, state: Any,
                          ids: Any, row_grads: Any,
                          name: str) -> tuple[jax.Array, jax.Array]:
  """Raises what ``tx.apply(table, state, ids, row_grads)`` would reject.

  For callers that update several tables in one step (`nnx_sparse`): checking
  every table before applying any keeps a bad batch for one table from
  leaving the others updated. Errors name the table by `name`.

  Returns:
    ``(ids, row_grads)`` as arrays, for `apply_checked`.
  """
  ids, row_grads = _checked_arguments(table, ids, row_grads,
                                      checkify_ids=False, name=name)
  _check_state(tx.init, table, state)
  return ids, row_grads


def apply_checked(tx: SparseTransformation, table: Any, state: Any,
                  ids: Any, row_grads: Any) -> tuple[Any, Any]:
  """``tx.apply`` for arguments `check_apply_arguments` has passed.

  Skips the checks `tx.apply` would make again: outside `jit`, one more read
  of concrete ids from the device per table and step. A transformation that
  checks ids under `jit` (``checkify_ids=True``), or one not built by
  `make_apply`, is applied by its own ``apply``, checks and all.
  """
  # `make_apply` gives its `apply` an `unchecked` attribute: its core.
  apply = getattr(tx.apply, 'unchecked', tx.apply)
  return apply(table, state, ids, row_grads)


def _check_state(init: Callable[[Any], Any], table: Any, state: Any) -> None:
  """Raises a ValueError unless `state` has the layout `init(table)` gives.

  Catches a state made for another table (a grown vocabulary: its per-row
  arrays would be read and written out of step with the table's rows) and a
  dense chain's whole state passed where its first element belongs.
  """
  expected = _expected_state(init, tuple(table.shape), jnp.dtype(table.dtype))
  structure = jax.tree.structure(state)
  if structure != jax.tree.structure(expected):
    raise ValueError(
        'state does not match this sparse transformation: it must have the '
        f'structure of init(table), {jax.tree.structure(expected)}; got '
        f'{structure}. (sparse_cf_sgd\'s and sparse_fa_sgd\'s state is the '
        'first element of cf_sgd(...)\'s and fa_sgd(...)\'s; '
        'sparse_rowwise_adagrad\'s and sparse_sgd\'s is rowwise_adagrad(...)'
        '\'s and optax.sgd(...)\'s whole state.)')
  for (path, leaf), want in zip(jax.tree_util.tree_leaves_with_path(state),
                                jax.tree.leaves(expected)):
    if tuple(jnp.shape(leaf)) != tuple(want.shape):
      raise ValueError(
          f'state{jax.tree_util.keystr(path)} has shape '
          f'{tuple(jnp.shape(leaf))}, but a table of shape '
          f'{tuple(table.shape)} needs {tuple(want.shape)}: was the state made '
          'for another table? Make it with init(table).')
    if jnp.result_type(leaf) != want.dtype:
      # bfloat16 counts, say, would stop growing at 256.
      raise ValueError(
          f'state{jax.tree_util.keystr(path)} has dtype '
          f'{jnp.result_type(leaf)}, but this transformation keeps it as '
          f'{want.dtype}: was the state cast, or made by another '
          'transformation? Make it with init(table).')


# init -> {(shape, dtype): the layout init gives}. Weak keys: a transformation
# built inside `jit` (its init closing over traced values) is not kept alive.
_EXPECTED_STATES = weakref.WeakKeyDictionary()


def _expected_state(init: Callable[[Any], Any], shape: tuple[int, ...],
                    dtype: Any) -> Any:
  layouts = _EXPECTED_STATES.setdefault(init, {})
  if (shape, dtype) not in layouts:
    layouts[(shape, dtype)] = jax.eval_shape(
        init, jax.ShapeDtypeStruct(shape, dtype))
  return layouts[(shape, dtype)]


def _low_precision(dtype: Any) -> bool:
  """Whether adding to a table of `dtype` once per occurrence loses steps.

  In bfloat16 (8 significant bits) or float16, a hot row's hundreds of small
  per-occurrence steps each round away against the row's value, and the row
  never moves; summed in float32 first and added once, they move it as the
  dense path and the ``'reduce'`` design do.
  """
  return (jnp.issubdtype(dtype, jnp.floating)
          and jnp.finfo(dtype).bits < 32)


def make_apply(
    each_row: Callable[..., tuple[Any, Any]],
    *,
    init: Callable[[Any], Any],
    each_occurrence: Optional[Callable[..., tuple[Any, Any]]] = None,
    duplicates: str = 'auto',
    axis_name: Optional[str] = None,
    constants: tuple[Any, ...] = (),
    checkify_ids: bool = False,
):
  """Builds ``apply(table, state, ids, row_grads)`` from a rule's bodies.

  Args:
    each_row: ``each_row(table, state, batch, *constants) -> (table, state)``
      for a `rows.DistinctRows` batch: each distinct row once.
    init: the transformation's ``init``; `apply` checks that its state has
      the layout ``init(table)`` gives.
    each_occurrence: ``each_occurrence(table, state, ids, grads, *constants)``
      for the flattened batch of `rows.flat_batch`, repeats and all: the
      ``'occurrences'`` design where the rule allows it; None to give
      `each_row` the batch's summed rows there too. Tables narrower than
      float32 always get the summed rows (see `_low_precision`).
    duplicates: one of `rows.DUPLICATE_MODES`.
    axis_name: passed to `rows.flat_batch`.
    constants: arrays the bodies need (e.g. per-row frequencies), passed as
      arguments so the jitted step does not embed them as constants.
    checkify_ids: add a checkify check for traced ids (see `sparse_cf_sgd`).

  Returns:
    The ``apply`` function. Its core is jitted with the table and the state
    donated; under an outer `jit` it is inlined and the outer function's
    donation decides.
  """
  rows_lib.check_duplicates(duplicates)

  def scatter(table, state, ids, grads, *constants):
    table, batch = rows_lib.sum_duplicates_for_scatter(table, ids, grads)
    return each_row(table, state, batch, *constants)

  def occurrences(table, state, ids, grads, *constants):
    if each_occurrence is None or _low_precision(table.dtype):
      return scatter(table, state, ids, grads, *constants)
    return each_occurrence(table, state, ids, grads, *constants)

  def reduce(table, state, ids, grads, *constants):
    batch = rows_lib.sum_duplicates_by_sorting(ids, grads, table.shape[0])
    return each_row(table, state, batch, *constants)

  apply_rows = rows_lib.by_backend(duplicates, scatter, reduce, occurrences)

  def apply_impl(table, state, ids, row_grads, *constants):
    keys, grads = rows_lib.flat_batch(ids, row_grads, table.shape[0],
                                      axis_name)
    return apply_rows(table, state, keys, grads, *constants)

  jitted = jax.jit(apply_impl, donate_argnums=(0, 1), inline=True)

  def apply(table, state, ids, row_grads):
    ids, row_grads = _checked_arguments(table, ids, row_grads, checkify_ids)
    _check_state(init, table, state)
    return jitted(table, state, ids, row_grads, *constants)

  if not checkify_ids:  # For `apply_checked`.
    apply.unchecked = lambda table, state, ids, row_grads: jitted(
        table, state, ids, row_grads, *constants)
  return apply


def per_slot(value: Any, size: int) -> jax.Array:
  """A scalar step size, one per slot of a flattened batch."""
  return jnp.full((size,), value, jnp.float32)
