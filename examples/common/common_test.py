"""Tests for the shared examples module."""

import contextlib
import gc
import shutil
import tempfile
import weakref

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from examples.common import checkpointing
from examples.common import metrics
from examples.common import optimizers
from examples.common import training


class MetricsTest(parameterized.TestCase):

  def test_auc_hand_checked_with_ties(self):
    # Positives score .9, .2, .5; negatives .9, .1. Pairs won: (.9,.9) tie = .5,
    # (.9,.1) = 1, (.2,.9) = 0, (.2,.1) = 1, (.5,.9) = 0, (.5,.1) = 1 -> 3.5/6.
    labels = np.array([1, 0, 1, 0, 1])
    scores = np.array([0.9, 0.9, 0.2, 0.1, 0.5])
    self.assertAlmostEqual(metrics.auc(labels, scores), 3.5 / 6)

  def test_auc_matches_pairwise_count(self):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    scores = rng.integers(0, 20, 300).astype(float)  # many ties
    positives, negatives = scores[labels == 1], scores[labels == 0]
    pairwise = (
        (positives[:, None] > negatives[None, :]).sum()
        + 0.5 * (positives[:, None] == negatives[None, :]).sum()
    ) / (positives.size * negatives.size)
    self.assertAlmostEqual(metrics.auc(labels, scores), pairwise)

  def test_auc_edge_cases(self):
    self.assertEqual(metrics.auc(np.array([0, 1]), np.array([0.1, 0.2])), 1.0)
    self.assertTrue(np.isnan(metrics.auc(np.ones(3), np.arange(3.0))))
    self.assertTrue(np.isnan(metrics.auc(np.array([0, 1]),
                                         np.array([np.nan, 0.2]))))
    with self.assertRaisesRegex(ValueError, 'labels must be 0 or 1'):
      metrics.auc(np.array([0, 2]), np.array([0.1, 0.2]))
    with self.assertRaisesRegex(ValueError, 'one shape'):
      metrics.auc(np.array([0, 1]), np.array([0.1]))

  def test_log_loss(self):
    labels = np.array([1, 0])
    probabilities = np.array([0.8, 0.4])
    expected = -(np.log(0.8) + np.log(0.6)) / 2
    self.assertAlmostEqual(metrics.log_loss(labels, probabilities), expected)

  def test_auc_by_bucket(self):
    labels = np.array([1, 0, 1, 0])
    scores = np.array([0.9, 0.1, 0.1, 0.9])
    buckets = np.array([0, 0, 1, 1])
    self.assertEqual(
        dict(metrics.auc_by_bucket(labels, scores, buckets, ['a', 'b'])),
        {'a': 1.0, 'b': 0.0},
    )


