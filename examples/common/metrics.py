"""Evaluation metrics for binary labels: ROC AUC and log loss."""

from collections.abc import Mapping, Sequence

import numpy as np


def _check_pair(labels: np.ndarray, scores: np.ndarray, name: str) -> None:
  if labels.shape != scores.shape or labels.ndim != 1:
    raise ValueError(
        f'{name}: labels and scores must be 1-D arrays of one shape, got '
        f'{labels.shape} and {scores.shape}.'
    )
  bad = ~np.isin(labels, (0, 1))
  if bad.any():
    raise ValueError(
        f'{name}: labels must be 0 or 1, got {labels[bad][0]!r} at index '
        f'{int(np.flatnonzero(bad)[0])}.'
    )


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
  """Area under the ROC curve, by the rank statistic (Mann-Whitney U).

  AUC = P(score of a random positive > score of a random negative), with ties
  counting one half; tied scores share their average rank.

  Args:
    labels: shape (n,), values 0 or 1.
    scores: shape (n,), any real scores (logits or probabilities).

  Returns:
    The AUC, or NaN when all labels are equal (AUC is undefined) or any score
    is NaN (e.g. a diverged model: NaNs have no rank).
  """
  labels = np.asarray(labels)
  scores = np.asarray(scores, dtype=np.float64)
  _check_pair(labels, scores, 'auc')
  if np.isnan(scores).any():
    return float('nan')
  num_positive = int(labels.sum())
  num_negative = labels.size - num_positive
  if num_positive == 0 or num_negative == 0:
    return float('nan')
  order = np.argsort(scores, kind='mergesort')
  sorted_scores = scores[order]
  # Average 1-based ranks over runs of tied scores.
  run_starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
  run_ends = np.r_[run_starts[1:], scores.size]
  average_ranks = (run_starts + 1 + run_ends) / 2.0
  ranks = np.empty(scores.size)
  ranks[order] = np.repeat(average_ranks, run_ends - run_starts)
  positive_rank_sum = ranks[labels == 1].sum()
  u_statistic = positive_rank_sum - num_positive * (num_positive + 1) / 2.0
  return float(u_statistic / (num_positive * num_negative))


def log_loss(
    labels: np.ndarray, probabilities: np.ndarray, epsilon: float = 1e-7
) -> float:
  """Mean binary cross-entropy, with probabilities clipped to [ε, 1 − ε]."""
  labels = np.asarray(labels)
  probabilities = np.asarray(probabilities, dtype=np.float64)
  _check_pair(labels, probabilities, 'log_loss')
  p = np.clip(probabilities, epsilon, 1.0 - epsilon)
  return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log1p(-p)))


def auc_by_bucket(
    labels: np.ndarray,
    scores: np.ndarray,
    bucket_of_example: np.ndarray,
    bucket_names: Sequence[str],
) -> Mapping[str, float]:
  """AUC within each bucket of examples (e.g. by item frequency).

  Args:
    labels: shape (n,), 0 or 1.
    scores: shape (n,).
    bucket_of_example: shape (n,), an index into `bucket_names` per example.
    bucket_names: the buckets' names.

  Returns:
    {bucket name: AUC of that bucket's examples} (NaN for a bucket whose labels
    are all equal or that is empty).
  """
  return {
      name: auc(labels[bucket_of_example == i], scores[bucket_of_example == i])
      for i, name in enumerate(bucket_names)
  }
