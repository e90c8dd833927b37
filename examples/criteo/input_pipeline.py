"""Streams Criteo-format files into batches, in bounded memory.

Files are read a block of bytes at a time (`block_bytes`), plain or gzip (told
apart by their first bytes, not their names), and parsed by
`criteo_format.parse_lines`; a batch holds only its own examples, so memory
does not grow with the files (README.md shows it for a 10× larger file).

- **Malformed lines** (wrong field count, a label other than 0/1, a bad
  integer, a categorical value that is not 8 hex digits) never become data.
  With ``bad_lines='skip'`` they are counted by kind and the first few are
  kept with their file and line number (`BadLineLog`: lines of the first
  pass over the files, read ahead of the training step included); with
  ``'fail'`` the first raises `MalformedLineError`.
- **A truncated or damaged gzip file**: every complete line before the damage
  is handled as usual (used, or skipped/failed as ``bad_lines`` says), the
  partial line at the cut is refused, then `TruncatedFileError` names the file
  and the last complete line.
- **Shards**: shard s of S reads lines s, s + S, s + 2S, … of every file, so S
  readers (e.g. one per process) split the data by line, and one reader of all
  S shards (`process_batches`) makes the very same batches.
- **Positions**: each batch says where its shard stands after it
  (pass, file, line), so a resumed run starts its shards there.
- **Prefetch**: `Prefetcher` parses batches in a background thread while the
  accelerator runs the step (NumPy releases the GIL in its array work).
"""

import dataclasses
import queue
import threading
import zlib
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple, Optional

import numpy as np

from examples.criteo import config as config_lib
from examples.criteo import criteo_format

DEFAULT_BLOCK_BYTES = 1 << 20
# Compressed bytes of a gzip file decompressed at a time (`_GzipStream`).
_COMPRESSED_BYTES = 1 << 16
_GZIP_MAGIC = b'\x1f\x8b'


class DataError(ValueError):
  """Input data that cannot be used, named with its file (and line)."""


class MalformedLineError(DataError):
  """A malformed line, with ``bad_lines='fail'``."""


class TruncatedFileError(DataError):
  """A compressed file that ends early or is damaged."""


class BadLineLog:
  """Malformed lines: counts by kind, and the first few with their places.

  Args:
    keep: how many malformed lines to keep for the report.
  """

  def __init__(self, keep: int = 5):
    self.keep = keep
    self.counts = {kind: 0 for kind in criteo_format.BAD_KINDS}
    self.first: list[str] = []

  @property
  def total(self) -> int:
    return sum(self.counts.values())

  def add(self, path: str, line_number: int, kind: str, message: str) -> None:
    """Records a malformed line (`line_number` counts from 1)."""
    self.counts[kind] += 1
    if len(self.first) < self.keep:
      self.first.append(f'{path}:{line_number}: {message}')

  def summary(self) -> str:
    """One paragraph: how many, of which kinds, and the first few."""
    if not self.total:
      return 'No malformed lines.'
    kinds = ', '.join(f'{kind} {count}' for kind, count in self.counts.items()
                      if count)
    first = '\n  '.join(self.first)
    return (f'{self.total} malformed lines skipped ({kinds}); the first '
            f'{len(self.first)}:\n  {first}')


@dataclasses.dataclass(frozen=True)
class Position:
  """Where a shard's stream stands: before `line` (0-based) of file `file`."""
  pass_index: int = 0
  file: int = 0
  line: int = 0

  def as_list(self) -> list[int]:
    return [self.pass_index, self.file, self.line]


class _GzipStream:
  """A gzip file's text, decompressed as its bytes come.

  `gzip.GzipFile.read(n)` raises at a cut or damage and drops all it had
  decompressed in that call: at 1 MiB blocks, thousands of complete lines.
  Here each read returns what it decompressed (up to the size asked for), so
  a cut loses nothing before it, and damage at most the text of the
  `_COMPRESSED_BYTES` piece it is in. Members one after the other (`cat a.gz
  b.gz`) are read as one text, as gzip does.
  """

  def __init__(self, path: str):
    self._file = open(path, 'rb')
    self._decompressor = None
    self._pending = b''

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    self._file.close()

  def read(self, size: int = -1) -> bytes:
    """At most `size` (all if < 1) next decompressed bytes; b'' at the end.

    Raises:
      EOFError: the file ends inside a member.
      zlib.error: the data is damaged.
    """
    while True:
      decompressor = self._decompressor
      if (decompressor is not None and not decompressor.eof and
          decompressor.unconsumed_tail):
        compressed = decompressor.unconsumed_tail
      else:
        compressed = self._pending or self._file.read(_COMPRESSED_BYTES)
        self._pending = b''
        if not compressed:
          if decompressor is not None and not decompressor.eof:
            raise EOFError('Compressed file ended before the end-of-stream '
                           'marker was reached')
          return b''
        if decompressor is None or decompressor.eof:
          if decompressor is not None and not compressed.strip(b'\0'):
            continue  # Zero padding after a member, as gzip allows.
          decompressor = self._decompressor = zlib.decompressobj(
              16 + zlib.MAX_WBITS)
      text = decompressor.decompress(compressed, max(size, 0))
      if decompressor.eof:
        self._pending = decompressor.unused_data
      if text:
        return text


