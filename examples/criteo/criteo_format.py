"""Parsing lines of the Criteo display-ads format, and hashing its features.

A line is ``label \\t I1 … I13 \\t C1 … C26``: the label 0 or 1, 13 integers
(possibly negative), 26 categorical values as 8 hex digits; any feature may be
empty. `parse_lines` turns a block of lines into arrays at once (NumPy does
the per-field work; Python only splits lines), and names each malformed line's
first problem. A malformed line never becomes data.

Integer features become log(1 + max(x, 0)) (empty: 0). Categorical feature f
with value v is hashed into its table of rows_f rows, at row
``offset_f + mix(key(v), f) mod rows_f``, where the tables of the 26 features
are stacked into one (offset_f = rows_0 + … + rows_{f-1}) and an empty value
is a key of its own.
"""

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from examples.criteo import config as config_lib

NUM_INTEGER = config_lib.NUM_INTEGER
NUM_CATEGORICAL = config_lib.NUM_CATEGORICAL
NUM_FIELDS = config_lib.NUM_FIELDS

# Byte -> hex digit value, 255 for bytes that are not hex digits.
_HEX_DIGITS = np.full(256, 255, np.uint8)
for _i, _c in enumerate(b'0123456789abcdef'):
  _HEX_DIGITS[_c] = _i
for _i, _c in enumerate(b'ABCDEF'):
  _HEX_DIGITS[_c] = 10 + _i
_POWERS_OF_TEN = 10 ** np.arange(19, dtype=np.int64)
# Longer integers could overflow int64; Criteo's have at most 10 digits.
_MAX_INTEGER_CHARS = 18
# Bytes after a buffer's last line that field reads may touch.
_SPARE_BYTES = 32


class Examples(NamedTuple):
  """Parsed examples, one row each, in line order."""
  labels: np.ndarray  # shape=(n,), float32, 0 or 1.
  dense: np.ndarray  # shape=(n, 13), float32, log(1 + max(x, 0)).
  ids: np.ndarray  # shape=(n, 26), int32, rows of the stacked table.


class BadLine(NamedTuple):
  """A malformed line: its index in the parsed block, kind and message."""
  index: int
  kind: str  # One of BAD_KINDS.
  message: str


BAD_KINDS = ('field count', 'label', 'integer', 'categorical', 'truncated')


class Hashing:
  """Where each categorical value goes in the stacked table.

  Args:
    table_rows: rows of each of the 26 features' tables.
  """

  def __init__(self, table_rows: Sequence[int]):
    table_rows = tuple(int(rows) for rows in table_rows)
    if len(table_rows) != NUM_CATEGORICAL or min(table_rows) < 1:
      raise ValueError(
          f'table_rows must be {NUM_CATEGORICAL} positive row counts; got '
          f'{table_rows!r}.')
    self.table_rows = table_rows
    self.offsets = np.concatenate([[0], np.cumsum(table_rows)[:-1]]).astype(
        np.int64)
    self.num_rows = int(sum(table_rows))
    if self.num_rows > np.iinfo(np.int32).max:
      raise ValueError(
          f'The stacked table has {self.num_rows} rows, more than int32 ids '
          'can address; use fewer --table_rows.')
    self._rows = np.asarray(table_rows, np.uint64)
    # A different salt per feature: equal values of two features land in
    # unrelated rows of their tables.
    self._salts = (np.arange(1, NUM_CATEGORICAL + 1, dtype=np.uint64)
                   * np.uint64(0x9E3779B97F4A7C15))

  def rows(self, keys: np.ndarray) -> np.ndarray:
    """Rows of the stacked table, (n, 26) int32, of (n, 26) uint64 keys."""
    hashed = _mix64(keys + self._salts)
    return ((hashed % self._rows).astype(np.int64) + self.offsets).astype(
        np.int32)


def _mix64(x: np.ndarray) -> np.ndarray:
  """SplitMix64's finaliser: a bijection of uint64 that scatters bits."""
  x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return x ^ (x >> np.uint64(31))


def _gather(buffer: np.ndarray, starts: np.ndarray, width: int) -> np.ndarray:
  """``buffer[start : start + width]`` for each start: starts.shape + (width,).

  `buffer` must hold `width` spare bytes after its last line (see
  `split_lines`); callers mask bytes past each field's length.
  """
  windows = np.lib.stride_tricks.sliding_window_view(buffer, width)
  return windows[starts]


def _integers(buffer, starts, lengths):
  """(values as float32 log(1 + max(x, 0)), valid) of (n, 13) fields."""
  valid = lengths <= _MAX_INTEGER_CHARS
  width = int(min(_MAX_INTEGER_CHARS, lengths.max(initial=0)))
  values = np.zeros(lengths.shape, np.int64)
  negative = np.zeros(lengths.shape, bool)
  for position in range(width):
    code = buffer[starts + position]
    digit = code - np.uint8(ord('0'))  # Wraps: non-digits become >= 10.
    inside = position < lengths
    is_digit = digit < 10
    if position == 0:
      negative = (code == ord('-')) & (lengths >= 2)
      valid &= is_digit | ~inside | negative
    else:
      valid &= is_digit | ~inside
    use = inside & is_digit
    values = np.where(use, values * 10 + digit, values)
  values = np.where(negative | ~valid, 0, values)  # log(1 + max(x, 0))
  return np.log1p(values.astype(np.float32)), valid


