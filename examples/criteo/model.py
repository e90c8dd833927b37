"""DeepFM (Guo et al. 2017) for the Criteo features, in Flax NNX.

The 26 categorical features' tables are stacked into one `SparseTable` of
Σ_f rows_f rows (see `criteo_format.Hashing`); a row holds the value's factor
vector v (d numbers) and its first-order weight w (one more), so one lookup
serves both, and the sparse path updates both with the row's count. Each of
the 13 integer features x_j has its own vector e_j and weight a_j (dense
parameters). With the 39 field vectors z = (x_1 e_1, …, x_13 e_13,
v_{c_1}, …, v_{c_26}):

    logit = b + Σ_j a_j x_j + Σ_f w_{c_f}
            + ½ Σ_k [(Σ_i z_ik)² − Σ_i z_ik²]         (FM: all pairs)
            + MLP(z_1 ‖ … ‖ z_39)                       (deep part)
"""

from collections.abc import Sequence
import math

from flax import nnx
import jax
import jax.numpy as jnp

from fasgd_optax import nnx_sparse

from examples.criteo import config as config_lib

TABLE_PATH = 'tables/embedding'


def _fmix32(h: jax.Array) -> jax.Array:
  """MurmurHash3's finaliser: a bijection of uint32 that scatters bits."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def _table_init(init_scale: float):
  """Factor columns ~ N(0, init_scale²); the first-order column 0.

  Each value is a function of (key, row, column) alone, computed elementwise
  (a hash, then the inverse normal CDF): XLA fuses it into the table's own
  buffer, where `jax.random.normal` needed 3× the table in temporaries (a
  paper-scale table would not fit its own initialisation), and every shard
  of a row-sharded table computes just its rows, the same on any mesh. The
  inverse CDF is `lax.erf_inv`, one primitive: `jax.scipy.special.ndtri`,
  built of selects between branches that share their logs and square roots,
  stopped fusing on JAX 0.12's CPU backend (sharding_test's
  InitialisationMemoryTest then found 16.3 MB of temporaries beside a 7.2 MB
  table; model_test checks the initialiser alone).
  """

  def init(key, shape, dtype=jnp.float32):
    words = jax.random.key_data(key).reshape(-1).astype(jnp.uint32)
    rows = jax.lax.broadcasted_iota(jnp.uint32, shape, 0)
    columns = jax.lax.broadcasted_iota(jnp.uint32, shape, 1)
    bits = _fmix32(_fmix32(rows ^ words[0])
                   + columns * jnp.uint32(0x9E3779B9) + words[-1])
    # 2u - 1 for u = (k + 1/2) / 2^24, k the top 24 bits: exact in float32.
    centred = ((bits >> 8).astype(jnp.float32) * 2.0 + (1.0 - (1 << 24))) * (
        1.0 / (1 << 24))
    factors = (init_scale * math.sqrt(2.0)) * jax.lax.erf_inv(centred)
    return jnp.where(columns == shape[1] - 1, 0.0, factors).astype(dtype)

  return init


class DeepFM(nnx.Module):
  """DeepFM over 13 integer and 26 categorical features.

  Attributes:
    tables: the stacked tables, a `SparseEmbed` of (num_rows, d + 1).
  """

  def __init__(
      self,
      num_rows: int,
      embedding_dim: int,
      *,
      mlp_features: Sequence[int],
      init_scale: float,
      rngs: nnx.Rngs,
  ):
    self.embedding_dim = embedding_dim
    self.tables = nnx_sparse.SparseEmbed(
        num_rows, embedding_dim + 1, embedding_init=_table_init(init_scale),
        rngs=rngs)
    self.integer_vectors = nnx.Param(init_scale * jax.random.normal(
        rngs.params(), (config_lib.NUM_INTEGER, embedding_dim)))
    self.integer_weights = nnx.Param(jnp.zeros((config_lib.NUM_INTEGER,)))
    self.bias = nnx.Param(jnp.zeros(()))
    num_fields = config_lib.NUM_INTEGER + config_lib.NUM_CATEGORICAL
    widths = [num_fields * embedding_dim, *mlp_features, 1]
    self.mlp = nnx.List([nnx.Linear(n_in, n_out, rngs=rngs)
                         for n_in, n_out in zip(widths[:-1], widths[1:])])

  def __call__(self, dense: jax.Array, ids: jax.Array) -> jax.Array:
    """Logits, shape (batch,), of (batch, 13) integer features (log
    transformed) and (batch, 26) rows of the stacked table."""
    rows = self.tables(ids)  # (batch, 26, d + 1)
    factors, first_order = rows[..., :-1], rows[..., -1]
    fields = jnp.concatenate(
        [dense[..., None] * self.integer_vectors[...], factors], axis=1)
    linear = (self.bias[...] + dense @ self.integer_weights[...]
              + jnp.sum(first_order, axis=-1))
    pairwise = 0.5 * jnp.sum(jnp.square(jnp.sum(fields, axis=1))
                             - jnp.sum(jnp.square(fields), axis=1), axis=-1)
    hidden = fields.reshape(fields.shape[0], -1)
    for layer in self.mlp[:-1]:
      hidden = nnx.relu(layer(hidden))
    return linear + pairwise + self.mlp[-1](hidden)[:, 0]
