"""The sparse path from Flax NNX: tables by row gradients, the rest by Optax.

Mark embedding tables as `SparseTable` variables (or use `SparseEmbed`) and
look rows up with `lookup`. Then:

- `value_and_grad(loss_fn)` differentiates the loss with respect to the
  model's dense parameters (`nnx.Param`) and to the rows each lookup gathered,
  never building an N×d gradient for a table;
- the dense gradients go to any Optax optimizer, e.g. ``nnx.Optimizer(model,
  tx, wrt=nnx.Param)``;
- `SparseOptimizer` applies a `fasgd_optax.SparseTransformation` (e.g.
  `sparse_cf_sgd`) to each table, touching only the rows the batch used.

Example::

  model = Model(rngs=nnx.Rngs(0))          # uses SparseEmbed for its tables
  dense_opt = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
  sparse_opt = nnx_sparse.SparseOptimizer(
      model, fasgd_optax.sparse_cf_sgd(1.0, num_steps=10_000))

  @nnx.jit(donate_argnames=('model', 'dense_opt', 'sparse_opt'))
  def train_step(model, dense_opt, sparse_opt, batch):
    loss, grads, table_grads = nnx_sparse.value_and_grad(loss_fn)(model, batch)
    dense_opt.update(model, grads)
    sparse_opt.update(model, table_grads)
    return loss

Outside `value_and_grad`, `lookup` is a plain gather, so the same model also
trains on the dense path, e.g. with ``nnx.Optimizer(model, cf_sgd(...),
wrt=(nnx.Param, SparseTable))`` and ``update(model, grads, ids=...)``.

Several lookups of one table in a step form one batch of ids, and CF-SGD
counts every occurrence: a table looked up twice per example (say by an FM's
and a deep part's branches) counts each of its rows twice, as the dense path
does when given both lookups' ids. That doubles all of its rows' counts
alike, so their step sizes shrink by √2 (a larger α makes up for it); to
count once, look the rows up once and use them in both branches.

Lookups are matched to tables by the `SparseTable` objects of the model passed
to `value_and_grad`; a lookup inside a lifted NNX transform over the model
(``nnx.vmap``, ``nnx.scan``, ``nnx.remat``) sees copies of them and is
rejected with an error. Look rows up outside such transforms (and outside
plain ``jax.vmap``/``lax.scan`` bodies, whose ids this module cannot see
whole: a lookup in one is an error naming this, except that a ``lax.scan``
body's under ``jit`` may surface as JAX's own leaked-tracer error), and in no
branch of a ``lax.cond`` that may not run: every lookup
traced is counted.

This module imports Flax; the core package `fasgd_optax` does not.
"""

from collections.abc import Mapping
import contextlib
import threading
import types
from typing import Any, Callable, NamedTuple, Optional, Union

from flax import nnx
import jax
import jax.numpy as jnp

from fasgd_optax._src import checks
from fasgd_optax._src import rows as rows_lib
from fasgd_optax._src import sparse_apply
from fasgd_optax._src import tree_args


# `nnx.Embed`'s default initializer (flax's `default_embed_init`).
_DEFAULT_EMBED_INIT = nnx.initializers.variance_scaling(
    1.0, 'fan_in', 'normal', out_axis=0)


class SparseTable(nnx.Variable):
  """An embedding table updated by the sparse path; not an `nnx.Param`.

  Being its own `nnx.Variable` type keeps tables out of ``nnx.Optimizer(...,
  wrt=nnx.Param)`` and out of ``nnx.grad``'s default differentiation.
  """


class TableGrad(NamedTuple):
  """A table's gradient as the rows a batch looked up and their gradients."""
  ids: jax.Array  # shape=(B,), the ids of all lookups of the table, flattened.
  row_grads: jax.Array  # shape=(B,) + table.shape[1:].


