"""Checksums of array values that every process and every sharding agree on.

A checkpoint's record keeps one per array (`examples.common.checkpointing`),
and restoring recomputes them: a damaged file is refused, naming the array.
Each checksum is computed from the array itself, on its devices, by exact
integer arithmetic whose sum does not depend on the order of the terms, so it
is the same on every process of a multi-process run and for every sharding of
the same values, and no device array is copied to the host to be hashed.
"""

import hashlib
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

# Two lanes, each a sum over words w at flat position p of
# fmix32(w * multiplier + fmix32(p ^ seed)) mod 2^32. One changed word changes
# each lane's sum for sure; more changes collide with probability ~2^-64.
_LANES = ((0x9E3779B1, 0x243F6A88), (0x7FEB352D, 0x85A308D3))


def _fmix32(h, xp):
  """MurmurHash3's 32-bit finaliser (a bijection on uint32)."""
  h = h ^ (h >> xp.uint32(16))
  h = h * xp.uint32(0x85EBCA6B)
  h = h ^ (h >> xp.uint32(13))
  h = h * xp.uint32(0xC2B2AE35)
  return h ^ (h >> xp.uint32(16))


def _words(x, xp):
  """The value's bits as uint32 words (8-byte items: a trailing axis of 2)."""
  if xp is jnp and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if np.issubdtype(x.dtype, np.complexfloating):
    x = xp.stack([x.real, x.imag], axis=-1)
  size = np.dtype(x.dtype).itemsize
  if xp is jnp:
    if x.dtype == np.bool_:
      return x.astype(jnp.uint32)
    if size in (1, 2):
      return jax.lax.bitcast_convert_type(
          x, {1: jnp.uint8, 2: jnp.uint16}[size]).astype(jnp.uint32)
    return jax.lax.bitcast_convert_type(x, jnp.uint32)
  # Flat (row-major, as the jnp words flattened), at least 1-d: NumPy warns
  # about wrapping arithmetic on scalars, not on arrays.
  flat = np.ascontiguousarray(x).reshape(-1)
  if x.dtype == np.bool_:
    return flat.astype(np.uint32)
  if size in (1, 2):
    return flat.view({1: np.uint8, 2: np.uint16}[size]).astype(np.uint32)
  return flat.view(np.uint32)


def _positions(shape, xp):
  """Each element's row-major flat index mod 2^32."""
  if xp is np:
    return (np.arange(int(np.prod(shape)), dtype=np.uint64) %
            (1 << 32)).astype(np.uint32)
  positions = jnp.zeros(shape, jnp.uint32)
  stride = 1
  for axis in reversed(range(len(shape))):
    positions = positions + jax.lax.broadcasted_iota(
        jnp.uint32, shape, axis) * jnp.uint32(stride % (1 << 32))
    stride *= shape[axis]
  return positions


def _fingerprint(x, xp):
  words = _words(x, xp)
  positions = _positions(words.shape, xp)
  return [
      xp.sum(_fmix32(words * xp.uint32(multiplier) +
                     _fmix32(positions ^ xp.uint32(seed), xp), xp),
             dtype=xp.uint32)
      for multiplier, seed in _LANES
  ]


@jax.jit
def _fingerprint_arrays(arrays):
  return jnp.stack([jnp.stack(_fingerprint(x, jnp)) for x in arrays])


def fingerprints(leaves: list[Any]) -> list[list[int]]:
  """Each leaf's checksum (two uint32 lanes), the same on every process."""
  result: list[Optional[list[int]]] = [None] * len(leaves)
  groups: dict[Any, list[int]] = {}
  for i, leaf in enumerate(leaves):
    if isinstance(leaf, jax.Array):
      groups.setdefault(frozenset(leaf.sharding.device_set), []).append(i)
    else:
      result[i] = [int(v) for v in _fingerprint(np.asarray(leaf), np)]
  for indices in groups.values():
    values = np.asarray(_fingerprint_arrays(
        tuple(leaves[i] for i in indices)))
    for i, value in zip(indices, values):
      result[i] = [int(v) for v in value]
  return result


def host_sha256(arrays: list[Any], text: str = '') -> str:
  """sha256 of host (NumPy) arrays' dtypes, shapes and bytes, and `text`.

  For the data a run computes from (its identity in a checkpoint's record),
  not for device arrays: those `fingerprints` checks where they are.
  """
  digest = hashlib.sha256(text.encode())
  for array in arrays:
    array = np.ascontiguousarray(array)
    digest.update(f'{array.dtype}{array.shape}'.encode())
    digest.update(array.tobytes())
  return digest.hexdigest()
