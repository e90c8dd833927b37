"""The sparse path (DESIGN.md §6): same results as the dense transformations."""

import functools

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
from jax.experimental import checkify
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax

import fasgd_optax
from fasgd_optax._src import rows as rows_lib
from tests import reference
from tests import sparse_cases as cases
from tests.sparse_cases import ALL_DUPLICATE_MODES
from tests.sparse_cases import ALL_OPTIMIZERS, DIM, DUPLICATE_MODES, ROWS


class DenseEquivalenceTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.product(name=ALL_OPTIMIZERS,
                         duplicates=('auto',) + ALL_DUPLICATE_MODES)
  def test_matches_dense_transformation(self, name, duplicates):
    dense, sparse, sparse_part = cases.optimizers(name, duplicates)
    dense_table = jnp.asarray(cases.initial_table())
    dense_state = dense.init(dense_table)
    sparse_table = jnp.asarray(cases.initial_table())
    sparse_state = sparse.init(sparse_table)
    chex.assert_trees_all_equal(sparse_state, sparse_part(dense_state))
    sparse_step = self.variant(functools.partial(cases.sparse_step, sparse))
    for ids, targets in cases.batches(4):
      dense_table, dense_state = cases.dense_step(dense, dense_table, dense_state,
                                             ids, targets)
      sparse_table, sparse_state = sparse_step(sparse_table, sparse_state, ids,
                                               targets)
    self.assertGreater(float(jnp.max(jnp.abs(dense_table - cases.initial_table()))),
                       1e-3)
    chex.assert_trees_all_close(sparse_table, dense_table, rtol=1e-5,
                                atol=1e-6)
    chex.assert_trees_all_close(sparse_state, sparse_part(dense_state),
                                rtol=1e-5)

  @parameterized.product(name=('cf_sgd_half_life_capped', 'rowwise_adagrad'),
                         duplicates=DUPLICATE_MODES)
  def test_switch_from_dense_to_sparse_mid_training(self, name, duplicates):
    dense, sparse, sparse_part = cases.optimizers(name, duplicates)
    batches = list(cases.batches(6))
    table = jnp.asarray(cases.initial_table())
    state = dense.init(table)
    for ids, targets in batches:
      table, state = cases.dense_step(dense, table, state, ids, targets)

    switched = jnp.asarray(cases.initial_table())
    dense_state = dense.init(switched)
    for ids, targets in batches[:3]:
      switched, dense_state = cases.dense_step(dense, switched, dense_state, ids,
                                          targets)
    sparse_state = sparse_part(dense_state)
    for ids, targets in batches[3:]:
      switched, sparse_state = cases.sparse_step(sparse, switched, sparse_state,
                                            ids, targets)
    chex.assert_trees_all_close(switched, table, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(sparse_state, sparse_part(state), rtol=1e-5)

  @parameterized.parameters(*DUPLICATE_MODES)
  def test_matches_numpy_reference_with_duplicates(self, duplicates):
    sparse = fasgd_optax.sparse_cf_sgd(0.5, num_steps=20, count_half_life=3.0,
                                       duplicates=duplicates)
    table = jnp.asarray(cases.initial_table())
    state = sparse.init(table)
    expected = cases.initial_table().astype(np.float64)
    leaf = reference.ReferenceLeaf(ROWS, num_steps=20, half_life=3.0)
    for ids, targets in cases.batches(5):
      row_grads = jax.grad(cases.loss)(table[ids], targets)
      dense_grad = np.zeros((ROWS, DIM))
      np.add.at(dense_grad, np.ravel(ids), np.reshape(row_grads, (-1, DIM)))
      expected += leaf.update(dense_grad, np.asarray(ids), 0.5, None)
      table, state = sparse.apply(table, state, ids, row_grads)
    np.testing.assert_allclose(table, expected, rtol=1e-5, atol=1e-6)

  @parameterized.parameters(*DUPLICATE_MODES)
  def test_counts_duplicates_with_multiplicity(self, duplicates):
    sparse = fasgd_optax.sparse_cf_sgd(1.0, num_steps=10,
                                       duplicates=duplicates)
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
    _, sparse, _ = cases.optimizers(name)
    table = jnp.asarray(cases.initial_table())
    state = sparse.init(table)
    counts_before = jax.tree.leaves(state)
    new_table, new_state = sparse.apply(table, state, jnp.array([1, 2]),
                                        jnp.ones((2, DIM)))
    self.assertTrue(table.is_deleted())
    for leaf in counts_before:
      self.assertTrue(leaf.is_deleted())
    self.assertFalse(new_table.is_deleted())
    chex.assert_trees_all_equal_shapes_and_dtypes(new_state, sparse.init(
        jnp.asarray(cases.initial_table())))

  @parameterized.parameters(*ALL_OPTIMIZERS)
  def test_no_work_proportional_to_rows(self, name):
    """Only gathers and scatters touch the N-row arrays: no O(N) ops."""
    _, sparse, _ = cases.optimizers(name)
    num_rows = 100_003  # A size no other array in the step has.
    frequencies = np.ones(num_rows, np.float32)
    if name == 'fa_sgd':
      sparse = fasgd_optax.sparse_fa_sgd(0.8, frequencies, num_steps=50)
    table = jax.ShapeDtypeStruct((num_rows, DIM), jnp.float32)
    state = jax.eval_shape(sparse.init, table)
    ids = jax.ShapeDtypeStruct((64,), jnp.int32)
    row_grads = jax.ShapeDtypeStruct((64, DIM), jnp.float32)
    jaxpr = jax.make_jaxpr(sparse.apply)(table, state, ids, row_grads)
    # Containers whose inner equations are visited too: `cond` holds both
    # designs under duplicates='auto'.
    allowed = {'gather', 'scatter', 'scatter-add', 'scatter_add', 'pjit',
               'jit', 'cond'}
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

  @parameterized.product(name=ALL_OPTIMIZERS, duplicates=ALL_DUPLICATE_MODES)
  def test_compiled_step_copies_no_state_or_table(self, name, duplicates):
    """XLA copies a whole array when a scatter may race a gather from it."""
    _, sparse, _ = cases.optimizers(name, duplicates)
    num_rows = 100_003  # A size no other array in the step has.
    if name == 'fa_sgd':
      sparse = fasgd_optax.sparse_fa_sgd(
          0.8, np.ones(num_rows, np.float32), num_steps=50,
          duplicates=duplicates)
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

  @parameterized.product(
      name=('cf_sgd', 'cf_sgd_half_life_capped', 'fa_sgd', 'rowwise_adagrad',
            'sgd'),
      duplicates=DUPLICATE_MODES)
  def test_bad_ids_are_dropped_under_jit(self, name, duplicates):
    _, sparse, _ = cases.optimizers(name, duplicates)
    table = jnp.asarray(cases.initial_table())
    state = sparse.init(table)
    step = jax.jit(sparse.apply)
    ids = jnp.array([-1, 5, ROWS, -ROWS, 5])
    new_table, new_state = step(jnp.array(table), state, ids,
                                jnp.ones((5, DIM)))
    changed = np.flatnonzero(np.any(new_table != cases.initial_table(), axis=1))
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
    dense, sparse, sparse_part = cases.optimizers('cf_sgd')
    weights = jnp.asarray(cases.initial_table()[:, 0])
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

  @parameterized.parameters('cf_sgd_half_life_capped', 'rowwise_adagrad')
  def test_state_made_for_another_table_is_refused(self, name):
    # A vocabulary that grew: rows 4 and 5 have no counts or accumulators.
    _, sparse, _ = cases.optimizers(name)
    state = sparse.init(jnp.zeros((4, 2)))
    before = jax.tree.map(np.array, state)
    table = jnp.zeros((6, 2))
    for apply in (sparse.apply, jax.jit(sparse.apply)):
      with self.assertRaisesRegex(
          ValueError, r'state.*has shape \(4,\), but a table of shape '
          r'\(6, 2\) needs \(6,\).*another table'):
        apply(table, state, jnp.array([1, 5]), jnp.ones((2, 2)))
    # Nothing was donated or changed.
    chex.assert_trees_all_equal(state, before)
    np.testing.assert_array_equal(table, 0.0)

  def test_learning_rate_changed_between_steps_without_recompiling(self):
    # The sparse path's `inject_hyperparams`: build the transformation inside
    # the jitted step from a traced learning rate.
    traces = []

    @jax.jit
    def step(table, state, ids, row_grads, learning_rate):
      traces.append(learning_rate)
      sparse = fasgd_optax.sparse_cf_sgd(learning_rate, num_steps=10)
      return sparse.apply(table, state, ids, row_grads)

    ids, row_grads = jnp.array([1, 1, 3]), jnp.ones((3, 2))
    table = jnp.zeros((5, 2))
    state = fasgd_optax.sparse_cf_sgd(1.0, num_steps=10).init(table)
    expected, expected_state = jnp.zeros((5, 2)), state
    for learning_rate in (1.0, 0.5):
      table, state = step(table, state, ids, row_grads,
                          jnp.float32(learning_rate))
      fixed = fasgd_optax.sparse_cf_sgd(learning_rate, num_steps=10)
      expected, expected_state = fixed.apply(expected, expected_state, ids,
                                             row_grads)
    self.assertLen(traces, 1)
    chex.assert_trees_all_close(table, expected, rtol=1e-6)
    # Nothing the library keeps holds on to the traced rate.
    with jax.checking_leaks():
      jax.jit(step).lower(table, state, ids, row_grads, jnp.float32(0.1))

  def test_dense_chain_state_is_refused_with_a_hint(self):
    table = jnp.zeros((4, 2))
    chain_state = fasgd_optax.cf_sgd(1.0, num_steps=10).init(table)
    sparse = fasgd_optax.sparse_cf_sgd(1.0, num_steps=10)
    with self.assertRaisesRegex(
        ValueError, r'structure of init\(table\).*first element'):
      sparse.apply(table, chain_state, jnp.array([1]), jnp.ones((1, 2)))
    # Its first element is the sparse state.
    table, state = sparse.apply(table, chain_state[0], jnp.array([1]),
                                jnp.ones((1, 2)))
    np.testing.assert_array_equal(state.row_counts, [0, 1, 0, 0])

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


def _tagged(keys, grads, num_rows):
  """`sum_duplicates_by_tagging` on a table it must give back unchanged."""
  table = jnp.asarray(np.random.default_rng(0).normal(
      size=(num_rows,) + grads.shape[1:]), jnp.float32)
  given_back, batch = rows_lib.sum_duplicates_by_tagging(table, keys, grads)
  np.testing.assert_array_equal(given_back, table)
  return batch


class DistinctRowsTest(parameterized.TestCase):
  """Both ways of combining duplicate ids: sums, counts, dropped bad ids."""

  SUMS = {
      'scatter': lambda keys, grads, num_rows: _tagged(keys, grads, num_rows),
      'scatter_sorted_keys': rows_lib.sum_duplicates_by_scatter,
      'reduce': rows_lib.sum_duplicates_by_sorting}

  @parameterized.parameters(*SUMS)
  def test_sums_duplicates_and_drops_bad_ids(self, duplicates):
    ids = jnp.array([4, -1, 2, 4, 9, 4])
    grads = jnp.arange(6.0)[:, None] * jnp.ones((1, 2))
    keys, flat_grads = rows_lib.flat_batch(ids, grads, num_rows=9)
    np.testing.assert_array_equal(keys, [4, 9, 2, 4, 9, 4])
    batch = self.SUMS[duplicates](keys, flat_grads, num_rows=9)
    rows = np.asarray(batch.rows)
    # Every slot's row is its own: in-range rows once, the rest past the end.
    self.assertLen(set(rows.tolist()), len(rows))
    by_row = {int(r): (np.asarray(g), int(m)) for r, g, m in zip(
        rows, batch.grads, batch.multiplicities) if r < 9}
    self.assertEqual(sorted(by_row), [2, 4])
    np.testing.assert_array_equal(by_row[4][0], [8.0, 8.0])  # 0 + 3 + 5
    self.assertEqual(by_row[4][1], 3)
    np.testing.assert_array_equal(by_row[2][0], [2.0, 2.0])
    self.assertEqual(by_row[2][1], 1)

  @parameterized.parameters(*SUMS)
  def test_runs_longer_than_a_block(self, duplicates):
    """Hot rows whose occurrences span several of the 128-row blocks."""
    rng = np.random.default_rng(3)
    num_rows, size = 50, 1000
    keys = np.minimum(rng.zipf(2.0, size=size) - 1, num_rows)  # 50: bad ids.
    grads = rng.normal(size=(size, 2, 3)).astype(np.float32)
    batch = self.SUMS[duplicates](jnp.asarray(keys, jnp.int32),
                                  jnp.asarray(grads), num_rows)
    expected_sums = np.zeros((num_rows, 2, 3))
    np.add.at(expected_sums, keys[keys < num_rows], grads[keys < num_rows])
    expected_counts = np.bincount(keys[keys < num_rows], minlength=num_rows)
    self.assertGreater(expected_counts.max(), 3 * 128)
    rows = np.asarray(batch.rows)
    in_range = rows < num_rows
    np.testing.assert_array_equal(np.sort(rows[in_range]),
                                  np.flatnonzero(expected_counts))
    np.testing.assert_array_equal(
        np.asarray(batch.multiplicities)[in_range],
        expected_counts[rows[in_range]])
    np.testing.assert_allclose(np.asarray(batch.grads)[in_range],
                               expected_sums[rows[in_range]], rtol=1e-5,
                               atol=1e-5)
    self.assertLen(set(rows.tolist()), size)


  def test_both_ways_of_summing_runs_agree_on_finite_values(self):
    """`run_totals` sums finite batches without flags, others with them."""
    rng = np.random.default_rng(4)
    keys = np.sort(np.minimum(rng.zipf(1.5, size=700) - 1, 40)).astype(
        np.int32)
    values = rng.normal(size=(700, 3)).astype(np.float32)
    starts = np.r_[0, np.flatnonzero(np.diff(keys)) + 1]
    expected = np.concatenate([np.cumsum(run, axis=0) for run in
                               np.split(values, starts[1:])])
    got = rows_lib.run_totals(jnp.asarray(keys), jnp.asarray(values))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # One NaN takes the flags' way: the other runs' sums stay as they were.
    values[np.flatnonzero(keys == 0)[-1], 1] = np.nan
    with_nan = np.asarray(rows_lib.run_totals(jnp.asarray(keys),
                                              jnp.asarray(values)))
    other_runs = keys != 0
    np.testing.assert_allclose(with_nan[other_runs], expected[other_runs],
                               rtol=1e-5, atol=1e-5)
    self.assertTrue(np.isnan(with_nan[np.flatnonzero(keys == 0)[-1], 1]))
    self.assertTrue(np.isfinite(with_nan[keys == 0][:, [0, 2]]).all())

  @parameterized.parameters(*SUMS)
  def test_non_finite_gradients_stay_in_their_row_and_column(self, duplicates):
    """NaN and ±inf sum as NumPy sums them, never into another row.

    The reduce design sums runs with 0/1-mask matrix products, where a mask's
    0 times another run's inf or NaN would make NaN of whole blocks.
    """
    rng = np.random.default_rng(5)
    num_rows, size = 50, 1000
    keys = np.minimum(rng.zipf(1.5, size=size) - 1, num_rows)  # 50: bad ids.
    grads = rng.normal(size=(size, 4)).astype(np.float32)
    hot = np.flatnonzero(keys == 0)
    self.assertGreater(len(hot), 300)  # Row 0's run spans blocks.
    grads[hot[1], 0] = np.nan
    grads[hot[-1], 1] = np.inf  # Row 0: inf in column 1, in a later block.
    grads[hot[5], 2] = np.inf
    grads[hot[200], 2] = -np.inf  # Row 0, column 2: inf - inf = NaN.
    grads[np.flatnonzero(keys == 3)[0], 3] = -np.inf
    dropped = np.flatnonzero(keys == num_rows)
    self.assertNotEmpty(dropped)
    grads[dropped] = np.nan  # Bad ids' gradients touch nothing.
    batch = self.SUMS[duplicates](jnp.asarray(keys, jnp.int32),
                                  jnp.asarray(grads), num_rows)
    expected = np.zeros((num_rows, 4), np.float64)
    in_range = keys < num_rows
    with np.errstate(invalid='ignore'):
      np.add.at(expected, keys[in_range], grads[in_range])
    rows = np.asarray(batch.rows)
    kept = rows < num_rows
    got = np.asarray(batch.grads)[kept]
    want = expected[rows[kept]]
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isposinf(got), np.isposinf(want))
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want))
    self.assertEqual(int(np.sum(~np.isfinite(want))), 4)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(
        np.asarray(batch.multiplicities)[kept],
        np.bincount(keys[in_range], minlength=num_rows)[rows[kept]])


  @parameterized.parameters(*SUMS)
  def test_a_sum_past_float32s_range_stays_in_its_row(self, duplicates):
    # Finite values whose sum overflows: +inf for their row, as a float32
    # sum gives, and nothing for the next block's row (a 0/1 product would
    # carry the inf into it as NaN).
    keys = jnp.asarray([0] * 128 + [1] * 128 + [2] * 50, jnp.int32)
    grads = np.ones((306, 2), np.float32)
    grads[126:128] = 3e38
    grads[200, 1] = -3e38
    batch = self.SUMS[duplicates](keys, jnp.asarray(grads), 5)
    by_row = {int(r): np.asarray(g) for r, g in zip(batch.rows, batch.grads)
              if r < 5}
    np.testing.assert_array_equal(by_row[0], [np.inf, np.inf])
    np.testing.assert_allclose(by_row[1], [128.0, -3e38], rtol=1e-6)
    np.testing.assert_array_equal(by_row[2], [50.0, 50.0])