def _open(path: str):
  try:
    with open(path, 'rb') as f:
      magic = f.read(2)
    return _GzipStream(path) if magic == _GZIP_MAGIC else open(path, 'rb')
  except OSError as error:
    raise DataError(f'Cannot read data file {path}: {error}') from None


def read_blocks(path: str, *, first_line: int = 0,
                block_bytes: int = DEFAULT_BLOCK_BYTES
                ) -> Iterator[tuple[int, bytes]]:
  """Complete lines of `path`, a block at a time.

  Args:
    path: a plain or gzip file.
    first_line: skip the lines before this one (0-based).
    block_bytes: bytes read at a time.

  Yields:
    (0-based number of the block's first line, the lines as bytes, each
    ending with a newline except perhaps the file's last).

  Raises:
    TruncatedFileError: after the last complete line of a damaged or
      truncated gzip file (the partial line after it is not yielded).
    DataError: the file cannot be read, or it has fewer lines than
      `first_line` (a resume's position: the file was cut or changed since).
  """
  line_number = 0
  carry = b''
  with _open(path) as f:
    while True:
      try:
        data = f.read(block_bytes)
      except (EOFError, zlib.error) as error:
        partial = (f'; the {len(carry)} bytes after it, a partial line, '
                   'were not used') if carry else ''
        raise TruncatedFileError(
            f'{path} is truncated or damaged ({type(error).__name__}: '
            f'{error}): its data ends after line {line_number}{partial}.'
        ) from None
      except OSError as error:
        raise DataError(f'Cannot read data file {path}: {error}') from None
      if not data:
        if carry:
          data, carry = carry, b''
        elif line_number < first_line:
          raise DataError(
              f'{path} has {line_number} lines, but reading it was to go on '
              f'from line {first_line + 1}: it is shorter than when the '
              'checkpoint was saved (cut or changed since).')
        else:
          return
      else:
        data, carry = carry + data, b''
        cut = data.rfind(b'\n') + 1
        if cut < len(data):
          data, carry = data[:cut], data[cut:]
        if not data:
          continue
      count = data.count(b'\n') + (not data.endswith(b'\n'))
      if line_number + count > first_line:
        if line_number < first_line:
          skip = first_line - line_number
          offset = _after_newlines(data, skip)
          data, line_number, count = data[offset:], first_line, count - skip
        yield line_number, data
      line_number += count


def _after_newlines(data: bytes, count: int) -> int:
  """The offset just after the `count`-th newline of `data`."""
  newlines = np.flatnonzero(np.frombuffer(data, np.uint8) == ord('\n'))
  return int(newlines[count - 1]) + 1


class Chunk(NamedTuple):
  """Parsed examples of one shard and the (pass, file, line) of each."""
  examples: criteo_format.Examples
  file: int
  pass_index: int
  lines: np.ndarray  # shape=(n,), 0-based line numbers in the file.


