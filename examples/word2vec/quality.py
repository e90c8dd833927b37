"""Word-vector quality: WordSim-353 correlation and nearest neighbours."""

from typing import Any

import numpy as np

from examples.word2vec import input_pipeline

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
  spearman = (input_pipeline.spearman(ours, human) if len(ours) > 1
              else float('nan'))
  return {'spearman': spearman, 'pairs': len(ours), 'total_pairs': len(rows)}
