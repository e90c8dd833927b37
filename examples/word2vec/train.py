"""Skip-gram and CBOW with negative sampling, trained with any optimizer.

The model is two embedding tables, as in word2vec: `input_embed` (the word
vectors one keeps) and `output_embed` (the vectors words are scored against).
For an example with input vector h (a center word for skip-gram, the mean of
the context words for CBOW), a positive target t and negatives n_1..n_K drawn
from the unigram^0.75 distribution, the loss is

  -log σ(h·u_t) - Σ_k log σ(-h·u_{n_k}),

averaged over the batch. Frequency-aware optimizers get the rows each table
read this step as `ids`: input rows = centers (skip-gram) or context words
(CBOW); output rows = targets and negatives.

Training runs through the shared epoch loop (`examples.common.training`) in
*rounds* of 1/`evals_per_epoch` of a pass over the corpus, so the held-out
loss is measured, and a checkpoint written, several times a pass.
"""

import dataclasses
import json
import os
import time
from typing import Any, Callable, Optional

from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import fasgd_optax
from examples.common import checkpointing
from examples.common import optimizers
from examples.common import training
from examples.word2vec import input_pipeline

INPUT_TABLE = 'input_embed/embedding'
OUTPUT_TABLE = 'output_embed/embedding'
# How the tables are updated (Config.update):
# - 'dense': autodiff through the model and an Optax update of whole tables;
# - 'sparse': gradients of the gathered rows, only touched rows written:
#   fasgd_optax's sparse path (sgd: this example's row scatter-add, which the
#   library does not provide);
# - 'scatter': the same code as 'sparse' for sgd, fa_sgd and cf_sgd. It once
#   ran an example-local sort-free update for fa_sgd and cf_sgd; the library's
#   sparse path is sort-free for them now, and the name stays so that the
#   commands recorded with the results still run.
UPDATES = ('dense', 'sparse', 'scatter')
SPARSE_OPTIMIZERS = ('sgd', 'rowwise_adagrad', 'fa_sgd', 'cf_sgd')
SCATTER_OPTIMIZERS = ('sgd', 'fa_sgd', 'cf_sgd')
# Common words whose nearest neighbours the results show.
PROBE_WORDS = ('man', 'city', 'government', 'money', 'war', 'good')
# The held-out loss is computed in fixed-size chunks so it compiles once.
EVAL_CHUNK = 8192


@dataclasses.dataclass
class Config:
  """Hyperparameters of one training run (main.py fills it from flags)."""
  model: str = 'skipgram'
  optimizer: str = 'sgd'
  learning_rate: float = 1.0
  dim: int = 100
  window: int = 5
  negatives: int = 5
  min_count: int = 5
  sample: float = 1e-3
  epochs: int = 1
  batch_size: int = 1024
  seed: int = 0
  update: str = 'dense'  # One of UPDATES.
  # fa_sgd / cf_sgd's η_max, the paper's 1/(4L); None: no cap.
  max_learning_rate: Optional[float] = None
  evals_per_epoch: int = 4
  test_fraction: float = 0.1
  max_test_examples: int = 200_000


# --------------------------------------------------------------------------
# The model.


class Word2Vec(nnx.Module):
  """Skip-gram or CBOW with negative sampling: two (vocab, dim) tables."""

  def __init__(self, vocab_size: int, dim: int, *, model: str,
               rngs: nnx.Rngs):
    if model not in ('skipgram', 'cbow'):
      raise ValueError(f'model must be skipgram or cbow; got {model!r}.')
    self.model = model
    # word2vec's initialisation: input vectors uniform in ±0.5/dim, output
    # vectors zero.
    self.input_embed = nnx.Embed(
        vocab_size, dim, rngs=rngs,
        embedding_init=jax.nn.initializers.uniform(1.0 / dim))
    self.input_embed.embedding[...] -= 0.5 / dim
    self.output_embed = nnx.Embed(
        vocab_size, dim, rngs=rngs, embedding_init=jax.nn.initializers.zeros)

  def __call__(self, inputs: jax.Array, targets: jax.Array,
               negatives: jax.Array) -> jax.Array:
    """Per-example loss, shape (batch,)."""
    input_rows = lookup(self.input_embed.embedding[...], inputs)
    output_rows = lookup(self.output_embed.embedding[...],
                         output_ids(targets, negatives))
    return loss_from_rows(self.model, inputs, input_rows, targets, negatives,
                          output_rows)


