"""What the step benchmark times: one training step on an embedding table.

The step is what a user's training step does: a loss over the rows a batch of
Zipf-distributed ids gathers, its gradient, and the optimizer's update, all in
one `jax.jit` with the table and the optimizer state donated. Dense optimizers
get the gradient with respect to the whole table (an N×d array) and update all
of it; sparse ones get the gradient with respect to the gathered rows and
update only those.

Optimizers are named by strings. A sparse one may name how it combines
duplicate ids, ``'sparse_cf_sgd@reduce'`` (`fasgd_optax`'s ``duplicates``:
``'scatter'``, the CPU design; ``'reduce'``, the accelerators';
``'occurrences'``, each occurrence added to the table; a plain name is
``'auto'``, which compiles the backend's own), so one run can time the designs
on the same machine.
"""

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

import fasgd_optax

DENSE_OPTIMIZERS = ('sgd', 'adagrad', 'adam', 'rowwise_adagrad', 'fa_sgd',
                    'cf_sgd')
SPARSE_OPTIMIZERS = ('sparse_sgd', 'sparse_cf_sgd', 'sparse_fa_sgd',
                     'sparse_rowwise_adagrad', 'no_update')
ALL_OPTIMIZERS = DENSE_OPTIMIZERS + SPARSE_OPTIMIZERS
# The library's ways of combining duplicate ids (`duplicates=`).
DUPLICATE_MODES = ('auto', 'scatter', 'reduce', 'occurrences')
# Sparse optimizers that take `duplicates=` (no_update updates nothing).
WITH_DUPLICATES = tuple(n for n in SPARSE_OPTIMIZERS if n != 'no_update')

# Peak memory of one step, in tables' worth of bytes (table, gradient, update
# temporaries and optimizer state), used only to skip sizes that cannot fit.
TABLES_IN_MEMORY = {
    'sgd': 3, 'adagrad': 4, 'adam': 5, 'rowwise_adagrad': 3, 'fa_sgd': 3,
    'cf_sgd': 3, 'sparse_sgd': 1, 'sparse_cf_sgd': 1, 'sparse_fa_sgd': 1,
    'sparse_rowwise_adagrad': 1, 'no_update': 1,
}
# Tables' worth of optimizer state, written anew each step without donation.
STATE_TABLES = {'adagrad': 1, 'adam': 2}

LEARNING_RATE = 0.01


@dataclasses.dataclass(frozen=True)
class Optimizer:
  """A parsed optimizer name: 'sparse_cf_sgd@reduce' -> base, duplicates."""
  name: str  # As given, and as the results name it.
  base: str  # One of ALL_OPTIMIZERS.
  duplicates: str  # One of DUPLICATE_MODES; 'auto' where it does not apply.

  @property
  def path(self) -> str:
    """'sparse' or 'dense': how it takes gradients and updates."""
    return 'sparse' if self.base in SPARSE_OPTIMIZERS else 'dense'


def parse(name: str) -> Optimizer:
  """The `Optimizer` that `name` names; ValueError naming what is wrong."""
  base, _, duplicates = name.partition('@')
  if base not in ALL_OPTIMIZERS:
    raise ValueError(
        f'unknown optimizer {base!r} in {name!r}; choose from '
        f'{", ".join(ALL_OPTIMIZERS)}')
  if not duplicates:
    return Optimizer(name, base, 'auto')
  if base not in WITH_DUPLICATES:
    raise ValueError(
        f'{name!r}: only {", ".join(WITH_DUPLICATES)} take @<duplicates>')
  if duplicates not in DUPLICATE_MODES:
    raise ValueError(
        f'{name!r}: duplicates must be one of {", ".join(DUPLICATE_MODES)}')
  return Optimizer(name, base, duplicates)


def expand(names: list[str], duplicate_modes: list[str]) -> list[Optimizer]:
  """`names`, each plain sparse name once per mode in `duplicate_modes`.

  ``expand(['sgd', 'sparse_cf_sgd'], ['auto', 'reduce'])`` is sgd,
  sparse_cf_sgd and sparse_cf_sgd@reduce. Names that carry their own
  ``@mode`` are kept as they are. A name that comes twice (``sgd,sgd``, or
  ``sparse_cf_sgd@reduce`` beside ``sparse_cf_sgd`` with ``reduce`` among the
  modes) is a ValueError naming it: results are told apart by name, so a
  second timing of it would only cost time and collide with the first.
  """
  for mode in duplicate_modes:
    if mode not in DUPLICATE_MODES:
      raise ValueError(f'duplicates mode {mode!r}: choose from '
                       f'{", ".join(DUPLICATE_MODES)}')
  optimizers = []
  for name in names:
    optimizer = parse(name)
    if '@' in name or optimizer.base not in WITH_DUPLICATES:
      optimizers.append(optimizer)
      continue
    for mode in duplicate_modes:
      optimizers.append(parse(name if mode == 'auto' else f'{name}@{mode}'))
  seen = set()
  for optimizer in optimizers:
    if optimizer.name in seen:
      raise ValueError(f'{optimizer.name!r} is named twice')
    seen.add(optimizer.name)
  return optimizers


