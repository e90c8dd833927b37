"""The Criteo-format reader and the synthetic data: tests on small files."""

import gzip
import math
import os
import shutil
import tempfile
import tracemalloc
import zlib

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from examples.common import metrics
from examples.criteo import criteo_format
from examples.criteo import input_pipeline
from examples.criteo import synthetic

ROWS = (50,) * 26
HASHING = criteo_format.Hashing(ROWS)


def small_model():
  return synthetic.PlantedModel(
      0, synthetic.default_vocabulary_sizes(largest=300))


def good_line(seed: int) -> bytes:
  """One well-formed line with every kind of field, some empty."""
  rng = np.random.default_rng(seed)
  integers = [str(rng.integers(-3, 10**6)) if rng.random() < 0.7 else ''
              for _ in range(13)]
  categorical = [f'{rng.integers(0, 2**32):08x}' if rng.random() < 0.8
                 else '' for _ in range(26)]
  return '\t'.join([str(seed % 2)] + integers + categorical).encode()


def expected_example(line: bytes):
  """(label, dense, ids) of a line, computed field by field in Python."""
  fields = line.split(b'\t')
  dense = [math.log1p(max(int(f), 0)) if f else 0.0 for f in fields[1:14]]
  keys = np.array([[int(f, 16) + 1 if f else 0 for f in fields[14:]]],
                  np.uint64)
  return float(fields[0]), np.array(dense, np.float32), HASHING.rows(keys)[0]


def replace_field(line: bytes, index: int, value: bytes) -> bytes:
  fields = line.split(b'\t')
  fields[index] = value
  return b'\t'.join(fields)


# Malformed variants of a good line: (kind, how it is made, message).
MALFORMED = {
    'too few fields': ('field count', lambda l: l.rsplit(b'\t', 1)[0],
                       '39 tab-separated fields, expected 40'),
    'too many fields': ('field count', lambda l: l + b'\tabcdef01',
                        '41 tab-separated fields, expected 40'),
    'empty line': ('field count', lambda l: b'',
                   '1 tab-separated fields, expected 40'),
    'label 2': ('label', lambda l: replace_field(l, 0, b'2'),
                "label '2' is not 0 or 1"),
    'empty label': ('label', lambda l: replace_field(l, 0, b''),
                    "label '' is not 0 or 1"),
    'integer text': ('integer', lambda l: replace_field(l, 3, b'12a'),
                     "integer feature I3 '12a' is not an integer"),
    'integer alone minus': ('integer', lambda l: replace_field(l, 5, b'-'),
                            "integer feature I5 '-' is not an integer"),
    'integer too long': ('integer',
                         lambda l: replace_field(l, 1, b'9' * 30),
                         'integer feature I1'),
    'hex letter': ('categorical', lambda l: replace_field(l, 14, b'0000000g'),
                   "categorical feature C1 '0000000g' is not 8 hex digits"),
    'hex short': ('categorical', lambda l: replace_field(l, 20, b'abc'),
                  "categorical feature C7 'abc' is not 8 hex digits"),
    'hex long': ('categorical', lambda l: replace_field(l, 39, b'0123456789'),
                 "categorical feature C26 '0123456789' is not 8 hex digits"),
}


class DataTestCase(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.tmp = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self.tmp)

  def write(self, name: str, lines, *, compress: bool = False) -> str:
    path = os.path.join(self.tmp, name)
    blob = b''.join(line + b'\n' for line in lines)
    with (gzip.open if compress else open)(path, 'wb') as f:
      f.write(blob)
    return path

  def read_all(self, paths, **kwargs):
    """Every example of `paths` in one batch list, and the bad-line log."""
    log = input_pipeline.BadLineLog()
    reader = input_pipeline.ShardReader(paths, HASHING, log=log, **kwargs)
    chunks = list(reader)
    examples = criteo_format.concatenate([c.examples for c in chunks])
    return examples, log


