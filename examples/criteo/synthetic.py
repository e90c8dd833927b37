"""Synthetic data in the Criteo format, with labels from a planted model.

Each categorical feature f has a vocabulary of V_f values drawn from a Zipf
law (value of rank r with probability ∝ r^(−a)), written as 8 hex digits (a
fixed scrambling of the rank, so hex order says nothing). Integer features
are heavy-tailed counts. Any feature may be missing (an empty field). The
label of an example is drawn with probability sigmoid(logit), where

    logit = b + Σ_f w_f[v_f] + Σ_{f<g} <u_f[v_f], u_g[v_g]> + Σ_j β_j log(1 + x_j)

over the present features: a per-value weight, a factorization-machine
interaction and a weight per integer feature, all drawn once from
`model_seed`. So a DeepFM can learn it, rare values carry signal as frequent
ones do, and the planted logits give the best AUC any model can reach
(`bayes_auc`).

  python -m examples.criteo.synthetic --output=/tmp/train.txt --num_lines=100000
  python -m examples.criteo.synthetic --output=/tmp/valid.txt.gz --seed=1
"""

import gzip
import os
from collections.abc import Sequence
from typing import NamedTuple, Optional

import numpy as np

from examples.common import files
from examples.criteo import config as config_lib

NUM_INTEGER = config_lib.NUM_INTEGER
NUM_CATEGORICAL = config_lib.NUM_CATEGORICAL
_HEX = np.frombuffer(b'0123456789abcdef', np.uint8)
_NIBBLE_SHIFTS = np.arange(28, -1, -4, dtype=np.uint32)


def default_vocabulary_sizes(largest: int = 100_000) -> tuple[int, ...]:
  """26 sizes from 3 to `largest`, spread geometrically, in a fixed order."""
  sizes = np.geomspace(3, largest, NUM_CATEGORICAL).round().astype(int)
  order = np.random.default_rng(12345).permutation(NUM_CATEGORICAL)
  return tuple(int(s) for s in sizes[order])


def _scramble(ranks: np.ndarray, feature: int) -> np.ndarray:
  """A bijection of uint32 (MurmurHash3's finaliser), salted per feature."""
  h = ranks.astype(np.uint32) ^ np.uint32((0x85EBCA6B * (feature + 1))
                                          & 0xFFFFFFFF)
  h ^= h >> np.uint32(16)
  h *= np.uint32(0x85EBCA6B)
  h ^= h >> np.uint32(13)
  h *= np.uint32(0xC2B2AE35)
  h ^= h >> np.uint32(16)
  return h


class Sample(NamedTuple):
  """Examples drawn from the planted model (before formatting)."""
  labels: np.ndarray  # (n,) int, 0 or 1.
  integers: np.ndarray  # (n, 13) int64.
  integer_present: np.ndarray  # (n, 13) bool.
  ranks: np.ndarray  # (n, 26) int64, each feature's value rank.
  categorical_present: np.ndarray  # (n, 26) bool.
  logits: np.ndarray  # (n,) float64, the planted logits.