class OptimizersTest(parameterized.TestCase):

  @parameterized.parameters('sgd', 'adagrad', 'adam', 'cf_sgd')
  def test_every_optimizer_accepts_ids(self, name):
    params = {'embedding': {'embedding': jnp.ones((4, 2))}, 'bias': jnp.ones(())}
    tx = optimizers.make_optimizer(name, 0.1, num_steps=10)
    state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(
        grads, state, params, ids={'embedding/embedding': jnp.array([0, 0])}
    )
    self.assertLess(float(updates['bias']), 0.0)

  def test_fa_sgd_needs_frequencies(self):
    with self.assertRaisesRegex(ValueError, 'fa_sgd.*frequencies'):
      optimizers.make_optimizer('fa_sgd', 0.1, num_steps=10)

  def test_unknown_name_and_bad_rate(self):
    with self.assertRaisesRegex(ValueError, "Unknown optimizer 'sgdd'"):
      optimizers.make_optimizer('sgdd', 0.1)
    with self.assertRaisesRegex(ValueError, 'learning_rate.*> 0'):
      optimizers.make_optimizer('sgd', 0.0)

  def test_linear_schedule_is_word2vecs_decay(self):
    schedule = optimizers.learning_rate_schedule('linear', 2.0, 100)
    np.testing.assert_allclose(
        [schedule(0), schedule(50), schedule(100), schedule(1000)],
        [2.0, 1.0001, 2e-4, 2e-4], rtol=1e-5)
    self.assertEqual(optimizers.learning_rate_schedule('constant', 2.0, None),
                     2.0)
    with self.assertRaisesRegex(ValueError, 'needs num_steps >= 1; got None'):
      optimizers.learning_rate_schedule('linear', 2.0, None)
    with self.assertRaisesRegex(ValueError, "one of constant, linear; got 'cos"):
      optimizers.learning_rate_schedule('cosine', 2.0, 10)

  @parameterized.parameters('sgd', 'rowwise_adagrad', 'cf_sgd')
  def test_sparse_and_dense_factories_apply_the_schedule(self, name):
    # Two steps of the same gradient on one row: the linear schedule over a
    # 1-step horizon is at its floor (10^-4) by the second step.
    table = jnp.ones((4, 2))
    ids = jnp.array([1])
    grads = jnp.ones((1, 2))

    def second_step(schedule):
      sparse = optimizers.make_sparse_optimizer(name, 0.5, num_steps=1,
                                                schedule=schedule)
      state = sparse.init(table)
      # `apply` donates the table: keep copies of what is read later.
      first, state = sparse.apply(jnp.array(table), state, ids, grads)
      first_row = np.asarray(first[1, 0])
      second, _ = sparse.apply(first, state, ids, grads)
      dense = optimizers.make_optimizer(name, 0.5, num_steps=1,
                                        schedule=schedule)
      dense_state = dense.init(table)
      dense_grads = jnp.zeros_like(table).at[1].set(1.0)
      updates, dense_state = dense.update(dense_grads, dense_state, table,
                                          ids={'': ids})
      dense_first = table + updates
      updates, _ = dense.update(dense_grads, dense_state, dense_first,
                                ids={'': ids})
      np.testing.assert_allclose(second, dense_first + updates, rtol=1e-6)
      return float(second[1, 0] - first_row)

    constant, linear = second_step('constant'), second_step('linear')
    self.assertLess(constant, 0.0)
    self.assertLess(abs(linear), 2e-3 * abs(constant))

  def test_split_optimizer_counts_only_embedding_rows(self):
    params = {'embedding': {'embedding': jnp.ones((4, 2))}, 'bias': jnp.ones(())}
    labels = optimizers.label_embeddings(params, lambda p: 'embedding' in p)
    self.assertEqual(labels, {'embedding': {'embedding': 'embedding'},
                              'bias': 'dense'})
    tx = optimizers.make_split_optimizer(
        optimizers.make_optimizer('cf_sgd', 1.0, num_steps=None),
        optimizers.make_optimizer('sgd', 0.5),
        labels,
    )
    state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, state = tx.update(
        grads, state, params, ids={'embedding/embedding': jnp.array([1, 1, 3])}
    )
    counts = optax.tree.get(state, 'row_counts')['embedding']['embedding']
    np.testing.assert_array_equal(counts, [0, 2, 0, 1])
    self.assertAlmostEqual(float(updates['bias']), -0.5)
    # Row 1 seen twice in step 1 (no horizon): step 1/sqrt(2).
    np.testing.assert_allclose(
        updates['embedding']['embedding'][1], -1 / np.sqrt(2), rtol=1e-6
    )