def lookup(table: jax.Array, ids: jax.Array) -> jax.Array:
  """Rows `ids` of `table`; -1 (CBOW's padding) reads row 0.

  The pipeline only makes ids in [-1, vocab), so the gather can promise XLA
  in-bounds indices: that spares the clamping that makes the gradient of
  ``table[ids]`` (a scatter-add) several times slower on CPU.
  """
  return table.at[jnp.maximum(ids, 0)].get(mode='promise_in_bounds')


def output_ids(targets: jax.Array, negatives: jax.Array) -> jax.Array:
  """The output-table rows of each example: its target, then its negatives."""
  return jnp.concatenate([targets[:, None], negatives], axis=1)


def loss_from_rows(model: str, inputs, input_rows, targets, negatives,
                   output_rows) -> jax.Array:
  """Per-example negative-sampling loss from gathered rows.

  Args:
    model: 'skipgram' (h = the center's row) or 'cbow' (h = the mean of the
      context rows, -1 slots left out).
    inputs: input-table ids, (batch,) or (batch, 2·window) with -1 padding.
    input_rows: their rows, `inputs.shape + (dim,)`.
    targets: (batch,) positive output ids.
    negatives: (batch, K) negative output ids.
    output_rows: (batch, 1 + K, dim) rows of `output_ids(targets, negatives)`.

  Returns:
    -log σ(h·u_t) - Σ_k log σ(-h·u_{n_k}) per example, skipping a negative
    equal to the target as word2vec and gensim do.
  """
  if model == 'skipgram':
    hidden = input_rows
  else:
    valid = (inputs >= 0).astype(input_rows.dtype)
    hidden = (input_rows * valid[..., None]).sum(-2) / jnp.maximum(
        valid.sum(-1), 1.0)[..., None]
  scores = jnp.einsum('bd,bkd->bk', hidden, output_rows)
  distinct = (negatives != targets[:, None]).astype(scores.dtype)
  return -jax.nn.log_sigmoid(scores[:, 0]) - (
      jax.nn.log_sigmoid(-scores[:, 1:]) * distinct).sum(-1)


def sample_negatives(key: jax.Array, table: jax.Array, shape) -> jax.Array:
  """Negatives from word2vec's unigram^0.75 table."""
  return table[jax.random.randint(key, shape, 0, table.shape[0])]


def split(model: Word2Vec):
  """(graphdef, params), params a plain dict.

  Its '/'-joined paths are `INPUT_TABLE` and `OUTPUT_TABLE`: what the
  optimizers' path-keyed `ids` and the checkpoints see.
  """
  graphdef, state = nnx.split(model, nnx.Param)
  return (graphdef, state), nnx.to_pure_dict(state)


def merge(graphdef, params) -> Word2Vec:
  """The model back from `split`'s graphdef and (updated) params."""
  graphdef, state = graphdef
  nnx.replace_by_pure_dict(state, params)
  return nnx.merge(graphdef, state)


def tables(params) -> tuple[jax.Array, jax.Array]:
  return params['input_embed']['embedding'], params['output_embed']['embedding']


def with_tables(input_table, output_table):
  return {'input_embed': {'embedding': input_table},
          'output_embed': {'embedding': output_table}}


# --------------------------------------------------------------------------
# Data.


@dataclasses.dataclass(frozen=True)
class HeldOut:
  """Fixed held-out examples with fixed negatives."""
  inputs: np.ndarray
  targets: np.ndarray
  negatives: np.ndarray

  @property
  def size(self) -> int:
    return self.targets.shape[0]


