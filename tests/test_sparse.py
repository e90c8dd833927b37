"""The sparse path (DESIGN.md §6): same results as the dense transformations."""

import functools
import json
import os
import subprocess
import sys
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
from jax.experimental import checkify
import jax.extend
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import optax

import fasgd_optax
from fasgd_optax._src import sparse as sparse_lib
from tests import reference

ROWS, DIM = 40, 3
NUM_DEVICES = 8
FREQUENCIES = np.linspace(0.0, 2.0, ROWS).astype(np.float32)


def _schedule(count):
  return 0.8 / (1.0 + 0.5 * count)


# name -> (dense transformation, sparse transformation, state of the dense
# chain that the sparse state mirrors).
def _optimizers(name):
  if name == 'cf_sgd':
    kwargs = dict(num_steps=50)
  elif name == 'cf_sgd_half_life_capped':
    kwargs = dict(num_steps=50, count_half_life=2.0, max_learning_rate=0.15)
  elif name == 'cf_sgd_no_horizon':
    kwargs = dict(num_steps=None)
  elif name == 'cf_sgd_schedule':
    return (fasgd_optax.cf_sgd(_schedule, num_steps=50),
            fasgd_optax.sparse_cf_sgd(_schedule, num_steps=50),
            lambda state: state[0])
  elif name == 'fa_sgd':
    return (fasgd_optax.fa_sgd(0.8, FREQUENCIES, num_steps=50,
                               max_learning_rate=0.3),
            fasgd_optax.sparse_fa_sgd(0.8, FREQUENCIES, num_steps=50,
                                      max_learning_rate=0.3),
            lambda state: state[0])
  elif name == 'rowwise_adagrad':
    return (fasgd_optax.rowwise_adagrad(0.3, initial_accumulator_value=0.1),
            fasgd_optax.sparse_rowwise_adagrad(
                0.3, initial_accumulator_value=0.1),
            lambda state: state)
  elif name == 'rowwise_adagrad_schedule':
    return (fasgd_optax.rowwise_adagrad(_schedule),
            fasgd_optax.sparse_rowwise_adagrad(_schedule),
            lambda state: state)
  else:
    raise ValueError(name)
  return (fasgd_optax.cf_sgd(0.8, **kwargs),
          fasgd_optax.sparse_cf_sgd(0.8, **kwargs),
          lambda state: state[0])


ALL_OPTIMIZERS = ('cf_sgd', 'cf_sgd_half_life_capped', 'cf_sgd_no_horizon',
                  'cf_sgd_schedule', 'fa_sgd', 'rowwise_adagrad',
                  'rowwise_adagrad_schedule')


def _initial_table():
  rng = np.random.default_rng(0)
  return rng.normal(size=(ROWS, DIM)).astype(np.float32)


def _loss(rows, targets):
  """Depends on each occurrence separately, so duplicates' gradients differ."""
  weights = jnp.arange(1.0, DIM + 1.0)
  return jnp.mean((rows @ weights - targets) ** 2)


def _batches(num_steps, shape=(6, 2), seed=1):
  rng = np.random.default_rng(seed)
  for _ in range(num_steps):
    ids = reference.zipf_ids(rng, ROWS, shape, exponent=1.3)
    targets = rng.normal(size=shape).astype(np.float32)
    yield jnp.asarray(ids), jnp.asarray(targets)


@functools.partial(jax.jit, static_argnums=0)
def _dense_step(tx, table, state, ids, targets):
  grads = jax.grad(lambda t: _loss(t[ids], targets))(table)
  updates, state = tx.update(grads, state, table, ids=ids)
  return optax.apply_updates(table, updates), state


def _sparse_step(sparse, table, state, ids, targets):
  row_grads = jax.grad(_loss)(table[ids], targets)
  return sparse.apply(table, state, ids, row_grads)


class DenseEquivalenceTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*ALL_OPTIMIZERS)
  def test_matches_dense_transformation(self, name):
    dense, sparse, sparse_part = _optimizers(name)
    dense_table = jnp.asarray(_initial_table())
    dense_state = dense.init(dense_table)
    sparse_table = jnp.asarray(_initial_table())
    sparse_state = sparse.init(sparse_table)
    chex.assert_trees_all_equal(sparse_state, sparse_part(dense_state))
    sparse_step = self.variant(functools.partial(_sparse_step, sparse))
    for ids, targets in _batches(4):
      dense_table, dense_state = _dense_step(dense, dense_table, dense_state,
                                             ids, targets)
      sparse_table, sparse_state = sparse_step(sparse_table, sparse_state, ids,
                                               targets)
    self.assertGreater(float(jnp.max(jnp.abs(dense_table - _initial_table()))),
                       1e-3)
    chex.assert_trees_all_close(sparse_table, dense_table, rtol=1e-5,
                                atol=1e-6)
    chex.assert_trees_all_close(sparse_state, sparse_part(dense_state),
                                rtol=1e-5)

  @parameterized.parameters('cf_sgd_half_life_capped', 'rowwise_adagrad')
  def test_switch_from_dense_to_sparse_mid_training(self, name):
    dense, sparse, sparse_part = _optimizers(name)
    batches = list(_batches(6))
    table = jnp.asarray(_initial_table())
    state = dense.init(table)
    for ids, targets in batches:
      table, state = _dense_step(dense, table, state, ids, targets)

    switched = jnp.asarray(_initial_table())
    dense_state = dense.init(switched)
    for ids, targets in batches[:3]:
      switched, dense_state = _dense_step(dense, switched, dense_state, ids,
                                          targets)
    sparse_state = sparse_part(dense_state)
    for ids, targets in batches[3:]:
      switched, sparse_state = _sparse_step(sparse, switched, sparse_state,
                                            ids, targets)
    chex.assert_trees_all_close(switched, table, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(sparse_state, sparse_part(state), rtol=1e-5)

  def test_matches_numpy_reference_with_duplicates(self):
    sparse = fasgd_optax.sparse_cf_sgd(0.5, num_steps=20, count_half_life=3.0)
    table = jnp.asarray(_initial_table())
    state = sparse.init(table)
    expected = _initial_table().astype(np.float64)
    leaf = reference.ReferenceLeaf(ROWS, num_steps=20, half_life=3.0)
    for ids, targets in _batches(5):
      row_grads = jax.grad(_loss)(table[ids], targets)
      dense_grad = np.zeros((ROWS, DIM))
      np.add.at(dense_grad, np.ravel(ids), np.reshape(row_grads, (-1, DIM)))
      expected += leaf.update(dense_grad, np.asarray(ids), 0.5, None)
      table, state = sparse.apply(table, state, ids, row_grads)
    np.testing.assert_allclose(table, expected, rtol=1e-5, atol=1e-6)

  def test_counts_duplicates_with_multiplicity(self):
    sparse = fasgd_optax.sparse_cf_sgd(1.0, num_steps=10)
    table = jnp.zeros((6, 2))
    state = sparse.init(table)
    ids = jnp.array([[3, 3], [3, 5]])
    table, state = sparse.apply(table, state, ids, jnp.ones((2, 2, 2)))
    np.testing.assert_array_equal(state.row_counts, [0, 0, 0, 3, 0, 1])
    # Summed gradient 3 at c = 10·3/1: moves by 3/sqrt(30).
    np.testing.assert_allclose(table[3], -3.0 / np.sqrt(30.0) * np.ones(2),
                               rtol=1e-6)
    np.testing.assert_allclose(table[5], -1.0 / np.sqrt(10.0) * np.ones(2),
                               rtol=1e-6)
    np.testing.assert_array_equal(table[jnp.array([0, 1, 2, 4])], 0.0)


class SparseBehaviourTest(parameterized.TestCase):

  @parameterized.parameters(*ALL_OPTIMIZERS)
  def test_donates_table_and_state(self, name):
    _, sparse, _ = _optimizers(name)
    table = jnp.asarray(_initial_table())
    state = sparse.init(table)
    counts_before = jax.tree.leaves(state)
    new_table, new_state = sparse.apply(table, state, jnp.array([1, 2]),
                                        jnp.ones((2, DIM)))
    self.assertTrue(table.is_deleted())
    for leaf in counts_before:
      self.assertTrue(leaf.is_deleted())
    self.assertFalse(new_table.is_deleted())
    chex.assert_trees_all_equal_shapes_and_dtypes(new_state, sparse.init(
        jnp.asarray(_initial_table())))

  @parameterized.parameters(*ALL_OPTIMIZERS)
  def test_no_work_proportional_to_rows(self, name):
    """Only gathers and scatters touch the N-row arrays: no O(N) ops."""
    _, sparse, _ = _optimizers(name)
    num_rows = 100_003  # A size no other array in the step has.
    frequencies = np.ones(num_rows, np.float32)
    if name == 'fa_sgd':
      sparse = fasgd_optax.sparse_fa_sgd(0.8, frequencies, num_steps=50)
    table = jax.ShapeDtypeStruct((num_rows, DIM), jnp.float32)
    state = jax.eval_shape(sparse.init, table)
    ids = jax.ShapeDtypeStruct((64,), jnp.int32)
    row_grads = jax.ShapeDtypeStruct((64, DIM), jnp.float32)
    jaxpr = jax.make_jaxpr(sparse.apply)(table, state, ids, row_grads)
    allowed = {'gather', 'scatter', 'scatter-add', 'scatter_add', 'pjit',
               'jit'}
    offenders = []

    def visit(jaxpr):
      for eqn in jaxpr.eqns:
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
          visit(sub)
        big = any(num_rows in getattr(v.aval, 'shape', ())
                  for v in eqn.outvars)
        if big and eqn.primitive.name not in allowed:
          offenders.append(eqn.primitive.name)

    visit(jaxpr.jaxpr)
    self.assertEqual(offenders, [])

  @parameterized.parameters(*ALL_OPTIMIZERS)
  def test_compiled_step_copies_no_state_or_table(self, name):
    """XLA copies a whole array when a scatter may race a gather from it."""
    _, sparse, _ = _optimizers(name)
    num_rows = 100_003  # A size no other array in the step has.
    if name == 'fa_sgd':
      sparse = fasgd_optax.sparse_fa_sgd(
          0.8, np.ones(num_rows, np.float32), num_steps=50)
    table = jnp.zeros((num_rows, DIM), jnp.float32)
    state = sparse.init(table)
    step = jax.jit(sparse.apply, donate_argnums=(0, 1))
    hlo = step.lower(table, state, jnp.arange(64) % 7,
                     jnp.ones((64, DIM))).compile().as_text()
    copies = [line.strip() for line in hlo.splitlines()
              if ' copy(' in line and str(num_rows) in line.split('copy(')[0]]
    self.assertEqual(copies, [])

  def test_bad_ids_raise_outside_jit(self):
    sparse = fasgd_optax.sparse_cf_sgd(1.0, num_steps=10)
    table = jnp.zeros((6, 2))
    state = sparse.init(table)
    for bad in (-1, 6):
      with self.assertRaisesRegex(ValueError, rf'\[0, 6\).*got {bad}'):
        sparse.apply(table, state, jnp.array([1, bad]), jnp.ones((2, 2)))
    with self.assertRaisesRegex(TypeError, 'integer'):
      sparse.apply(table, state, jnp.array([1.0]), jnp.ones((1, 2)))
    with self.assertRaisesRegex(ValueError, r'row_grads.*\(2, 2\).*\(2, 3\)'):
      sparse.apply(table, state, jnp.array([1, 2]), jnp.ones((2, 3)))
    with self.assertRaisesRegex(ValueError, 'at least one dimension'):
      sparse.init(jnp.zeros(()))

  @parameterized.parameters('cf_sgd_half_life_capped', 'fa_sgd',
                            'rowwise_adagrad')
  def test_bad_ids_are_dropped_under_jit(self, name):
    _, sparse, _ = _optimizers(name)
    table = jnp.asarray(_initial_table())
    state = sparse.init(table)
    step = jax.jit(sparse.apply)
    ids = jnp.array([-1, 5, ROWS, -ROWS, 5])
    new_table, new_state = step(jnp.array(table), state, ids,
                                jnp.ones((5, DIM)))
    changed = np.flatnonzero(np.any(new_table != _initial_table(), axis=1))
    np.testing.assert_array_equal(changed, [5])
    if name.startswith('cf_sgd'):
      np.testing.assert_array_equal(np.flatnonzero(new_state.row_counts), [5])
      self.assertEqual(float(new_state.row_counts[5]), 2.0)
    if name == 'rowwise_adagrad':
      accumulators = new_state[0].accumulators
      np.testing.assert_array_equal(
          np.flatnonzero(accumulators != accumulators[0]), [5])

  @parameterized.named_parameters(
      ('cf_sgd', lambda **kw: fasgd_optax.sparse_cf_sgd(
          1.0, num_steps=10, **kw)),
      ('fa_sgd', lambda **kw: fasgd_optax.sparse_fa_sgd(
          1.0, jnp.ones(6), num_steps=10, **kw)),
      ('rowwise_adagrad', lambda **kw: fasgd_optax.sparse_rowwise_adagrad(
          1.0, **kw)),
  )
  def test_bad_ids_reported_by_checkify_only_when_asked(self, make):
    table = jnp.zeros((6, 2))
    for checkify_ids in (True, False):
      sparse = make(checkify_ids=checkify_ids)
      state = sparse.init(table)
      args = (table, state, jnp.array([1, 7]), jnp.ones((2, 2)))
      # A check is an effect, which takes a jitted step off JAX's fast
      # dispatch path: only there when asked for.
      effects = jax.make_jaxpr(sparse.apply)(*args).effects
      self.assertEqual(bool(effects), checkify_ids)
      checked = checkify.checkify(jax.jit(sparse.apply),
                                  errors=checkify.user_checks)
      error, (new_table, _) = checked(*args)
      if checkify_ids:
        self.assertIn('got 7', error.get())
      else:
        self.assertIsNone(error.get())
      # Either way only row 1 moved.
      np.testing.assert_array_equal(
          np.flatnonzero(np.any(np.asarray(new_table) != 0, axis=1)), [1])

  def test_empty_batch_only_counts_the_step(self):
    sparse = fasgd_optax.sparse_cf_sgd(1.0, num_steps=10)
    table = jnp.ones((6, 2))
    table, state = sparse.apply(table, sparse.init(table),
                                jnp.zeros((0,), jnp.int32), jnp.zeros((0, 2)))
    np.testing.assert_array_equal(table, 1.0)
    self.assertEqual(int(state.count), 1)
    np.testing.assert_array_equal(state.row_counts, 0)

  @parameterized.parameters(jnp.bfloat16, jnp.float16)
  def test_keeps_table_dtype(self, dtype):
    sparse = fasgd_optax.sparse_cf_sgd(1.0, num_steps=10)
    table = jnp.ones((6, 2), dtype)
    table, _ = sparse.apply(table, sparse.init(table), jnp.array([1, 1]),
                            jnp.ones((2, 2), dtype))
    self.assertEqual(table.dtype, dtype)
    self.assertLess(float(table[1, 0]), 1.0)

  def test_table_with_one_dimension(self):
    # An FM's linear weights: N rows of one value each.
    dense, sparse, sparse_part = _optimizers('cf_sgd')
    weights = jnp.asarray(_initial_table()[:, 0])
    ids = jnp.array([2, 2, 7])
    loss = lambda w: jnp.sum(w ** 2)
    grads = jax.grad(lambda w: loss(w[ids]))(weights)
    updates, dense_state = dense.update(grads, dense.init(weights), weights,
                                        ids=ids)
    dense_weights = optax.apply_updates(weights, updates)
    sparse_weights, sparse_state = sparse.apply(
        jnp.array(weights), sparse.init(weights), ids,
        jax.grad(loss)(weights[ids]))
    chex.assert_trees_all_close(sparse_weights, dense_weights, rtol=1e-6)
    chex.assert_trees_all_close(sparse_state, sparse_part(dense_state))

  def test_fa_sgd_frequencies_must_match_rows(self):
    with self.assertRaisesRegex(ValueError, 'one value per row'):
      fasgd_optax.sparse_fa_sgd(0.1, np.ones((3, 2)), num_steps=10)
    sparse = fasgd_optax.sparse_fa_sgd(0.1, np.ones(5), num_steps=10)
    with self.assertRaisesRegex(ValueError, '5 entries but the table has 6'):
      sparse.init(jnp.zeros((6, 2)))
    with self.assertRaisesRegex(ValueError, 'num_steps'):
      fasgd_optax.sparse_fa_sgd(0.1, np.ones(5), num_steps=None)

  def test_state_is_one_counter_per_row(self):
    table = jax.ShapeDtypeStruct((1000, 64), jnp.float32)
    state = fasgd_optax.sparse_cf_sgd(1.0, num_steps=10).init(table)
    state_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(state))
    params_bytes = 1000 * 64 * 4
    self.assertLessEqual(state_bytes, params_bytes / 64 + 1024)

  def test_bad_hyperparameters(self):
    with self.assertRaisesRegex(ValueError, 'learning_rate'):
      fasgd_optax.sparse_cf_sgd(-1.0, num_steps=10)
    with self.assertRaisesRegex(ValueError, 'count_half_life'):
      fasgd_optax.sparse_cf_sgd(1.0, num_steps=10, count_half_life=0.0)
    with self.assertRaisesRegex(ValueError, 'epsilon'):
      fasgd_optax.sparse_rowwise_adagrad(1.0, epsilon=0.0)