def _categoricals(buffer, starts, lengths):
  """(uint64 keys: value + 1, 0 for empty; valid) of (n, 26) fields."""
  digits = _HEX_DIGITS[_gather(buffer, starts, 8)]
  all_hex = (digits == 255).view(np.uint64)[..., 0] == 0
  valid = (lengths == 0) | ((lengths == 8) & all_hex)
  pairs = digits.reshape(lengths.shape + (4, 2))
  values = ((pairs[..., 0] << 4) | pairs[..., 1]).view('>u4')[..., 0]
  keys = np.where(valid & (lengths == 8), values.astype(np.uint64) + 1,
                  np.uint64(0))
  return keys, valid


def split_lines(blob: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(buffer, line starts, line ends) of lines separated by newlines.

  Every line, the last included, ends at a newline or the end of `blob`; a
  final newline does not start an empty line. A carriage return before a
  newline is not part of its line. The buffer holds `blob` and spare NUL
  bytes after it, which `parse_lines` reads past the last field.
  """
  size = len(blob)
  buffer = np.frombuffer(blob + bytes(_SPARE_BYTES), np.uint8)
  ends = np.flatnonzero(buffer[:size] == ord('\n'))
  if size and (not ends.size or ends[-1] != size - 1):
    ends = np.append(ends, size)
  starts = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64)
  ends = ends.astype(np.int64)
  carriage = (ends > starts) & (buffer[np.maximum(ends - 1, 0)] == ord('\r'))
  return buffer, starts, ends - carriage


def parse_lines(buffer: np.ndarray, starts: np.ndarray, ends: np.ndarray,
                hashing: Hashing) -> tuple[Examples, list[BadLine]]:
  """Parses lines of the Criteo format, all at once.

  Args:
    buffer: the bytes (uint8) holding the lines.
    starts: (L,) where each line starts in `buffer`.
    ends: (L,) where each ends (exclusive, newline not included).
    hashing: where categorical values go.

  Returns:
    (the well-formed lines' examples in order, the malformed lines' problems
    in order; `BadLine.index` counts lines from 0). Each line is in exactly
    one of them.
  """
  tabs = np.flatnonzero(buffer == ord('\t'))
  first_tab = np.searchsorted(tabs, starts)
  num_tabs = np.searchsorted(tabs, ends) - first_tab
  counted = num_tabs == NUM_FIELDS - 1
  kept = np.flatnonzero(counted)
  tab_at = tabs[np.minimum(first_tab[kept, None] + np.arange(NUM_FIELDS - 1),
                           max(tabs.size - 1, 0))] if kept.size else np.zeros(
                               (0, NUM_FIELDS - 1), np.int64)
  field_starts = np.concatenate([starts[kept, None], tab_at + 1], axis=1)
  field_ends = np.concatenate([tab_at, ends[kept, None]], axis=1)
  lengths = field_ends - field_starts
  label_byte = np.take(buffer, field_starts[:, 0], mode='clip')
  label_ok = (lengths[:, 0] == 1) & ((label_byte == ord('0')) |
                                     (label_byte == ord('1')))
  integer_columns = slice(1, 1 + NUM_INTEGER)
  dense, integer_ok = _integers(buffer, field_starts[:, integer_columns],
                                lengths[:, integer_columns])
  categorical_columns = slice(1 + NUM_INTEGER, NUM_FIELDS)
  keys, categorical_ok = _categoricals(
      buffer, field_starts[:, categorical_columns],
      lengths[:, categorical_columns])
  good = label_ok & integer_ok.all(1) & categorical_ok.all(1)
  bad = [BadLine(int(i), 'field count',
                 f'{num_tabs[i] + 1} tab-separated fields, expected '
                 f'{NUM_FIELDS}')
         for i in np.flatnonzero(~counted)]
  for row in np.flatnonzero(~good):
    fields = [bytes(buffer[a:b]) for a, b in zip(field_starts[row],
                                                  field_ends[row])]
    bad.append(_problem(int(kept[row]), fields, label_ok[row],
                        integer_ok[row], categorical_ok[row]))
  bad.sort(key=lambda b: b.index)
  examples = Examples(
      labels=(label_byte[good] == ord('1')).astype(np.float32),
      dense=dense[good],
      ids=hashing.rows(keys[good]),
  )
  return examples, bad


def _problem(index, fields, label_ok, integer_ok, categorical_ok) -> BadLine:
  """The first problem of a line with the right number of fields."""
  if not label_ok:
    return BadLine(index, 'label',
                   f'label {_show(fields[0])} is not 0 or 1')
  for j in range(NUM_INTEGER):
    if not integer_ok[j]:
      return BadLine(index, 'integer',
                     f'integer feature I{j + 1} {_show(fields[1 + j])} is not '
                     'an integer')
  j = int(np.flatnonzero(~categorical_ok)[0])
  return BadLine(index, 'categorical',
                 f'categorical feature C{j + 1} '
                 f'{_show(fields[1 + NUM_INTEGER + j])} is not 8 hex digits')


def _show(field: bytes) -> str:
  text = repr(bytes(field))[1:]
  return text if len(text) <= 40 else text[:37] + '...'


def _empty() -> Examples:
  return Examples(np.zeros((0,), np.float32),
                  np.zeros((0, NUM_INTEGER), np.float32),
                  np.zeros((0, NUM_CATEGORICAL), np.int32))


def concatenate(parts: Sequence[Examples]) -> Examples:
  """The examples of `parts`, in order."""
  if not parts:
    return _empty()
  return Examples(*(np.concatenate(column) for column in zip(*parts)))
