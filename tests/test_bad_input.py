"""Bad input: clear errors that name the problem, and nothing corrupted."""

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
from jax.experimental import checkify
import jax.numpy as jnp
import numpy as np
import optax

import fasgd_optax


def _params():
  return {'embed': jnp.zeros((6, 2)), 'dense': jnp.zeros((2, 2))}


def _grads():
  return jax.tree.map(jnp.ones_like, _params())


# Optimizers with per-row state, and that state's name in their errors.
_PER_ROW_STATES = (
    ('cf_sgd', lambda: fasgd_optax.cf_sgd(0.1, num_steps=10), 'row_counts'),
    ('cf_sgd_half_life', lambda: fasgd_optax.cf_sgd(
        0.1, num_steps=10, count_half_life=5.0), 'row_counts'),
    ('rowwise_adagrad', lambda: fasgd_optax.rowwise_adagrad(0.1),
     'accumulators'))


class BadIdsTest(parameterized.TestCase):

  @parameterized.named_parameters(('negative', -1), ('too_large', 6),
                                  ('far_negative', -7), ('far', 1000))
  def test_out_of_range_ids_raise_outside_jit(self, bad_id):
    tx = fasgd_optax.cf_sgd(0.1, num_steps=10)
    state = tx.init(_params())
    with self.assertRaisesRegex(
        ValueError, rf"'embed'.*\[0, 6\).*got {bad_id}"):
      tx.update(_grads(), state, _params(),
                ids={'embed': jnp.array([0, bad_id])})

  @parameterized.named_parameters(('negative', -1), ('too_large', 6),
                                  ('wraps_to_row_5', -7))
  def test_out_of_range_ids_are_dropped_under_jit(self, bad_id):
    tx = fasgd_optax.cf_sgd(0.1, num_steps=None)
    state = tx.init(_params())
    _, state = jax.jit(tx.update)(_grads(), state, _params(),
                                  ids={'embed': jnp.array([0, 1, bad_id])})
    # Never counted into another row (JAX would wrap -1 to 5, clamp 6 to 5).
    np.testing.assert_array_equal(state[0].row_counts['embed'],
                                  [1, 1, 0, 0, 0, 0])

  def test_out_of_range_ids_are_reported_by_checkify(self):
    tx = fasgd_optax.cf_sgd(0.1, num_steps=10, checkify_ids=True)
    state = tx.init(_params())
    checked = jax.jit(checkify.checkify(
        lambda g, s, p, i: tx.update(g, s, p, ids={'embed': i})))
    error, _ = checked(_grads(), state, _params(), jnp.array([2, 9, 1]))
    message = error.get()
    self.assertIsNotNone(message)
    self.assertRegex(message, r"'embed'.*\[0, 6\).*9")
    with self.assertRaises(checkify.JaxRuntimeError):
      error.throw()
    error, _ = checked(_grads(), state, _params(), jnp.array([2, 5, 1]))
    self.assertIsNone(error.get())

  def test_jitted_update_has_no_check_unless_asked(self):
    # A check is an effect, and a jitted function with effects loses JAX's
    # fast dispatch path: the default step must carry none.
    def effects(tx):
      state = tx.init(_params())
      return jax.make_jaxpr(
          lambda g, s, p, i: tx.update(g, s, p, ids={'embed': i}))(
              _grads(), state, _params(), jnp.array([2, 9])).effects

    self.assertEmpty(effects(fasgd_optax.cf_sgd(0.1, num_steps=10)))
    self.assertNotEmpty(
        effects(fasgd_optax.cf_sgd(0.1, num_steps=10, checkify_ids=True)))
    # Without the check, checkify sees nothing, and the bad id is dropped.
    tx = fasgd_optax.cf_sgd(0.1, num_steps=10)
    error, (_, state) = jax.jit(checkify.checkify(
        lambda g, s, p, i: tx.update(g, s, p, ids={'embed': i})))(
            _grads(), tx.init(_params()), _params(), jnp.array([2, 9]))
    self.assertIsNone(error.get())
    np.testing.assert_array_equal(state[0].row_counts['embed'],
                                  [0, 0, 1, 0, 0, 0])

  @parameterized.named_parameters(('int64', np.int64, 2**32 + 1),
                                  ('uint64', np.uint64, 2**32 + 1),
                                  ('int64_negative', np.int64, -2**32 + 1))
  def test_host_ids_that_jax_would_wrap_are_refused(self, dtype, bad_id):
    # Without 64-bit mode JAX stores int64 as int32: 2^32 + 1 would become 1.
    self.assertFalse(jax.config.jax_enable_x64)
    ids = np.array([0, bad_id], dtype)
    tx = fasgd_optax.cf_sgd(0.1, num_steps=10)
    state = tx.init(_params())
    with self.assertRaisesRegex(ValueError, rf"'embed'.*got {bad_id} at flat "
                                'position 1.*(u?int32)'):
      tx.update(_grads(), state, _params(), ids={'embed': ids})
    sparse = fasgd_optax.sparse_cf_sgd(0.1, num_steps=10)
    table = jnp.zeros((6, 2))
    sparse_state = sparse.init(table)
    with self.assertRaisesRegex(ValueError, rf"'table'.*got {bad_id}"):
      sparse.apply(table, sparse_state, ids, np.ones((2, 2), np.float32))
    np.testing.assert_array_equal(sparse_state.row_counts, np.zeros(6))
    # In range, the same dtypes are fine.
    _, state = tx.update(_grads(), state, _params(),
                         ids={'embed': np.array([0, 5], dtype)})
    np.testing.assert_array_equal(state[0].row_counts['embed'],
                                  [1, 0, 0, 0, 0, 1])

  @parameterized.named_parameters(
      ('int8_128_rows', np.int8, 128, [3, 5, 100]),
      ('int8_200_rows', np.int8, 200, [3, 5, 100]),
      ('uint8_300_rows', np.uint8, 300, [3, 5, 100]),
      ('int16_70000_rows', np.int16, 70000, [3, 5, 30000]),
      ('uint16_70000_rows', np.uint16, 70000, [3, 60000, 60000]))
  def test_narrow_integer_ids_count_their_own_rows(self, dtype, num_rows,
                                                    ids):
    # Compared in their own type, a row count of 128 would be int8's -128:
    # every id counted into row 0 (or 144 for 200 rows, 4464 for 70000).
    expected = np.bincount(ids, minlength=num_rows)
    for place in ('host', 'device'):
      batch = np.array(ids, dtype)
      if place == 'device':
        batch = jnp.asarray(batch)
      self.assertEqual(batch.dtype, dtype)
      table = jnp.zeros((num_rows, 1))
      tx = fasgd_optax.cf_sgd(0.1, num_steps=None)
      for update in (tx.update, jax.jit(tx.update)):
        _, state = update(jnp.ones_like(table), tx.init(table), table,
                          ids=batch)
        np.testing.assert_array_equal(state[0].row_counts, expected)
      for duplicates in ('scatter', 'reduce'):
        sparse = fasgd_optax.sparse_cf_sgd(0.1, num_steps=None,
                                           duplicates=duplicates)
        for apply in (sparse.apply, jax.jit(sparse.apply)):
          new_table, sparse_state = apply(
              jnp.zeros((num_rows, 1)), sparse.init(table), batch,
              np.ones((len(ids), 1), np.float32))
          np.testing.assert_array_equal(sparse_state.row_counts, expected)
          np.testing.assert_array_equal(
              np.flatnonzero(np.asarray(new_table)[:, 0]),
              np.flatnonzero(expected))

  def test_narrow_integer_ids_pass_checkify(self):
    tx = fasgd_optax.sparse_cf_sgd(0.1, num_steps=None, checkify_ids=True)
    table = jnp.zeros((200, 1))
    checked = jax.jit(checkify.checkify(tx.apply))
    error, (_, state) = checked(table, tx.init(table),
                                jnp.array([1, 100], jnp.int8),
                                jnp.ones((2, 1)))
    self.assertIsNone(error.get())
    np.testing.assert_array_equal(np.flatnonzero(state.row_counts), [1, 100])

  @parameterized.named_parameters(*_PER_ROW_STATES)
  def test_state_made_for_other_shapes_is_refused(self, make, name):
    # The vocabulary grew from 6 to 9 rows after `init`.
    tx = make()
    state = tx.init(_params())
    grown = {'embed': jnp.zeros((9, 2)), 'dense': jnp.zeros((2, 2))}
    with self.assertRaisesRegex(
        ValueError, rf"{name} for parameter 'embed' has shape \(6,\), but the "
        r'parameter \(shape \(9, 2\)\) needs \(9,\)'):
      tx.update(jax.tree.map(jnp.ones_like, grown), state, grown)

  def test_float_ids(self):
    tx = fasgd_optax.cf_sgd(0.1, num_steps=10)
    with self.assertRaisesRegex(TypeError, "'embed'.*integer.*float32"):
      tx.update(_grads(), tx.init(_params()), _params(),
                ids={'embed': jnp.array([0.0, 1.0])})
    with self.assertRaisesRegex(TypeError, 'integer.*bool'):
      tx.update(_grads(), tx.init(_params()), _params(),
                ids={'embed': jnp.array([True])})

  @parameterized.named_parameters(
      ('unknown_key', {'embeddings': jnp.array([0])}, 'embeddings'),
      ('list', [jnp.array([0]), None], r"\['0'\]"),
      ('nested_too_deep', {'embed': {'x': jnp.array([0])}}, 'embed/x'),
  )
  def test_ids_structure_not_matching_params(self, ids, named):
    tx = fasgd_optax.cf_sgd(0.1, num_steps=10)
    with self.assertRaisesRegex(ValueError, f'`ids` does not match.*{named}'):
      tx.update(_grads(), tx.init(_params()), _params(), ids=ids)

  @parameterized.named_parameters(('list', [1, 1, 4]), ('tuple', (1, 1, 4)),
                                  ('nested', [[1, 1], [4, 4]]))
  def test_python_ids_for_a_leaf(self, ids):
    tx = fasgd_optax.cf_sgd(0.1, num_steps=10)
    _, state = tx.update(_grads(), tx.init(_params()), _params(),
                         ids={'embed': ids})
    expected = np.bincount(np.ravel(ids), minlength=6)
    np.testing.assert_array_equal(state[0].row_counts['embed'], expected)

  @parameterized.named_parameters(('one_id_each', [1, 3], [[0, 1, 0, 0],
                                                            [0, 0, 0, 1]]),
                                  ('lists', [[1, 2], [3]], [[0, 1, 1, 0],
                                                            [0, 0, 0, 1]]),
                                  ('tuple', (1, 3), [[0, 1, 0, 0],
                                                     [0, 0, 0, 1]]))
  def test_ids_mirroring_list_parameters(self, ids, expected):
    params = [jnp.zeros((4, 2)), jnp.zeros((4, 2))]
    tx = fasgd_optax.cf_sgd(0.1, num_steps=10)
    _, state = tx.update(params, tx.init(params), params, ids=ids)
    np.testing.assert_array_equal(state[0].row_counts, expected)

  def test_several_id_arrays_for_one_leaf_get_a_hint(self):
    tx = fasgd_optax.cf_sgd(0.1, num_steps=10)
    with self.assertRaisesRegex(
        ValueError, r"\['embed/0', 'embed/1'\] match no parameter leaf.*"
        r"under the leaves \['embed'\].*one array"):
      tx.update(_grads(), tx.init(_params()), _params(),
                ids={'embed': [jnp.array([1]), jnp.array([2, 3])]})

  def test_single_array_ids_for_a_pytree(self):
    tx = fasgd_optax.cf_sgd(0.1, num_steps=10)
    with self.assertRaisesRegex(ValueError, 'single array.*dense.*embed'):
      tx.update(_grads(), tx.init(_params()), _params(), ids=jnp.array([0]))

  def test_nothing_is_corrupted_by_a_rejected_step(self):
    tx = fasgd_optax.cf_sgd(0.1, num_steps=10)
    state = tx.init(_params())
    _, state = tx.update(_grads(), state, _params(),
                         ids={'embed': jnp.array([1, 1])})
    before = jax.tree.map(np.array, state)
    with self.assertRaises(ValueError):
      tx.update(_grads(), state, _params(), ids={'embed': jnp.array([1, 6])})
    chex.assert_trees_all_equal(state, before)
    _, state = tx.update(_grads(), state, _params(),
                         ids={'embed': jnp.array([1])})
    np.testing.assert_array_equal(state[0].row_counts['embed'],
                                  [0, 3, 0, 0, 0, 0])


  def test_lists_that_are_parts_of_the_tree(self):
    # An empty subtree, and list-of-scalar parameters with ids per leaf.
    params = {'w': jnp.zeros((3, 2)), 'extra': [],
              'b': [jnp.zeros(()), jnp.zeros(())]}
    tx = fasgd_optax.cf_sgd(0.1, num_steps=10)
    _, state = tx.update(jax.tree.map(jnp.ones_like, params),
                         tx.init(params), params,
                         ids={'w': jnp.array([0, 0]), 'extra': [],
                              'b': [[0, 0, 0], None]})
    np.testing.assert_array_equal(state[0].row_counts['w'], [2, 0, 0])
    np.testing.assert_array_equal(state[0].row_counts['b'][0], [3])
    np.testing.assert_array_equal(state[0].row_counts['b'][1], [1])

  @parameterized.named_parameters(('list', []), ('tuple', ()))
  def test_an_empty_python_batch_for_a_leaf_counts_nothing(self, empty):
    # Not presence counting, which would count every row with a gradient.
    tx = fasgd_optax.cf_sgd(0.1, num_steps=10)
    update = lambda g, s, p: tx.update(g, s, p, ids={'embed': empty})
    for run in (update, jax.jit(update)):
      _, state = run(_grads(), tx.init(_params()), _params())
      np.testing.assert_array_equal(state[0].row_counts['embed'], [0] * 6)

  @parameterized.named_parameters(
      ('floats', [1.0, 2.0], TypeError, "'embed'.*integer.*float64"),
      ('bools', [True], TypeError, "'embed'.*integer.*bool"),
      ('ragged', [[1, 2], [3]], ValueError,
       r"'embed' must form an integer array.*\[\[1, 2\], \[3\]\]"))
  def test_python_ids_of_the_wrong_kind_name_the_leaf(self, ids, error, regex):
    tx = fasgd_optax.cf_sgd(0.1, num_steps=10)
    with self.assertRaisesRegex(error, regex):
      tx.update(_grads(), tx.init(_params()), _params(), ids={'embed': ids})


