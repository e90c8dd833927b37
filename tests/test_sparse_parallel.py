"""The sparse path on row-sharded tables and under data parallelism."""

import functools

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

import fasgd_optax
from tests import cpu_devices
from tests import sparse_cases as cases
from tests.sparse_cases import NUM_DEVICES


class ShardedTableTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.devices = cpu_devices.use(self, NUM_DEVICES)

  @parameterized.parameters(
      ('cf_sgd_half_life_capped', False, False),
      ('cf_sgd_half_life_capped', False, True),
      ('cf_sgd_half_life_capped', True, False),
      ('cf_sgd_half_life_capped', True, True),
      ('fa_sgd', False, True),
      ('rowwise_adagrad', True, True),
      # Optax's step counts of a schedule, placed by `init` as ours are.
      ('cf_sgd_schedule', False, True),
      ('rowwise_adagrad_schedule', False, True),
      ('rowwise_adagrad_schedule', True, True),
      ('sgd_schedule', False, True),
  )
  def test_row_sharded_table(self, name, explicit, use_jit):
    if explicit:
      if not hasattr(jax.sharding, 'AxisType'):
        self.skipTest('No Explicit mesh axes in this JAX.')
      mesh = jax.make_mesh((NUM_DEVICES,), ('rows',),
                           axis_types=(jax.sharding.AxisType.Explicit,),
                           devices=self.devices)
    else:
      mesh = Mesh(np.array(self.devices), ('rows',))
    sharding = NamedSharding(mesh, P('rows', None))
    _, sparse, _ = cases.optimizers(name)
    table = jax.device_put(jnp.asarray(cases.initial_table()), sharding)
    state = sparse.init(table)
    for leaf in jax.tree.leaves(state):
      if leaf.ndim:
        self.assertEqual(leaf.sharding.spec, P('rows'))
    state_shardings = jax.tree.map(lambda x: x.sharding, state)
    apply = jax.jit(sparse.apply, donate_argnums=(0, 1)) if use_jit else (
        sparse.apply)

    unsharded_table = jnp.asarray(cases.initial_table())
    unsharded_state = sparse.init(unsharded_table)
    for ids, targets in cases.batches(3):
      row_grads = jax.grad(cases.loss)(unsharded_table[ids], targets)
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
    if use_jit:  # The state's shardings held: one compilation for 3 steps.
      self.assertEqual(apply._cache_size(), 1)


  @parameterized.product(
      name=('cf_sgd_half_life_capped', 'sgd', 'rowwise_adagrad'),
      use_jit=(False, True))
  def test_batch_sharded_over_an_explicit_mesh(self, name, use_jit):
    """Data-parallel layout on an Explicit mesh, no `jax.set_mesh` needed."""
    if not hasattr(jax.sharding, 'AxisType'):
      self.skipTest('No Explicit mesh axes in this JAX.')
    mesh = jax.make_mesh((NUM_DEVICES,), ('x',),
                         axis_types=(jax.sharding.AxisType.Explicit,),
                         devices=self.devices)
    _, sparse, _ = cases.optimizers(name)
    table = jax.device_put(jnp.asarray(cases.initial_table()),
                           NamedSharding(mesh, P('x', None)))
    state = sparse.init(table)
    apply = jax.jit(sparse.apply) if use_jit else sparse.apply
    unsharded_table = jnp.asarray(cases.initial_table())
    unsharded_state = sparse.init(unsharded_table)
    for ids, targets in cases.batches(3, shape=(16,)):
      row_grads = jax.grad(cases.loss)(unsharded_table[ids], targets)
      table, state = apply(
          table, state, jax.device_put(ids, NamedSharding(mesh, P('x'))),
          jax.device_put(row_grads, NamedSharding(mesh, P('x', None))))
      unsharded_table, unsharded_state = sparse.apply(
          unsharded_table, unsharded_state, ids, row_grads)
    self.assertEqual(table.sharding.spec, P('x', None))
    chex.assert_trees_all_close(table, unsharded_table, rtol=1e-6)
    chex.assert_trees_all_close(state, unsharded_state, rtol=1e-6)


class DataParallelTest(parameterized.TestCase):
  """Each replica's batch; the result of one device over all of them."""

  def setUp(self):
    super().setUp()
    self.devices = cpu_devices.use(self, NUM_DEVICES)

  def _single_device(self, sparse, batches):
    table = jnp.asarray(cases.initial_table())
    state = sparse.init(table)
    for ids, targets in batches:
      # The global loss is the mean over all replicas' examples.
      row_grads = jax.grad(cases.loss)(table[ids], targets)
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
    batches = list(cases.batches(3, shape=(NUM_DEVICES * 2, 2)))

    @functools.partial(jax.pmap, axis_name='batch', devices=self.devices)
    def step(table, state, ids, targets):
      row_grads = jax.grad(cases.loss)(table[ids], targets)
      return sparse.apply(table, state, ids, row_grads)

    replicate = lambda tree: jax.tree.map(
        lambda x: jnp.stack([x] * NUM_DEVICES), tree)
    table = replicate(jnp.asarray(cases.initial_table()))
    state = replicate(sparse.init(jnp.asarray(cases.initial_table())))
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
    mesh = Mesh(np.array(self.devices), ('batch',))
    sparse = fasgd_optax.sparse_cf_sgd(0.8, num_steps=50, axis_name='batch')

    def local_step(table, state, ids, targets):
      row_grads = jax.grad(cases.loss)(table[ids], targets)
      return sparse.apply(table, state, ids, row_grads)

    step = jax.jit(shard_map(
        local_step, mesh=mesh, in_specs=(P(), P(), P('batch'), P('batch')),
        out_specs=(P(), P())))
    batches = list(cases.batches(3, shape=(NUM_DEVICES * 2, 2)))
    table = jax.device_put(jnp.asarray(cases.initial_table()),
                           NamedSharding(mesh, P()))
    state = jax.device_put(sparse.init(table), NamedSharding(mesh, P()))
    for ids, targets in batches:
      table, state = step(table, state, ids, targets)
    expected_table, expected_state = self._single_device(
        fasgd_optax.sparse_cf_sgd(0.8, num_steps=50), batches)
    chex.assert_trees_all_close(table, expected_table, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(state, expected_state)


if __name__ == '__main__':
  absltest.main()
