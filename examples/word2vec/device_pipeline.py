"""Passes made on the accelerator: the host draws, the device expands.

Making a pass (`input_pipeline.make_epoch`) is two jobs. The draws, which
words subsampling keeps and each kept word's window radius, are one random
number or two per word: 0.014-0.017 s of NumPy for Brown's 1M words on this
project's CPU. Listing every (center, context) example those draws allow,
shuffling them and cutting them into batches is millions of elements: 0.28 s
of NumPy there for a Skip-gram pass (examples/word2vec/results/
profile_step_cpu.json), 0.12-0.23 s on an H200's host, about as long as the
H200 takes to train on the pass (Skip-gram at batch 16,384: 209 steps of
0.52 ms), and before the first round can start.

Here the host makes the same draws from the same generator
(`input_pipeline.pass_draws`), and one jitted call lists, shuffles and
batches the examples on the device: a pass holds exactly the examples that
`make_epoch` would make from those draws (as many as `count_examples`
counts), in another order, shuffled by a JAX key of (seed, pass). A pass is
still a pure function of (seed, pass), so a resumed run repeats it exactly.

On a CPU, XLA's sort of the candidates is slower than NumPy's shuffle (2.49
s against 0.28 s a Skip-gram pass there):
`resolve('auto')` makes passes on the device only where the default backend
is an accelerator.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from examples.word2vec import corpora
from examples.word2vec import input_pipeline

PIPELINES = ('auto', 'host', 'device')
# Folded into the run's key before the pass: the shuffle's random stream is
# apart from the negatives' (`steps.make_train_round` folds the pass, then
# the step, into the run's key).
_SHUFFLE_STREAM = 0x5eed
# Sort keys: a valid candidate's random key is below it, an invalid one is it.
_INVALID = np.uint32(0xFFFFFFFF)


def check_pipeline(pipeline: str) -> None:
  if pipeline not in PIPELINES:
    raise ValueError(f'input_pipeline must be one of {", ".join(PIPELINES)}; '
                     f'got {pipeline!r}.')


def resolve(pipeline: str, backend: str | None = None) -> str:
  """'host' or 'device': where passes are made ('auto': by the backend)."""
  check_pipeline(pipeline)
  if pipeline != 'auto':
    return pipeline
  return 'host' if (backend or jax.default_backend()) == 'cpu' else 'device'


def make_pass(corpus: corpora.EncodedCorpus, *, model: str,
              window: int, keep_probability: np.ndarray, batch_size: int,
              seed: int, epoch: int, num_batches: int
              ) -> input_pipeline.EpochData:
  """Pass `epoch` (0-based), made on the default device.

  Args as `input_pipeline.make_epoch`'s, except that `num_batches` is
  required (the caller counts the first pass, `count_examples`): a pass with
  more examples drops a random subset of them, one with fewer repeats
  randomly chosen ones of its own, as `make_epoch` does.
  """
  # Candidates are numbered in int32, as are the pass's examples.
  candidates = (2 * window if model == 'skipgram' else 1) * (
      corpus.word_ids.shape[0])
  for name, count in (('window candidates', candidates),
                      ('examples (num_batches × batch_size)',
                       num_batches * batch_size)):
    if count >= 2**31:
      raise ValueError(
          f'A pass made on the device numbers its {name} in int32: '
          f'{count:,} is too many. Use --input_pipeline=host, or a smaller '
          'corpus, window or pass.')
  if corpus.word_ids.shape[0] == 0:
    raise corpora.CorpusError('The corpus has no in-vocabulary words.')
  kept, radius = input_pipeline.pass_draws(
      corpus, window=window, keep_probability=keep_probability, seed=seed,
      epoch=epoch)
  # Padded to the whole corpus's length, so that every pass has one shape
  # and the expansion compiles once a run.
  length = corpus.word_ids.shape[0]
  num_words = kept.word_ids.shape[0]

  def padded(values):
    return np.pad(values.astype(np.int32), (0, length - num_words))

  # The key is made here, not in `_expand`: any seed JAX takes, as NumPy's
  # generator takes any seed on the host.
  key = jax.random.fold_in(
      jax.random.fold_in(jax.random.key(seed), _SHUFFLE_STREAM), epoch)
  inputs, targets, available = _expand(
      padded(kept.word_ids), padded(kept.sentence_ids), padded(radius),
      np.int32(num_words), key, model=model, window=window,
      num_batches=num_batches, batch_size=batch_size)
  # Waits for the device (in the prefetcher's thread, not the training's).
  if int(available) == 0:
    raise corpora.CorpusError(
        f'Pass {epoch} has no examples: use a larger corpus or a smaller '
        '--sample (subsampling).')
  return input_pipeline.EpochData(inputs, targets, num_words)


@functools.partial(jax.jit, static_argnames=('model', 'window', 'num_batches',
                                             'batch_size'))
def _expand(word_ids, sentence_ids, radius, num_words, key, *, model,
            window, num_batches, batch_size):
  """A pass's (inputs, targets) and its count of examples; see `make_pass`.

  Positions past `num_words` are padding. Every candidate example (a
  position and an offset for Skip-gram, a position for CBOW) gets a random
  32-bit sort key, invalid ones the largest key; one sort puts the valid
  candidates first, in random order.
  """
  length = word_ids.shape[0]
  position = jnp.arange(length, dtype=jnp.int32)

  def ahead(values, offset):  # values[i + offset] (wrapped: masked below)
    return jnp.roll(values, -offset)

  def same_sentence(offset):  # i and i + offset are kept words of a sentence
    return ((position + offset < num_words) &
            (sentence_ids == ahead(sentence_ids, offset)))

  if model == 'skipgram':
    # Candidate (offset, side, i): side 0 pairs center i with context
    # i + offset, side 1 center i + offset with context i; each center uses
    # its own radius, as `input_pipeline.skipgram_pairs` does.
    valid = jnp.stack([
        jnp.stack([same_sentence(offset) & (radius >= offset),
                   same_sentence(offset) & (ahead(radius, offset) >= offset)])
        for offset in range(1, window + 1)]).ravel()
  elif model == 'cbow':
    # Slot 2·(offset-1): the word `offset` to the left; +1: to the right, as
    # in `input_pipeline.cbow_examples`; the center's radius decides both.
    slots = []
    for offset in range(1, window + 1):
      left = (position >= offset) & ahead(same_sentence(offset), -offset)
      slots += [jnp.where(left & (radius >= offset),
                          ahead(word_ids, -offset), -1),
                jnp.where(same_sentence(offset) & (radius >= offset),
                          ahead(word_ids, offset), -1)]
    contexts = jnp.stack(slots, axis=1)
    valid = (position < num_words) & (contexts >= 0).any(axis=1)
  else:
    raise ValueError(f'model must be skipgram or cbow; got {model!r}.')

  shuffle_key, repeat_key = jax.random.split(key)
  sort_keys = jnp.where(
      valid,
      jnp.minimum(jax.random.bits(shuffle_key, valid.shape, jnp.uint32),
                  _INVALID - 1),
      _INVALID)
  _, order = jax.lax.sort(
      (sort_keys, jnp.arange(valid.shape[0], dtype=jnp.int32)), num_keys=1)
  available = valid.sum(dtype=jnp.int32)
  needed = num_batches * batch_size
  slot = jnp.arange(needed, dtype=jnp.int32)
  # Past the valid candidates: repeats of randomly chosen valid ones.
  repeat = jax.random.randint(repeat_key, (needed,), 0,
                              jnp.maximum(available, 1), dtype=jnp.int32)
  chosen = order[jnp.where(slot < available, slot, repeat)]

  if model == 'skipgram':
    pair, start = jnp.divmod(chosen, length)  # The pair's left word: start.
    offset, side = jnp.divmod(pair, 2)
    offset = offset + 1
    inputs = word_ids[start + side * offset]
    targets = word_ids[start + (1 - side) * offset]
  else:
    inputs = contexts[chosen]
    targets = word_ids[chosen]
  return (inputs.reshape((num_batches, batch_size) + inputs.shape[1:]),
          targets.reshape(num_batches, batch_size), available)
