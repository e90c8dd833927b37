"""The Flax NNX helper for the sparse path: same steps as the dense path."""

from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import chex
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import fasgd_optax
from fasgd_optax import nnx_sparse
from fasgd_optax._src import checks
from tests import reference

USERS, ITEMS, DIM, BATCH = 20, 30, 4, 8


class TwoTower(nnx.Module):
  """Dot product of user and item rows plus a dense layer on their product."""

  def __init__(self, rngs: nnx.Rngs):
    self.user_embed = nnx_sparse.SparseEmbed(USERS, DIM, rngs=rngs)
    self.item_embed = nnx_sparse.SparseEmbed(ITEMS, DIM, rngs=rngs)
    self.dense = nnx.Linear(DIM, 1, rngs=rngs)
    self.calls = nnx.Variable(jnp.zeros((), jnp.int32))

  def __call__(self, users, items):
    self.calls[...] += 1
    user_rows, item_rows = self.user_embed(users), self.item_embed(items)
    return (jnp.sum(user_rows * item_rows, -1)
            + self.dense(user_rows * item_rows)[..., 0])


class SharedTable(nnx.Module):
  """One table looked up twice (e.g. both ends of a word2vec pair)."""

  def __init__(self, rngs: nnx.Rngs):
    self.embed = nnx_sparse.SparseEmbed(USERS, DIM, rngs=rngs)
    self.scale = nnx.Param(jnp.ones(()))

  def __call__(self, users, items):
    return self.scale * jnp.sum(self.embed(users) * self.embed(items % USERS),
                                -1)


def loss_fn(model, batch):
  predictions = model(batch['users'], batch['items'])
  return jnp.mean((predictions - batch['targets']) ** 2)


def batches(num_steps):
  rng = np.random.default_rng(1)
  for _ in range(num_steps):
    yield {
        'users': jnp.asarray(reference.zipf_ids(rng, USERS, (BATCH,))),
        'items': jnp.asarray(reference.zipf_ids(rng, ITEMS, (BATCH,))),
        'targets': jnp.asarray(rng.normal(size=BATCH), jnp.float32),
    }


def table_ids(model, batch):
  if isinstance(model, SharedTable):
    return {'embed/embedding': jnp.concatenate(
        [batch['users'], batch['items'] % USERS])}
  return {'user_embed/embedding': batch['users'],
          'item_embed/embedding': batch['items']}


def sparse_train(model, dense_tx, sparse_tx, num_steps, use_jit):
  dense_opt = nnx.Optimizer(model, dense_tx, wrt=nnx.Param)
  sparse_opt = nnx_sparse.SparseOptimizer(model, sparse_tx)

  def train_step(model, dense_opt, sparse_opt, batch):
    loss, grads, table_grads = nnx_sparse.value_and_grad(loss_fn)(model, batch)
    dense_opt.update(model, grads)
    sparse_opt.update(model, table_grads)
    return loss

  if use_jit:
    train_step = nnx.jit(train_step,
                         donate_argnames=('model', 'dense_opt', 'sparse_opt'))
  losses = [float(train_step(model, dense_opt, sparse_opt, batch))
            for batch in batches(num_steps)]
  return losses, sparse_opt


def dense_train(model, tx, num_steps):
  optimizer = nnx.Optimizer(model, tx, wrt=(nnx.Param, nnx_sparse.SparseTable))

  @nnx.jit
  def train_step(model, optimizer, batch):
    loss, grads = nnx.value_and_grad(
        loss_fn, argnums=nnx.DiffState(
            0, (nnx.Param, nnx_sparse.SparseTable)))(model, batch)
    optimizer.update(model, grads, ids=table_ids(model, batch))
    return loss

  losses = [float(train_step(model, optimizer, batch))
            for batch in batches(num_steps)]
  return losses, optimizer


class NnxSparseTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ('two_tower_jit', TwoTower, True, 3),
      ('shared_table_jit', SharedTable, True, 3),
  )
  def test_matches_dense_cf_sgd(self, model_class, use_jit, num_steps):
    sparse_model = model_class(nnx.Rngs(0))
    sparse_losses, sparse_opt = sparse_train(
        sparse_model, fasgd_optax.cf_sgd(0.5, num_steps=20),
        fasgd_optax.sparse_cf_sgd(0.5, num_steps=20), num_steps, use_jit)
    dense_model = model_class(nnx.Rngs(0))
    dense_losses, dense_opt = dense_train(
        dense_model, fasgd_optax.cf_sgd(0.5, num_steps=20), num_steps)

    np.testing.assert_allclose(sparse_losses, dense_losses, rtol=1e-5)
    initial_tables = nnx_sparse.tables_by_path(model_class(nnx.Rngs(0)))
    for path, table in nnx_sparse.tables_by_path(sparse_model).items():
      self.assertFalse(np.allclose(table.get_value(),
                                   initial_tables[path].get_value()), path)
    chex.assert_trees_all_close(
        nnx.to_pure_dict(nnx.state(sparse_model)),
        nnx.to_pure_dict(nnx.state(dense_model)), rtol=1e-5, atol=1e-6)
    dense_counts = optax.tree.get(nnx.as_pure(dense_opt.opt_state),
                                  'row_counts')
    for path, state in sparse_opt.states.items():
      keys = path.split('/')
      expected = dense_counts
      for key in keys:
        expected = expected[key]
      np.testing.assert_array_equal(nnx.as_pure(state).row_counts, expected)
    if model_class is TwoTower:
      # The forward pass's own state updates are kept.
      self.assertEqual(int(sparse_model.calls[...]), num_steps)

  def test_a_transformation_per_table(self):
    model = TwoTower(nnx.Rngs(0))
    item_table = jnp.array(model.item_embed.embedding.get_value())
    sparse_opt = nnx_sparse.SparseOptimizer(
        model, {'user_embed/embedding': fasgd_optax.sparse_rowwise_adagrad(
            0.1)})
    batch = next(batches(1))
    loss, grads, table_grads = nnx.jit(nnx_sparse.value_and_grad(loss_fn))(
        model, batch)
    self.assertEqual(sorted(table_grads),
                     ['item_embed/embedding', 'user_embed/embedding'])
    # The row gradients are those of the gathered rows.
    user_rows = model.user_embed.embedding.get_value()[batch['users']]
    item_rows = model.item_embed(batch['items'])

    @jax.jit
    def expected_user_grads(user_rows, item_rows):
      products = user_rows * item_rows
      return jax.grad(lambda products: jnp.mean(
          (jnp.sum(products, -1) + model.dense(products)[..., 0]
           - batch['targets']) ** 2))(products) * item_rows

    np.testing.assert_allclose(table_grads['user_embed/embedding'].row_grads,
                               expected_user_grads(user_rows, item_rows),
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(table_grads['user_embed/embedding'].ids,
                                  batch['users'])
    self.assertEqual(set(nnx.to_pure_dict(grads)), {'dense'})
    self.assertGreater(float(loss), 0.0)
    sparse_opt.update(model, table_grads)
    np.testing.assert_array_equal(model.item_embed.embedding.get_value(),
                                  item_table)
    accumulators = nnx.as_pure(
        sparse_opt.states['user_embed/embedding'])[0].accumulators
    np.testing.assert_array_equal(
        np.flatnonzero(accumulators), np.unique(batch['users']))

  def test_a_table_not_looked_up_in_a_step_still_steps(self):
    # As on the dense path, every step counts for every table's horizon:
    # a skipped table's step count advances, none of its rows move.
    sparse_model, dense_model = TwoTower(nnx.Rngs(0)), TwoTower(nnx.Rngs(0))
    sparse_opt = nnx_sparse.SparseOptimizer(
        sparse_model, fasgd_optax.sparse_cf_sgd(0.3, num_steps=10))
    dense_opt = nnx.Optimizer(
        dense_model, fasgd_optax.cf_sgd(0.3, num_steps=10),
        wrt=nnx_sparse.SparseTable)

    def users_only(model, batch):
      rows = model.user_embed(batch['users'])
      return jnp.mean((rows.sum(-1) - batch['targets']) ** 2)

    for step, batch in enumerate(batches(3)):
      loss = users_only if step == 1 else loss_fn
      _, _, table_grads = nnx_sparse.value_and_grad(loss)(sparse_model, batch)
      if step == 1:
        self.assertEqual(set(table_grads), {'user_embed/embedding'})
      sparse_opt.update(sparse_model, table_grads)
      grads = nnx.grad(lambda m, b=batch, f=loss: f(m, b),
                       argnums=nnx.DiffState(0, nnx_sparse.SparseTable))(
                           dense_model)
      ids = table_ids(dense_model, batch)
      if step == 1:
        ids['item_embed/embedding'] = jnp.zeros((0,), jnp.int32)
      dense_opt.update(dense_model, grads, ids=ids)
    for name in ('user_embed', 'item_embed'):
      np.testing.assert_allclose(
          getattr(sparse_model, name).embedding.get_value(),
          getattr(dense_model, name).embedding.get_value(), atol=1e-6)
    self.assertEqual(
        int(sparse_opt.states['item_embed/embedding'].count.get_value()), 3)

  def test_has_aux(self):
    model = TwoTower(nnx.Rngs(0))

    def loss_with_aux(model, batch):
      loss = loss_fn(model, batch)
      return loss, {'twice': 2 * loss}

    (loss, aux), _, _ = nnx.jit(nnx_sparse.value_and_grad(
        loss_with_aux, has_aux=True))(model, next(batches(1)))
    np.testing.assert_allclose(aux['twice'], 2 * loss)

  def test_lookup_outside_value_and_grad_is_a_gather(self):
    model = TwoTower(nnx.Rngs(0))
    ids = jnp.array([[1, 2], [2, 19]])
    np.testing.assert_array_equal(
        model.user_embed(ids), model.user_embed.embedding.get_value()[ids])
    with self.assertRaisesRegex(TypeError, 'SparseTable'):
      nnx_sparse.lookup(model.dense.kernel, ids)

  def test_lookup_of_out_of_range_ids_reads_zeros(self):
    # JAX's own fill would wrap -1 to the last row before filling.
    model = TwoTower(nnx.Rngs(0))
    table = model.user_embed.embedding.get_value()
    ids = jnp.array([-1, 3, table.shape[0], -table.shape[0]])
    expected = np.zeros((4,) + table.shape[1:], table.dtype)
    expected[1] = table[3]
    np.testing.assert_array_equal(model.user_embed(ids), expected)
    # Inside value_and_grad too, under jit: the loss reads zeros for the ids
    # the sparse update drops.
    grad_fn = nnx.jit(nnx_sparse.value_and_grad(
        lambda model: model.user_embed(ids).sum()))
    loss, _, _ = grad_fn(model)
    np.testing.assert_allclose(loss, expected.sum(), rtol=1e-6)

  def test_a_bad_batch_for_one_table_updates_no_table(self):
    model = TwoTower(nnx.Rngs(0))
    optimizer = nnx_sparse.SparseOptimizer(
        model, fasgd_optax.sparse_cf_sgd(0.5, num_steps=10))
    bad = {'users': jnp.array([0, 1]), 'items': jnp.array([3, ITEMS + 2]),
           'targets': jnp.ones((2,))}
    _, _, table_grads = nnx_sparse.value_and_grad(loss_fn)(model, bad)
    before = jax.tree.map(np.array, (nnx.state(model), nnx.state(optimizer)))
    with self.assertRaisesRegex(
        ValueError, rf"'item_embed/embedding' must be in \[0, {ITEMS}\).*"
        rf'got {ITEMS + 2}'):
      optimizer.update(model, table_grads)
    # The user table, looked up first, did not move, nor did its counts.
    chex.assert_trees_all_equal(
        before, (nnx.state(model), nnx.state(optimizer)))

  def test_eager_update_checks_each_tables_ids_once(self):
    batch = next(batches(1))
    results = {}
    for checkify_ids in (False, True):
      model = TwoTower(nnx.Rngs(0))
      optimizer = nnx_sparse.SparseOptimizer(
          model, fasgd_optax.sparse_cf_sgd(0.5, num_steps=10,
                                           checkify_ids=checkify_ids))
      _, _, table_grads = nnx_sparse.value_and_grad(loss_fn)(model, batch)
      calls = []
      check = checks.check_ids_in_range

      def counted(*args, **kwargs):
        calls.append(args[2])  # The table's name.
        return check(*args, **kwargs)

      with mock.patch.object(checks, 'check_ids_in_range', counted):
        optimizer.update(model, table_grads)
      # Checked once per table; a transformation that checks traced ids
      # itself (checkify_ids) is applied with its own checks.
      self.assertCountEqual(
          calls, ['user_embed/embedding', 'item_embed/embedding'] +
          (['table', 'table'] if checkify_ids else []))
      results[checkify_ids] = nnx.state(model)
    # The same update either way, and as each table's own apply gives it.
    chex.assert_trees_all_equal(results[False], results[True])
    model = TwoTower(nnx.Rngs(0))
    _, _, table_grads = nnx_sparse.value_and_grad(loss_fn)(model, batch)
    for path, embed in (('user_embed/embedding', model.user_embed),
                        ('item_embed/embedding', model.item_embed)):
      tx = fasgd_optax.sparse_cf_sgd(0.5, num_steps=10)
      table = embed.embedding.get_value()
      table, _ = tx.apply(table, tx.init(table), table_grads[path].ids,
                          table_grads[path].row_grads)
      embed.embedding.set_value(table)
    chex.assert_trees_all_equal(results[False], nnx.state(model))

  def test_sparse_embed_is_initialised_like_nnx_embed(self):
    sparse = nnx_sparse.SparseEmbed(50, 8, rngs=nnx.Rngs(3))
    dense = nnx.Embed(50, 8, rngs=nnx.Rngs(3))
    np.testing.assert_array_equal(sparse.embedding.get_value(),
                                  dense.embedding.get_value())
    ids = jnp.array([[1, 7], [7, 49]])
    np.testing.assert_array_equal(sparse(ids), dense(ids))

  def test_sparse_embed_dtypes(self):
    # param_dtype stores the table; dtype is the looked-up rows', as in
    # nnx.Embed.
    stored = nnx_sparse.SparseEmbed(10, 4, param_dtype=jnp.bfloat16,
                                    rngs=nnx.Rngs(0))
    self.assertEqual(stored.embedding.get_value().dtype, jnp.bfloat16)
    self.assertEqual(stored(jnp.array([1])).dtype, jnp.bfloat16)
    computed = nnx_sparse.SparseEmbed(10, 4, dtype=jnp.bfloat16,
                                      rngs=nnx.Rngs(0))
    self.assertEqual(computed.embedding.get_value().dtype, jnp.float32)
    self.assertEqual(computed(jnp.array([1])).dtype, jnp.bfloat16)

  def test_bad_arguments(self):
    model = TwoTower(nnx.Rngs(0))
    with self.assertRaisesRegex(ValueError, r"\['nope'\] are not SparseTable"):
      nnx_sparse.SparseOptimizer(
          model, {'nope': fasgd_optax.sparse_cf_sgd(0.1, num_steps=10)})
    with self.assertRaisesRegex(ValueError, 'no SparseTable'):
      nnx_sparse.SparseOptimizer(nnx.Linear(2, 2, rngs=nnx.Rngs(0)),
                                 fasgd_optax.sparse_cf_sgd(0.1, num_steps=10))
    other = TwoTower(nnx.Rngs(1))

    def foreign_lookup(model, batch):
      del model
      return jnp.sum(other.user_embed(batch['users']))

    with self.assertRaisesRegex(ValueError, 'not part of the model'):
      nnx_sparse.value_and_grad(foreign_lookup)(model, next(batches(1)))

  def test_an_optax_transformation_is_named(self):
    model = TwoTower(nnx.Rngs(0))
    for tx in (optax.sgd(0.1), {'user_embed/embedding': optax.sgd(0.1)}):
      with self.assertRaisesRegex(TypeError, 'SparseTransformation.*got '
                                  'GradientTransformation.*nnx.Optimizer'):
        nnx_sparse.SparseOptimizer(model, tx)

  def test_lookup_ids_must_be_integers(self):
    model = TwoTower(nnx.Rngs(0))
    # A bool array would otherwise index as a mask outside value_and_grad.
    for ids in (jnp.array([1.0]), jnp.ones(USERS, bool)):
      with self.assertRaisesRegex(TypeError, 'integer array'):
        model.user_embed(ids)

    def loss(model, batch):
      return jnp.sum(model.user_embed(batch['users'].astype(jnp.float32)))

    with self.assertRaisesRegex(TypeError,
                                "'user_embed/embedding'.*integer.*float32"):
      nnx_sparse.value_and_grad(loss)(model, next(batches(1)))

  def test_a_lookup_inside_vmap_or_scan_is_named(self):
    model = TwoTower(nnx.Rngs(0))
    users = next(batches(1))['users']

    def vmapped(model, users):
      return jnp.sum(jax.vmap(model.user_embed)(users))

    def scanned(model, users):
      def body(total, user):
        return total + jnp.sum(model.user_embed(user)), None
      return jax.lax.scan(body, 0.0, users)[0]

    # Eager, and vmap under jit: JAX's leaked-tracer error comes with ours.
    # (A lax.scan under jit leaks its tracer past value_and_grad: JAX's own
    # error, not tested here.)
    for grad_fn in (nnx_sparse.value_and_grad(vmapped),
                    nnx_sparse.value_and_grad(scanned),
                    nnx.jit(nnx_sparse.value_and_grad(vmapped))):
      with self.assertRaisesRegex(ValueError, 'inside a jax.vmap or lax.scan '
                                  'body.*Look the rows up outside'):
        grad_fn(model, users)


if __name__ == '__main__':
  absltest.main()