class SparseEmbed(nnx.Module):
  """Like `nnx.Embed`, with its table a `SparseTable` and lookups via `lookup`.

  Its arguments and defaults are `nnx.Embed`'s (its initializer, std
  1/sqrt(features); `param_dtype` stores the table, `dtype` is the rows'
  dtype after lookup), without `attend`.

  Attributes:
    embedding: the `SparseTable` of shape (num_embeddings, features).
  """

  def __init__(
      self,
      num_embeddings: int,
      features: int,
      *,
      dtype: Optional[Any] = None,
      param_dtype: Any = jnp.float32,
      embedding_init: Callable[..., jax.Array] = _DEFAULT_EMBED_INIT,
      rngs: nnx.Rngs,
      embedding_metadata: Mapping[str, Any] = types.MappingProxyType({}),
  ):
    """Makes the table.

    Args:
      num_embeddings: rows N.
      features: embedding dimension d.
      dtype: the dtype of looked-up rows; None for the table's.
      param_dtype: the table's dtype. bfloat16 halves its memory; the sparse
        transformations sum each row's gradients in float32 before rounding
        them into it.
      embedding_init: ``init(key, shape, dtype)`` for the table; default
        `nnx.Embed`'s, a normal with variance 1/features.
      rngs: the `nnx.Rngs` whose ``params`` stream initialises the table.
      embedding_metadata: metadata for the `SparseTable` variable (e.g.
        ``sharding_names``), as `nnx.Embed`'s.
    """
    self.num_embeddings = num_embeddings
    self.features = features
    self.embedding = SparseTable(
        embedding_init(rngs.params(), (num_embeddings, features), param_dtype),
        **embedding_metadata)
    self.dtype = dtype or self.embedding.get_value().dtype
    self.param_dtype = param_dtype

  def __call__(self, ids: jax.Array) -> jax.Array:
    """The rows ``embedding[ids]``, shape ``ids.shape + (features,)``."""
    return lookup(self.embedding, ids).astype(self.dtype)


# The lookups of the `value_and_grad` being traced on this thread, if any.
_active = threading.local()


class _Lookups:
  """Records a loss function's lookups and feeds them their row deltas."""

  def __init__(self, model: Any, deltas: Optional[list[jax.Array]]):
    self.paths = {id(table): path
                  for path, table in tables_by_path(model).items()}
    self.deltas = deltas
    self.records: list[tuple[str, jax.Array]] = []

  def lookup(self, table: SparseTable, ids: jax.Array) -> jax.Array:
    path = self.paths.get(id(table))
    if path is None:
      raise ValueError(
          'lookup() was given a SparseTable that is not part of the model '
          'passed to value_and_grad; look rows up from the model\'s own '
          'tables.')
    ids = checks.check_ids_dtype(ids, path)
    rows = rows_lib.lookup_rows(jax.lax.stop_gradient(table.get_value()),
                                ids)
    position = len(self.records)
    self.records.append((path, ids))
    if self.deltas is None:  # Only finding out which lookups happen.
      return rows
    if position >= len(self.deltas):
      raise ValueError(
          'The loss function made more table lookups than when it was first '
          'traced; lookups must not depend on values, only on shapes.')
    delta = self.deltas[position]
    if delta.shape != rows.shape:
      raise ValueError(
          f'Lookup {position} of table {path!r} gathered shape {rows.shape}, '
          f'but {delta.shape} when first traced; lookups must not depend on '
          'values, only on shapes.')
    # The gradient of the loss with respect to `delta` is its gradient with
    # respect to these gathered rows.
    return rows + delta


@contextlib.contextmanager
def _recording(lookups: _Lookups):
  previous = getattr(_active, 'lookups', None)
  _active.lookups = lookups
  try:
    yield lookups
  finally:
    _active.lookups = previous


def lookup(table: SparseTable, ids: Any) -> jax.Array:
  """``table[ids]``, shape ``ids.shape + table.shape[1:]``.

  Inside `value_and_grad`, the gradient flows to the gathered rows instead of
  the table. Out-of-range ids gather zeros.

  Args:
    table: a `SparseTable` of the model.
    ids: integer ids, any shape.

  Returns:
    The gathered rows.
  """
  if not isinstance(table, SparseTable):
    raise TypeError(
        f'lookup() needs a SparseTable variable; got {type(table).__name__}. '
        'Declare the table as SparseTable(...) (or use SparseEmbed).')
  lookups = getattr(_active, 'lookups', None)
  if lookups is not None:
    return lookups.lookup(table, ids)
  # Integer ids only: NumPy-style indexing would take a bool array as a mask.
  value = table.get_value()
  return rows_lib.lookup_rows(
      value, checks.check_ids_dtype(ids, f'table of shape {value.shape}'))


