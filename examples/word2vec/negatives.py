"""Negative sampling from the unigram^0.75 distribution, inside the step.

word2vec.c draws negatives from a 10^8-slot table and gensim by binary search
in a cumulative table. Both read memory at random: a 1M-slot table (4 MB) cost
a cache miss per draw on CPU, and JAX's default random numbers (threefry, in
`randint`'s two rounds of bits) cost more still: together about a third of a
Skip-gram step. Here each negative is one draw from Walker's alias tables,
two arrays of the vocabulary's size (100 KB for Brown) that stay in cache:

  column c uniform in [0, V); keep c with probability accept[c], else take
  alias[c].

That samples the distribution up to rounding (the column is 32 random bits
modulo V, off uniform by at most V/2^32 relative; the coin has 24 bits).

The random bits are a counter-based hash: murmur3's 32-bit finalizer of a
Weyl sequence (index · golden ratio + seed), with one seed per step drawn from
a JAX key. Even JAX's 'rbg' generator (Philox, unrolled into 64-bit
multiplies on CPU) cost 0.3-0.7 ms of a 4-6 ms Skip-gram step on this
project's 2-core CPU; the hash costs a few multiplies per number. Its
statistical quality is far beyond what negative sampling needs (the tests
check the drawn frequencies); it is the same on every backend.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# Bits per uniform: float32 holds 24 exactly.
_BITS = 24
_GOLDEN = 0x9E3779B9


class AliasTable(NamedTuple):
  """Walker's alias tables of a distribution over V outcomes."""
  accept: np.ndarray  # float32 (V,): keep column c with this probability.
  alias: np.ndarray  # int32 (V,): the outcome taken otherwise.


def alias_table(probabilities: np.ndarray) -> AliasTable:
  """Alias tables of `probabilities` (Vose's method), exact in float64.

  Args:
    probabilities: (V,) non-negative, summing to 1 (up to rounding).

  Returns:
    The tables; `probabilities_of` gives back the distribution they sample.
  """
  probabilities = np.asarray(probabilities, np.float64)
  if probabilities.ndim != 1 or probabilities.size == 0 or (
      probabilities < 0).any() or not np.isclose(probabilities.sum(), 1.0):
    raise ValueError('alias_table needs a non-empty 1-D distribution; got '
                     f'shape {probabilities.shape}, sum '
                     f'{probabilities.sum() if probabilities.size else 0}.')
  size = probabilities.size
  scaled = probabilities * size
  accept = np.ones(size, np.float64)
  alias = np.arange(size, dtype=np.int32)
  small = [i for i in range(size) if scaled[i] < 1.0]
  large = [i for i in range(size) if scaled[i] >= 1.0]
  while small and large:
    low, high = small.pop(), large.pop()
    accept[low] = scaled[low]
    alias[low] = high
    # The high column gives away what fills the low column to 1.
    scaled[high] -= 1.0 - scaled[low]
    (small if scaled[high] < 1.0 else large).append(high)
  # What is left holds (up to rounding) exactly 1: kept always.
  return AliasTable(accept.astype(np.float32), alias)


def probabilities_of(table: AliasTable) -> np.ndarray:
  """The distribution `table` samples.

  P(k) = (accept_k + Σ_{c: alias_c = k} (1 - accept_c)) / V.
  """
  accept = table.accept.astype(np.float64)
  size = accept.size
  return (accept + np.bincount(table.alias, weights=1.0 - accept,
                               minlength=size)) / size


def _uniform(bits: jax.Array) -> jax.Array:
  """Uniform float32 in [0, 1) from the top `_BITS` bits."""
  return (bits >> (32 - _BITS)).astype(jnp.float32) * (1.0 / (1 << _BITS))


def hashed_bits(seed: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """uint32 random bits of `shape`: murmur3's finalizer of a Weyl sequence.

  Args:
    seed: a uint32 scalar; different seeds give unrelated streams.
    shape: the result's shape.
  """
  size = int(np.prod(shape))
  x = (jnp.arange(size, dtype=jnp.uint32) * jnp.uint32(_GOLDEN)
       + seed.astype(jnp.uint32))
  x = (x ^ (x >> 16)) * jnp.uint32(0x85EBCA6B)
  x = (x ^ (x >> 13)) * jnp.uint32(0xC2B2AE35)
  return (x ^ (x >> 16)).reshape(shape)


def draw(key: jax.Array, accept: jax.Array, alias: jax.Array,
         shape: tuple[int, ...]) -> jax.Array:
  """int32 samples of shape `shape` from the alias tables `(accept, alias)`.

  Args:
    key: a JAX key; only one 32-bit seed is drawn from it.
    accept: `AliasTable.accept` as a device array.
    alias: `AliasTable.alias` as a device array.
    shape: the samples' shape.
  """
  seed = jax.random.bits(key, (), jnp.uint32)
  bits = hashed_bits(seed, (2,) + tuple(shape))
  size = accept.shape[0]
  column = (bits[0] % jnp.uint32(size)).astype(jnp.int32)
  return jnp.where(_uniform(bits[1]) < accept[column], column, alias[column])
