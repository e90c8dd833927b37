"""`init` shards per-row state like the rows (DESIGN.md §4).

Eagerly a table's sharding says where its rows are. Under `jit` on a mesh
with Explicit axes the sharding is part of the traced table's type, and
`jax.jit(tx.init)(params)` must give what `tx.init(params)` gives. On an Auto
mesh it is not, and the compiler lays out a jitted `init`'s outputs (as it
does Optax's own states); Flax partition metadata is the way to ask for the
rows' layout there (tested in test_optax_integration.py).
"""

import contextlib

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import optax

import fasgd_optax
from tests import cpu_devices

NUM_DEVICES, ROWS, DIM = 8, 64, 4

TRANSFORMATIONS = {
    'cf_sgd': lambda: fasgd_optax.cf_sgd(0.1, num_steps=100),
    'cf_sgd_half_life': lambda: fasgd_optax.cf_sgd(
        0.1, num_steps=100, count_half_life=5.0),
    'rowwise_adagrad': lambda: fasgd_optax.rowwise_adagrad(
        0.1, initial_accumulator_value=0.5),
    'sparse_cf_sgd': lambda: fasgd_optax.sparse_cf_sgd(0.1, num_steps=100),
    'sparse_cf_sgd_half_life': lambda: fasgd_optax.sparse_cf_sgd(
        0.1, num_steps=100, count_half_life=5.0),
    'sparse_rowwise_adagrad': lambda: fasgd_optax.sparse_rowwise_adagrad(
        0.1, initial_accumulator_value=0.5),
}


def _cpu_mesh(explicit):
  devices = np.array(cpu_devices.get(NUM_DEVICES))
  if not explicit:
    return Mesh(devices, ('rows',))
  if not hasattr(jax.sharding, 'AxisType'):
    raise absltest.SkipTest('this JAX has no Explicit mesh axes')
  return Mesh(devices, ('rows',),
              axis_types=(jax.sharding.AxisType.Explicit,))


def _spec(leaf):
  return tuple(leaf.sharding.spec) if hasattr(leaf.sharding, 'spec') else None


class InitShardingTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    cpu_devices.use(self, NUM_DEVICES)

  @parameterized.product(name=tuple(TRANSFORMATIONS),
                         explicit_and_jit=((False, False), (True, False),
                                           (True, True)))
  def test_per_row_state_is_sharded_like_the_rows(self, name,
                                                  explicit_and_jit):
    explicit, use_jit = explicit_and_jit
    mesh = _cpu_mesh(explicit)
    tx = TRANSFORMATIONS[name]()
    rng = np.random.default_rng(0)
    values = rng.normal(size=(ROWS, DIM)).astype(np.float32)
    values[3, 0] = np.nan  # A NaN or inf weight must not leak into the state.
    values[5, 0] = np.inf
    table = jax.device_put(values, NamedSharding(mesh, P('rows', None)))
    init = jax.jit(tx.init) if use_jit else tx.init
    with jax.set_mesh(mesh) if explicit else contextlib.nullcontext():
      state = init(table)
      eager = tx.init(table)
    per_row = [leaf for leaf in jax.tree.leaves(state) if leaf.ndim]
    self.assertNotEmpty(per_row)
    for leaf in per_row:
      self.assertEqual(leaf.shape, (ROWS,))
      self.assertEqual(_spec(leaf), ('rows',), f'{leaf.sharding}')
    for leaf, eager_leaf in zip(jax.tree.leaves(state),
                                jax.tree.leaves(eager)):
      np.testing.assert_array_equal(leaf, eager_leaf)
      self.assertEqual(leaf.dtype, eager_leaf.dtype)
      if not leaf.ndim:
        self.assertIn(_spec(leaf), ((), None))

  @parameterized.parameters(*TRANSFORMATIONS)
  def test_jitted_init_on_an_auto_mesh_has_the_eager_values(self, name):
    mesh = _cpu_mesh(explicit=False)
    tx = TRANSFORMATIONS[name]()
    table = jax.device_put(jnp.ones((ROWS, DIM)),
                           NamedSharding(mesh, P('rows', None)))
    jax.tree.map(np.testing.assert_array_equal, jax.jit(tx.init)(table),
                 tx.init(table))

  @parameterized.named_parameters(
      ('cf_sgd', lambda lr: fasgd_optax.cf_sgd(lr, num_steps=100)),
      ('rowwise_adagrad', fasgd_optax.rowwise_adagrad))
  def test_a_schedules_count_is_replicated_on_the_mesh(self, make_tx):
    # Optax's own count, left on one device, came back from a jitted update
    # replicated on the mesh, and the second call compiled again.
    mesh = _cpu_mesh(explicit=False)
    tx = make_tx(optax.linear_schedule(0.1, 0.01, 10))
    params = jax.device_put(jnp.ones((ROWS, DIM)),
                            NamedSharding(mesh, P('rows', None)))
    state = tx.init(params)
    for leaf in jax.tree.leaves(state):
      if not leaf.ndim:
        self.assertEqual(leaf.sharding, NamedSharding(mesh, P()))
    update = jax.jit(tx.update)
    for _ in range(3):
      _, state = update(params, state, params,
                        ids=jnp.array([0, ROWS - 1]))
    self.assertEqual(update._cache_size(), 1)

  def test_explicit_types_match_issue_example(self):
    """The report of issue 11 §3: int32[64@x] with and without `jit`."""
    mesh = _cpu_mesh(explicit=True)
    with jax.set_mesh(mesh):
      params = jax.device_put(jnp.zeros((ROWS, DIM)),
                              NamedSharding(mesh, P('rows', None)))
      tx = fasgd_optax.cf_sgd(0.1, num_steps=100)
      eager = jax.typeof(tx.init(params)[0].row_counts)
      jitted = jax.typeof(jax.jit(tx.init)(params)[0].row_counts)
    self.assertEqual(eager, jitted)
    self.assertEqual(tuple(jitted.sharding.spec), ('rows',))


if __name__ == '__main__':
  absltest.main()