def tables_by_path(model: Any) -> dict[str, SparseTable]:
  """The model's `SparseTable`s by path, e.g. ``'user_embed/embedding'``.

  These are the keys of `value_and_grad`'s table gradients, of
  `SparseOptimizer`'s states, and of the dense path's ``ids`` dict.
  """
  return {
      '/'.join(tree_args.key_to_str(key) for key in path): value
      for path, value in nnx.iter_graph(model)
      if isinstance(value, SparseTable)
  }


def value_and_grad(
    loss_fn: Callable[..., Any],
    *,
    has_aux: bool = False,
    wrt: Any = nnx.Param,
) -> Callable[..., tuple[Any, Any, dict[str, TableGrad]]]:
  """Differentiates `loss_fn` w.r.t. dense parameters and looked-up rows.

  Args:
    loss_fn: ``loss_fn(model, *args, **kwargs)`` returning a scalar loss (or
      ``(loss, aux)`` with `has_aux`), looking table rows up with `lookup`
      (e.g. through `SparseEmbed`). The lookups it makes may depend on the
      shapes of its inputs, not on their values: it is traced twice, once to
      find the lookups' shapes.
    has_aux: whether `loss_fn` returns ``(loss, aux)``.
    wrt: the `nnx` filter of the dense parameters to differentiate.

  Returns:
    A function of ``(model, *args, **kwargs)`` returning ``(value, grads,
    table_grads)``: `value` is what `loss_fn` returned, `grads` an
    `nnx.State` of the `wrt` gradients (for ``nnx.Optimizer.update``), and
    `table_grads` a dict from each looked-up table's path (e.g.
    ``'user_embed/embedding'``) to its `TableGrad` (for
    `SparseOptimizer.update`). Model updates made by `loss_fn` (e.g. batch
    statistics) are kept, as with `nnx.value_and_grad`.
  """

  def wrapped(model, *args, **kwargs):
    try:
      return traced(model, *args, **kwargs)
    except jax.errors.UnexpectedTracerError as error:
      # A lookup inside a `jax.vmap` or `lax.scan` body records a tracer of
      # that body, which escapes it: JAX's own message does not say why.
      raise ValueError(
          'A traced value escaped while value_and_grad traced the loss '
          'function. The usual cause: a lookup (a SparseEmbed call, say) '
          'inside a jax.vmap or lax.scan body, or another transformation, '
          'in the loss function; its ids cannot be recorded from there. Look '
          'the rows up outside such bodies (all ids at once) and pass the '
          'rows in. JAX\'s error follows.') from error

  def traced(model, *args, **kwargs):
    graphdef, state = nnx.split(model)
    lookup_paths = []

    def find_lookups(state):
      traced_model = nnx.merge(graphdef, state)
      with _recording(_Lookups(traced_model, None)) as lookups:
        loss_fn(traced_model, *args, **kwargs)
      lookup_paths[:] = [path for path, _ in lookups.records]
      return [ids for _, ids in lookups.records]

    # Abstract evaluation: traces `loss_fn` on a copy, computes nothing.
    ids_shapes = jax.eval_shape(find_lookups, state)
    tables = tables_by_path(model)
    deltas = []
    for path, ids in zip(lookup_paths, ids_shapes):
      table = tables[path].get_value()
      deltas.append(jnp.zeros(ids.shape + table.shape[1:], table.dtype))

    def loss_of_deltas(model, deltas):
      with _recording(_Lookups(model, deltas)) as lookups:
        out = loss_fn(model, *args, **kwargs)
      if len(lookups.records) != len(deltas):
        raise ValueError(
            f'The loss function made {len(lookups.records)} table lookups, '
            f'but {len(deltas)} when first traced; lookups must not depend on '
            'values, only on shapes.')
      loss, aux = out if has_aux else (out, None)
      return loss, (aux, [ids for _, ids in lookups.records])

    (loss, (aux, lookup_ids)), (grads, delta_grads) = nnx.value_and_grad(
        loss_of_deltas, argnums=(nnx.DiffState(0, wrt), 1), has_aux=True)(
            model, deltas)

    table_grads = {}
    for path, ids, row_grads in zip(lookup_paths, lookup_ids, delta_grads):
      row_shape = row_grads.shape[ids.ndim:]
      ids = ids.reshape(-1)
      row_grads = row_grads.reshape((-1,) + row_shape)
      if path in table_grads:  # Several lookups of one table: one batch.
        ids = jnp.concatenate([table_grads[path].ids, ids])
        row_grads = jnp.concatenate([table_grads[path].row_grads, row_grads])
      table_grads[path] = TableGrad(ids, row_grads)
    value = (loss, aux) if has_aux else loss
    return value, grads, table_grads

  return wrapped