class ShardReader:
  """The examples of shard `shard` of `num_shards`, in file order.

  Args:
    paths: the data files, read in this order.
    hashing: where categorical values go.
    shard: this reader's shard: lines shard, shard + num_shards, … of each
      file.
    num_shards: S.
    bad_lines: 'skip' (count in `log`) or 'fail' (raise on the first).
    log: where skipped lines are counted.
    repeat: start over after the last file (passes never end).
    start: where to start (from a batch's `positions`).
    block_bytes: bytes read at a time.
  """

  def __init__(
      self,
      paths: Sequence[str],
      hashing: criteo_format.Hashing,
      *,
      shard: int = 0,
      num_shards: int = 1,
      bad_lines: str = 'skip',
      log: Optional[BadLineLog] = None,
      repeat: bool = False,
      start: Position = Position(),
      block_bytes: int = DEFAULT_BLOCK_BYTES,
  ):
    if not paths:
      raise DataError('No data files given.')
    if bad_lines not in config_lib.BAD_LINES:
      raise ValueError(f'bad_lines {bad_lines!r}: expected one of '
                       f'{config_lib.BAD_LINES}.')
    if not 0 <= shard < num_shards:
      raise ValueError(f'shard {shard} is not in [0, {num_shards}).')
    self.paths = list(paths)
    self.hashing = hashing
    self.shard = shard
    self.num_shards = num_shards
    self.bad_lines = bad_lines
    self.log = log if log is not None else BadLineLog()
    self.repeat = repeat
    self.start = start
    self.block_bytes = block_bytes

  def __iter__(self) -> Iterator[Chunk]:
    pass_index, file, line = (self.start.pass_index, self.start.file,
                              self.start.line)
    while True:
      found = False
      for file in range(file, len(self.paths)):
        for chunk in self._read_file(pass_index, file, line):
          found = found or chunk.lines.size > 0
          yield chunk
        line = 0
      if not self.repeat:
        return
      if not found and pass_index > self.start.pass_index:
        raise DataError(
            f'No well-formed lines for shard {self.shard} of '
            f'{self.num_shards} in {", ".join(self.paths)}.')
      pass_index, file = pass_index + 1, 0

  def _read_file(self, pass_index: int, file: int,
                 first_line: int) -> Iterator[Chunk]:
    path = self.paths[file]
    for block_line, blob in read_blocks(path, first_line=first_line,
                                        block_bytes=self.block_bytes):
      buffer, starts, ends = criteo_format.split_lines(blob)
      numbers = block_line + np.arange(starts.size)
      mine = numbers % self.num_shards == self.shard
      numbers = numbers[mine]
      examples, bad = criteo_format.parse_lines(
          buffer, starts[mine], ends[mine], self.hashing)
      good = np.ones(numbers.size, bool)
      for problem in bad:
        good[problem.index] = False
        line_number = int(numbers[problem.index]) + 1
        if self.bad_lines == 'fail':
          raise MalformedLineError(
              f'{path}:{line_number}: {problem.message} (malformed line; '
              'run with --bad_lines=skip to skip such lines).')
        if pass_index == 0:  # Later passes skip the same lines again.
          self.log.add(path, line_number, problem.kind, problem.message)
      yield Chunk(examples, file, pass_index, numbers[good])


class Batch(NamedTuple):
  """A batch of examples and where its shards stand after it."""
  labels: np.ndarray  # shape=(b,), float32.
  dense: np.ndarray  # shape=(b, 13), float32.
  ids: np.ndarray  # shape=(b, 26), int32.
  positions: tuple[Position, ...]  # one per shard of the batch.
  size: int  # real examples; the rest (for a final batch) is padding.

  def arrays(self) -> dict[str, np.ndarray]:
    return {'labels': self.labels, 'dense': self.dense, 'ids': self.ids}


def shard_batches(reader: ShardReader, batch_size: int, *,
                  keep_partial: bool = False) -> Iterator[Batch]:
  """Batches of `batch_size` examples of one shard.

  Args:
    reader: the shard's examples.
    batch_size: examples per batch.
    keep_partial: also yield the last, partial batch, padded with copies of
      its last example (`Batch.size` tells the real ones); otherwise examples
      after the last full batch are dropped.

  Yields:
    `Batch`es with one position each.
  """
  parts, lines, have = [], [], 0
  last = None
  for chunk in reader:
    if not chunk.lines.size:
      continue
    parts.append(chunk.examples)
    lines.append(np.stack([np.full(chunk.lines.size, chunk.pass_index),
                           np.full(chunk.lines.size, chunk.file),
                           chunk.lines], axis=1))
    have += chunk.lines.size
    while have >= batch_size:
      examples = criteo_format.concatenate(parts)
      where = np.concatenate(lines)
      last = where[batch_size - 1]
      yield Batch(*(column[:batch_size] for column in examples),
                  positions=(Position(int(last[0]), int(last[1]),
                                      int(last[2]) + 1),),
                  size=batch_size)
      parts = [criteo_format.Examples(*(c[batch_size:] for c in examples))]
      lines = [where[batch_size:]]
      have -= batch_size
  if keep_partial and have:
    examples = criteo_format.concatenate(parts)
    where = np.concatenate(lines)
    last = where[-1]
    padding = batch_size - have
    yield Batch(*(np.concatenate([column, np.repeat(column[-1:], padding, 0)])
                  for column in examples),
                positions=(Position(int(last[0]), int(last[1]),
                                    int(last[2]) + 1),),
                size=have)