def parse_sizes(values: list[str]) -> list[int]:
  """Table sizes from strings ('1e6' works); ValueError naming a bad one."""
  sizes = []
  for value in values:
    try:
      size = float(value)
    except ValueError:
      raise ValueError(f'{value!r} is not a number') from None
    if not (math.isfinite(size) and size >= 1 and size == int(size)):
      raise ValueError(f'{value!r} is not a whole number of rows ≥ 1')
    sizes.append(int(size))
  if not sizes:
    raise ValueError('no table size given')
  return sizes


def rank_probabilities(num_rows: int, exponent: float) -> np.ndarray:
  """p(rank) ∝ rank^-exponent over ranks 1..N, shape (N,), float64."""
  probabilities = np.arange(1, num_rows + 1, dtype=np.float64) ** -exponent
  probabilities /= probabilities.sum()
  return probabilities


def zipf_probabilities(by_rank: np.ndarray) -> np.ndarray:
  """p(row) of the Zipf law `by_rank` (`rank_probabilities`), ranks
  scattered over rows.

  Rank r lives at row (r · 2654435761) mod N, a bijection when N shares no
  factor with that prime, so hot rows are spread through the table.
  """
  num_rows = len(by_rank)
  by_row = np.zeros(num_rows, np.float64)
  by_row[row_of_rank(np.arange(num_rows), num_rows)] = by_rank
  return by_row


def row_of_rank(rank_index: np.ndarray, num_rows: int) -> np.ndarray:
  return (rank_index.astype(np.int64) * 2654435761) % num_rows


def zipf_cdf(by_rank: np.ndarray) -> np.ndarray:
  """The ranks' cumulative probabilities (of `rank_probabilities`)."""
  cdf = np.cumsum(by_rank)
  cdf /= cdf[-1]
  return cdf


def zipf_ids(rng: np.random.Generator, cdf: np.ndarray,
             shape: tuple[int, ...]) -> np.ndarray:
  """Ids drawn from `zipf_probabilities`, by inverting the ranks' `zipf_cdf`
  (which the caller builds once per size)."""
  num_rows = len(cdf)
  rank_index = np.searchsorted(cdf, rng.random(shape), side='right')
  rank_index = np.minimum(rank_index, num_rows - 1)
  return row_of_rank(rank_index, num_rows).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class Inputs:
  """A table size's batches and constants, the same in every process."""
  weights: jax.Array  # shape=(d,), the loss's fixed projection.
  frequencies: np.ndarray  # shape=(N,), FA-SGD's expected ids per step.
  batches: list[tuple[jax.Array, jax.Array]]  # (ids, targets), cycled.


def make_inputs(num_rows: int, *, dim: int, batch: int, zipf_exponent: float,
                num_batches: int, seed: int) -> Inputs:
  """Ids, targets and weights from a generator seeded with (seed, N).

  A size gets the same batches whichever process or order measures it.
  """
  rng = np.random.default_rng([seed, num_rows])
  weights = jnp.asarray(rng.normal(size=(dim,)), jnp.float32)
  by_rank = rank_probabilities(num_rows, zipf_exponent)
  frequencies = (batch * zipf_probabilities(by_rank)).astype(np.float32)
  batches = []
  cdf = zipf_cdf(by_rank)
  for _ in range(num_batches):
    ids = zipf_ids(rng, cdf, (batch,))
    targets = rng.normal(size=(batch,)).astype(np.float32)
    batches.append((jnp.asarray(ids), jnp.asarray(targets)))
  return Inputs(weights, frequencies, batches)


def make_table(num_rows: int, dim: int) -> jax.Array:
  """A deterministic table in [-0.5, 0.5), made on device without a copy."""

  @jax.jit
  def fill():
    rows = jax.lax.broadcasted_iota(jnp.int32, (num_rows, dim), 0)
    cols = jax.lax.broadcasted_iota(jnp.int32, (num_rows, dim), 1)
    return ((rows * 7 + cols * 13) % 101).astype(jnp.float32) / 101.0 - 0.5

  return fill()


def row_loss(rows: jax.Array, weights: jax.Array,
             targets: jax.Array) -> jax.Array:
  """Squared error of each gathered row's dot product with fixed weights."""
  return jnp.mean((rows @ weights - targets) ** 2)


