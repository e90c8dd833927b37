"""A pass's training examples for the Word2Vec example, made ahead of time.

From an encoded corpus (`corpora.EncodedCorpus`): frequent-word subsampling,
the dynamic window, skip-gram's (center, context) pairs and CBOW's (context,
center) examples, a pass shuffled and cut into batches (`make_epoch`), the
noise distribution of negatives, and the passes made in the background while
another trains (`Prefetcher`). All of it is vectorised NumPy: array
operations, never a Python loop over tokens.
"""

import concurrent.futures
import dataclasses
import os
import sys
from typing import Any, Callable, Optional

import numpy as np

from examples.word2vec import corpora



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


def subsample(corpus: corpora.EncodedCorpus, keep_probability: np.ndarray,
              rng: np.random.Generator) -> corpora.EncodedCorpus:
  """Drops each occurrence of word k with probability 1 - keep_probability[k]."""
  keep = rng.random(corpus.word_ids.shape[0]) < keep_probability[
      corpus.word_ids]
  return corpora.EncodedCorpus(corpus.word_ids[keep],
                               corpus.sentence_ids[keep],
                               corpus.num_raw_words)


def _reduced_windows(num_words: int, window: int,
                     rng: np.random.Generator) -> np.ndarray:
  """word2vec's dynamic window: each center uses a radius in [1, window]."""
  return rng.integers(1, window + 1, size=num_words, dtype=np.int32)


def _skipgram_windows(corpus: corpora.EncodedCorpus, radius: np.ndarray,
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


def skipgram_pairs(corpus: corpora.EncodedCorpus, window: int,
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


def _cbow_windows(corpus: corpora.EncodedCorpus, radius: np.ndarray,
                  window: int):
  """For each offset: (offset, words with a context `offset` to their left,
  words with one `offset` to their right), as masks over positions."""
  sentences = corpus.sentence_ids
  for offset in range(1, window + 1):
    if offset >= sentences.shape[0]:
      return
    same = sentences[offset:] == sentences[:-offset]
    yield offset, same & (radius[offset:] >= offset), same & (
        radius[:-offset] >= offset)


def cbow_examples(corpus: corpora.EncodedCorpus, window: int,
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


def pass_draws(corpus: corpora.EncodedCorpus, *, window: int,
               keep_probability: np.ndarray, seed: int, epoch: int
               ) -> tuple[corpora.EncodedCorpus, np.ndarray]:
  """Pass `epoch`'s random draws: the words it keeps and their window radii.

  The same draws, from the same generator in the same order, as
  `make_epoch`'s, which lists every example they allow: so does
  `device_pipeline.make_pass`, and `count_examples` counts them.
  """
  rng = np.random.default_rng([seed, epoch])
  corpus = subsample(corpus, keep_probability, rng)
  return corpus, _reduced_windows(corpus.word_ids.shape[0], window, rng)


def count_examples(corpus: corpora.EncodedCorpus, *, model: str,
                   window: int, keep_probability: np.ndarray, seed: int,
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


def epoch_examples(corpus: corpora.EncodedCorpus, *, model: str,
                   window: int, keep_probability: np.ndarray,
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


def make_epoch(corpus: corpora.EncodedCorpus, *, model: str, window: int,
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
    raise corpora.CorpusError(
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
