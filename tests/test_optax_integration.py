"""DESIGN.md §5: CF-SGD and FA-SGD as ordinary Optax citizens."""

from absl.testing import absltest
from absl.testing import parameterized
import chex
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import fasgd_optax
from tests import cpu_devices


def _params():
  return {'embed': jnp.arange(24.0).reshape(8, 3) / 10.0,
          'dense': {'kernel': jnp.ones((3, 2)), 'bias': jnp.zeros((2,))}}


def _grads(seed=0):
  rng = np.random.default_rng(seed)
  grads = jax.tree.map(
      lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), _params())
  # Only rows 1 and 5 of the table were gathered this step.
  grads['embed'] = grads['embed'] * jnp.isin(jnp.arange(8), jnp.array([1, 5]))[:, None]
  return grads


IDS = {'embed': jnp.array([1, 5, 5])}


class OptaxIntegrationTest(parameterized.TestCase):

  def test_chain_with_clipping(self):
    tx = optax.chain(optax.clip_by_global_norm(1.0),
                     fasgd_optax.cf_sgd(0.5, num_steps=10))
    plain = fasgd_optax.cf_sgd(0.5, num_steps=10)
    grads = _grads()
    clipped, _ = optax.clip_by_global_norm(1.0).update(grads, None)
    updates, state = tx.update(grads, tx.init(_params()), _params(), ids=IDS)
    expected, _ = plain.update(clipped, plain.init(_params()), _params(), ids=IDS)
    chex.assert_trees_all_close(updates, expected, rtol=1e-6)
    np.testing.assert_array_equal(
        optax.tree.get(state, 'row_counts')['embed'], [0, 1, 0, 0, 0, 2, 0, 0])

  @parameterized.named_parameters(('partition', 'partition'),
                                  ('masked', 'masked'))
  def test_embeddings_on_cf_sgd_dense_on_adam(self, how):
    params = _params()
    labels = {'embed': 'sparse', 'dense': {'kernel': 'dense', 'bias': 'dense'}}
    cf = fasgd_optax.cf_sgd(0.5, num_steps=10)
    if how == 'partition':
      tx = optax.partition({'sparse': cf, 'dense': optax.adam(1e-2)}, labels)
    else:
      is_sparse = jax.tree.map(lambda label: label == 'sparse', labels)
      tx = optax.chain(
          optax.masked(cf, is_sparse),
          optax.masked(optax.adam(1e-2),
                       jax.tree.map(lambda m: not m, is_sparse)))
    state = tx.init(params)
    # The same ids serve the whole tree: entries of masked-out leaves are
    # skipped by the transformations that do not see them.
    update = jax.jit(tx.update)
    for seed in range(3):
      updates, state = update(_grads(seed), state, params, ids=IDS)
    counts = optax.tree.get(state, 'row_counts')
    np.testing.assert_array_equal(counts['embed'], [0, 3, 0, 0, 0, 6, 0, 0])
    # Dense leaves are not counted by CF-SGD here: they belong to Adam.
    self.assertEmpty(jax.tree.leaves(counts['dense']))
    adam = optax.adam(1e-2)
    adam_state = adam.init(params['dense'])
    for seed in range(3):
      adam_updates, adam_state = adam.update(_grads(seed)['dense'], adam_state)
    chex.assert_trees_all_close(updates['dense'], adam_updates, rtol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_inject_hyperparams_is_transparent(self):
    params = _params()
    injected = optax.inject_hyperparams(fasgd_optax.cf_sgd)(
        learning_rate=0.5, num_steps=10, max_learning_rate=0.3)
    plain = fasgd_optax.cf_sgd(0.5, num_steps=10, max_learning_rate=0.3)
    injected_state, plain_state = injected.init(params), plain.init(params)
    for seed in range(3):
      injected_updates, injected_state = self.variant(injected.update)(
          _grads(seed), injected_state, params, ids=IDS)
      plain_updates, plain_state = self.variant(plain.update)(
          _grads(seed), plain_state, params, ids=IDS)
      chex.assert_trees_all_close(injected_updates, plain_updates, rtol=1e-6)
    chex.assert_trees_all_equal(injected_state.inner_state, plain_state)
    # A learning rate changed in the state takes effect.
    injected_state.hyperparams['learning_rate'] = jnp.asarray(0.05)
    halved, _ = injected.update(_grads(), injected_state, params, ids=IDS)
    self.assertLess(float(jnp.abs(halved['embed']).sum()),
                    float(jnp.abs(plain_updates['embed']).sum()))

  def test_inject_hyperparams_fa_sgd(self):
    params = jnp.zeros((4, 2))
    freqs = jnp.array([1.0, 0.5, 0.25, 0.0])
    injected = optax.inject_hyperparams(fasgd_optax.fa_sgd)(
        learning_rate=0.5, frequencies=freqs, num_steps=16)
    plain = fasgd_optax.fa_sgd(0.5, freqs, num_steps=16)
    grads = jnp.ones((4, 2))
    injected_updates, _ = jax.jit(injected.update)(
        grads, injected.init(params), params)
    plain_updates, _ = plain.update(grads, plain.init(params), params)
    chex.assert_trees_all_close(injected_updates, plain_updates, rtol=1e-6)

  @parameterized.named_parameters(
      ('cf_sgd', lambda: optax.inject_hyperparams(fasgd_optax.cf_sgd)(
          learning_rate=0.5, num_steps=10, max_learning_rate=4.0),
       lambda: fasgd_optax.cf_sgd(0.5, num_steps=10, max_learning_rate=4.0)),
      ('fa_sgd', lambda: optax.inject_hyperparams(fasgd_optax.fa_sgd)(
          learning_rate=0.5, frequencies={'embed': jnp.full(8, 0.25)},
          num_steps=10),
       lambda: fasgd_optax.fa_sgd(0.5, {'embed': jnp.full(8, 0.25)},
                                  num_steps=10)),
      ('rowwise_adagrad',
       lambda: optax.inject_hyperparams(fasgd_optax.rowwise_adagrad)(
           learning_rate=0.5, initial_accumulator_value=0.25),
       lambda: fasgd_optax.rowwise_adagrad(
           0.5, initial_accumulator_value=0.25)))
  def test_inject_hyperparams_on_bfloat16_params(self, injected, plain):
    # inject_hyperparams casts hyperparameters to the parameters' float
    # type: bfloat16 here, which NumPy does not call a number.
    params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), _params())
    grads = jax.tree.map(lambda g: g.astype(jnp.bfloat16), _grads())
    injected, plain = injected(), plain()
    injected_state = injected.init(params)
    self.assertEqual(injected_state.hyperparams['learning_rate'].dtype,
                     jnp.bfloat16)
    injected_updates, _ = jax.jit(injected.update)(
        grads, injected_state, params, ids=IDS)
    plain_updates, _ = plain.update(grads, plain.init(params), params, ids=IDS)
    chex.assert_trees_all_equal(injected_updates, plain_updates)

  def test_multi_steps_counts_final_mini_step(self):
    params = _params()
    tx = optax.MultiSteps(fasgd_optax.cf_sgd(0.5, num_steps=10),
                          every_k_schedule=2)
    inner = fasgd_optax.cf_sgd(0.5, num_steps=10)
    state = tx.init(params)
    update = jax.jit(tx.update)
    first, state = update(_grads(0), state, params, ids=IDS)
    chex.assert_trees_all_close(first, jax.tree.map(jnp.zeros_like, params))
    second, state = update(_grads(1), state, params, ids=IDS)
    mean_grads = jax.tree.map(lambda a, b: (a + b) / 2, _grads(0), _grads(1))
    expected, _ = inner.update(mean_grads, inner.init(params), params, ids=IDS)
    chex.assert_trees_all_close(second, expected, rtol=1e-5)
    np.testing.assert_array_equal(
        optax.tree.get(state, 'row_counts')['embed'], [0, 1, 0, 0, 0, 2, 0, 0])

  def test_multi_steps_with_the_accumulations_ids_on_the_last(self):
    # As the README says: a row new to the counts in an earlier mini-step
    # only moves if the applying mini-step's ids hold it.
    table = jnp.zeros((6, 2))
    first = jnp.zeros((6, 2)).at[1].set(1.0)
    second = jnp.zeros((6, 2)).at[4].set(1.0)
    tx = optax.MultiSteps(fasgd_optax.cf_sgd(0.5, num_steps=10),
                          every_k_schedule=2)
    for last_ids, moved in (([4], [4]), ([1, 4], [1, 4])):
      state = tx.init(table)
      _, state = tx.update(first, state, table, ids=jnp.array([1]))
      updates, state = tx.update(second, state, table,
                                 ids=jnp.array(last_ids))
      np.testing.assert_array_equal(
          np.flatnonzero(np.abs(updates).sum(axis=1)), moved)

  def test_apply_if_finite_keeps_counts_on_nan(self):
    params = _params()
    tx = optax.apply_if_finite(fasgd_optax.cf_sgd(0.5, num_steps=10),
                               max_consecutive_errors=3)
    state = tx.init(params)
    update = jax.jit(tx.update)
    _, state = update(_grads(), state, params, ids=IDS)
    counts_before = optax.tree.get(state, 'row_counts')
    bad = _grads()
    bad['embed'] = bad['embed'].at[1, 0].set(jnp.nan)
    updates, state = update(bad, state, params, ids=IDS)
    chex.assert_trees_all_equal(optax.tree.get(state, 'row_counts'),
                                counts_before)
    chex.assert_trees_all_close(updates, jax.tree.map(jnp.zeros_like, params))
    self.assertEqual(int(state.notfinite_count), 1)

  def test_unknown_extra_args_are_ignored(self):
    tx = fasgd_optax.cf_sgd(0.5, num_steps=10)
    fa = fasgd_optax.fa_sgd(0.5, None, num_steps=10)
    updates, _ = tx.update(_grads(), tx.init(_params()), _params(), ids=IDS,
                           value=jnp.float32(1.0), key=jax.random.key(0))
    expected, _ = tx.update(_grads(), tx.init(_params()), _params(), ids=IDS)
    chex.assert_trees_all_close(updates, expected)
    fa.update(_grads(), fa.init(_params()), _params(), ids=IDS, grad_fn=None)

  def test_no_recompilation_on_second_call(self):
    traces = []
    tx = fasgd_optax.cf_sgd(optax.linear_schedule(0.5, 0.1, 10), num_steps=10)

    @jax.jit
    def step(params, state, grads, ids):
      traces.append(None)
      updates, state = tx.update(grads, state, params, ids=ids)
      return optax.apply_updates(params, updates), state

    params, state = _params(), tx.init(_params())
    for seed in range(3):
      params, state = step(params, state, _grads(seed),
                           {'embed': jnp.array([seed, 2, 7])})
    self.assertLen(traces, 1)

  @parameterized.named_parameters(('f32', jnp.float32), ('bf16', jnp.bfloat16))
  def test_updates_keep_parameter_dtype(self, dtype):
    params = jax.tree.map(lambda p: p.astype(dtype), _params())
    grads = jax.tree.map(lambda g: g.astype(dtype), _grads())
    for tx in (fasgd_optax.cf_sgd(0.5, num_steps=10, count_half_life=3.0),
               fasgd_optax.fa_sgd(0.5, {'embed': jnp.full(8, 0.1)},
                                  num_steps=10)):
      state = tx.init(params)
      updates, new_state = jax.jit(tx.update)(grads, state, params, ids=IDS)
      chex.assert_trees_all_equal_dtypes(updates, params)
      chex.assert_trees_all_equal_shapes_and_dtypes(new_state, state)
      new_params = optax.apply_updates(params, updates)
      chex.assert_trees_all_equal_dtypes(new_params, params)

  def test_float64_updates_keep_their_precision(self):
    with jax.enable_x64(True):
      table = jnp.zeros((4, 2), jnp.float64)
      grad = jnp.full((4, 2), 1.0 + 1e-12, jnp.float64)
      tx = fasgd_optax.cf_sgd(1.0, num_steps=None)  # First step: η = α = 1.
      updates, _ = tx.update(grad, tx.init(table), table, ids=jnp.arange(4))
      self.assertEqual(updates.dtype, jnp.float64)
      np.testing.assert_array_equal(updates, -grad)  # Not rounded to 1.0.

  @parameterized.named_parameters(('counts', None), ('half_life', 5.0))
  def test_state_stable_under_cond(self, half_life):
    tx = fasgd_optax.cf_sgd(0.5, num_steps=10, count_half_life=half_life)
    params = _params()

    @jax.jit
    def maybe_update(apply, state, grads):
      return jax.lax.cond(
          apply, lambda s: tx.update(grads, s, params, ids=IDS)[1],
          lambda s: s, state)

    state = tx.init(params)
    new_state = maybe_update(True, state, _grads())
    chex.assert_trees_all_equal_shapes_and_dtypes(new_state, state)
    np.testing.assert_array_equal(
        optax.tree.get(maybe_update(False, new_state, _grads()), 'count'), 1)

  def test_tree_map_params(self):
    tx = fasgd_optax.cf_sgd(0.5, num_steps=10)
    params = _params()
    state = tx.init(params)
    _, state = tx.update(_grads(), state, params, ids=IDS)
    # Per-row counts are parameter-structured trees, so map_params reaches
    # them, as it reaches Adafactor's per-row statistics.
    mapped = optax.tree.map_params(
        tx, lambda x: x * 2, state, transform_non_params=lambda x: x)
    np.testing.assert_array_equal(
        optax.tree.get(mapped, 'row_counts')['embed'],
        2 * optax.tree.get(state, 'row_counts')['embed'])
    self.assertEqual(int(optax.tree.get(mapped, 'count')), 1)
    fa = fasgd_optax.fa_sgd(0.5, {'embed': jnp.ones(8)}, num_steps=10)
    specs = optax.tree.map_params(fa, lambda x: x, fa.init(params),
                                  transform_non_params=lambda _: None)
    self.assertIsNone(specs[0].count)