def dense_optimizer(name: str, frequencies: np.ndarray, num_steps: int):
  if name == 'sgd':
    return optax.with_extra_args_support(optax.sgd(LEARNING_RATE))
  if name == 'adagrad':
    return optax.with_extra_args_support(optax.adagrad(LEARNING_RATE))
  if name == 'adam':
    return optax.with_extra_args_support(optax.adam(LEARNING_RATE))
  if name == 'rowwise_adagrad':
    return fasgd_optax.rowwise_adagrad(LEARNING_RATE)
  if name == 'fa_sgd':
    return fasgd_optax.fa_sgd(LEARNING_RATE, frequencies, num_steps=num_steps)
  if name == 'cf_sgd':
    return fasgd_optax.cf_sgd(LEARNING_RATE, num_steps=num_steps)
  raise ValueError(f'Unknown dense optimizer {name!r}.')


def sparse_optimizer(optimizer: Optimizer, frequencies: np.ndarray,
                     num_steps: int, package: Any = fasgd_optax
                     ) -> fasgd_optax.SparseTransformation:
  """`optimizer`'s sparse transformation from `package` (`fasgd_optax`, or an
  earlier version of it imported under another name: `ab_inprocess.py`).

  'auto' duplicates are left to the package's default, so a version that
  predates the option builds too.
  """
  kwargs = ({} if optimizer.duplicates == 'auto'
            else {'duplicates': optimizer.duplicates})
  if optimizer.base == 'sparse_sgd':
    return package.sparse_sgd(LEARNING_RATE, **kwargs)
  if optimizer.base == 'sparse_cf_sgd':
    return package.sparse_cf_sgd(LEARNING_RATE, num_steps=num_steps, **kwargs)
  if optimizer.base == 'sparse_fa_sgd':
    return package.sparse_fa_sgd(LEARNING_RATE, frequencies,
                                 num_steps=num_steps, **kwargs)
  if optimizer.base == 'sparse_rowwise_adagrad':
    return package.sparse_rowwise_adagrad(LEARNING_RATE, **kwargs)
  if optimizer.base == 'no_update':
    # The sparse step's own part, the gather and the loss, with no update:
    # what any sparse optimizer's step costs at least.
    return package.SparseTransformation(
        lambda table: optax.EmptyState(),
        lambda table, state, ids, row_grads: (table, state))
  raise ValueError(f'Unknown sparse optimizer {optimizer.name!r}.')


def sparse_step(sparse, weights: jax.Array, *,
                donate: bool = True) -> Callable[..., Any]:
  """Jitted step(table, state, ids, targets) -> (table, state, loss)."""

  def step(table, state, ids, targets):
    loss, row_grads = jax.value_and_grad(row_loss)(table[ids], weights,
                                                   targets)
    table, state = sparse.apply(table, state, ids, row_grads)
    return table, state, loss

  return jax.jit(step, donate_argnums=(0, 1) if donate else ())


def make_step(optimizer: Optimizer, inputs: Inputs, *, num_steps: int,
              donate: bool) -> tuple[Callable[..., Any], Callable[..., Any]]:
  """(jitted step(table, state, ids, targets) -> (table, state, loss), init).

  Args:
    optimizer: what updates the table.
    inputs: the size's weights and frequencies.
    num_steps: the horizon T of FA/CF-SGD; it scales step sizes only.
    donate: donate the table and the state (update in place).
  """
  donated = (0, 1) if donate else ()
  weights = inputs.weights
  if optimizer.path == 'sparse':
    sparse = sparse_optimizer(optimizer, inputs.frequencies, num_steps)
    return sparse_step(sparse, weights, donate=donate), sparse.init

  tx = dense_optimizer(optimizer.base, inputs.frequencies, num_steps)

  def dense_step(table, state, ids, targets):
    loss, grads = jax.value_and_grad(
        lambda t: row_loss(t[ids], weights, targets))(table)
    updates, state = tx.update(grads, state, table, ids=ids)
    return optax.apply_updates(table, updates), state, loss

  return jax.jit(dense_step, donate_argnums=donated), tx.init


def tables_in_memory(optimizer: Optimizer, donate: bool) -> int:
  """Tables' worth of memory one step of `optimizer` needs at its peak."""
  tables = TABLES_IN_MEMORY[optimizer.base]
  if not donate:
    tables += 1 + STATE_TABLES.get(optimizer.base, 0)
  return tables


def tree_bytes(tree: Any) -> int:
  return int(sum(leaf.nbytes for leaf in jax.tree.leaves(tree)))