class CheckpointingTest(absltest.TestCase):

  def _state(self, value):
    tx = optimizers.make_optimizer('cf_sgd', 0.1, num_steps=5)
    params = {'w': jnp.full((3, 2), value)}
    return {'params': params, 'opt_state': tx.init(params)}

  def test_resume_exact_and_errors(self):
    directory = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, directory)
    config = {'lr': 0.1}
    train_epoch_calls = []

    def train_epoch(state, epoch):
      train_epoch_calls.append(epoch)
      return jax.tree.map(lambda x: x + epoch, state), [float(epoch)]

    def evaluate(state):
      return {'validation': {'auc': float(-abs(state['params']['w'][0, 0] - 3))}}

    def stop_after_first(epoch, state, history):
      del state, history
      if epoch == 1:
        raise KeyboardInterrupt

    with checkpointing.EpochCheckpointer(directory, config) as checkpointer:
      with self.assertRaises(KeyboardInterrupt):
        training.run_epochs(
            self._state(0.0), num_epochs=3, train_epoch=train_epoch,
            evaluate=evaluate, checkpointer=checkpointer,
            on_epoch_end=stop_after_first)
    with checkpointing.EpochCheckpointer(directory, config) as checkpointer:
      self.assertEqual(checkpointer.latest_epoch(), 1)
      resumed, history = training.run_epochs(
          self._state(0.0), num_epochs=3, train_epoch=train_epoch,
          evaluate=evaluate, checkpointer=checkpointer)
    self.assertEqual(train_epoch_calls, [1, 2, 3])
    uninterrupted, _ = training.run_epochs(
        self._state(0.0), num_epochs=3, train_epoch=train_epoch,
        evaluate=evaluate)
    chex.assert_trees_all_equal(resumed, uninterrupted)
    self.assertEqual([r['epoch'] for r in history], [1, 2, 3])
    self.assertEqual(training.best_epoch(history)['epoch'], 2)  # w = 3

    with checkpointing.EpochCheckpointer(directory, {'lr': 0.2}) as other:
      with self.assertRaisesRegex(checkpointing.CheckpointError,
                                  r'other settings \(lr: 0.1 -> 0.2\)'):
        other.restore_latest(self._state(0.0))


class FrozenHeapTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    gc.unfreeze()  # Whatever an earlier test may have left frozen.
    self.addCleanup(gc.unfreeze)

  def test_freezes_live_objects_and_counts_collections(self):
    kept = [[i] for i in range(1000)]
    callbacks = list(gc.callbacks)
    with training.frozen_heap() as collector:
      # Alive on entry: frozen, so out of collections.
      self.assertGreaterEqual(gc.get_freeze_count(), len(kept))
      gc.collect(0)
      gc.collect()
    self.assertEqual(gc.get_freeze_count(), 0)
    self.assertEqual(gc.callbacks, callbacks)
    # Automatic young collections may add to the two asked for.
    self.assertGreaterEqual(collector.collections, 2)
    self.assertGreaterEqual(collector.full_collections, 1)
    self.assertGreater(collector.seconds, 0.0)
    self.assertEqual(collector.as_dict()['collections'],
                     collector.collections)

  def test_collects_garbage_first_and_unfreezes_on_error(self):
    cycle = _Node()
    cycle.next = cycle  # Only a collection frees a cycle.
    ref = weakref.ref(cycle)
    del cycle
    callbacks = list(gc.callbacks)
    with self.assertRaises(KeyError):
      with training.frozen_heap():
        # Garbage from before the context is collected, not frozen.
        self.assertIsNone(ref())
        raise KeyError('stop')
    self.assertEqual(gc.get_freeze_count(), 0)
    self.assertEqual(gc.callbacks, callbacks)

  def test_leaves_what_was_frozen_before_frozen(self):
    for outer in ('caller', 'frozen_heap'):
      gc.unfreeze()
      stack = contextlib.ExitStack()
      if outer == 'caller':
        gc.freeze()
      else:
        stack.enter_context(training.frozen_heap())
      with stack:
        frozen = gc.get_freeze_count()
        self.assertGreater(frozen, 0)
        with training.frozen_heap() as collector:
          gc.collect()
        self.assertGreaterEqual(collector.full_collections, 1)
        # Still frozen (gc.unfreeze would leave none; a frozen object can
        # still be freed when nothing refers to it).
        self.assertGreater(gc.get_freeze_count(), frozen // 2, outer)


class _Node:
  next = None


if __name__ == '__main__':
  absltest.main()
