"""Validation of hyperparameters and of per-step ids.

Hyperparameters may arrive as JAX arrays (e.g. from `optax.inject_hyperparams`)
and, inside `jit`, as tracers; values are checked whenever they are concrete.
"""

from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import checkify
import numpy as np


def is_traced(x: Any) -> bool:
  return isinstance(x, jax.core.Tracer)


def is_number_dtype(dtype: Any) -> bool:
  """Whether `dtype` is an integer or floating type, bfloat16 included.

  NumPy's own `issubdtype` says no to ml_dtypes' bfloat16, which
  `optax.inject_hyperparams` gives hyperparameters of bfloat16 models.
  """
  return jnp.issubdtype(dtype, jnp.number) and dtype != jnp.bool_


def _concrete_value(x: Any) -> Any:
  """`x` as a NumPy value, or None if it is traced or not numeric."""
  if is_traced(x):
    return None
  try:
    return np.asarray(x)
  except (TypeError, ValueError):
    return None


def check_positive(name: str, value: Any, *, integer: bool = False,
                   allow_none: bool = False) -> None:
  """Raises a ValueError naming `name` unless `value` is a positive number.

  Callables (Optax schedules) pass; traced values pass unchecked.
  """
  if value is None:
    if allow_none:
      return
    raise ValueError(f'`{name}` must be given; got None.')
  if callable(value):
    return
  if isinstance(value, bool):
    raise ValueError(f'`{name}` must be a positive number; got {value!r}.')
  concrete = _concrete_value(value)
  if concrete is None:
    if is_traced(value):
      return
    raise ValueError(f'`{name}` must be a positive number; got {value!r}.')
  if concrete.ndim != 0 or not is_number_dtype(concrete.dtype):
    raise ValueError(f'`{name}` must be a positive scalar; got {value!r}.')
  if integer and not np.issubdtype(concrete.dtype, np.integer):
    if not (np.isfinite(concrete) and float(concrete).is_integer()):
      raise ValueError(f'`{name}` must be a positive integer; got {value!r}.')
  if not np.isfinite(concrete) or concrete <= 0:
    hint = ''
    if (np.issubdtype(concrete.dtype, np.inexact) or
        concrete.dtype == jnp.bfloat16) and concrete.dtype.itemsize < 4 and (
            concrete == 0 or np.isinf(concrete)):
      # What `optax.inject_hyperparams` makes of epsilon=1e-8 or a half-life
      # of 1e5 for float16 parameters: it casts hyperparameters to their type.
      hint = (f' A {concrete.dtype} value: optax.inject_hyperparams casts '
              'hyperparameters to the parameters\' dtype, where this one '
              'does not fit; pass it hyperparam_dtype=jnp.float32.')
    raise ValueError(
        f'`{name}` must be a positive number; got {value!r}.{hint}')


def check_ids_dtype(ids: Any, leaf_path: str) -> jax.Array:
  """`ids` as an integer array of 32 bits or more; a TypeError naming the
  leaf otherwise.

  Every path takes its ids through here: they are then compared with the
  table's number of rows, and bad ones replaced by it, in their own type,
  where int8, uint8, int16 and uint16 would wrap a row count such as 128 or
  70000 (128 as int8 is -128) and send valid ids to another row.
  """
  dtype = getattr(ids, 'dtype', None)
  if dtype is None:
    try:
      ids = np.asarray(ids)
    except ValueError as e:  # Ragged lists: numpy names no leaf.
      raise ValueError(
          f"ids for parameter '{leaf_path or '<root>'}' must form an integer "
          f'array (lists of equal lengths); got {ids!r}: {e}') from None
    dtype = ids.dtype
    if ids.size == 0:  # An empty Python list: no rows touched.
      ids = ids.astype(np.int32)
      dtype = ids.dtype
  if not jnp.issubdtype(dtype, jnp.integer) or dtype == jnp.bool_:
    raise TypeError(
        f"ids for parameter '{leaf_path or '<root>'}' must be an integer array;"
        f' got dtype {dtype}.'
    )
  _check_ids_fit(ids, dtype, leaf_path)
  ids = jnp.asarray(ids)
  return ids.astype(jnp.int32) if jnp.iinfo(ids.dtype).bits < 32 else ids


def _check_ids_fit(ids: Any, dtype: Any, leaf_path: str) -> None:
  """Rejects host ids that JAX's integer type would wrap into real rows.

  Without 64-bit mode JAX stores int64 ids as int32 (and uint64 as uint32),
  silently wrapping 2^32 + 1 to 1: a hashed feature id would be counted into
  row 1. Such an id is out of range for any table, so it is refused here,
  while its value is still known.
  """
  canonical = jax.dtypes.canonicalize_dtype(dtype)
  if canonical == dtype:  # Always so for JAX arrays and tracers.
    return
  info = np.iinfo(canonical)
  bad = _first_outside(ids, info.min, info.max)
  if bad is not None:
    value, position = bad
    raise ValueError(
        f"ids for parameter '{leaf_path or '<root>'}' must be row numbers of "
        f'the table; got {value} at flat position {position}, which JAX would '
        f'store as {canonical} (64-bit mode is off) and wrap into another row.'
    )


def _first_outside(ids: Any, low: int, high: int) -> Any:
  """(value, flat position) of the first host id outside [low, high], or None."""
  flat = np.ravel(np.asarray(ids))
  bad = (flat < low) | (flat > high)
  if not bad.any():
    return None
  position = int(np.argmax(bad))
  return int(flat[position]), position


def check_ids_in_range(ids: jax.Array, num_rows: int, leaf_path: str, *,
                       checkify_traced: bool = False) -> None:
  """Rejects ids outside [0, num_rows).

  Outside `jit` this raises a ValueError naming the leaf and the first bad
  value. Under `jit`, with `checkify_traced`, it adds a `checkify.debug_check`:
  a no-op unless the caller wraps the step in
  `jax.experimental.checkify.checkify`, where it reports the bad value. It is
  opt-in because a jitted function holding a check has an effect, which takes
  every call off JAX's fast dispatch path (0.1-0.3 ms a step in this
  project's CPU benchmark).
  Either way the counting code drops bad ids.
  """
  name = leaf_path or '<root>'
  if is_traced(ids):
    if not checkify_traced:
      return
    flat = jnp.ravel(ids)
    if flat.size == 0:
      return
    in_range = (flat >= 0) & (flat < num_rows)
    first_bad = flat[jnp.argmin(in_range)]
    checkify.debug_check(
        jnp.all(in_range),
        f"ids for parameter '{name}' must be in [0, {num_rows}); got {{}}",
        first_bad,
    )
    return
  bad = _first_outside(ids, 0, num_rows - 1)
  if bad is not None:
    value, position = bad
    raise ValueError(
        f"ids for parameter '{name}' must be in [0, {num_rows}) (the leaf's "
        f'number of rows); got {value} at flat position {position}.'
    )