class Model(nnx.Module):

  def __init__(self, rngs):
    self.embed = nnx.Embed(10, 3, rngs=rngs)
    self.head = nnx.Linear(3, 1, rngs=rngs)

  def __call__(self, ids):
    return self.head(self.embed(ids).sum(axis=1))[:, 0]


class NnxOptimizerTest(absltest.TestCase):

  def test_nnx_optimizer_update_with_ids(self):
    model = Model(nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    tx = fasgd_optax.cf_sgd(0.5, num_steps=20)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    reference_state = tx.init(nnx.as_pure(params))
    reference_params = nnx.as_pure(params)
    batch = jnp.array([[1, 2], [2, 2], [7, 1]])
    loss_fn = lambda m: jnp.mean((m(batch) - 1.0) ** 2)

    @nnx.jit
    def train_step(model, optimizer, ids):
      grads = nnx.grad(loss_fn)(model)
      optimizer.update(model, grads, ids={'embed/embedding': ids})

    for _ in range(2):
      grads = nnx.as_pure(nnx.grad(loss_fn)(model))
      train_step(model, optimizer, batch)
      updates, reference_state = tx.update(
          grads, reference_state, reference_params,
          ids={'embed/embedding': batch})
      reference_params = optax.apply_updates(reference_params, updates)
    chex.assert_trees_all_close(nnx.as_pure(nnx.state(model, nnx.Param)),
                                reference_params, rtol=1e-6)
    counts = optax.tree.get(nnx.as_pure(optimizer.opt_state), 'row_counts')
    np.testing.assert_array_equal(counts['embed']['embedding'],
                                  [0, 4, 6, 0, 0, 0, 0, 2, 0, 0])
    np.testing.assert_array_equal(counts['head']['kernel'], [2, 2, 2])

  def test_nnx_optimizer_with_partition_by_path(self):
    # The usual NNX recipe: labels from each leaf's path. Masked leaves reach
    # `init` as Variables around `optax.MaskedNode`, and keep no state.
    model = Model(nnx.Rngs(0))

    def labels(params):
      return jax.tree_util.tree_map_with_path(
          lambda path, _: 'cf' if 'embed' in jax.tree_util.keystr(path)
          else 'adam', params)

    tx = optax.partition({'cf': fasgd_optax.cf_sgd(0.5, num_steps=20),
                          'adam': optax.adam(1e-2)}, labels)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    before = nnx.as_pure(nnx.state(model, nnx.Param))
    batch = jnp.array([[1, 2], [2, 2]])
    grads = nnx.grad(lambda m: jnp.mean((m(batch) - 1.0) ** 2))(model)
    optimizer.update(model, grads, ids={'embed/embedding': batch})
    counts = jax.tree.leaves(
        optax.tree.get(nnx.as_pure(optimizer.opt_state), 'row_counts'))
    self.assertLen(counts, 1)  # The table's only: the head is Adam's.
    np.testing.assert_array_equal(counts[0], [0, 1, 3, 0, 0, 0, 0, 0, 0, 0])
    after = nnx.as_pure(nnx.state(model, nnx.Param))
    self.assertFalse(np.array_equal(after['head']['kernel'],
                                    before['head']['kernel']))
    np.testing.assert_array_equal(after['embed']['embedding'][3:],
                                  before['embed']['embedding'][3:])

  def test_raw_nnx_state_with_path_ids(self):
    # nnx.split/nnx.state trees hold Variables, whose arrays sit under a
    # `.value` attribute; ids still name leaves by module path.
    model = Model(nnx.Rngs(0))
    _, params = nnx.split(model, nnx.Param)
    tx = fasgd_optax.cf_sgd(0.5, num_steps=20)
    state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    for ids in ({'embed/embedding': jnp.array([1, 1, 4])},
                {'embed/embedding/value': jnp.array([1, 1, 4])}):
      _, new_state = tx.update(grads, state, params, ids=ids)
      counts = jax.tree.leaves(new_state[0].row_counts['embed'])[0]
      np.testing.assert_array_equal(counts, [0, 2, 0, 0, 1, 0, 0, 0, 0, 0])
    with self.assertRaisesRegex(ValueError, r"\['embed/embedding', "):
      tx.update(grads, state, params, ids={'embed/embeding': jnp.array([1])})


class ShardedModel(nnx.Module):
  """A table whose rows are sharded by Flax partition metadata."""

  def __init__(self):
    self.table = nnx.Param(jnp.arange(64.0 * 4).reshape(64, 4) / 100.0,
                           out_sharding=('rows', None))
    self.kernel = nnx.Param(jnp.ones((4,)))


class NnxShardedOptimizerTest(parameterized.TestCase):
  """Flax's sharded-init pattern: partition metadata on the optimizer too."""

  def setUp(self):
    super().setUp()
    self.mesh = jax.sharding.Mesh(np.array(cpu_devices.use(self)), ('rows',))

  @parameterized.named_parameters(
      ('cf_sgd', lambda: fasgd_optax.cf_sgd(0.5, num_steps=20)),
      ('cf_sgd_half_life', lambda: fasgd_optax.cf_sgd(
          0.5, num_steps=20, count_half_life=3.0)),
      ('rowwise_adagrad', lambda: fasgd_optax.rowwise_adagrad(0.5)),
  )
  def test_per_row_state_gets_the_rows_axis(self, make_tx):
    tx = make_tx()

    @nnx.jit
    def create():
      model = ShardedModel()
      state = nnx.state(model)
      nnx.update(model, jax.lax.with_sharding_constraint(
          state, nnx.get_partition_spec(state)))
      optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
      # Each optimizer state takes its parameter's axes; per-row state must
      # take only the rows' axis, or this constraint fails on its rank.
      opt_state = nnx.state(optimizer)
      nnx.update(optimizer, jax.lax.with_sharding_constraint(
          opt_state, nnx.get_partition_spec(opt_state)))
      return model, optimizer

    @nnx.jit
    def train_step(model, optimizer, ids):
      grads = nnx.grad(lambda m: jnp.sum(m.table[ids] @ m.kernel))(model)
      optimizer.update(model, grads, ids={'table': ids})

    with jax.set_mesh(self.mesh):
      model, optimizer = create()
      before = np.asarray(model.table.get_value())
      train_step(model, optimizer, jnp.array([1, 2, 2, 63]))
    per_row = [leaf for leaf in jax.tree.leaves(nnx.state(optimizer))
               if leaf.shape == (64,)]
    self.assertNotEmpty(per_row)
    for leaf in per_row:
      self.assertEqual(tuple(leaf.sharding.spec), ('rows',))
    self.assertTrue(model.table.get_value().sharding.is_equivalent_to(
        jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec(
            'rows', None)), 2))
    moved = np.flatnonzero(np.any(
        np.asarray(model.table.get_value()) != before, axis=1))
    np.testing.assert_array_equal(moved, [1, 2, 63])


if __name__ == '__main__':
  absltest.main()