def process_batches(
    paths: Sequence[str],
    hashing: criteo_format.Hashing,
    *,
    batch_size: int,
    shards: Sequence[int],
    num_shards: int,
    starts: Optional[Sequence[Position]] = None,
    repeat: bool = True,
    bad_lines: str = 'skip',
    log: Optional[BadLineLog] = None,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> Iterator[Batch]:
  """A process's part of each global batch: its shards' batches, in order.

  Args:
    paths: the data files.
    hashing: where categorical values go.
    batch_size: the global batch size; each shard gives
      batch_size / num_shards examples of every batch.
    shards: the shards this process reads (consecutive).
    num_shards: S.
    starts: where each of `shards` starts (default: the beginning).
    repeat: passes over the files never end.
    bad_lines: 'skip' or 'fail'.
    log: where skipped lines are counted (one for all shards).
    block_bytes: bytes read at a time.

  Yields:
    `Batch`es of len(shards) · batch_size / num_shards examples, with one
    position per shard.
  """
  if batch_size % num_shards:
    raise ValueError(f'batch_size {batch_size} is not a multiple of '
                     f'{num_shards} data shards.')
  log = log if log is not None else BadLineLog()
  starts = list(starts) if starts is not None else [Position()] * len(shards)
  iterators = [
      shard_batches(ShardReader(paths, hashing, shard=shard,
                                num_shards=num_shards, bad_lines=bad_lines,
                                log=log, repeat=repeat, start=start,
                                block_bytes=block_bytes),
                    batch_size // num_shards)
      for shard, start in zip(shards, starts)
  ]
  while True:
    batches = []
    for iterator in iterators:
      batch = next(iterator, None)
      if batch is None:
        return
      batches.append(batch)
    yield Batch(
        *(np.concatenate(column) for column in zip(
            *(b[:3] for b in batches))),
        positions=tuple(p for b in batches for p in b.positions),
        size=sum(b.size for b in batches))


def evaluation_batches(
    paths: Sequence[str],
    hashing: criteo_format.Hashing,
    *,
    batch_size: int,
    max_examples: Optional[int] = None,
    bad_lines: str = 'skip',
    log: Optional[BadLineLog] = None,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> Iterator[Batch]:
  """One pass over `paths` in batches, the last one padded.

  Args:
    paths: the data files.
    hashing: where categorical values go.
    batch_size: examples per batch.
    max_examples: stop after this many examples (None: all).
    bad_lines: 'skip' or 'fail'.
    log: where skipped lines are counted.
    block_bytes: bytes read at a time.

  Yields:
    `Batch`es; `Batch.size` counts the real examples of each.
  """
  reader = ShardReader(paths, hashing, bad_lines=bad_lines, log=log,
                       block_bytes=block_bytes)
  seen = 0
  for batch in shard_batches(reader, batch_size, keep_partial=True):
    if max_examples is not None and seen + batch.size >= max_examples:
      yield batch._replace(size=max_examples - seen)
      return
    seen += batch.size
    yield batch


class Prefetcher:
  """Runs an iterator in a background thread, `size` items ahead.

  Exceptions of the iterator are raised by `__next__` after the items that
  came before them. `close` stops the thread.
  """

  _END = object()

  def __init__(self, iterator: Iterator[Any], size: int = 4):
    self._queue: queue.Queue = queue.Queue(maxsize=max(size, 1))
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, args=(iterator,),
                                    daemon=True)
    self._thread.start()

  def _put(self, item) -> bool:
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def _run(self, iterator):
    try:
      for item in iterator:
        if not self._put((item, None)):
          return
    except BaseException as error:  # Re-raised in the consumer's thread.
      self._put((self._END, error))
      return
    self._put((self._END, None))

  def __iter__(self):
    return self

  def __next__(self):
    item, error = self._queue.get()
    if item is self._END:
      self._queue.put((item, error))  # Later calls end the same way.
      if error is not None:
        raise error
      raise StopIteration
    return item

  def close(self) -> None:
    self._stop.set()
    self._thread.join(timeout=5)