class SaturationTest(absltest.TestCase):

  def test_counts_saturate_at_int32_max_and_match_dense(self):
    int32_max = 2**31 - 1
    near_max = jnp.array([int32_max - 1, 5, int32_max], jnp.int32)
    ids = jnp.array([0, 0, 0, 1, 2])
    row_grads = jnp.ones((5, 2))
    sparse = fasgd_optax.sparse_cf_sgd(1.0, num_steps=10)
    dense = fasgd_optax.cf_sgd(1.0, num_steps=10)
    table = jnp.zeros((3, 2))
    dense_state = dense.init(table)
    dense_state = (dense_state[0]._replace(row_counts=near_max),) + dense_state[1:]
    grads = jnp.zeros((3, 2)).at[ids].add(row_grads)
    updates, dense_state = dense.update(grads, dense_state, table, ids=ids)
    sparse_table, sparse_state = sparse.apply(
        jnp.zeros((3, 2)), sparse.init(table)._replace(row_counts=near_max),
        ids, row_grads)
    np.testing.assert_array_equal(sparse_state.row_counts,
                                  [int32_max, 6, int32_max])
    chex.assert_trees_all_equal(sparse_state, dense_state[0])
    chex.assert_trees_all_close(sparse_table, updates, rtol=1e-6)


class ShardedTableTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    chex.assert_equal(jax.device_count(), NUM_DEVICES)

  @parameterized.parameters(
      ('cf_sgd_half_life_capped', False, False),
      ('cf_sgd_half_life_capped', False, True),
      ('cf_sgd_half_life_capped', True, False),
      ('cf_sgd_half_life_capped', True, True),
      ('fa_sgd', False, True),
      ('rowwise_adagrad', True, True),
  )
  def test_row_sharded_table(self, name, explicit, use_jit):
    if explicit:
      if not hasattr(jax.sharding, 'AxisType'):
        self.skipTest('No Explicit mesh axes in this JAX.')
      mesh = jax.make_mesh((NUM_DEVICES,), ('rows',),
                           axis_types=(jax.sharding.AxisType.Explicit,))
    else:
      mesh = Mesh(np.array(jax.devices()), ('rows',))
    sharding = NamedSharding(mesh, P('rows', None))
    _, sparse, _ = _optimizers(name)
    table = jax.device_put(jnp.asarray(_initial_table()), sharding)
    state = sparse.init(table)
    for leaf in jax.tree.leaves(state):
      if leaf.ndim:
        self.assertEqual(leaf.sharding.spec, P('rows'))
    state_shardings = jax.tree.map(lambda x: x.sharding, state)
    apply = jax.jit(sparse.apply, donate_argnums=(0, 1)) if use_jit else (
        sparse.apply)

    unsharded_table = jnp.asarray(_initial_table())
    unsharded_state = sparse.init(unsharded_table)
    for ids, targets in _batches(3):
      row_grads = jax.grad(_loss)(unsharded_table[ids], targets)
      table, state = apply(table, state, ids, row_grads)
      unsharded_table, unsharded_state = sparse.apply(
          unsharded_table, unsharded_state, ids, row_grads)
      self.assertTrue(table.sharding.is_equivalent_to(sharding, 2))
      for before, after in zip(jax.tree.leaves(state_shardings),
                               jax.tree.leaves(state)):
        self.assertTrue(after.sharding.is_equivalent_to(before, after.ndim),
                        f'{after.sharding} != {before}')
    chex.assert_trees_all_close(table, unsharded_table, rtol=1e-6)
    chex.assert_trees_all_close(state, unsharded_state, rtol=1e-6)