class ParseTest(DataTestCase):

  def test_good_lines_parse_to_their_values(self):
    lines = [good_line(seed) for seed in range(50)]
    lines[3] = replace_field(lines[3], 1, b'-2')  # negative: log1p(0) = 0
    lines[4] = replace_field(lines[4], 2, b'0000123')  # leading zeros
    lines[5] = replace_field(lines[5], 14, b'DEADBEEF')  # upper-case hex
    examples, log = self.read_all([self.write('good.txt', lines)])
    self.assertEqual(log.total, 0)
    self.assertLen(examples.labels, 50)
    for i, line in enumerate(lines):
      label, dense, ids = expected_example(line)
      self.assertEqual(examples.labels[i], label)
      np.testing.assert_allclose(examples.dense[i], dense, rtol=1e-6)
      np.testing.assert_array_equal(examples.ids[i], ids)
    self.assertEqual(examples.dense[3, 0], 0.0)
    np.testing.assert_allclose(examples.dense[4, 1], math.log1p(123),
                               rtol=1e-6)

  def test_hashing_keeps_features_in_their_tables(self):
    hashing = criteo_format.Hashing([3] * 13 + [1000] * 13)
    keys = np.arange(2000, dtype=np.uint64).reshape(-1, 1) * np.ones(
        26, np.uint64)
    rows = hashing.rows(keys)
    for f in range(26):
      low = hashing.offsets[f]
      self.assertTrue(np.all((rows[:, f] >= low) &
                             (rows[:, f] < low + hashing.table_rows[f])))
    # The 1000-row tables are filled evenly (a good hash), and the empty
    # value (key 0) is a value of its own.
    self.assertGreater(len(np.unique(rows[:, 20])), 800)

  @parameterized.named_parameters(*[(name, name) for name in MALFORMED])
  def test_malformed_line_is_reported_and_never_data(self, name):
    kind, corrupt, message = MALFORMED[name]
    lines = [good_line(seed) for seed in range(6)]
    lines[3] = corrupt(lines[3])
    path = self.write('data.txt', lines)
    examples, log = self.read_all([path])
    self.assertLen(examples.labels, 5)
    expected = [expected_example(lines[i]) for i in (0, 1, 2, 4, 5)]
    np.testing.assert_array_equal(examples.ids, [e[2] for e in expected])
    self.assertEqual(log.total, 1)
    self.assertEqual(log.counts[kind], 1)
    self.assertIn(f'{path}:4: {message}', log.first[0])
    self.assertIn(f'{path}:4:', log.summary())
    with self.assertRaisesRegex(input_pipeline.MalformedLineError,
                                f'{path}:4: .*--bad_lines=skip'):
      self.read_all([path], bad_lines='fail')

  def test_report_counts_all_but_keeps_the_first_few(self):
    lines = [good_line(seed) for seed in range(30)]
    for i in range(0, 30, 3):
      lines[i] = replace_field(lines[i], 0, b'x')
    examples, log = self.read_all([self.write('data.txt', lines)])
    self.assertLen(examples.labels, 20)
    self.assertEqual(log.counts['label'], 10)
    self.assertEqual([entry.split(': ')[0].rsplit(':', 1)[1]
                      for entry in log.first], ['1', '4', '7', '10', '13'])

  def test_plain_gzip_and_line_endings_agree(self):
    lines = [good_line(seed) for seed in range(40)]
    plain, _ = self.read_all([self.write('a.txt', lines)])
    zipped, _ = self.read_all([self.write('a.gz', lines, compress=True)])
    crlf_path = os.path.join(self.tmp, 'crlf.txt')
    with open(crlf_path, 'wb') as f:
      f.write(b'\r\n'.join(lines))  # and no newline after the last line
    crlf, log = self.read_all([crlf_path])
    self.assertEqual(log.total, 0)
    for other in (zipped, crlf):
      for column, reference in zip(other, plain):
        np.testing.assert_array_equal(column, reference)

  def test_a_resume_past_the_files_end_is_an_error(self):
    # A checkpoint's position lies at most at the file's end; past it, the
    # file was cut or changed since, and reading on would silently start
    # the next pass.
    lines = [good_line(seed) for seed in range(40)]
    for name, compress in (('a.txt', False), ('a.gz', True)):
      path = self.write(name, lines, compress=compress)
      for line in (39, 40):  # The end itself is a position.
        self.assertLen(list(input_pipeline.read_blocks(
            path, first_line=line, block_bytes=64)), line < 40)
      with self.assertRaisesRegex(
          input_pipeline.DataError,
          f'{path} has 40 lines, but reading it was to go on from line 42: '
          'it is shorter than when the checkpoint was saved'):
        list(input_pipeline.ShardReader(
            [path], HASHING, start=input_pipeline.Position(0, 0, 41)))

  def test_small_blocks_split_lines_anywhere(self):
    lines = [good_line(seed) for seed in range(40)]
    path = self.write('a.txt', lines)
    whole, _ = self.read_all([path])
    pieces, _ = self.read_all([path], block_bytes=37)
    for column, reference in zip(pieces, whole):
      np.testing.assert_array_equal(column, reference)


