"""Data parallelism (pmap, shard_map) and row-sharded tables (DESIGN.md §3-4)."""

import functools

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import fasgd_optax
from tests import cpu_devices
from tests import reference

NUM_DEVICES = cpu_devices.NUM_DEVICES
ROWS, DIM, PER_DEVICE_BATCH = 64, 4, 6


def _loss(params, ids, targets):
  """Sum over examples, so per-device gradients add up to the global one."""
  predictions = (params['table'][ids].sum(axis=1) @ params['kernel'])[:, 0]
  return jnp.sum((predictions - targets) ** 2)


def _init_params():
  rng = np.random.default_rng(0)
  return {'table': jnp.asarray(rng.normal(size=(ROWS, DIM)), jnp.float32),
          'kernel': jnp.asarray(rng.normal(size=(DIM, 1)), jnp.float32)}


def _batches(num_steps):
  rng = np.random.default_rng(1)
  for _ in range(num_steps):
    ids = reference.zipf_ids(rng, ROWS, (NUM_DEVICES, PER_DEVICE_BATCH, 2))
    targets = rng.normal(size=(NUM_DEVICES, PER_DEVICE_BATCH)).astype(np.float32)
    yield ids, targets


def _replicate(tree):
  """`tree` stacked once per device, for `pmap`."""
  return jax.tree.map(lambda x: jnp.stack([x] * NUM_DEVICES), tree)


def _single_device_run(tx, num_steps):
  """The reference: one device over the concatenated batches."""
  params = _init_params()
  state = tx.init(params)

  @jax.jit
  def step(params, state, ids, targets):
    grads = jax.grad(_loss)(params, ids, targets)
    updates, state = tx.update(grads, state, params, ids={'table': ids})
    return optax.apply_updates(params, updates), state

  for ids, targets in _batches(num_steps):
    params, state = step(params, state, ids.reshape(-1, 2), targets.reshape(-1))
  return params, state


class DataParallelTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.devices = cpu_devices.use(self)

  @parameterized.named_parameters(('horizon', 30, None), ('half_life', 30, 3.0))
  def test_pmap_matches_concatenated_batch(self, num_steps, half_life):
    make_tx = functools.partial(fasgd_optax.cf_sgd, 0.02, num_steps=num_steps,
                                count_half_life=half_life)
    tx = make_tx(axis_name='batch')

    @functools.partial(jax.pmap, axis_name='batch', devices=self.devices)
    def step(params, state, ids, targets):
      grads = jax.grad(_loss)(params, ids, targets)
      grads = jax.lax.psum(grads, 'batch')
      updates, state = tx.update(grads, state, params, ids={'table': ids})
      return optax.apply_updates(params, updates), state

    params = _replicate(_init_params())
    state = _replicate(tx.init(_init_params()))
    for ids, targets in _batches(4):
      params, state = step(params, state, ids, targets)

    expected_params, expected_state = _single_device_run(make_tx(), 4)
    for device in range(NUM_DEVICES):
      on_device = jax.tree.map(lambda x, d=device: x[d], (params, state))
      chex.assert_trees_all_close(on_device[0], expected_params, rtol=1e-5,
                                  atol=1e-6)
      chex.assert_trees_all_close(on_device[1], expected_state, rtol=1e-6)
    # Presence-counted leaves count once per step, not once per replica.
    if half_life is None:
      np.testing.assert_array_equal(
          optax.tree.get(state, 'row_counts')['kernel'][:, 0], 4)

  def test_shard_map_matches_concatenated_batch(self):
    mesh = Mesh(np.array(self.devices), ('batch',))
    tx = fasgd_optax.cf_sgd(0.02, num_steps=30, axis_name='batch')
    shard_map = getattr(jax, 'shard_map', None)
    if shard_map is None:  # Older JAX.
      from jax.experimental.shard_map import shard_map  # pylint: disable=g-import-not-at-top

    def local_step(params, state, ids, targets):
      # shard_map's autodiff already sums the gradient of the replicated
      # parameters over 'batch'.
      grads = jax.grad(_loss)(params, ids, targets)
      updates, state = tx.update(grads, state, params, ids={'table': ids})
      return optax.apply_updates(params, updates), state

    step = jax.jit(shard_map(
        local_step, mesh=mesh, in_specs=(P(), P(), P('batch'), P('batch')),
        out_specs=(P(), P())))
    params = jax.device_put(_init_params(), NamedSharding(mesh, P()))
    state = tx.init(params)
    for ids, targets in _batches(4):
      params, state = step(params, state, ids.reshape(-1, 2),
                           targets.reshape(-1))
    expected_params, expected_state = _single_device_run(
        fasgd_optax.cf_sgd(0.02, num_steps=30), 4)
    chex.assert_trees_all_close(params, expected_params, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(state, expected_state)

  def test_pmap_without_axis_name(self):
    # Identical inputs on every device and no axis_name: each replica counts
    # its own (identical) batch. (chex's pmap variant would skip this on a
    # one-GPU machine: it counts the default backend's devices.)
    tx = fasgd_optax.cf_sgd(0.3, num_steps=30)
    params = _init_params()
    ids = jnp.array([[1, 2], [2, 2]])
    grads = jax.grad(_loss)(params, ids, jnp.ones(2))
    step = jax.pmap(lambda g, s, p, i: tx.update(g, s, p, ids={'table': i}),
                    devices=self.devices)
    updates, state = step(*_replicate((grads, tx.init(params), params, ids)))
    expected, expected_state = tx.update(grads, tx.init(params), params,
                                         ids={'table': ids})
    for device in range(NUM_DEVICES):
      on_device = jax.tree.map(lambda x, d=device: x[d], (updates, state))
      chex.assert_trees_all_close(on_device[0], expected, rtol=1e-6)
      chex.assert_trees_all_close(on_device[1], expected_state)


class ShardedTableTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.devices = cpu_devices.use(self)

  def _mesh_and_shardings(self):
    mesh = Mesh(np.array(self.devices), ('rows',))
    return mesh, {'table': NamedSharding(mesh, P('rows', None)),
                  'kernel': NamedSharding(mesh, P())}

  @parameterized.named_parameters(('counts', None), ('half_life', 4.0))
  def test_init_from_shape_dtype_structs_shards_counts(self, half_life):
    _, shardings = self._mesh_and_shardings()
    abstract = jax.tree.map(
        lambda p, s: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=s),
        _init_params(), shardings)
    tx = fasgd_optax.cf_sgd(0.3, num_steps=30, count_half_life=half_life)
    state = tx.init(abstract)
    for field in ('row_counts',) + (() if half_life is None else ('row_last_step',)):
      leaves = optax.tree.get(state, field)
      self.assertEqual(leaves['table'].sharding.spec, P('rows'))
      self.assertEqual(leaves['table'].shape, (ROWS,))
      self.assertTrue(leaves['kernel'].sharding.is_fully_replicated)

  @parameterized.named_parameters(('jit', True), ('eager', False))
  def test_update_keeps_shardings_and_values(self, use_jit):
    _, shardings = self._mesh_and_shardings()
    params = jax.device_put(_init_params(), shardings)
    tx = fasgd_optax.cf_sgd(0.02, num_steps=30, count_half_life=5.0)
    state = tx.init(params)
    state_shardings = jax.tree.map(lambda x: x.sharding, state)
    update = jax.jit(tx.update) if use_jit else tx.update
    unsharded_params = _init_params()
    unsharded_state = tx.init(unsharded_params)
    for ids, targets in _batches(3):
      ids, targets = ids.reshape(-1, 2), targets.reshape(-1)
      grads = jax.grad(_loss)(params, ids, targets)
      updates, state = update(grads, state, params, ids={'table': ids})
      params = optax.apply_updates(params, updates)
      unsharded_grads = jax.grad(_loss)(unsharded_params, ids, targets)
      unsharded_updates, unsharded_state = tx.update(
          unsharded_grads, unsharded_state, unsharded_params,
          ids={'table': ids})
      unsharded_params = optax.apply_updates(unsharded_params,
                                             unsharded_updates)
      for before, after in zip(jax.tree.leaves(state_shardings),
                               jax.tree.leaves(state)):
        self.assertTrue(after.sharding.is_equivalent_to(before, after.ndim),
                        f'{after.sharding} != {before}')
    self.assertEqual(optax.tree.get(state, 'row_counts')['table'].sharding.spec,
                     P('rows'))
    chex.assert_trees_all_close(params, unsharded_params, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(state, unsharded_state, rtol=1e-6)

  @parameterized.named_parameters(('jit', True), ('eager', False))
  def test_explicit_sharding_mesh(self, use_jit):
    # jax.make_mesh gives Explicit axes on recent JAX, where a sharding the
    # compiler cannot resolve is an error rather than a guess.
    mesh = jax.make_mesh((NUM_DEVICES,), ('rows',), devices=self.devices)
    table = jax.device_put(jnp.ones((ROWS, DIM)),
                           NamedSharding(mesh, P('rows', None)))
    tx = fasgd_optax.cf_sgd(0.1, num_steps=10, count_half_life=3.0)
    state = tx.init(table)
    update = jax.jit(tx.update) if use_jit else tx.update
    updates, new_state = update(jnp.ones_like(table), state, table,
                                ids=jnp.array([1, 2, 2, ROWS - 1]))
    self.assertEqual(updates.sharding.spec, table.sharding.spec)
    for before, after in zip(jax.tree.leaves(state),
                             jax.tree.leaves(new_state)):
      self.assertTrue(after.sharding.is_equivalent_to(before.sharding,
                                                      after.ndim))
    np.testing.assert_allclose(np.asarray(new_state[0].row_counts)[:3],
                               [0.0, 1.0, 2.0])

  @parameterized.named_parameters(('counts', None), ('half_life', 3.0))
  def test_eager_vmap_over_tables_on_an_explicit_mesh(self, half_life):
    if not hasattr(jax.sharding, 'AxisType'):
      self.skipTest('No Explicit mesh axes in this JAX.')
    mesh = jax.make_mesh((NUM_DEVICES,), ('x',), devices=self.devices,
                         axis_types=(jax.sharding.AxisType.Explicit,))
    tx = fasgd_optax.cf_sgd(1.0, num_steps=10, count_half_life=half_life)
    tables = jax.device_put(jnp.ones((2, ROWS, DIM)),
                            NamedSharding(mesh, P(None, 'x')))
    state = jax.tree.map(lambda x: jnp.stack([x, x]), tx.init(
        jax.device_put(jnp.ones((ROWS, DIM)), NamedSharding(mesh, P('x')))))
    ids = jnp.array([[1, 2], [3, 3]])
    counts = jax.vmap(lambda g, s, i: tx.update(g, s, g, ids=i)[1][0]
                      .row_counts)(tables, state, ids)
    np.testing.assert_array_equal(np.asarray(counts)[:, :4],
                                  [[0, 1, 1, 0], [0, 0, 0, 2]])

  @parameterized.product(use_jit=(True, False), half_life=(None, 3.0),
                         two_axes=(False, True))
  def test_ids_sharded_over_an_explicit_mesh(self, use_jit, half_life,
                                             two_axes):
    # The data-parallel layout: the batch's ids on the table's rows' axis,
    # or on a data axis of a 2 × 4 mesh whose other axis holds the rows.
    if not hasattr(jax.sharding, 'AxisType'):
      self.skipTest('No Explicit mesh axes in this JAX.')
    shape, names = ((2, 4), ('data', 'x')) if two_axes else ((8,), ('x',))
    explicit = (jax.sharding.AxisType.Explicit,) * len(shape)
    mesh = jax.make_mesh(shape, names, axis_types=explicit,
                         devices=self.devices)
    table = jax.device_put(jnp.ones((ROWS, DIM)),
                           NamedSharding(mesh, P('x', None)))
    tx = fasgd_optax.cf_sgd(0.1, num_steps=10, count_half_life=half_life)
    ids = jnp.arange(2 * NUM_DEVICES) % 5
    update = jax.jit(tx.update) if use_jit else tx.update
    _, state = update(jnp.ones_like(table), tx.init(table), table,
                      ids=jax.device_put(ids, NamedSharding(mesh, P(names[0]))))
    np.testing.assert_array_equal(state[0].row_counts,
                                  np.bincount(ids, minlength=ROWS))
    self.assertEqual(state[0].row_counts.sharding.spec, P('x'))


if __name__ == '__main__':
  absltest.main()