class PlantedModel:
  """The planted click model; everything in it comes from `model_seed`.

  Args:
    model_seed: seed of the planted weights (train, validation and test
      files share it).
    vocabulary_sizes: V_f for each of the 26 features.
    zipf_exponent: a.
    factor_dim: dimension of the planted interaction vectors u.
    weight_scale: standard deviation of the per-value weights w.
    factor_scale: standard deviation of each entry of u.
    integer_scale: standard deviation of the integer features' weights β.
    click_rate: the bias b is set so that about this share of labels is 1.
  """

  def __init__(
      self,
      model_seed: int = 0,
      vocabulary_sizes: Optional[Sequence[int]] = None,
      *,
      zipf_exponent: float = 1.1,
      factor_dim: int = 4,
      weight_scale: float = 0.25,
      factor_scale: float = 0.2,
      integer_scale: float = 0.1,
      click_rate: float = 0.25,
  ):
    sizes = tuple(vocabulary_sizes or default_vocabulary_sizes())
    if len(sizes) != NUM_CATEGORICAL or min(sizes) < 1:
      raise ValueError(f'vocabulary_sizes must be {NUM_CATEGORICAL} positive '
                       f'sizes; got {sizes!r}.')
    self.vocabulary_sizes = sizes
    rng = np.random.default_rng(model_seed)
    self.cdfs = []
    self.weights = []
    self.factors = []
    for size in sizes:
      probabilities = np.arange(1, size + 1, dtype=np.float64) ** -zipf_exponent
      self.cdfs.append(np.cumsum(probabilities) / probabilities.sum())
      self.weights.append(rng.normal(0.0, weight_scale, size))
      self.factors.append(rng.normal(0.0, factor_scale, (size, factor_dim)))
    self.categorical_missing = rng.uniform(0.0, 0.3, NUM_CATEGORICAL)
    self.integer_missing = rng.uniform(0.0, 0.4, NUM_INTEGER)
    self.integer_means = np.exp(rng.uniform(0.0, 6.0, NUM_INTEGER))
    self.integer_weights = rng.normal(0.0, integer_scale, NUM_INTEGER)
    self.bias = 0.0
    # b: the mean of sigmoid(b + the rest) over a sample is the click rate
    # (by bisection; the mean grows with b).
    rest = self.sample(20_000, np.random.default_rng(model_seed + 1)).logits
    low, high = -20.0, 20.0
    for _ in range(60):
      middle = 0.5 * (low + high)
      if np.mean(1.0 / (1.0 + np.exp(-(rest + middle)))) < click_rate:
        low = middle
      else:
        high = middle
    self.bias = 0.5 * (low + high)

  def sample(self, num: int, rng: np.random.Generator) -> Sample:
    """`num` examples drawn independently."""
    ranks = np.stack([np.searchsorted(cdf, rng.random(num)) for cdf in
                      self.cdfs], axis=1)
    ranks = np.minimum(ranks, np.asarray(self.vocabulary_sizes) - 1)
    categorical_present = rng.random((num, NUM_CATEGORICAL)) >= (
        self.categorical_missing)
    integers = np.floor(rng.lognormal(0.0, 1.0, (num, NUM_INTEGER))
                        * self.integer_means).astype(np.int64)
    # Like Criteo's I2, the second integer feature is sometimes negative.
    integers[:, 1] -= rng.integers(0, 2, num) * 3
    integer_present = rng.random((num, NUM_INTEGER)) >= self.integer_missing
    logits = np.full(num, self.bias)
    pair_sum = 0.0
    square_sum = 0.0
    for f in range(NUM_CATEGORICAL):
      present = categorical_present[:, f]
      logits += np.where(present, self.weights[f][ranks[:, f]], 0.0)
      factor = self.factors[f][ranks[:, f]] * present[:, None]
      pair_sum = pair_sum + factor
      square_sum = square_sum + np.sum(factor ** 2, axis=1)
    logits += 0.5 * (np.sum(pair_sum ** 2, axis=1) - square_sum)
    logs = np.log1p(np.maximum(integers, 0)) * integer_present
    logits += logs @ self.integer_weights
    labels = (rng.random(num) < 1.0 / (1.0 + np.exp(-logits))).astype(int)
    return Sample(labels, integers, integer_present, ranks,
                  categorical_present, logits)

  def format(self, sample: Sample) -> bytes:
    """The sample as lines of the Criteo format."""
    num = sample.labels.shape[0]
    labels = np.where(sample.labels == 1, b'1', b'0')
    integers = np.where(sample.integer_present,
                        sample.integers.astype(np.bytes_), b'')
    codes = np.stack([_scramble(sample.ranks[:, f], f)
                      for f in range(NUM_CATEGORICAL)], axis=1)
    hex_digits = _HEX[(codes[..., None] >> _NIBBLE_SHIFTS) & np.uint32(15)]
    categorical = np.where(sample.categorical_present,
                           np.ascontiguousarray(hex_digits).view('S8')[..., 0],
                           b'')
    columns = np.concatenate([labels[:, None].astype(np.bytes_),
                              integers.astype(np.bytes_),
                              categorical.astype(np.bytes_)], axis=1)
    if not num:
      return b''
    return b'\n'.join(b'\t'.join(row) for row in columns.tolist()) + b'\n'


def write(path: str, num_lines: int, *, seed: int,
          model: Optional[PlantedModel] = None,
          chunk_lines: int = 65_536) -> None:
  """Writes `num_lines` examples to `path` (gzip if it ends in .gz).

  Args:
    path: the file to write.
    num_lines: examples.
    seed: the examples' seed (use different ones for train and test files).
    model: the planted model (default: `PlantedModel()`).
    chunk_lines: examples drawn and written at a time (bounded memory).
  """
  model = model or PlantedModel()
  rng = np.random.default_rng([seed, 7])
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  opener = gzip.open if path.endswith('.gz') else open
  # A killed write leaves no partial file at `path`.
  with files.replacing(path) as temporary, opener(temporary, 'wb') as f:
    for first in range(0, num_lines, chunk_lines):
      f.write(model.format(model.sample(
          min(chunk_lines, num_lines - first), rng)))


def bayes_auc(num_lines: int, *, seed: int,
              model: Optional[PlantedModel] = None) -> float:
  """The AUC of the planted logits on the examples `write` would write."""
  from examples.common import metrics  # pylint: disable=g-import-not-at-top
  model = model or PlantedModel()
  rng = np.random.default_rng([seed, 7])
  labels, logits = [], []
  for first in range(0, num_lines, 65_536):
    sample = model.sample(min(65_536, num_lines - first), rng)
    labels.append(sample.labels)
    logits.append(sample.logits)
  return metrics.auc(np.concatenate(labels), np.concatenate(logits))


if __name__ == '__main__':
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top

  _OUTPUT = flags.DEFINE_string('output', None, 'File to write (.gz: gzip).',
                                required=True)
  _NUM_LINES = flags.DEFINE_integer('num_lines', 100_000, 'Examples.')
  _SEED = flags.DEFINE_integer('seed', 0, 'Seed of the examples.')
  _MODEL_SEED = flags.DEFINE_integer('model_seed', 0,
                                     'Seed of the planted model.')
  _LARGEST_VOCABULARY = flags.DEFINE_integer(
      'largest_vocabulary', 100_000, 'Values of the largest feature.')

  def main(argv):
    del argv
    model = PlantedModel(_MODEL_SEED.value,
                         default_vocabulary_sizes(_LARGEST_VOCABULARY.value))
    write(_OUTPUT.value, _NUM_LINES.value, seed=_SEED.value, model=model)
    print(f'Wrote {_NUM_LINES.value} lines to {_OUTPUT.value}.')

  app.run(main)