class TruncatedGzipTest(DataTestCase):

  def truncated(self, lines, keep_fraction=0.6):
    path = self.write('day_0.gz', lines, compress=True)
    with open(path, 'rb') as f:
      compressed = f.read()
    with open(path, 'wb') as f:
      f.write(compressed[:int(len(compressed) * keep_fraction)])
    return path

  @parameterized.parameters(4096, input_pipeline.DEFAULT_BLOCK_BYTES)
  def test_lines_before_the_cut_are_used_then_a_clear_error(self, block):
    lines = [good_line(seed) for seed in range(3000)]
    lines[10] = replace_field(lines[10], 0, b'7')
    path = self.truncated(lines)
    with open(path, 'rb') as f:
      complete = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(
          f.read()).count(b'\n')
    log = input_pipeline.BadLineLog()
    reader = input_pipeline.ShardReader([path], HASHING, log=log,
                                        block_bytes=block)
    chunks = []
    with self.assertRaisesRegex(
        input_pipeline.TruncatedFileError,
        rf'{path} is truncated or damaged .*data ends after line (\d+)'
    ) as raised:
      for chunk in reader:
        chunks.append(chunk)
    last_line = int(str(raised.exception).split('ends after line ')[1]
                    .split(';')[0].split('.')[0])
    # Every complete line before the cut, at any block size (gzip's own
    # reader dropped a whole block's lines).
    self.assertGreater(complete, 100)
    self.assertEqual(last_line, complete)
    examples = criteo_format.concatenate([c.examples for c in chunks])
    # Used, except the malformed one.
    self.assertLen(examples.labels, last_line - 1)
    self.assertEqual(log.counts['label'], 1)
    for i in (0, 9, 11, last_line - 1):
      np.testing.assert_array_equal(examples.ids[i - (i > 10)],
                                    expected_example(lines[i])[2])
    # With --bad_lines=fail, the malformed line before the cut fails first.
    with self.assertRaises(input_pipeline.MalformedLineError):
      list(input_pipeline.ShardReader([path], HASHING, bad_lines='fail',
                                      block_bytes=block))

  def test_gzip_members_read_as_one_file(self):
    lines = [good_line(seed) for seed in range(50)]
    whole, _ = self.read_all([self.write('a.txt', lines)])
    path = os.path.join(self.tmp, 'members.gz')
    with open(path, 'wb') as f:
      f.write(gzip.compress(b'\n'.join(lines[:20]) + b'\n') +
              gzip.compress(b'\n'.join(lines[20:]) + b'\n') + b'\0' * 8)
    members, log = self.read_all([path], block_bytes=100)
    self.assertEqual(log.total, 0)
    for column, reference in zip(members, whole):
      np.testing.assert_array_equal(column, reference)

  def test_training_stream_raises_after_its_batches(self):
    lines = [good_line(seed) for seed in range(3000)]
    path = self.truncated(lines, 0.5)
    batches = input_pipeline.Prefetcher(input_pipeline.process_batches(
        [path], HASHING, batch_size=100, shards=[0], num_shards=1,
        block_bytes=4096))
    seen = []
    with self.assertRaisesRegex(input_pipeline.TruncatedFileError, path):
      for batch in batches:
        seen.append(batch)
    self.assertGreater(len(seen), 3)
    np.testing.assert_array_equal(seen[-1].ids[-1],
                                  expected_example(lines[len(seen) * 100 - 1])[2])

  def test_not_gzip_or_missing(self):
    with self.assertRaisesRegex(input_pipeline.DataError,
                                'Cannot read data file .*nothing.txt'):
      list(input_pipeline.ShardReader([os.path.join(self.tmp, 'nothing.txt')],
                                      HASHING))
    path = os.path.join(self.tmp, 'bad.gz')
    with open(path, 'wb') as f:
      f.write(b'\x1f\x8b' + b'not really gzip' * 10)
    with self.assertRaisesRegex(input_pipeline.TruncatedFileError, path):
      list(input_pipeline.ShardReader([path], HASHING))