@dataclasses.dataclass(frozen=True)
class Data:
  """Everything a run reads: vocabulary, encoded corpus, held-out sets.

  10% of the sentences are held out and dealt alternately into a validation
  set (for choosing learning rates) and a test set (for reporting). Their
  examples and negatives depend on the corpus, the model, the window and
  the seed only, never on the optimizer, so every optimizer is scored on the
  same samples.
  """
  vocab: input_pipeline.Vocabulary
  train: input_pipeline.EncodedCorpus
  keep_probability: np.ndarray
  negative_table: np.ndarray
  heldout: dict[str, HeldOut]
  num_heldout_sentences: int


def _heldout_examples(sentences, vocab, keep_probability, negative_table,
                      config: Config, stream: int) -> HeldOut:
  # A random stream of its own, apart from the training passes'.
  rng = np.random.default_rng([config.seed, 2**31 - 1, stream])
  inputs, targets, _ = input_pipeline.epoch_examples(
      input_pipeline.encode(sentences, vocab), model=config.model,
      window=config.window, keep_probability=keep_probability, rng=rng)
  if targets.shape[0] > config.max_test_examples:
    keep = np.sort(rng.choice(targets.shape[0], config.max_test_examples,
                              replace=False))
    inputs, targets = inputs[keep], targets[keep]
  negatives = negative_table[rng.integers(
      0, negative_table.shape[0], (targets.shape[0], config.negatives))]
  return HeldOut(inputs, targets, negatives)


def prepare_data(config: Config, sentences: input_pipeline.Sentences) -> Data:
  """Splits the corpus; builds the vocabulary and the held-out sets."""
  train_sentences, heldout_sentences = input_pipeline.split_sentences(
      sentences, test_fraction=config.test_fraction)
  if len(heldout_sentences) < 2:
    raise input_pipeline.CorpusError(
        f'The corpus has {len(sentences)} sentences: too few to hold out '
        f'{config.test_fraction:.0%} for validation and test.')
  vocab = input_pipeline.build_vocabulary(train_sentences, config.min_count)
  train = input_pipeline.encode(train_sentences, vocab)
  keep_probability = input_pipeline.keep_probabilities(vocab.counts,
                                                       config.sample)
  negative_table = input_pipeline.unigram_table(vocab.counts)
  heldout = {
      split: _heldout_examples(heldout_sentences[start::2], vocab,
                               keep_probability, negative_table, config,
                               stream)
      for stream, (split, start) in enumerate(
          (('validation', 0), ('test', 1)))}
  return Data(vocab, train, keep_probability, negative_table, heldout,
              len(heldout_sentences))


def make_epoch(data: Data, config: Config,
               epoch: int) -> input_pipeline.EpochData:
  """Pass `epoch` (0-based) over the training corpus, batched."""
  return input_pipeline.make_epoch(
      data.train, model=config.model, window=config.window,
      keep_probability=data.keep_probability, batch_size=config.batch_size,
      seed=config.seed, epoch=epoch)


def table_frequencies(data: Data, config: Config,
                      epoch_data: input_pipeline.EpochData) -> dict:
  """FA-SGD's p_k per table: expected reads of row k per step.

  Input table: occurrences as center (skip-gram) or context word (CBOW).
  Output table: occurrences as target, plus expected negative draws
  (batch · negatives · q_k per step, q the unigram^0.75 distribution).
  Counted on the first pass's examples.
  """
  vocab_size = len(data.vocab)
  inputs = epoch_data.inputs.ravel()
  input_counts = fasgd_optax.count_ids(inputs[inputs >= 0], vocab_size)
  output_counts = fasgd_optax.count_ids(epoch_data.targets, vocab_size)
  noise = input_pipeline.noise_distribution(data.vocab.counts)
  expected_negatives = (epoch_data.num_batches * config.batch_size *
                        config.negatives * noise)
  return optimizers.frequencies_for_tables(
      {INPUT_TABLE: input_counts,
       OUTPUT_TABLE: output_counts + expected_negatives},
      epoch_data.num_batches)


# --------------------------------------------------------------------------
# Optimizers and steps.