class DuplicateModesTest(parameterized.TestCase):
  """The two designs agree, and each compiles to what it should."""

  @parameterized.parameters(*ALL_OPTIMIZERS)
  def test_designs_agree_on_power_law_batches(self, name):
    """Large Zipf batches: hot rows repeat hundreds of times per step."""
    results = {}
    for duplicates in DUPLICATE_MODES:
      _, sparse, _ = cases.optimizers(name, duplicates)
      table = jnp.asarray(cases.initial_table())
      state = sparse.init(table)
      step = jax.jit(functools.partial(cases.sparse_step, sparse))
      for ids, targets in cases.batches(3, shape=(200, 4), seed=7):
        table, state = step(table, state, ids, targets)
      results[duplicates] = (table, state)
    chex.assert_trees_all_close(results['reduce'], results['scatter'],
                                rtol=2e-5, atol=1e-6)

  @parameterized.parameters(*ALL_OPTIMIZERS)
  def test_a_nan_gradient_spoils_only_its_own_row(self, name):
    """As on the dense path: one row's NaN leaves every other row alone."""
    ids = jnp.asarray(np.random.default_rng(2).integers(
        0, cases.ROWS, size=(300,)).astype(np.int32))
    row_grads = np.random.default_rng(3).normal(
        size=(300, cases.DIM)).astype(np.float32)
    row_grads[7, 1] = np.nan
    results = {}
    for duplicates in DUPLICATE_MODES:
      _, sparse, _ = cases.optimizers(name, duplicates)
      table = jnp.asarray(cases.initial_table())
      results[duplicates] = sparse.apply(table, sparse.init(table), ids,
                                         jnp.asarray(row_grads))
    spoilt = int(ids[7])
    for duplicates, (table, _) in results.items():
      finite_rows = np.all(np.isfinite(np.asarray(table)), axis=1)
      self.assertFalse(finite_rows[spoilt], duplicates)
      self.assertEqual(int(finite_rows.sum()), cases.ROWS - 1, duplicates)
    chex.assert_trees_all_close(results['reduce'], results['scatter'],
                                rtol=2e-5, atol=1e-6)

  @parameterized.product(name=ALL_OPTIMIZERS, dtype=(jnp.bfloat16, jnp.float16))
  def test_low_precision_tables_move_hot_rows(self, name, dtype):
    """A hot row's many small steps are summed before the table's rounding.

    Added one occurrence at a time in bfloat16, a CF-SGD row of value 1 hit
    256 times takes 256 steps of about 2e-4, each below half a unit in the
    last place (2^-9), and never moves.
    """
    dense, _, sparse_part = cases.optimizers(name)
    table = jnp.ones((cases.ROWS, cases.DIM), dtype)
    # Row 7 is hot (FA-SGD's frequencies leave row 0 at p = 0, unmoved).
    ids = jnp.concatenate([jnp.full((256,), 7, jnp.int32), jnp.arange(10, 18)])
    row_grads = jnp.full(ids.shape + (cases.DIM,), 0.03, dtype)
    # What a float32 dense step moves row 0 by.
    table32 = table.astype(jnp.float32)
    dense_grads = jnp.zeros_like(table32).at[ids].add(
        row_grads.astype(jnp.float32))
    updates, _ = dense.update(dense_grads, dense.init(table32), table32,
                              ids=ids)
    expected = optax.apply_updates(table32, updates)
    self.assertLess(float(expected[7, 0]), 1 - 4 * float(jnp.finfo(dtype).eps))
    results = {}
    for duplicates in DUPLICATE_MODES:
      _, sparse, _ = cases.optimizers(name, duplicates)
      results[duplicates], _ = sparse.apply(jnp.array(table),  # Donated.
                                            sparse.init(table), ids,
                                            row_grads)
      self.assertEqual(results[duplicates].dtype, dtype)
      # The float32 result to within the table's rounding: the row's summed
      # step is rounded to the table's dtype, then added (2 roundings).
      np.testing.assert_allclose(
          np.asarray(results[duplicates], np.float32),
          np.asarray(expected.astype(dtype), np.float32),
          rtol=2 * float(jnp.finfo(dtype).eps), err_msg=duplicates)
    chex.assert_trees_all_equal(results['scatter'], results['reduce'])

  def _scatters(self, text, num_rows):
    """The StableHLO scatters into arrays of `num_rows` rows, op by op."""
    ops, current = [], None
    for line in text.splitlines():
      if 'stablehlo.scatter' in line:
        current = [line]
      elif current is not None:
        current.append(line)
        if line.lstrip().startswith('}) :'):
          ops.append('\n'.join(current))
          current = None
    return [op for op in ops
            if f'-> tensor<{num_rows}' in op.splitlines()[-1]]

  def _lowered(self, name, duplicates, num_rows, platform=None):
    _, sparse, _ = cases.optimizers(name, duplicates)
    if name == 'fa_sgd':
      sparse = fasgd_optax.sparse_fa_sgd(
          0.8, np.ones(num_rows, np.float32), num_steps=50,
          duplicates=duplicates)
    table = jax.ShapeDtypeStruct((num_rows, DIM), jnp.float32)
    state = jax.eval_shape(sparse.init, table)
    ids = jax.ShapeDtypeStruct((4096,), jnp.int32)
    row_grads = jax.ShapeDtypeStruct((4096, DIM), jnp.float32)
    if platform is None:
      return jax.jit(sparse.apply).lower(table, state, ids, row_grads).as_text()
    exported = jax.export.export(jax.jit(sparse.apply), platforms=[platform])(
        table, state, ids, row_grads)
    return exported.mlir_module()

  @parameterized.parameters(*ALL_OPTIMIZERS)
  def test_reduce_writes_each_row_once(self, name):
    """One scatter per N-row array, with unique indices; no loops."""
    num_rows = 100_003
    text = self._lowered(name, 'reduce', num_rows)
    scatters = self._scatters(text, num_rows)
    state_arrays = {'cf_sgd_half_life_capped': 2, 'rowwise_adagrad': 1,
                    'rowwise_adagrad_schedule': 1}.get(
                        name, 1 if name.startswith('cf_sgd') else 0)
    self.assertLen(scatters, 1 + state_arrays)
    for line in scatters:
      self.assertIn('unique_indices = true', line)
    self.assertNotIn('stablehlo.while', text)
    # Duplicates are combined without scatter-adds into any other array.
    self.assertEqual(
        [op for op in self._scatters(text, '') if 'stablehlo.add' in op
         and 'unique_indices = true' not in op], [])

  @parameterized.parameters('cf_sgd', 'fa_sgd', 'sgd')
  def test_auto_picks_scatter_on_cpu_and_reduce_elsewhere(self, name):
    num_rows = 100_003
    # Lowered for a CPU: no sort; the rows' slots marked in their first
    # elements (a write, and one to put them back), then each row written
    # once, its occurrences summed.
    cpu = self._lowered(name, 'auto', num_rows, 'cpu')
    self.assertNotIn('stablehlo.sort', cpu)
    table_scatters = [line for line in self._scatters(cpu, num_rows)
                      if f'tensor<{num_rows}x{DIM}xf32>' in line]
    self.assertLen(table_scatters, 3)
    self.assertEqual(['tensor<4096xf32>' in line for line in table_scatters],
                     [True, True, False])
    self.assertIn('unique_indices = true', table_scatters[2])
    # 'occurrences': each occurrence scattered into the table, no sort.
    occurrences = self._lowered(name, 'occurrences', num_rows, 'cpu')
    self.assertNotIn('stablehlo.sort', occurrences)
    table_scatters = [line for line in self._scatters(occurrences, num_rows)
                      if f'tensor<{num_rows}x{DIM}xf32>' in line]
    self.assertLen(table_scatters, 1)
    self.assertNotIn('unique_indices = true', table_scatters[0])
    # Exported for a GPU and a TPU (from any machine, CPU-only included): the
    # same function holds the reduce design there.
    for platform in ('cuda', 'tpu'):
      text = self._lowered(name, 'auto', num_rows, platform)
      self.assertIn('stablehlo.sort', text)
      for line in self._scatters(text, num_rows):
        self.assertIn('unique_indices = true', line)

  @parameterized.parameters('cf_sgd', 'sgd', 'rowwise_adagrad')
  def test_scatter_tags_the_table_only_on_cpu(self, name):
    # Elsewhere the tags' writes made XLA copy the table (H200, 2026-11-28):
    # the rows' slots come from a sort, and the table is written once.
    num_rows = 100_003
    for platform in ('cpu', 'cuda', 'rocm', 'tpu'):
      text = self._lowered(name, 'scatter', num_rows, platform)
      table_scatters = [line for line in self._scatters(text, num_rows)
                        if f'tensor<{num_rows}x{DIM}xf32>' in line]
      self.assertLen(table_scatters, 3 if platform == 'cpu' else 1, platform)
      self.assertIn('unique_indices = true', table_scatters[-1])
      self.assertEqual('stablehlo.sort' in text, platform != 'cpu', platform)

  @parameterized.parameters('cf_sgd', 'rowwise_adagrad')
  def test_resolve_duplicates_names_the_design_auto_takes(self, name):
    num_rows = 100_003

    def design(text):  # A sort, and whether the table's writes are unique.
      return ('stablehlo.sort' in text,
              ['unique_indices = true' in line
               for line in self._scatters(text, num_rows)])

    for platform in ('cpu', 'cuda', 'rocm', 'tpu'):
      resolved = fasgd_optax.resolve_duplicates('auto', platform)
      self.assertEqual(resolved, 'scatter' if platform == 'cpu' else 'reduce')
      self.assertEqual(
          design(self._lowered(name, resolved, num_rows, platform)),
          design(self._lowered(name, 'auto', num_rows, platform)), platform)
    # A backend's name as jax.default_backend() gives it; None is that.
    self.assertEqual(fasgd_optax.resolve_duplicates('auto', 'gpu'), 'reduce')
    self.assertEqual(fasgd_optax.resolve_duplicates(),
                     fasgd_optax.resolve_duplicates('auto',
                                                    jax.default_backend()))
    for named in ALL_DUPLICATE_MODES:
      self.assertEqual(fasgd_optax.resolve_duplicates(named, 'cpu'), named)
      self.assertEqual(fasgd_optax.resolve_duplicates(named, 'gpu'), named)
    with self.assertRaisesRegex(ValueError, "`duplicates`.*got 'sorted'"):
      fasgd_optax.resolve_duplicates('sorted')

  def test_resolved_design_runs_as_auto_does_here(self):
    # 'auto' lowers both designs (`lax.platform_dependent`) and XLA keeps
    # this backend's: its compiled program costs what the resolved design's
    # does, not what the other's does, and gives the same bits. (Both designs
    # sum each row's occurrences, so their results may agree bit for bit:
    # they did on one of this project's CPUs and not on another.)
    ids, targets = next(iter(cases.batches(1, shape=(200, 4), seed=3)))
    results, costs = {}, {}
    for duplicates in ('auto',) + DUPLICATE_MODES:
      _, sparse, _ = cases.optimizers('cf_sgd', duplicates)
      table = jnp.asarray(cases.initial_table())
      step = jax.jit(functools.partial(cases.sparse_step, sparse))
      state = sparse.init(table)
      cost = step.lower(table, state, ids, targets).compile().cost_analysis()
      # A dict, or a list of one per computation in older JAX.
      costs[duplicates] = cost[0] if isinstance(cost, list) else cost
      results[duplicates] = step(table, state, ids, targets)
    resolved = fasgd_optax.resolve_duplicates()
    other = 'reduce' if resolved == 'scatter' else 'scatter'
    self.assertEqual(costs['auto'], costs[resolved])
    self.assertNotEqual(costs['auto'], costs[other])
    chex.assert_trees_all_equal(results['auto'], results[resolved])

  @parameterized.parameters('cf_sgd', 'fa_sgd', 'sgd', 'rowwise_adagrad')
  def test_a_hot_rows_small_steps_are_summed_before_the_table_sees_them(
      self, name):
    # 4096 occurrences of row 0, each step far below half of 0.5's float32
    # spacing: added one at a time they round against the row's value, and
    # the row moves the wrong distance ('occurrences', documented); the
    # exact designs move it as the dense path does.
    ids = jnp.zeros((4096,), jnp.int32)
    row_grads = jnp.full((4096, 2), 1e-4, jnp.float32)
    moved = {}
    for duplicates in ALL_DUPLICATE_MODES:
      sparse = {
          'cf_sgd': lambda d: fasgd_optax.sparse_cf_sgd(
              1.0, num_steps=10_000, duplicates=d),
          'fa_sgd': lambda d: fasgd_optax.sparse_fa_sgd(
              1.0, jnp.full(4, 409.6), num_steps=10_000, duplicates=d),
          'sgd': lambda d: fasgd_optax.sparse_sgd(1e-5, duplicates=d),
          'rowwise_adagrad': lambda d: fasgd_optax.sparse_rowwise_adagrad(
              1e-5, initial_accumulator_value=1e6, duplicates=d),
      }[name](duplicates)
      table = jnp.full((4, 2), 0.5, jnp.float32)
      table, _ = sparse.apply(table, sparse.init(table), ids, row_grads)
      moved[duplicates] = 0.5 - float(table[0, 0])
    expected = {
        'cf_sgd': 1.0 / np.sqrt(10_000 * 4096) * 0.4096,
        'fa_sgd': 1.0 / np.sqrt(10_000 * 409.6) * 0.4096,
        'sgd': 1e-5 * 0.4096,
        'rowwise_adagrad': None}[name]
    if expected is None:  # lr / (sqrt(acc) + eps) · g, acc = 1e6 + g².
      expected = 1e-5 / (np.sqrt(1e6 + 0.4096 ** 2) + 1e-10) * 0.4096
    for duplicates in ('scatter', 'reduce'):
      self.assertAlmostEqual(moved[duplicates], expected,
                             delta=np.spacing(np.float32(0.5)))
    # rowwise_adagrad always sums first. On a GPU, the suite's scatter
    # determinism expander (conftest.py) sorts and sums a scatter-add's
    # repeats itself: 'occurrences' moved the row within 0.4% of the others
    # on an H200 (2026-11-28). XLA's CPU scatter adds them one at a time.
    if name != 'rowwise_adagrad' and jax.default_backend() == 'cpu':
      self.assertGreater(abs(moved['occurrences'] / expected - 1), 0.1)

  def test_bad_duplicates_argument(self):
    with self.assertRaisesRegex(ValueError, "`duplicates`.*got 'sorted'"):
      fasgd_optax.sparse_cf_sgd(1.0, num_steps=10, duplicates='sorted')


if __name__ == '__main__':
  absltest.main()