class StreamTest(DataTestCase):

  def test_shards_split_lines_and_rebuild_the_same_batches(self):
    lines = [good_line(seed) for seed in range(200)]
    paths = [self.write('a.txt', lines[:90]), self.write('b.txt', lines[90:])]
    one = list(input_pipeline.process_batches(
        paths, HASHING, batch_size=20, shards=[0, 1], num_shards=2,
        repeat=False))
    halves = [list(input_pipeline.process_batches(
        paths, HASHING, batch_size=20, shards=[s], num_shards=2,
        repeat=False)) for s in (0, 1)]
    self.assertLen(one, 10)
    for i, batch in enumerate(one):
      np.testing.assert_array_equal(
          batch.ids, np.concatenate([halves[0][i].ids, halves[1][i].ids]))
      self.assertEqual(batch.positions,
                       halves[0][i].positions + halves[1][i].positions)
    # Shard 0 holds lines 0, 2, 4, ... of each file.
    np.testing.assert_array_equal(
        halves[0][0].ids[:3],
        [expected_example(lines[i])[2] for i in (0, 2, 4)])
    # Batch 4: lines 80, 82, .., 88 of file a, then 0, 2, .., 8 of file b.
    np.testing.assert_array_equal(
        halves[0][4].ids[-1], expected_example(lines[90 + 8])[2])

  def test_resuming_at_a_position_continues_the_stream(self):
    lines = [good_line(seed) for seed in range(70)]
    lines[5] = b'bad'
    paths = [self.write('a.txt', lines[:33]), self.write('b.txt', lines[33:])]

    def stream(starts=None):
      return input_pipeline.process_batches(
          paths, HASHING, batch_size=8, shards=[0, 1], num_shards=2,
          starts=starts)

    uninterrupted = [next(it) for it in [stream()] for _ in range(25)]
    for stop in (3, 4, 8, 16):  # mid-file, file ends, second pass
      resumed = stream(uninterrupted[stop - 1].positions)
      for expected in uninterrupted[stop:stop + 4]:
        batch = next(resumed)
        np.testing.assert_array_equal(batch.ids, expected.ids)
        self.assertEqual(batch.positions, expected.positions)
    self.assertEqual(uninterrupted[-1].positions[0].pass_index, 2)

  def test_evaluation_batches_pad_the_last(self):
    lines = [good_line(seed) for seed in range(25)]
    path = self.write('a.txt', lines)
    batches = list(input_pipeline.evaluation_batches([path], HASHING,
                                                     batch_size=10))
    self.assertEqual([b.size for b in batches], [10, 10, 5])
    self.assertEqual(batches[-1].ids.shape, (10, 26))
    capped = list(input_pipeline.evaluation_batches(
        [path], HASHING, batch_size=10, max_examples=12))
    self.assertEqual([b.size for b in capped], [10, 2])

  def test_no_good_lines_is_an_error_not_a_hang(self):
    path = self.write('a.txt', [b'bad'] * 5)
    with self.assertRaisesRegex(input_pipeline.DataError,
                                'No well-formed lines'):
      next(input_pipeline.process_batches([path], HASHING, batch_size=2,
                                          shards=[0], num_shards=1))


class MemoryTest(DataTestCase):

  def peak_bytes(self, path):
    tracemalloc.start()
    try:
      for _ in input_pipeline.process_batches(
          [path], HASHING, batch_size=64, shards=[0], num_shards=1,
          repeat=False, block_bytes=1 << 16):
        pass
      return tracemalloc.get_traced_memory()[1]
    finally:
      tracemalloc.stop()

  def test_peak_memory_does_not_grow_with_the_file(self):
    model = small_model()
    small = os.path.join(self.tmp, 'small.txt.gz')
    large = os.path.join(self.tmp, 'large.txt.gz')
    synthetic.write(small, 2_000, seed=1, model=model)
    synthetic.write(large, 20_000, seed=1, model=model)
    small_peak, large_peak = self.peak_bytes(small), self.peak_bytes(large)
    # The larger file is ~10x the bytes (several MB), the peak the same
    # within blocks' and batches' jitter.
    self.assertGreater(os.path.getsize(large), 9 * os.path.getsize(small))
    self.assertLess(large_peak, 1.25 * small_peak + (64 << 10))


class SyntheticTest(DataTestCase):

  def test_writes_the_criteo_format_with_a_planted_signal(self):
    model = small_model()
    path = os.path.join(self.tmp, 'train.txt')
    synthetic.write(path, 4000, seed=3, model=model)
    with open(path, 'rb') as f:
      lines = f.read().split(b'\n')
    self.assertEqual(lines[-1], b'')
    lines = lines[:-1]
    self.assertLen(lines, 4000)
    fields = [line.split(b'\t') for line in lines]
    self.assertTrue(all(len(f) == 40 for f in fields))
    hex_values = [f[14] for f in fields if f[14]]
    self.assertTrue(all(len(v) == 8 and int(v, 16) >= 0 for v in hex_values))
    self.assertTrue(any(not f[20] for f in fields))  # missing values occur
    examples, log = self.read_all([path])
    self.assertEqual(log.total, 0)
    self.assertLen(examples.labels, 4000)
    self.assertBetween(float(examples.labels.mean()), 0.18, 0.32)
    # Zipf: the most frequent value of the largest feature is far above the
    # uniform share.
    largest = int(np.argmax(model.vocabulary_sizes))
    values = [f[14 + largest] for f in fields if f[14 + largest]]
    _, value_counts = np.unique(values, return_counts=True)
    self.assertGreater(value_counts.max() / len(values),
                       20 / model.vocabulary_sizes[largest])
    # The planted logits separate the labels (the best reachable AUC).
    self.assertGreater(synthetic.bayes_auc(4000, seed=3, model=model), 0.75)
    sample = model.sample(4000, np.random.default_rng([3, 7]))
    np.testing.assert_array_equal(sample.labels, examples.labels)
    self.assertAlmostEqual(metrics.auc(sample.labels, sample.logits),
                           synthetic.bayes_auc(4000, seed=3, model=model))


if __name__ == '__main__':
  absltest.main()