def scatter_sgd(learning_rate: float) -> fasgd_optax.SparseTransformation:
  """Plain SGD on the touched rows: each occurrence's gradient scatter-added."""

  def apply(table, state, ids, row_grads):
    ids = jnp.ravel(ids)
    row_grads = row_grads.reshape((ids.shape[0],) + table.shape[1:])
    # -1 (CBOW padding) must not wrap to the last row: send it out of bounds.
    safe = jnp.where((ids >= 0) & (ids < table.shape[0]), ids,
                     table.shape[0])
    delta = -learning_rate * row_grads.astype(jnp.float32)
    return table.at[safe].add(delta.astype(table.dtype), mode='drop'), state

  return fasgd_optax.SparseTransformation(lambda table: optax.EmptyState(),
                                          apply)


def make_sparse_optimizers(config: Config, num_steps: int,
                           frequencies) -> dict[str, Any]:
  """One `SparseTransformation` per table, for 'sparse' or 'scatter'."""
  allowed = (SPARSE_OPTIMIZERS if config.update == 'sparse'
             else SCATTER_OPTIMIZERS)
  if config.optimizer not in allowed:
    raise ValueError(
        f'--update={config.update} needs one of {", ".join(allowed)}; '
        f'optimizer {config.optimizer!r} has no such path. Use '
        '--update=dense.')
  lr, cap = config.learning_rate, config.max_learning_rate
  if not lr > 0:
    raise ValueError(f'learning_rate must be > 0; got {lr!r}.')

  def for_table(path):
    if config.optimizer == 'sgd':
      return scatter_sgd(lr)
    if config.optimizer == 'rowwise_adagrad':
      return fasgd_optax.sparse_rowwise_adagrad(lr)
    if config.optimizer == 'fa_sgd':
      return fasgd_optax.sparse_fa_sgd(lr, frequencies[path],
                                       num_steps=num_steps,
                                       max_learning_rate=cap)
    return fasgd_optax.sparse_cf_sgd(lr, num_steps=num_steps,
                                     max_learning_rate=cap)

  return {path: for_table(path) for path in (INPUT_TABLE, OUTPUT_TABLE)}


def make_dense_train_step(graphdef, tx) -> Callable[..., Any]:
  """Autodiff through the model; a dense Optax update of both tables."""

  def loss_fn(params, inputs, targets, negatives):
    return merge(graphdef, params)(inputs, targets, negatives).mean()

  def step_fn(train_state, inputs, targets, negatives):
    params, opt_state = train_state['params'], train_state['opt_state']
    loss, grads = jax.value_and_grad(loss_fn)(params, inputs, targets,
                                              negatives)
    ids = {INPUT_TABLE: inputs, OUTPUT_TABLE: output_ids(targets, negatives)}
    updates, opt_state = tx.update(grads, opt_state, params, ids=ids)
    return {'params': optax.apply_updates(params, updates),
            'opt_state': opt_state}, loss

  return step_fn


def make_sparse_train_step(model: str, sparse_txs) -> Callable[..., Any]:
  """Gradients with respect to the gathered rows; only those rows updated."""

  def step_fn(train_state, inputs, targets, negatives):
    input_table, output_table = tables(train_state['params'])
    out_ids = output_ids(targets, negatives)

    def loss_fn(input_rows, output_rows):
      return loss_from_rows(model, inputs, input_rows, targets, negatives,
                            output_rows).mean()

    loss, (input_grads, output_grads) = jax.value_and_grad(
        loss_fn, argnums=(0, 1))(lookup(input_table, inputs),
                                 lookup(output_table, out_ids))
    opt_state = dict(train_state['opt_state'])
    input_table, opt_state[INPUT_TABLE] = sparse_txs[INPUT_TABLE].apply(
        input_table, opt_state[INPUT_TABLE], inputs, input_grads)
    output_table, opt_state[OUTPUT_TABLE] = sparse_txs[OUTPUT_TABLE].apply(
        output_table, opt_state[OUTPUT_TABLE], out_ids, output_grads)
    return {'params': with_tables(input_table, output_table),
            'opt_state': opt_state}, loss

  return step_fn


