"""The step-size rule and counting of DESIGN.md §2-3 against a NumPy reference."""

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

import fasgd_optax
from fasgd_optax._src import counting
from tests import reference

NUM_STEPS = 25
HORIZON = 200


def _nested_params():
  return {
      'embeddings': {
          'user': jnp.zeros((40, 3)),
          'item': jnp.zeros((60, 2, 2)),  # rows of any trailing shape
      },
      'linear': jnp.zeros((60,)),  # an FM's linear weights: one row per item
      'dense': [jnp.zeros((3, 4)), jnp.zeros(())],  # presence-counted
  }


def _random_step(rng, params, batch=16):
  """Zipf ids for the embedding leaves and gradients that vanish elsewhere."""
  user_ids = reference.zipf_ids(rng, 40, (batch,))
  item_ids = reference.zipf_ids(rng, 60, (batch, 2))  # any shape; duplicates
  ids = {'embeddings/user': user_ids, 'embeddings/item': item_ids}
  grads = jax.tree.map(
      lambda p: rng.normal(size=p.shape).astype(np.float32), params)
  for name, leaf_ids in (('user', user_ids), ('item', item_ids)):
    grad = grads['embeddings'][name]
    touched = np.zeros(grad.shape[0], bool)
    touched[np.ravel(leaf_ids)] = True
    # A few untouched rows keep a non-zero gradient (e.g. weight decay): the
    # rule still applies to them through their stored count.
    touched[rng.integers(0, grad.shape[0], 3)] = True
    grad[~touched] = 0.0
  # The linear leaf is presence-counted: only the rows whose items appear.
  linear_touched = np.zeros(60, bool)
  linear_touched[np.ravel(item_ids)] = True
  grads['linear'][~linear_touched] = 0.0
  # An all-zero dense gradient on some steps: presence counting skips it.
  if rng.random() < 0.3:
    grads['dense'][1] = np.zeros((), np.float32)
  return grads, ids


