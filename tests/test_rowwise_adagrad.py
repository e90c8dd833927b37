"""Row-wise Adagrad (FBGEMM's EXACT_ROWWISE_ADAGRAD) against a NumPy reference."""

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import optax

import fasgd_optax
from tests import cpu_devices


def _reference_updates(grads, accumulators, learning_rate, epsilon):
  """One step of acc_k += mean(g_k²); u_k = -lr·g_k/(sqrt(acc_k) + eps)."""
  grads = np.asarray(grads, np.float64)
  row_axes = tuple(range(1, grads.ndim))
  accumulators = accumulators + (
      np.mean(grads ** 2, axis=row_axes) if grads.ndim > 1 else grads ** 2)
  scale = learning_rate / (np.sqrt(accumulators) + epsilon)
  scale = scale.reshape(scale.shape + (1,) * (grads.ndim - scale.ndim))
  return -scale * grads, accumulators


def _params():
  rng = np.random.default_rng(0)
  return {
      'embed': jnp.asarray(rng.normal(size=(7, 4)), jnp.float32),
      'linear': jnp.asarray(rng.normal(size=(7,)), jnp.float32),
      'kernel': jnp.asarray(rng.normal(size=(3, 2, 2)), jnp.float32),
      'bias': jnp.asarray(0.5, jnp.float32),
  }


def _grads(rng, params):
  grads = jax.tree.map(
      lambda p: rng.normal(size=p.shape).astype(np.float32), params)
  # Rows the batch did not touch: zero gradients.
  grads['embed'][rng.random(7) < 0.5] = 0.0
  return grads


class RowwiseAdagradTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(
      ('defaults', 0.1, 1e-8, 0.0),
      ('initial_value', 0.3, 1e-3, 0.5),
  )
  def test_matches_numpy_reference(self, learning_rate, epsilon, initial):
    tx = fasgd_optax.rowwise_adagrad(
        learning_rate, epsilon=epsilon, initial_accumulator_value=initial)
    params = _params()
    state = tx.init(params)
    update = self.variant(tx.update)
    rng = np.random.default_rng(1)
    expected_acc = jax.tree.map(
        lambda p: np.full(p.shape[:1], initial, np.float64), params)
    for _ in range(4):
      grads = _grads(rng, params)
      updates, state = update(grads, state, params)
      for name in params:
        expected, expected_acc[name] = _reference_updates(
            grads[name], expected_acc[name], learning_rate, epsilon)
        np.testing.assert_allclose(updates[name], expected, rtol=2e-5,
                                   atol=1e-7, err_msg=name)
        self.assertEqual(updates[name].dtype, params[name].dtype)
    accumulators = state[0].accumulators
    for name in params:
      np.testing.assert_allclose(accumulators[name], expected_acc[name],
                                 rtol=1e-5, err_msg=name)
    self.assertEqual(accumulators['embed'].shape, (7,))
    self.assertEqual(accumulators['bias'].shape, ())

  def test_untouched_rows_do_not_move(self):
    tx = fasgd_optax.rowwise_adagrad(1.0)
    params = jnp.ones((3, 2))
    grads = jnp.array([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0]])
    updates, state = tx.update(grads, tx.init(params), params)
    np.testing.assert_array_equal(updates[jnp.array([0, 2])], 0.0)
    np.testing.assert_array_equal(state[0].accumulators, [0.0, 12.5, 0.0])

  def test_schedule(self):
    schedule = optax.linear_schedule(1.0, 0.0, 4)
    tx = fasgd_optax.rowwise_adagrad(schedule)
    params = jnp.zeros((2, 2))
    state = tx.init(params)
    accumulators = np.zeros(2)
    for step in range(3):
      grads = jnp.full((2, 2), 2.0)
      updates, state = tx.update(grads, state, params)
      expected, accumulators = _reference_updates(
          grads, accumulators, float(schedule(step)), 1e-8)
      np.testing.assert_allclose(updates, expected, rtol=1e-6)

  def test_memory_is_one_float_per_row(self):
    params = {'embed': jnp.zeros((1000, 64)), 'bias': jnp.zeros(())}
    state = fasgd_optax.rowwise_adagrad(0.1).init(params)
    state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
    self.assertEqual(state_bytes, 1000 * 4 + 4)

  def test_inside_optax_wrappers(self):
    params = _params()
    tx = optax.chain(
        optax.clip_by_global_norm(10.0),
        optax.masked(fasgd_optax.rowwise_adagrad(0.1),
                     {'embed': True, 'linear': True, 'kernel': False,
                      'bias': False}),
    )
    state = tx.init(params)
    grads = _grads(np.random.default_rng(2), params)
    updates, state = jax.jit(tx.update)(grads, state, params)
    np.testing.assert_array_equal(updates['kernel'], grads['kernel'])
    expected, _ = _reference_updates(grads['embed'], np.zeros(7), 0.1, 1e-8)
    np.testing.assert_allclose(updates['embed'], expected, rtol=1e-5)
    # Extra args such as ids are accepted and ignored.
    fasgd_optax.rowwise_adagrad(0.1).update(
        grads, fasgd_optax.rowwise_adagrad(0.1).init(params), params,
        ids={'embed': jnp.array([1])})

  def test_scale_by_rowwise_adagrad_alone_takes_extra_args(self):
    # Used on its own, like `scale_by_counted_frequency`, it takes the same
    # update call (ids included) and ignores what it does not use.
    params = _params()
    tx = fasgd_optax.scale_by_rowwise_adagrad()
    self.assertIsInstance(tx, optax.GradientTransformationExtraArgs)
    grads = _grads(np.random.default_rng(3), params)
    state = tx.init(params)
    with_ids, _ = tx.update(grads, state, params,
                            ids={'embed': jnp.array([1, 1])}, other=3)
    without, _ = tx.update(grads, state, params)
    chex.assert_trees_all_equal(with_ids, without)
    expected, _ = _reference_updates(grads['embed'], np.zeros(7), 1.0, 1e-8)
    np.testing.assert_allclose(with_ids['embed'], expected * -1, rtol=1e-5)

  def test_keeps_row_sharding(self):
    mesh = Mesh(np.array(cpu_devices.use(self)), ('rows',))
    table = jax.device_put(jnp.ones((16, 4)),
                           NamedSharding(mesh, P('rows', None)))
    tx = fasgd_optax.rowwise_adagrad(0.1)
    state = tx.init(table)
    self.assertEqual(state[0].accumulators.sharding.spec, P('rows'))
    _, state = tx.update(jnp.ones((16, 4)), state, table)
    self.assertEqual(state[0].accumulators.sharding.spec, P('rows'))
    abstract = jax.ShapeDtypeStruct((16, 4), jnp.float32,
                                    sharding=table.sharding)
    self.assertEqual(tx.init(abstract)[0].accumulators.sharding.spec,
                     P('rows'))

  def test_bad_hyperparameters(self):
    with self.assertRaisesRegex(ValueError, 'epsilon'):
      fasgd_optax.rowwise_adagrad(0.1, epsilon=0.0)
    with self.assertRaisesRegex(ValueError, 'initial_accumulator_value'):
      fasgd_optax.rowwise_adagrad(0.1, initial_accumulator_value=-1.0)
    with self.assertRaisesRegex(ValueError, 'learning_rate'):
      fasgd_optax.rowwise_adagrad(-0.1)

  def test_built_inside_a_trace(self):
    """As Flax does when it builds a model's optimizers under `eval_shape`."""
    table = jax.ShapeDtypeStruct((5, 3), jnp.float32)
    for make in (fasgd_optax.rowwise_adagrad,
                 fasgd_optax.sparse_rowwise_adagrad):
      state = jax.eval_shape(
          lambda t, make=make: make(
              0.1, initial_accumulator_value=0.2).init(t), table)
      self.assertEqual(state[0].accumulators.shape, (5,))
    with self.assertRaisesRegex(ValueError, 'initial_accumulator_value'):
      jax.eval_shape(lambda t: fasgd_optax.rowwise_adagrad(
          0.1, initial_accumulator_value=-1.0).init(t), table)


class SparseRowwiseAdagradTest(absltest.TestCase):

  def test_duplicates_summed_before_squaring(self):
    sparse = fasgd_optax.sparse_rowwise_adagrad(1.0, epsilon=1e-12)
    table = jnp.zeros((4, 2))
    state = sparse.init(table)
    ids = jnp.array([2, 2, 0])
    row_grads = jnp.array([[1.0, 1.0], [2.0, 2.0], [0.0, 4.0]])
    table, state = sparse.apply(table, state, ids, row_grads)
    # Row 2: g = (3, 3), acc = 9, step = 1/3: moves by -(1, 1).
    np.testing.assert_allclose(state[0].accumulators, [8.0, 0.0, 9.0, 0.0])
    np.testing.assert_allclose(table[2], [-1.0, -1.0], rtol=1e-6)
    np.testing.assert_allclose(table[0], [0.0, -4.0 / np.sqrt(8.0)],
                               rtol=1e-6)
    np.testing.assert_array_equal(table[jnp.array([1, 3])], 0.0)


if __name__ == '__main__':
  absltest.main()