class SparseOptState(nnx.Variable):
  """A leaf of a sparse transformation's state."""


def _to_variables(tree: Any) -> Any:
  return jax.tree.map(SparseOptState, tree)


class SparseOptimizer(nnx.Pytree):
  """Sparse transformations for a model's `SparseTable`s, NNX style.

  Holds one state per table, as `nnx.Variable`s, so `nnx.jit` carries (and
  with ``donate_argnames`` donates) them like `nnx.Optimizer`'s state.

  Attributes:
    transformations: table path -> `SparseTransformation`.
    states: table path -> the transformation's state.
  """

  def __init__(
      self,
      model: Any,
      tx: Union[sparse_apply.SparseTransformation,
                Mapping[str, sparse_apply.SparseTransformation]],
  ):
    """Initialises a state for each table.

    Args:
      model: the NNX model holding `SparseTable`s.
      tx: one `SparseTransformation` for every table, or a dict from table
        paths (e.g. ``'user_embed/embedding'``) to transformations; tables not
        in the dict are not updated.
    """
    tables = tables_by_path(model)
    if not tables:
      raise ValueError('The model has no SparseTable variables to optimize.')
    if isinstance(tx, sparse_apply.SparseTransformation):
      transformations = {path: tx for path in tables}
    else:
      wrong = [tx] if not isinstance(tx, Mapping) else [
          t for t in tx.values()
          if not isinstance(t, sparse_apply.SparseTransformation)]
      if wrong:
        optax_like = hasattr(wrong[0], 'init') and hasattr(wrong[0], 'update')
        raise TypeError(
            'SparseOptimizer needs a SparseTransformation (fasgd_optax.'
            'sparse_cf_sgd(...) and the like) or a dict of them by table '
            f'path; got {type(wrong[0]).__name__}'
            + (' (an Optax transformation: give it to nnx.Optimizer for the '
               'dense parameters)' if optax_like else '') + '.')
      unknown = sorted(set(tx) - set(tables))
      if unknown:
        raise ValueError(
            f'SparseOptimizer: {unknown} are not SparseTable paths of the '
            f'model; its tables are {sorted(tables)}.')
      transformations = dict(tx)
    self.transformations = transformations
    self.states = nnx.data({
        path: _to_variables(transformations[path].init(
            tables[path].get_value()))
        for path in transformations
    })

  def update(self, model: Any, table_grads: Mapping[str, TableGrad]) -> None:
    """Applies each table's transformation to the rows of `table_grads`.

    Args:
      model: the model whose tables to update in place.
      table_grads: from `value_and_grad`: table path -> `TableGrad`. A
        table without an entry (not looked up this step) takes a step with
        no rows: no row changes, and its transformation's step count
        advances, as the dense path's does every step.
    """
    tables = tables_by_path(model)
    unknown = sorted(set(table_grads) - set(tables))
    if unknown:
      raise ValueError(
          f'table_grads has {unknown}, which are not SparseTables of the '
          f'model; its tables are {sorted(tables)}.')
    table_grads = dict(table_grads)
    for path in self.transformations:
      if path not in table_grads:
        value = tables[path].get_value()
        table_grads[path] = TableGrad(
            jnp.zeros((0,), jnp.int32),
            jnp.zeros((0,) + value.shape[1:], value.dtype))
    paths = [path for path in table_grads if path in self.transformations]
    states = {path: nnx.as_pure(self.states[path]) for path in paths}
    # Every table's batch is checked before any table changes: a bad id for
    # one table must not leave the others a step ahead. Each is checked once.
    checked = {
        path: sparse_apply.check_apply_arguments(
            self.transformations[path], tables[path].get_value(),
            states[path], table_grads[path].ids, table_grads[path].row_grads,
            name=path)
        for path in paths}
    for path in paths:
      table, state = sparse_apply.apply_checked(
          self.transformations[path], tables[path].get_value(), states[path],
          *checked[path])
      tables[path].set_value(table)
      nnx.update(self.states[path], nnx.state(_to_variables(state)))