def make_train_steps(step_fn, negatives: int):
  """Jits `num_steps` steps in a row, the training state donated.

  Negatives are drawn inside from ``fold_in(key, step)``, so a run is a pure
  function of (seed, step) and resumes exactly. Running a round's steps in
  one call (a `lax.fori_loop`) keeps Python dispatch out of the step time;
  the batches are padded to one length and `num_steps` is traced, so rounds
  of different lengths share one compilation.
  """

  def train_steps(train_state, inputs, targets, num_steps, first_step, key,
                  table):
    def body(i, carry):
      state, losses = carry
      negative_ids = sample_negatives(
          jax.random.fold_in(key, first_step + i), table,
          targets.shape[1:] + (negatives,))
      state, loss = step_fn(state, inputs[i], targets[i], negative_ids)
      return state, losses.at[i].set(loss)

    losses = jnp.zeros((targets.shape[0],), jnp.float32)
    return jax.lax.fori_loop(0, num_steps, body, (train_state, losses))

  return jax.jit(train_steps, donate_argnums=(0,))


def make_evaluate(graphdef) -> Callable[[Any, HeldOut], float]:
  """Mean loss over fixed held-out examples and negatives."""

  @jax.jit
  def chunk_loss(params, inputs, targets, negatives, weights):
    return (merge(graphdef, params)(inputs, targets, negatives) *
            weights).sum()

  def evaluate(params, heldout: HeldOut) -> float:
    n = heldout.size
    total = 0.0
    for start in range(0, n, EVAL_CHUNK):
      stop = min(start + EVAL_CHUNK, n)
      pad = EVAL_CHUNK - (stop - start)

      def padded(x):
        return np.pad(x[start:stop], [(0, pad)] + [(0, 0)] * (x.ndim - 1))

      weights = np.pad(np.ones(stop - start, np.float32), (0, pad))
      total += float(chunk_loss(params, padded(heldout.inputs),
                                padded(heldout.targets),
                                padded(heldout.negatives), weights))
    return total / max(n, 1)

  return evaluate


# --------------------------------------------------------------------------
# Word-vector quality.


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


# --------------------------------------------------------------------------
# Training.