class BadStateTest(parameterized.TestCase):
  """A state that is not what the optimizer's `init` made is refused."""

  @parameterized.named_parameters(
      ('bfloat16_counts', lambda: fasgd_optax.cf_sgd(0.1, num_steps=10),
       lambda s: (s[0]._replace(row_counts=jax.tree.map(
           lambda c: c.astype(jnp.bfloat16), s[0].row_counts)),) + s[1:],
       "row_counts for parameter '(dense|embed)' has dtype bfloat16.*int32"),
      ('half_life_state_without_half_life',
       lambda: fasgd_optax.cf_sgd(0.1, num_steps=10),
       lambda s: fasgd_optax.cf_sgd(0.1, num_steps=10, count_half_life=5.0
                                    ).init(_params()),
       'made by an optimizer with `count_half_life`.*None'),
      ('plain_state_with_half_life',
       lambda: fasgd_optax.cf_sgd(0.1, num_steps=10, count_half_life=5.0),
       lambda s: fasgd_optax.cf_sgd(0.1, num_steps=10).init(_params()),
       'made by an optimizer without `count_half_life`.*5.0'),
      ('int32_accumulators', lambda: fasgd_optax.rowwise_adagrad(0.1),
       lambda s: (s[0]._replace(accumulators=jax.tree.map(
           lambda a: a.astype(jnp.int32), s[0].accumulators)),) + s[1:],
       "accumulators for parameter '(dense|embed)' has dtype int32.*float32"))
  def test_dense_state_of_another_kind(self, make, spoil, regex):
    tx = make()
    state = spoil(tx.init(_params()))
    with self.assertRaisesRegex(ValueError, regex):
      tx.update(_grads(), state, _params(), ids={'embed': jnp.array([1])})

  @parameterized.named_parameters(*_PER_ROW_STATES)
  def test_parameters_added_after_init(self, make, name):
    tx = make()
    state = tx.init(_params())
    params = dict(_params(), new=jnp.zeros((3,)))
    with self.assertRaisesRegex(
        ValueError, rf"state's {name} do not have the tree of the updates "
        r".*'new'.*made by `init` for other parameters"):
      tx.update(jax.tree.map(jnp.ones_like, params), state, params)

  def test_another_optimizers_state(self):
    cf, fa = (fasgd_optax.cf_sgd(0.1, num_steps=10),
              fasgd_optax.fa_sgd(0.1, None, num_steps=10))
    with self.assertRaisesRegex(TypeError, 'cf_sgd.*got ScaleByKnownFreq'):
      cf.update(_grads(), fa.init(_params()), _params())
    with self.assertRaisesRegex(TypeError, 'fa_sgd.*got ScaleByCountedFreq'):
      fa.update(_grads(), cf.init(_params()), _params())
    rowwise = fasgd_optax.rowwise_adagrad(0.1)
    with self.assertRaisesRegex(TypeError,
                                'rowwise_adagrad.*got ScaleByCountedFreq'):
      rowwise.update(_grads(), cf.init(_params()), _params())
    with self.assertRaisesRegex(TypeError, 'cf_sgd.*got ScaleByRowwise'):
      cf.update(_grads(), rowwise.init(_params()), _params())

  def test_sparse_state_hint_names_each_transformations_state(self):
    table = jnp.zeros((4, 2))
    sparse = fasgd_optax.sparse_rowwise_adagrad(0.1)
    # Its state is rowwise_adagrad's whole state, not its first element.
    with self.assertRaisesRegex(ValueError, "sparse_rowwise_adagrad's and "
                                "sparse_sgd's is rowwise_adagrad.*whole"):
      sparse.apply(table, fasgd_optax.rowwise_adagrad(0.1).init(table)[0],
                   jnp.array([1]), jnp.ones((1, 2)))
    sparse.apply(table, fasgd_optax.rowwise_adagrad(0.1).init(table),
                 jnp.array([1]), jnp.ones((1, 2)))

  @parameterized.parameters(jnp.complex64, jnp.int32, jnp.bool_)
  def test_sparse_row_grads_must_be_floating(self, dtype):
    sparse = fasgd_optax.sparse_cf_sgd(0.1, num_steps=10)
    table = jnp.zeros((6, 2))
    state = sparse.init(table)
    with self.assertRaisesRegex(TypeError, 'row_grads must be floating-point'
                                f'.*got {jnp.dtype(dtype)}'):
      sparse.apply(table, state, jnp.array([1]), jnp.ones((1, 2), dtype))
    self.assertFalse(table.is_deleted())

  def test_hyperparameters_cast_to_float16_by_inject_hyperparams(self):
    params = {'embed': jnp.zeros((4, 2), jnp.float16)}
    # epsilon=1e-8 is 0 in float16, a half-life of 1e5 is inf.
    for tx in (optax.inject_hyperparams(fasgd_optax.rowwise_adagrad)(
        learning_rate=0.1), optax.inject_hyperparams(fasgd_optax.cf_sgd)(
            learning_rate=0.1, num_steps=10, count_half_life=1e5)):
      with self.assertRaisesRegex(ValueError, 'float16 value: optax.inject_'
                                  'hyperparams casts.*hyperparam_dtype'):
        tx.update(params, tx.init(params), params, ids={'embed': [0]})
    tx = optax.inject_hyperparams(fasgd_optax.rowwise_adagrad,
                                  hyperparam_dtype=jnp.float32)(
                                      learning_rate=0.1)
    tx.update(params, tx.init(params), params)

  @parameterized.named_parameters(
      ('cf_sgd', lambda: fasgd_optax.sparse_cf_sgd(0.1, num_steps=10),
       jnp.float32),
      ('rowwise_adagrad', lambda: fasgd_optax.sparse_rowwise_adagrad(0.1),
       jnp.int32))
  def test_sparse_state_of_another_dtype(self, make, wrong):
    sparse = make()
    table = jnp.zeros((6, 2))
    state = sparse.init(table)
    spoilt = jax.tree.map(
        lambda x: x.astype(wrong) if x.ndim == 1 else x, state)
    with self.assertRaisesRegex(ValueError, f'has dtype {jnp.dtype(wrong)}.*'
                                'init\\(table\\)'):
      sparse.apply(table, spoilt, jnp.array([1]), jnp.ones((1, 2)))
    # Refused before donation: the table and the state are still usable.
    self.assertFalse(table.is_deleted())
    sparse.apply(table, state, jnp.array([1]), jnp.ones((1, 2)))

  @parameterized.parameters(jnp.int32, jnp.bool_)
  def test_sparse_tables_must_be_floating(self, dtype):
    sparse = fasgd_optax.sparse_cf_sgd(0.1, num_steps=10)
    table = jnp.zeros((6, 2), dtype)
    with self.assertRaisesRegex(TypeError, f'floating-point table.*'
                                f'{jnp.dtype(dtype)}'):
      sparse.init(table)
    state = sparse.init(jnp.zeros((6, 2)))
    with self.assertRaisesRegex(TypeError, 'floating-point table'):
      sparse.apply(table, state, jnp.array([1]), jnp.ones((1, 2)))
    self.assertFalse(table.is_deleted())


class BadHyperparametersTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ('zero_lr', dict(learning_rate=0.0), 'learning_rate'),
      ('negative_lr', dict(learning_rate=-0.1), 'learning_rate'),
      ('nan_lr', dict(learning_rate=float('nan')), 'learning_rate'),
      ('zero_num_steps', dict(num_steps=0), 'num_steps'),
      ('negative_num_steps', dict(num_steps=-5), 'num_steps'),
      ('fractional_num_steps', dict(num_steps=10.5), 'num_steps'),
      ('bool_num_steps', dict(num_steps=True), 'num_steps'),
      ('zero_max_lr', dict(max_learning_rate=0.0), 'max_learning_rate'),
      ('negative_max_lr', dict(max_learning_rate=-1.0), 'max_learning_rate'),
      ('zero_half_life', dict(count_half_life=0.0), 'count_half_life'),
      ('negative_half_life', dict(count_half_life=-3.0), 'count_half_life'),
      ('string_half_life', dict(count_half_life='10'), 'count_half_life'),
  )
  def test_cf_sgd_rejects(self, overrides, named):
    kwargs = dict(learning_rate=0.1, num_steps=100)
    kwargs.update(overrides)
    with self.assertRaisesRegex(ValueError, f'`{named}`.*got'):
      fasgd_optax.cf_sgd(**kwargs)

  def test_num_steps_is_required(self):
    with self.assertRaisesRegex(TypeError, 'num_steps'):
      fasgd_optax.cf_sgd(0.1)  # pytype: disable=missing-parameter
    with self.assertRaisesRegex(TypeError, 'num_steps'):
      fasgd_optax.fa_sgd(0.1, None)  # pytype: disable=missing-parameter
    with self.assertRaisesRegex(ValueError, '`num_steps`.*FA-SGD.*None'):
      fasgd_optax.fa_sgd(0.1, None, num_steps=None)

  @parameterized.named_parameters(
      ('zero_lr', dict(learning_rate=0.0), 'learning_rate'),
      ('zero_num_steps', dict(num_steps=0), 'num_steps'),
      ('negative_max_lr', dict(max_learning_rate=-0.5), 'max_learning_rate'),
  )
  def test_fa_sgd_rejects(self, overrides, named):
    kwargs = dict(learning_rate=0.1, frequencies=None, num_steps=100)
    kwargs.update(overrides)
    with self.assertRaisesRegex(ValueError, f'`{named}`.*got'):
      fasgd_optax.fa_sgd(**kwargs)

  def test_frequencies_with_negative_values(self):
    with self.assertRaisesRegex(ValueError, "'embed'.*>= 0.*-0.5"):
      fasgd_optax.fa_sgd(0.1, {'embed': np.array([0.1, -0.5, 0, 0, 0, 0])},
                         num_steps=10)
    with self.assertRaisesRegex(ValueError, "'embed'.*finite"):
      fasgd_optax.fa_sgd(0.1, {'embed': np.array([np.nan] * 6)}, num_steps=10)

  def test_frequencies_as_python_lists(self):
    # For a single-array parameter, a list is its array.
    single = fasgd_optax.fa_sgd(0.1, [0.25, 1.0], num_steps=4)
    table = jnp.zeros((2, 2))
    updates, _ = single.update(jnp.ones((2, 2)), single.init(table), table)
    np.testing.assert_allclose(updates[:, 0], [-0.1, -0.05])
    # For list parameters, a list mirrors them: one value per scalar leaf.
    params = {'w': jnp.zeros((3, 2)), 'b': [jnp.zeros(()), jnp.zeros(())]}
    mirrored = fasgd_optax.fa_sgd(0.1, {'w': None, 'b': [0.25, 1.0]},
                                  num_steps=4)
    updates, _ = mirrored.update(jax.tree.map(jnp.ones_like, params),
                                 mirrored.init(params), params)
    np.testing.assert_allclose([updates['b'][0], updates['b'][1]],
                               [-0.1, -0.05])
    # In a dict, one leaf's list would read as values of scalar leaves
    # under it: one array per leaf, which the message asks for.
    in_a_dict = fasgd_optax.fa_sgd(0.1, {'embed': [0.25] * 6}, num_steps=4)
    with self.assertRaisesRegex(ValueError, r"'embed/0'.*under the leaves "
                                r"\['embed'\].*give each leaf one array"):
      in_a_dict.init(_params())
    with self.assertRaisesRegex(ValueError, "'embed/1'.*>= 0.*-1.0"):
      fasgd_optax.fa_sgd(0.1, {'embed': [0.1, -1.0]}, num_steps=4)

  def test_frequencies_with_wrong_shape(self):
    tx = fasgd_optax.fa_sgd(0.1, {'embed': np.full(5, 0.1)}, num_steps=10)
    with self.assertRaisesRegex(ValueError, r"'embed'.*shape \(6,\).*\(5,\)"):
      tx.init(_params())
    with self.assertRaisesRegex(ValueError, r"'embed'.*1-D"):
      fasgd_optax.fa_sgd(0.1, {'embed': np.full((6, 2), 0.1)}, num_steps=10)
    tx = fasgd_optax.fa_sgd(0.1, {'embedding': np.full(6, 0.1)}, num_steps=10)
    with self.assertRaisesRegex(ValueError, '`frequencies` does not match'):
      tx.init(_params())

  @parameterized.named_parameters(('string', '1'), ('none', None),
                                  ('list', [1.0]), ('negative', -1.0))
  def test_rowwise_adagrad_initial_accumulator(self, value):
    with self.assertRaisesRegex(ValueError, '`initial_accumulator_value`.*got'):
      fasgd_optax.rowwise_adagrad(0.1, initial_accumulator_value=value)

  def test_a_schedule_must_return_a_scalar(self):
    # A vector α would scale rows elementwise, or broadcast a scalar leaf.
    for tx in (fasgd_optax.cf_sgd(lambda c: jnp.full(6, 0.1), num_steps=10),
               fasgd_optax.fa_sgd(lambda c: jnp.full(6, 0.1), None,
                                  num_steps=10)):
      with self.assertRaisesRegex(ValueError, r'scalar.*shape \(6,\)'):
        tx.update(_grads(), tx.init(_params()), _params())

  def test_count_ids_arguments(self):
    np.testing.assert_array_equal(fasgd_optax.count_ids([], 3), [0, 0, 0])
    for num_rows in (3.0, None, True, 0):
      with self.assertRaisesRegex(ValueError, 'num_rows must be a positive '
                                  f'int; got {num_rows!r}'):
        fasgd_optax.count_ids([1], num_rows)

  @parameterized.named_parameters(('zero', 0.0), ('positive', 0.1))
  def test_injected_rowwise_adagrad_inits_under_jit(self, initial):
    # Under inject_hyperparams, `init` gets the accumulator's start as a
    # tracer in jit and eval_shape (a sharded init, an orbax restore target).
    tx = optax.inject_hyperparams(fasgd_optax.rowwise_adagrad)(
        learning_rate=0.1, initial_accumulator_value=initial)
    eager = tx.init(_params())
    chex.assert_trees_all_close(jax.jit(tx.init)(_params()), eager)
    chex.assert_trees_all_equal_shapes_and_dtypes(
        jax.eval_shape(tx.init, _params()), eager)
    np.testing.assert_array_equal(
        optax.tree.get(eager, 'accumulators')['embed'],
        np.full(6, initial, np.float32))

  def test_bfloat16_hyperparameters_are_checked_as_numbers(self):
    # ml_dtypes' bfloat16 is no number to NumPy's issubdtype.
    good, inf = jnp.bfloat16(0.5), jnp.bfloat16(jnp.inf)
    fasgd_optax.cf_sgd(good, num_steps=10, max_learning_rate=good)
    fasgd_optax.rowwise_adagrad(good, initial_accumulator_value=good)
    fasgd_optax.fa_sgd(good, jnp.full(6, 0.5, jnp.bfloat16), num_steps=10)
    for bad in (jnp.bfloat16(-0.5), jnp.bfloat16(jnp.nan), inf):
      with self.assertRaisesRegex(ValueError, '`learning_rate` must be a '
                                  'positive number'):
        fasgd_optax.cf_sgd(bad, num_steps=10)
      with self.assertRaisesRegex(ValueError, '`initial_accumulator_value`'):
        fasgd_optax.rowwise_adagrad(0.1, initial_accumulator_value=bad)
      with self.assertRaisesRegex(ValueError, 'must be finite and >= 0; got'):
        fasgd_optax.fa_sgd(0.1, jnp.array([0.5, bad], jnp.bfloat16),
                           num_steps=10)

  def test_traced_hyperparameters_are_accepted(self):
    # Under inject_hyperparams + jit, hyperparameters arrive as tracers.
    tx = optax.inject_hyperparams(fasgd_optax.cf_sgd)(
        learning_rate=0.1, num_steps=10, count_half_life=4.0)
    state = tx.init(_params())
    jax.jit(tx.update)(_grads(), state, _params(),
                       ids={'embed': jnp.array([0])})


if __name__ == '__main__':
  absltest.main()
