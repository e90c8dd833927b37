"""The DeepFM's stacked table starts N(0, init_scale²), first-order column 0."""

import math

from absl.testing import absltest
from absl.testing import parameterized
from flax import nnx
import jax
import numpy as np

from examples.criteo import model as model_lib


def initial_table(num_rows: int, embedding_dim: int = 16, seed: int = 0,
                  init_scale: float = 0.1) -> np.ndarray:
  model = model_lib.DeepFM(num_rows, embedding_dim, mlp_features=(4,),
                           init_scale=init_scale, rngs=nnx.Rngs(seed))
  return np.asarray(model.tables.embedding[...])


class TableInitTest(parameterized.TestCase):

  @parameterized.parameters(0.1, 0.01)
  def test_factor_columns_are_normal_and_first_order_column_zero(self, scale):
    table = initial_table(1 << 16, init_scale=scale)
    np.testing.assert_array_equal(table[:, -1], 0.0)
    factors = table[:, :-1].ravel() / scale  # 2^20 values
    self.assertTrue(np.isfinite(factors).all())
    self.assertAlmostEqual(factors.mean(), 0.0, delta=0.005)
    self.assertAlmostEqual(factors.std(), 1.0, delta=0.005)
    for k in (0.5, 1.0, 2.0, 3.0):  # P(|Z| < k), standard errors ≤ 0.0005
      self.assertAlmostEqual(np.mean(np.abs(factors) < k),
                             math.erf(k / math.sqrt(2.0)), delta=0.003, msg=k)
    self.assertAlmostEqual(np.mean(factors < -1.0), 0.1587, delta=0.003)
    self.assertAlmostEqual(np.mean(factors > 1.0), 0.1587, delta=0.003)

  def test_a_row_depends_on_the_key_and_its_index_not_the_table_size(self):
    small, large = initial_table(1000), initial_table(4000)
    np.testing.assert_array_equal(small, large[:1000])
    other_seed = initial_table(1000, seed=1)
    self.assertGreater(np.mean(small[:, :-1] != other_seed[:, :-1]), 0.99)
    # Rows and columns differ from one another (the hash mixes both).
    self.assertGreater(len(np.unique(small[:, :-1])), 0.999 * small[:, :-1].size)

  def test_jitted_initialisation_needs_no_temporaries_beyond_the_table(self):
    init = model_lib._table_init(0.1)  # pylint: disable=protected-access
    compiled = jax.jit(lambda key: init(key, (1 << 16, 17))).lower(
        jax.random.key(0)).compile()
    memory = compiled.memory_analysis()
    self.assertLess(memory.temp_size_in_bytes, (1 << 16) * 17 * 4 // 16)


if __name__ == '__main__':
  absltest.main()
