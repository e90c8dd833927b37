"""Word-vector quality: WordSim-353 correlation and nearest neighbours.

WordSim-353's tsv is taken from gensim's wheel once (`fetch_wordsim353`;
gensim is never installed or imported for it).
"""

import hashlib
import os
import pathlib
from typing import Any, Sequence
import zipfile

import numpy as np

from examples.common import downloads
from examples.common import files
from examples.word2vec import corpora

GENSIM_WHEEL_SPEC = 'gensim==4.4.0'
WORDSIM_MEMBER = 'gensim/test/test_data/wordsim353.tsv'
WORDSIM_SHA256 = (
    'f92a022fc2537793a15bc3a8c162ebcd74990e033a228bb6388cb71e4c0b1e1d')

# Common words whose nearest neighbours the results show.
PROBE_WORDS = ('man', 'city', 'government', 'money', 'war', 'good')


def _normalised(vectors: np.ndarray) -> np.ndarray:
  return vectors / np.maximum(
      np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def nearest_neighbours(vectors: np.ndarray, vocab, words=PROBE_WORDS,
                       k: int = 5) -> dict[str, list[str]]:
  """The k nearest words by cosine for each probe word in the vocabulary."""
  normed = _normalised(vectors)
  result = {}
  for word in words:
    if word in vocab.index:
      similarity = normed @ normed[vocab.index[word]]
      similarity[vocab.index[word]] = -np.inf
      result[word] = [vocab.words[i] for i in np.argsort(-similarity)[:k]]
  return result


def wordsim_spearman(vectors: np.ndarray, vocab,
                     rows: list[tuple[str, str, float]]) -> dict[str, Any]:
  """Spearman correlation of cosine similarity with WordSim-353's scores.

  Pairs with a word outside the vocabulary are left out, as gensim's
  `evaluate_word_pairs` does by default; `pairs` says how many were scored.
  """
  normed = _normalised(vectors)
  ours, human = [], []
  for a, b, score in rows:
    if a in vocab.index and b in vocab.index:
      ours.append(float(normed[vocab.index[a]] @ normed[vocab.index[b]]))
      human.append(score)
  correlation = spearman(ours, human) if len(ours) > 1 else float('nan')
  return {'spearman': correlation, 'pairs': len(ours),
          'total_pairs': len(rows)}


def fetch_wordsim353(cache_dir: str = os.path.join(
    '~', '.cache', 'fasgd_optax', 'wordsim353')) -> str:
  """Path of wordsim353.tsv, taken once from gensim's wheel (no install).

  `pip download --no-deps gensim==4.4.0` fetches the wheel only; the one tsv
  is extracted and its sha256 checked. Raises `corpora.CorpusError` when pip
  fails or the wheel holds no such file.
  """
  cache_dir = os.path.expanduser(cache_dir)
  path = os.path.join(cache_dir, 'wordsim353.tsv')
  scratch = os.path.join(cache_dir, 'gensim-wheel')
  if os.path.isdir(cache_dir):
    downloads.tidy(scratch, legacy_pattern='gensim-*.whl')
  if not os.path.exists(path):
    os.makedirs(cache_dir, exist_ok=True)
    try:
      with downloads.fetched(downloads.pip_download(GENSIM_WHEEL_SPEC),
                             scratch, '*.whl') as wheel_path:
        wheel_name = os.path.basename(wheel_path)
        with zipfile.ZipFile(wheel_path) as wheel:
          data = wheel.read(WORDSIM_MEMBER)
    except downloads.DownloadError as error:
      raise corpora.CorpusError(
          f'{error}. Pass --wordsim with the path of a WordSim-353 tsv '
          'instead.') from None
    except (zipfile.BadZipFile, KeyError) as error:
      raise corpora.CorpusError(
          f'{wheel_name} has no readable {WORDSIM_MEMBER} ({error}). Pass '
          '--wordsim with the path of a WordSim-353 tsv instead.') from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != WORDSIM_SHA256:
      raise corpora.CorpusError(f'{WORDSIM_MEMBER} in {wheel_name} has sha256 '
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
      raise corpora.CorpusError(
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