class CountedFrequencyRuleTest(parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(
      ('horizon', HORIZON, None, None),
      ('horizon_capped', HORIZON, 0.3, None),
      ('no_horizon', None, None, None),
      ('no_horizon_capped', None, 0.5, None),
      ('horizon_half_life', HORIZON, None, 4.0),
      ('no_horizon_half_life', None, 0.4, 6.0),
  )
  def test_nested_pytree_matches_reference(self, num_steps, max_lr, half_life):
    params = _nested_params()
    schedule = optax.exponential_decay(0.2, transition_steps=5, decay_rate=0.8)
    tx = fasgd_optax.cf_sgd(schedule, num_steps=num_steps,
                            max_learning_rate=max_lr, count_half_life=half_life)
    state = tx.init(params)
    update = self.variant(tx.update)
    leaves, treedef = jax.tree.flatten(params)
    # Leaves flatten in sorted-key order: dense/0, dense/1, embeddings/item,
    # embeddings/user, linear.
    paths = [None, None, 'embeddings/item', 'embeddings/user', None]
    refs = [reference.ReferenceLeaf(reference_rows(p), num_steps=num_steps,
                                    half_life=half_life) for p in leaves]
    rng = np.random.default_rng(0)
    for step in range(NUM_STEPS):
      grads, ids = _random_step(rng, params)
      updates, state = update(grads, state, params, ids=ids)
      lr = float(schedule(step))
      expected = [
          ref.update(g, None if path is None else ids[path], lr, max_lr)
          for ref, g, path in zip(refs, treedef.flatten_up_to(grads), paths)
      ]
      chex.assert_trees_all_close(
          updates, treedef.unflatten(expected), rtol=2e-5, atol=1e-7)
    counts = treedef.flatten_up_to(optax.tree.get(state, 'row_counts'))
    if half_life is not None:
      # Stored counts are as of each row's last step; decay them to now.
      last_steps = treedef.flatten_up_to(optax.tree.get(state, 'row_last_step'))
      counts = [c * 2.0 ** (-(NUM_STEPS - last) / half_life)
                for c, last in zip(counts, last_steps)]
    for ref, count in zip(refs, counts):
      np.testing.assert_allclose(
          count, ref.counts().reshape(count.shape), rtol=1e-5)
    chex.assert_trees_all_equal_dtypes(updates, params)

  @chex.variants(with_jit=True, without_jit=True)
  def test_single_array_with_single_array_ids(self):
    table = jnp.zeros((30, 4))
    tx = fasgd_optax.cf_sgd(0.5, num_steps=50, max_learning_rate=0.2)
    state = tx.init(table)
    update = self.variant(tx.update)
    ref = reference.ReferenceLeaf(30, num_steps=50)
    rng = np.random.default_rng(1)
    for _ in range(NUM_STEPS):
      ids = reference.zipf_ids(rng, 30, (8,))
      grad = rng.normal(size=(30, 4)).astype(np.float32)
      updates, state = update(grad, state, table, ids=ids)
      chex.assert_trees_all_close(
          updates, ref.update(grad, ids, 0.5, 0.2), rtol=2e-5, atol=1e-7)
    np.testing.assert_array_equal(state[0].row_counts, ref.counts())
    self.assertEqual(int(state[0].count), NUM_STEPS)

  def test_multiplicity_and_zero_count_rows(self):
    table = jnp.zeros((5, 2))
    tx = fasgd_optax.cf_sgd(1.0, num_steps=None)
    state = tx.init(table)
    grad = jnp.ones((5, 2))
    updates, state = tx.update(grad, state, table, ids=jnp.array([3, 3, 3, 0]))
    np.testing.assert_array_equal(state[0].row_counts, [1, 0, 0, 3, 0])
    # Rows never seen have c = 0 and are not moved, whatever their gradient.
    np.testing.assert_array_equal(updates[1:3], 0.0)
    np.testing.assert_allclose(updates[3], -1.0 / np.sqrt(3.0), rtol=1e-6)
    np.testing.assert_allclose(updates[0], -1.0, rtol=1e-6)

  @parameterized.named_parameters(('eager', False), ('jit', True))
  def test_rows_not_updated_stay_put_with_nonfinite_gradients(self, use_jit):
    # "Whatever their gradient": 0 · NaN is NaN, and inf · 0 too.
    table = jnp.ones((5, 2))
    grad = jnp.ones((5, 2)).at[4, 0].set(jnp.nan).at[2, 1].set(jnp.inf)
    for tx in (fasgd_optax.cf_sgd(1.0, num_steps=10),
               fasgd_optax.fa_sgd(1.0, jnp.array([0.5, 0.5, 0.0, 0.5, 0.0]),
                                  num_steps=10)):
      update = jax.jit(tx.update) if use_jit else tx.update
      updates, _ = update(grad, tx.init(table), table, ids=jnp.array([0, 3]))
      np.testing.assert_array_equal(updates[jnp.array([2, 4])], 0.0)
      self.assertTrue(np.all(np.isfinite(updates)))
      self.assertTrue(np.all(updates[jnp.array([0, 3])] < 0))

  def test_row_seen_every_step_gets_sgd_rate(self):
    # DESIGN.md §2: p = 1 gives plain SGD's α/sqrt(T) under a horizon.
    params = {'w': jnp.zeros((3,))}
    tx = fasgd_optax.cf_sgd(2.0, num_steps=100)
    state = tx.init(params)
    for _ in range(5):
      updates, state = tx.update({'w': jnp.ones(3)}, state, params)
    np.testing.assert_allclose(updates['w'], -2.0 / 10.0, rtol=1e-6)

  def test_counts_saturate_at_int32_max(self):
    table = jnp.zeros((3, 2))
    tx = fasgd_optax.cf_sgd(1.0, num_steps=10)
    state = tx.init(table)
    near_max = jnp.array([reference.INT32_MAX - 1, 5, reference.INT32_MAX],
                         jnp.int32)
    state = (state[0]._replace(row_counts=near_max,
                               count=jnp.int32(reference.INT32_MAX)),) + state[1:]
    _, state = jax.jit(tx.update)(jnp.ones((3, 2)), state, table,
                                  ids=jnp.array([0, 0, 0, 1, 2]))
    np.testing.assert_array_equal(
        state[0].row_counts,
        [reference.INT32_MAX, 6, reference.INT32_MAX])
    self.assertEqual(int(state[0].count), reference.INT32_MAX)
    self.assertEqual(state[0].row_counts.dtype, jnp.int32)


class HalfLifePrecisionTest(parameterized.TestCase):
  """With a horizon, a row seen every step gets SGD's α/√T at any half-life.

  Its decayed count n equals the decayed step count t, so c = T·n/t = T.
  The closed form of t once lost digits to cancellation in float32: η was
  0.13% off at H = 1e5, 1.5% at 1e6, 24% at 2e7 and 0 (no row moved) at 3e7.
  """

  @parameterized.parameters(0.5, 1e5, 1e6, 2e7, 3e7)
  def test_a_row_seen_every_step(self, half_life):
    expected = 2.0 / np.sqrt(1000)
    tx = fasgd_optax.cf_sgd(2.0, num_steps=1000, count_half_life=half_life)
    param = jnp.zeros(())
    state = tx.init(param)
    update = jax.jit(tx.update)
    for _ in range(60):
      step, state = update(jnp.ones(()), state, param)
    np.testing.assert_allclose(-step, expected, rtol=1e-5)
    sparse = fasgd_optax.sparse_cf_sgd(2.0, num_steps=1000,
                                       count_half_life=half_life)
    table = jnp.zeros((3, 2))
    state = sparse.init(table)
    apply = jax.jit(sparse.apply)
    for _ in range(60):
      table, state = apply(table, state, jnp.array([1]), jnp.ones((1, 2)))
    np.testing.assert_allclose(-table[1], [60 * expected] * 2, rtol=1e-5)


  def test_rows_seen_now_and_then_decay_at_the_same_rate(self):
    # Every decay is a power of the one float32 factor that t uses; powers
    # of the exact 2^(-1/H) put rows not seen every step 0.05-0.08% off.
    half_life, num_steps = 1e5, 60_000
    sparse = fasgd_optax.sparse_cf_sgd(1.0, num_steps=1000,
                                       count_half_life=half_life)
    every = np.array([1, 7, 50])

    def body(i, carry):
      ids = jnp.where((i + 1) % every == 0, jnp.arange(3), 3)
      return sparse.apply(*carry, ids, jnp.ones((3, 1)))

    table = jnp.zeros((4, 1))
    carry = jax.jit(lambda c: jax.lax.fori_loop(0, num_steps, body, c))(
        (table, sparse.init(table)))
    _, state = sparse.apply(*carry, jnp.arange(3), jnp.ones((3, 1)))
    factor = 2.0 ** (-1.0 / half_life)
    counts, steps = np.zeros(3), 0.0
    for step in range(1, num_steps + 2):
      counts, steps = counts * factor, steps * factor + 1
      counts += (step % every == 0) | (step == num_steps + 1)
    decayed_steps = float(
        counting.decayed_step_count(num_steps + 1, half_life))
    np.testing.assert_allclose(
        np.asarray(state.row_counts[:3]) / decayed_steps, counts / steps,
        rtol=1e-4)


def reference_rows(leaf):
  return leaf.shape[0] if leaf.ndim else 1


class KnownFrequencyRuleTest(parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(('uncapped', None), ('capped', 0.05))
  def test_matches_reference(self, max_lr):
    rng = np.random.default_rng(2)
    params = {'table': jnp.zeros((20, 3)), 'bias': jnp.zeros((4,))}
    frequencies = rng.random(20).astype(np.float32) * 0.5
    frequencies[[3, 7]] = 0.0  # never sampled: never moved
    tx = fasgd_optax.fa_sgd(0.3, {'table': frequencies, 'bias': None},
                            num_steps=HORIZON, max_learning_rate=max_lr)
    state = tx.init(params)
    update = self.variant(tx.update)
    refs = {'table': reference.ReferenceLeaf(20, num_steps=HORIZON,
                                             frequencies=frequencies),
            'bias': reference.ReferenceLeaf(4, num_steps=HORIZON,
                                            frequencies=np.ones(4))}
    for _ in range(5):
      grads = {k: rng.normal(size=p.shape).astype(np.float32)
               for k, p in params.items()}
      updates, state = update(grads, state, params, ids=None)
      for name, ref in refs.items():
        np.testing.assert_allclose(
            updates[name], ref.update(grads[name], None, 0.3, max_lr),
            rtol=2e-5, atol=1e-7)
    np.testing.assert_array_equal(updates['table'][3], 0.0)
    self.assertEqual(int(state[0].count), 5)

  def test_unit_frequencies_give_sgd(self):
    params = jnp.arange(12.0).reshape(6, 2)
    grads = jnp.linspace(-1.0, 1.0, 12).reshape(6, 2)
    tx = fasgd_optax.fa_sgd(0.8, jnp.ones(6), num_steps=16)
    updates, _ = tx.update(grads, tx.init(params), params)
    sgd = optax.sgd(0.8 / 4.0)
    sgd_updates, _ = sgd.update(grads, sgd.init(params), params)
    chex.assert_trees_all_close(updates, sgd_updates, rtol=1e-6)


class FrequencyHelpersTest(absltest.TestCase):

  def test_count_ids_and_frequencies(self):
    counts = fasgd_optax.count_ids(np.array([[0, 2], [2, 2]]), num_rows=4)
    np.testing.assert_array_equal(counts, [1, 0, 3, 0])
    freqs = fasgd_optax.frequencies_from_counts(
        {'a': counts, 'b': None}, num_batches=2)
    np.testing.assert_allclose(freqs['a'], [0.5, 0.0, 1.5, 0.0])
    self.assertIsNone(freqs['b'])

  def test_helpers_reject_bad_input(self):
    with self.assertRaisesRegex(ValueError, r'in \[0, 4\); got 4'):
      fasgd_optax.count_ids(np.array([0, 4]), num_rows=4)
    with self.assertRaisesRegex(ValueError, 'integers'):
      fasgd_optax.count_ids(np.array([0.5]), num_rows=4)
    with self.assertRaisesRegex(ValueError, 'num_batches'):
      fasgd_optax.frequencies_from_counts(np.ones(3), num_batches=0)
    with self.assertRaisesRegex(ValueError, '>= 0'):
      fasgd_optax.frequencies_from_counts(np.array([1, -1]), num_batches=2)


if __name__ == '__main__':
  absltest.main()