class DataParallelTest(parameterized.TestCase):
  """Each replica's batch; the result of one device over all of them."""

  def _single_device(self, sparse, batches):
    table = jnp.asarray(_initial_table())
    state = sparse.init(table)
    for ids, targets in batches:
      # The global loss is the mean over all replicas' examples.
      row_grads = jax.grad(_loss)(table[ids], targets)
      table, state = sparse.apply(table, state, ids, row_grads)
    return table, state

  @parameterized.parameters('cf_sgd_half_life_capped', 'rowwise_adagrad')
  def test_pmap(self, name):
    make = {
        'cf_sgd_half_life_capped': functools.partial(
            fasgd_optax.sparse_cf_sgd, 0.8, num_steps=50, count_half_life=2.0,
            max_learning_rate=0.15),
        'rowwise_adagrad': functools.partial(
            fasgd_optax.sparse_rowwise_adagrad, 0.3),
    }[name]
    sparse = make(axis_name='batch')
    batches = list(_batches(3, shape=(NUM_DEVICES * 2, 2)))

    @functools.partial(jax.pmap, axis_name='batch')
    def step(table, state, ids, targets):
      row_grads = jax.grad(_loss)(table[ids], targets)
      return sparse.apply(table, state, ids, row_grads)

    replicate = lambda tree: jax.tree.map(
        lambda x: jnp.stack([x] * NUM_DEVICES), tree)
    table = replicate(jnp.asarray(_initial_table()))
    state = replicate(sparse.init(jnp.asarray(_initial_table())))
    per_device = lambda x: x.reshape((NUM_DEVICES, -1) + x.shape[1:])
    for ids, targets in batches:
      table, state = step(table, state, per_device(ids), per_device(targets))

    expected_table, expected_state = self._single_device(make(), batches)
    for device in range(NUM_DEVICES):
      chex.assert_trees_all_close(table[device], expected_table, rtol=1e-5,
                                  atol=1e-6)
      chex.assert_trees_all_close(
          jax.tree.map(lambda x, d=device: x[d], state), expected_state,
          rtol=1e-5)

  def test_shard_map(self):
    shard_map = getattr(jax, 'shard_map', None)
    if shard_map is None:  # Older JAX.
      from jax.experimental.shard_map import shard_map  # pylint: disable=g-import-not-at-top
    mesh = Mesh(np.array(jax.devices()), ('batch',))
    sparse = fasgd_optax.sparse_cf_sgd(0.8, num_steps=50, axis_name='batch')

    def local_step(table, state, ids, targets):
      row_grads = jax.grad(_loss)(table[ids], targets)
      return sparse.apply(table, state, ids, row_grads)

    step = jax.jit(shard_map(
        local_step, mesh=mesh, in_specs=(P(), P(), P('batch'), P('batch')),
        out_specs=(P(), P())))
    batches = list(_batches(3, shape=(NUM_DEVICES * 2, 2)))
    table = jax.device_put(jnp.asarray(_initial_table()),
                           NamedSharding(mesh, P()))
    state = jax.device_put(sparse.init(table), NamedSharding(mesh, P()))
    for ids, targets in batches:
      table, state = step(table, state, ids, targets)
    expected_table, expected_state = self._single_device(
        fasgd_optax.sparse_cf_sgd(0.8, num_steps=50), batches)
    chex.assert_trees_all_close(table, expected_table, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(state, expected_state)


class TouchedRowsTest(absltest.TestCase):

  def test_sums_duplicates_and_drops_bad_ids(self):
    ids = jnp.array([4, -1, 2, 4, 9, 4])
    grads = jnp.arange(6.0)[:, None] * jnp.ones((1, 2))
    keys, flat_grads = sparse_lib.flat_batch(ids, grads, num_rows=9)
    np.testing.assert_array_equal(keys, [4, 9, 2, 4, 9, 4])
    touched = sparse_lib.touched_rows(keys, flat_grads, num_rows=9)
    rows = np.asarray(touched.rows)
    np.testing.assert_array_equal(rows, np.sort(rows))
    np.testing.assert_array_equal(rows[touched.slots], keys)
    by_row = {int(r): (np.asarray(g), int(m)) for r, g, m in zip(
        rows, sparse_lib.summed_grads(touched), touched.multiplicities)
              if r < 9}
    self.assertEqual(sorted(by_row), [2, 4])
    np.testing.assert_array_equal(by_row[4][0], [8.0, 8.0])  # 0 + 3 + 5
    self.assertEqual(by_row[4][1], 3)
    np.testing.assert_array_equal(by_row[2][0], [2.0, 2.0])
    self.assertEqual(by_row[2][1], 1)


class BenchmarkScriptTest(absltest.TestCase):
  """benchmarks/embedding_step.py and make_table.py run end to end."""

  def _run(self, *flags_):
    """(report, markdown, whether the PNG was written) of a tiny run."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root, JAX_PLATFORMS='cpu')
    with tempfile.TemporaryDirectory() as output:
      subprocess.run(
          [sys.executable, os.path.join(root, 'benchmarks', 'embedding_step.py'),
           '--dim=8', '--batch=64', '--steps=2', '--warmup=1',
           '--num_batches=2', '--min_seconds=0', *flags_,
           f'--output={output}', '--name=tiny'],
          check=True, env=env, capture_output=True, timeout=300)
      with open(os.path.join(output, 'tiny.json')) as f:
        report = json.load(f)
      markdown = subprocess.run(
          [sys.executable, os.path.join(root, 'benchmarks', 'make_table.py'),
           f'--input={output}/tiny.json', '--output=-'],
          check=True, env=env, capture_output=True, text=True,
          timeout=120).stdout
      return (report, markdown,
              os.path.exists(os.path.join(output, 'tiny.png')))

  def test_tiny_benchmark_and_table(self):
    report, markdown, wrote_png = self._run(
        '--num_rows=1000,2000', '--max_memory_gb=0.0002', '--repeats=2',
        '--optimizers=cf_sgd,adam,sparse_cf_sgd,sparse_fa_sgd')
    self.assertTrue(wrote_png)
    by_name = {(r['optimizer'], r['num_rows']): r for r in report['results']}
    self.assertEqual(len(by_name), 8)
    # Adam's 5 tables' worth of 2000 × 8 floats exceed the 200 kB budget.
    self.assertIn('skipped', by_name[('adam', 2000)])
    cf = by_name[('sparse_cf_sgd', 2000)]
    self.assertEqual(cf['state_bytes'], 2000 * 4 + 4)
    self.assertEqual(cf['params_bytes'], 2000 * 8 * 4)
    self.assertGreater(cf['median_ms'], 0.0)
    # Two rounds of 2 timed steps each; the median is the rounds' median.
    self.assertLen(cf['round_medians_ms'], 2)
    self.assertEqual(cf['timed_steps'], 4)
    self.assertAlmostEqual(cf['median_ms'],
                           float(np.median(cf['round_medians_ms'])))
    self.assertTrue(report['config']['donate'])
    # Each size's dense and sparse optimizers ran in a subprocess of their
    # own, and their results came back in order, sizes first.
    self.assertTrue(report['config']['isolate'])
    self.assertEqual(
        [(r['num_rows'], r['path']) for r in report['results']],
        [(1000, 'dense')] * 2 + [(1000, 'sparse')] * 2
        + [(2000, 'dense')] * 2 + [(2000, 'sparse')] * 2)
    self.assertEqual(by_name[('sparse_fa_sgd', 1000)]['frequencies_bytes'],
                     1000 * 4)
    self.assertIn('| CF-SGD, sparse |', markdown)
    self.assertIn('skipped¹', markdown)
    self.assertIn('CF-SGD state bytes ≤ params bytes / d + 1 KiB', markdown)
    self.assertIn('in 2 rounds', markdown)

  def test_no_donation_counts_fresh_outputs_in_memory_estimate(self):
    # 1000 × 8 floats are 32 kB: sparse CF-SGD needs 1 table donated and 2
    # without donation (a fresh table each step), Adagrad 4 and 6.
    report, markdown, _ = self._run(
        '--num_rows=1000', '--max_memory_gb=0.00015', '--nodonate',
        '--noisolate', '--optimizers=adagrad,sparse_cf_sgd')
    by_name = {r['optimizer']: r for r in report['results']}
    self.assertFalse(report['config']['donate'])
    self.assertIn('skipped', by_name['adagrad'])
    self.assertIn('needs about 6 tables', by_name['adagrad']['skipped'])
    self.assertGreater(by_name['sparse_cf_sgd']['median_ms'], 0.0)
    self.assertIn('**not** donated', markdown)


if __name__ == '__main__':
  absltest.main()
