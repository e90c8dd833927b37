"""Shared by the sparse-path tests: optimizers, a table, a loss and batches."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

import fasgd_optax
from tests import reference

ROWS, DIM = 40, 3
NUM_DEVICES = 8
FREQUENCIES = np.linspace(0.0, 2.0, ROWS).astype(np.float32)


def schedule(count):
  return 0.8 / (1.0 + 0.5 * count)


# name -> (dense transformation, sparse transformation, state of the dense
# chain that the sparse state mirrors). `duplicates` picks the sparse path's
# design: 'auto', 'scatter' (CPU's) or 'reduce' (accelerators').
def optimizers(name, duplicates='auto'):
  kwargs = dict(duplicates=duplicates)
  if name == 'cf_sgd':
    return _cf_sgd(num_steps=50, **kwargs)
  if name == 'cf_sgd_half_life_capped':
    return _cf_sgd(num_steps=50, count_half_life=2.0, max_learning_rate=0.15,
                   **kwargs)
  if name == 'cf_sgd_no_horizon':
    return _cf_sgd(num_steps=None, **kwargs)
  if name == 'cf_sgd_schedule':
    return (fasgd_optax.cf_sgd(schedule, num_steps=50),
            fasgd_optax.sparse_cf_sgd(schedule, num_steps=50, **kwargs),
            lambda state: state[0])
  if name == 'fa_sgd':
    return (fasgd_optax.fa_sgd(0.8, FREQUENCIES, num_steps=50,
                               max_learning_rate=0.3),
            fasgd_optax.sparse_fa_sgd(0.8, FREQUENCIES, num_steps=50,
                                      max_learning_rate=0.3, **kwargs),
            lambda state: state[0])
  if name == 'rowwise_adagrad':
    return (fasgd_optax.rowwise_adagrad(0.3, initial_accumulator_value=0.1),
            fasgd_optax.sparse_rowwise_adagrad(
                0.3, initial_accumulator_value=0.1, **kwargs),
            lambda state: state)
  if name == 'rowwise_adagrad_schedule':
    return (fasgd_optax.rowwise_adagrad(schedule),
            fasgd_optax.sparse_rowwise_adagrad(schedule, **kwargs),
            lambda state: state)
  if name == 'sgd':
    return (optax.sgd(0.3), fasgd_optax.sparse_sgd(0.3, **kwargs),
            lambda state: state)
  if name == 'sgd_schedule':
    return (optax.sgd(schedule), fasgd_optax.sparse_sgd(schedule, **kwargs),
            lambda state: state)
  raise ValueError(name)


def _cf_sgd(duplicates, **kwargs):
  return (fasgd_optax.cf_sgd(0.8, **kwargs),
          fasgd_optax.sparse_cf_sgd(0.8, duplicates=duplicates, **kwargs),
          lambda state: state[0])


ALL_OPTIMIZERS = ('cf_sgd', 'cf_sgd_half_life_capped', 'cf_sgd_no_horizon',
                  'cf_sgd_schedule', 'fa_sgd', 'rowwise_adagrad',
                  'rowwise_adagrad_schedule', 'sgd', 'sgd_schedule')
DUPLICATE_MODES = ('scatter', 'reduce')
# With the per-occurrence design, inexact for small steps: only where the
# tests check it against the dense path, its lowering and its imprecision.
ALL_DUPLICATE_MODES = DUPLICATE_MODES + ('occurrences',)


def initial_table():
  rng = np.random.default_rng(0)
  return rng.normal(size=(ROWS, DIM)).astype(np.float32)


def loss(rows, targets):
  """Depends on each occurrence separately, so duplicates' gradients differ."""
  weights = jnp.arange(1.0, DIM + 1.0)
  return jnp.mean((rows @ weights - targets) ** 2)


def batches(num_steps, shape=(6, 2), seed=1):
  rng = np.random.default_rng(seed)
  for _ in range(num_steps):
    ids = reference.zipf_ids(rng, ROWS, shape, exponent=1.3)
    targets = rng.normal(size=shape).astype(np.float32)
    yield jnp.asarray(ids), jnp.asarray(targets)


@functools.partial(jax.jit, static_argnums=0)
def dense_step(tx, table, state, ids, targets):
  grads = jax.grad(lambda t: loss(t[ids], targets))(table)
  updates, state = tx.update(grads, state, table, ids=ids)
  return optax.apply_updates(table, updates), state


def sparse_step(sparse, table, state, ids, targets):
  row_grads = jax.grad(loss)(table[ids], targets)
  return sparse.apply(table, state, ids, row_grads)
