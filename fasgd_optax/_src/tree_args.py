"""Matching per-parameter arguments (`ids`, `frequencies`) to parameter leaves.

Users pass such arguments in one of three forms, all reduced here to one
mapping from a leaf's path string (e.g. ``'user_embed/embedding'``) to a value:

- a single array, when the parameters are a single array;
- a pytree mirroring the parameters, with None for leaves that have no entry;
- a flat dict keyed by path strings, ``{'user_embed/embedding': ids}``, which is
  the convenient form for Flax (`nnx.State`, linen ``{'params': ...}``) trees.

Matching by path (rather than by tree structure) is what lets one `ids` tree
serve transformations that see only part of the parameters, as inside
`optax.masked` and `optax.partition`: entries for masked-out leaves are ignored.
"""

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import optax

_ROOT = ''


def key_to_str(key: Any) -> str:
  """One entry of a JAX key path as a plain string."""
  if isinstance(key, jax.tree_util.DictKey):
    return str(key.key)
  if isinstance(key, jax.tree_util.GetAttrKey):
    return key.name
  if isinstance(key, jax.tree_util.SequenceKey):
    return str(key.idx)
  if isinstance(key, jax.tree_util.FlattenedIndexKey):
    return str(key.key)
  return str(key)


def path_to_str(path: tuple[Any, ...]) -> str:
  """A JAX key path as a '/'-joined string; the root is ''.

  A trailing ``.value`` attribute is dropped: Flax NNX `Variable`s flatten to
  their array under that attribute, and users name a leaf by its module path
  (``'embed/embedding'``) whether the tree holds Variables or plain arrays.
  """
  if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and (
      path[-1].name == 'value'):
    path = path[:-1]
  return '/'.join(key_to_str(key) for key in path)


def _is_masked(x: Any) -> bool:
  return isinstance(x, optax.MaskedNode)


def leaves_with_paths(tree: Any) -> tuple[list[tuple[str, Any]], Any]:
  """Leaves of `tree` with path strings, keeping `optax.MaskedNode`s as leaves."""
  flat, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_masked)
  return [(path_to_str(path), leaf) for path, leaf in flat], treedef


def _is_array_like(x: Any) -> bool:
  return hasattr(x, 'shape') and hasattr(x, 'dtype')


def _is_number_list(x: Any) -> bool:
  """A (nested) list or tuple of numbers: one leaf's entry, like an array.

  An empty one is a leaf's entry too (a batch that touched no row of it),
  and so is one of floats or bools, which the entry's own checks then refuse
  by dtype rather than as a part of the tree. At a path that names no leaf,
  `per_leaf` matches its items instead.
  """
  if not isinstance(x, (list, tuple)):
    return False
  return all(_is_number_list(item) or
             isinstance(item, (int, float, np.number, np.bool_))
             for item in x)


def per_leaf(
    arg: Any,
    tree: Any,
    arg_name: str,
) -> list[Any]:
  """Aligns `arg` with the leaves of `tree`.

  Args:
    arg: None, a single array, a pytree mirroring `tree` (None for leaves
      without an entry), or a dict keyed by leaf path strings. A list or
      tuple of numbers (an empty one too) is one leaf's entry, like an array
      of them.
    tree: the updates or parameters; may contain `optax.MaskedNode`s.
    arg_name: the argument's name, for error messages.

  Returns:
    A list with one entry per leaf of `tree` (MaskedNodes included), None where
    `arg` has no entry.

  Raises:
    ValueError: if an entry of `arg` matches no leaf of `tree`, or a single
      array is given for a tree with more than one leaf.
  """
  leaves, _ = leaves_with_paths(tree)
  if arg is None:
    return [None] * len(leaves)
  single_root_leaf = len(leaves) == 1 and leaves[0][0] == _ROOT
  if _is_array_like(arg) or (single_root_leaf and not isinstance(arg, Mapping)):
    if single_root_leaf:
      return [arg]
    paths = [path for path, leaf in leaves if not _is_masked(leaf)]
    raise ValueError(
        f'`{arg_name}` is a single array, but the parameters are a pytree with '
        f'leaves {paths}; pass a pytree mirroring the parameters (None for '
        'leaves without an entry) or a dict keyed by these paths.'
    )

  # A list of numbers is one leaf's ids, except at the root, where a list or
  # tuple mirrors list or tuple parameters ([ids_0, ids_1] or [3, 5]).
  flat_arg, _ = jax.tree_util.tree_flatten_with_path(
      arg, is_leaf=lambda x: (x is None or _is_array_like(x) or
                              (x is not arg and _is_number_list(x)))
  )
  leaf_paths = {path for path, _ in leaves}
  by_path = {}

  def add(key, value):
    if key not in leaf_paths and key.endswith('/value'):
      key = key[:-len('/value')]  # 'embed/embedding/value' names the same leaf
    if key not in leaf_paths and isinstance(value, (list, tuple)):
      # Not a leaf's list of numbers but a part of the tree (list-of-scalar
      # parameters, an empty subtree): matched item by item.
      for index, item in enumerate(value):
        add(f'{key}/{index}' if key else str(index), item)
      return
    by_path[key] = value

  for path, value in flat_arg:
    if value is not None:
      add(path_to_str(path), value)
  unknown = sorted(set(by_path) - leaf_paths)
  if unknown:
    known = [path for path, leaf in leaves if not _is_masked(leaf)]
    under_a_leaf = sorted({path for path in known for key in unknown
                           if path != _ROOT and key.startswith(path + '/')})
    hint = ''
    if under_a_leaf:
      hint = (f' Entries under the leaves {under_a_leaf} split one leaf\'s '
              'entry in parts: give each leaf one array (for several lookups '
              'of one table, their ids as one array, e.g. jnp.concatenate of '
              'the raveled arrays).')
    raise ValueError(
        f'`{arg_name}` does not match the parameters: entries {unknown} match '
        f'no parameter leaf. Parameter leaves are {known}. Pass a pytree '
        'mirroring the parameters (None for leaves without an entry) or a dict '
        f'keyed by these paths.{hint}'
    )
  return [
      None if _is_masked(leaf) else by_path.get(path)
      for path, leaf in leaves
  ]