def train_and_evaluate(
    config: Config,
    sentences: input_pipeline.Sentences,
    workdir: Optional[str] = None,
    *,
    wordsim_rows: Optional[list[tuple[str, str, float]]] = None,
    show_progress: Optional[bool] = None,
    stop_after_rounds: Optional[int] = None,
    data: Optional[Data] = None,
    checkpoint_options: Optional[checkpointing.Options] = None,
) -> dict[str, Any]:
  """Trains and evaluates; resumes from `workdir`'s checkpoint if present.

  A pass over the corpus is cut into `evals_per_epoch` rounds; after each,
  the held-out loss is measured and (with a workdir) a checkpoint saved. A
  pass's examples are a pure function of (seed, pass) and negatives of
  (seed, step), so a resumed run ends exactly where an uninterrupted one does.

  Args:
    config: the run's hyperparameters.
    sentences: the corpus (see `input_pipeline.read_corpus`).
    workdir: checkpoints and `results.json` go here; None keeps nothing.
    wordsim_rows: WordSim-353 rows (`input_pipeline.read_wordsim`), if any.
    show_progress: progress bars (None: when stderr is a terminal).
    stop_after_rounds: stop after this many rounds (as if killed; tests).
    data: `prepare_data(config, sentences)`, when the caller already has it
      (a sweep over optimizers reuses one).
    checkpoint_options: how to checkpoint (async saves, fallback past a
      corrupt checkpoint); default `checkpointing.Options()`.

  Returns:
    A JSON-ready results dict (also written to `workdir/results.json`), plus
    'train_state' with the final parameters and optimizer state.
  """
  start_time = time.perf_counter()
  if data is None:
    data = prepare_data(config, sentences)
  logging.info('vocabulary %d words; %d training words (%d raw); %d test '
               'examples', len(data.vocab), data.train.word_ids.shape[0],
               data.train.num_raw_words, data.heldout['test'].size)
  pass_start = time.perf_counter()
  first_pass = make_epoch(data, config, 0)
  first_pass_seconds = time.perf_counter() - pass_start
  steps_per_epoch = first_pass.num_batches
  num_steps = config.epochs * steps_per_epoch
  rounds_per_epoch = max(1, min(config.evals_per_epoch, steps_per_epoch))
  round_bounds = [steps_per_epoch * r // rounds_per_epoch
                  for r in range(rounds_per_epoch + 1)]
  round_length = max(b - a for a, b in zip(round_bounds, round_bounds[1:]))

  model = Word2Vec(len(data.vocab), config.dim, model=config.model,
                   rngs=nnx.Rngs(config.seed))
  graphdef, params = split(model)
  frequencies = (table_frequencies(data, config, first_pass)
                 if config.optimizer == 'fa_sgd' else None)
  if config.update not in UPDATES:
    raise ValueError(f'update must be one of {", ".join(UPDATES)}; got '
                     f'{config.update!r}.')
  if config.max_learning_rate is not None and (
      config.optimizer not in ('fa_sgd', 'cf_sgd') or
      not config.max_learning_rate > 0):
    raise ValueError(
        'max_learning_rate (η_max) is for fa_sgd and cf_sgd and must be > 0; '
        f'got {config.max_learning_rate!r} with optimizer '
        f'{config.optimizer!r}.')
  if config.update != 'dense':
    sparse_txs = make_sparse_optimizers(config, num_steps, frequencies)
    opt_state = {path: sparse_txs[path].init(table) for path, table in
                 zip((INPUT_TABLE, OUTPUT_TABLE), tables(params))}
    step_fn = make_sparse_train_step(config.model, sparse_txs)
  elif config.max_learning_rate is not None:
    # The shared factory has no η_max; the same optimizers, capped.
    if config.optimizer == 'fa_sgd':
      tx = fasgd_optax.fa_sgd(config.learning_rate, frequencies,
                              num_steps=num_steps,
                              max_learning_rate=config.max_learning_rate)
    else:
      tx = fasgd_optax.cf_sgd(config.learning_rate, num_steps=num_steps,
                              max_learning_rate=config.max_learning_rate)
    tx = optax.with_extra_args_support(tx)
    opt_state = tx.init(params)
    step_fn = make_dense_train_step(graphdef, tx)
  else:
    tx = optimizers.make_optimizer(
        config.optimizer, config.learning_rate, num_steps=num_steps,
        frequencies=frequencies)
    opt_state = tx.init(params)
    step_fn = make_dense_train_step(graphdef, tx)
  train_steps = make_train_steps(step_fn, config.negatives)
  evaluate = make_evaluate(graphdef)
  key = jax.random.key(config.seed)
  negative_table = jnp.asarray(data.negative_table)
  initial_losses = {split: evaluate(params, heldout)
                    for split, heldout in data.heldout.items()}

  passes = {0: first_pass}
  timing = {}

  def train_round(train_state, round_number):
    epoch, part = divmod(round_number - 1, rounds_per_epoch)
    if stop_after_rounds is not None and round_number > stop_after_rounds:
      raise Interrupted(round_number)
    round_start = time.perf_counter()
    if epoch not in passes:
      passes.clear()
      passes[epoch] = make_epoch(data, config, epoch)
    epoch_data = passes[epoch]
    begin, end = round_bounds[part], round_bounds[part + 1]

    def padded(batches):
      batches = batches[begin:end]
      pad = round_length - batches.shape[0]
      return np.pad(batches, [(0, pad)] + [(0, 0)] * (batches.ndim - 1))

    train_state, losses = train_steps(
        train_state, padded(epoch_data.inputs), padded(epoch_data.targets),
        end - begin, epoch * steps_per_epoch + begin + 1, key,
        negative_table)
    losses = np.asarray(losses)[:end - begin]
    fraction = (end - begin) / steps_per_epoch
    # The first pass's examples were made before the loop; their time
    # belongs to the first round (throughput includes the input pipeline).
    timing.update(
        seconds=time.perf_counter() - round_start + (
            first_pass_seconds if round_number == 1 else 0.0),
        raw_words=fraction * data.train.num_raw_words,
        effective_words=fraction * epoch_data.num_words,
        step=epoch * steps_per_epoch + end)
    return train_state, losses

  def evaluate_round(train_state):
    losses = {split: evaluate(train_state['params'], heldout)
              for split, heldout in data.heldout.items()}
    if not np.isfinite(losses['validation']):
      raise FloatingPointError(
          f'{config.optimizer} with learning_rate={config.learning_rate} '
          f'diverged (held-out loss {losses["validation"]} at step '
          f'{timing["step"]}); use a smaller --learning_rate.')
    return {**{split: {'loss': loss} for split, loss in losses.items()},
            'progress': {'step': timing['step'],
                         'epoch': timing['step'] / steps_per_epoch},
            'throughput': {key: float(value) for key, value in timing.items()
                           if key != 'step'}}

  checkpointer = None
  if workdir is not None:
    os.makedirs(workdir, exist_ok=True)
    checkpointer = checkpointing.EpochCheckpointer(
        os.path.join(workdir, 'checkpoints'), dataclasses.asdict(config),
        options=checkpoint_options, unit='round')
  train_state = {'params': params, 'opt_state': opt_state}
  try:
    train_state, history = training.run_epochs(
        train_state, num_epochs=config.epochs * rounds_per_epoch,
        train_epoch=train_round, evaluate=evaluate_round,
        checkpointer=checkpointer, show_progress=show_progress,
        desc=f'{config.model} {config.optimizer}')
  finally:
    if checkpointer is not None:
      checkpointer.close()

  # Throughput counts the rounds this process ran: a resumed run's earlier
  # rounds were timed by the process that ran them, and are in the history.
  seconds = sum(r['throughput']['seconds'] for r in history)
  raw_words = sum(r['throughput']['raw_words'] for r in history)
  effective_words = sum(r['throughput']['effective_words'] for r in history)
  # Without the first round, which also pays for compiling the step and
  # making the first pass's examples.
  later = history[1:] or history
  steady_words_per_second = (
      sum(r['throughput']['raw_words'] for r in later) /
      sum(r['throughput']['seconds'] for r in later))
  vectors = np.asarray(tables(train_state['params'])[0])
  results = {
      'config': dataclasses.asdict(config),
      'vocab_size': len(data.vocab),
      'train_raw_words_per_epoch': data.train.num_raw_words,
      'heldout_sentences': data.num_heldout_sentences,
      'validation_examples': data.heldout['validation'].size,
      'test_examples': data.heldout['test'].size,
      'steps_per_epoch': steps_per_epoch,
      'initial_validation_loss': initial_losses['validation'],
      'initial_test_loss': initial_losses['test'],
      'first_step_loss': history[0]['step_losses'][0],
      'steps': [r['progress']['step'] for r in history],
      'train_loss': [r['train_loss'] for r in history],
      'validation_loss': [r['validation']['loss'] for r in history],
      'test_loss': [r['test']['loss'] for r in history],
      'final_train_loss': history[-1]['train_loss'],
      'final_validation_loss': history[-1]['validation']['loss'],
      'final_test_loss': history[-1]['test']['loss'],
      'train_seconds': seconds,
      'words_per_second': raw_words / seconds,
      'effective_words_per_second': effective_words / seconds,
      'steady_words_per_second': steady_words_per_second,
      'total_seconds': time.perf_counter() - start_time,
      'nearest_neighbours': nearest_neighbours(vectors, data.vocab),
      'optimizer_state_bytes': optimizers.state_bytes(
          train_state['opt_state']),
      'params_bytes': optimizers.state_bytes(train_state['params']),
  }
  if wordsim_rows:
    results['wordsim353'] = wordsim_spearman(vectors, data.vocab,
                                             wordsim_rows)
  if workdir is not None:
    with open(os.path.join(workdir, 'results.json'), 'w') as f:
      json.dump(results, f, indent=1)
  results['train_state'] = train_state
  return results


class Interrupted(Exception):
  """Raised by `stop_after_rounds` to stop a run as a kill would."""
