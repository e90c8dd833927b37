"""Trains and evaluates Skip-gram or CBOW with any optimizer.

The model and its loss are in `model.py`, the update paths and the jitted
steps in `steps.py`, negative sampling in `negatives.py`, word-vector quality
in `quality.py`, corpora and the vocabulary in `corpora.py`, passes in
`input_pipeline.py`. This file holds the run: its configuration, its data
(vocabulary, held-out sets), and the loop, which goes through the shared
epoch loop (`examples.common.training`) in *rounds* of 1/`evals_per_epoch` of
a pass over the corpus, so the held-out loss is measured, and a checkpoint
written, several times a pass.

Host work stays off the critical path: the number of steps is counted
before the first pass is built, so the step compiles while that pass is made
in a background thread, and each later pass is made while the one before it
trains (`input_pipeline.Prefetcher`). On an accelerator the host only draws
a pass's subsampling and windows; the device lists and shuffles its examples
(`device_pipeline`, --input_pipeline).
"""

import dataclasses
import os
import time
from typing import Any, Optional

from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

import fasgd_optax
from examples.common import checkpointing
from examples.common import files
from examples.common import fingerprints
from examples.common import optimizers
from examples.common import training
from examples.word2vec import corpora
from examples.word2vec import device_pipeline
from examples.word2vec import input_pipeline
from examples.word2vec import model as model_lib
from examples.word2vec import negatives as negatives_lib
from examples.word2vec import quality
from examples.word2vec import steps as steps_lib

INPUT_TABLE = model_lib.INPUT_TABLE
OUTPUT_TABLE = model_lib.OUTPUT_TABLE
UPDATES = steps_lib.UPDATES
SPARSE_OPTIMIZERS = steps_lib.SPARSE_OPTIMIZERS
PIPELINES = device_pipeline.PIPELINES


@dataclasses.dataclass
class Config:
  """Hyperparameters of one training run (main.py fills it from flags)."""
  model: str = 'skipgram'
  optimizer: str = 'sgd'
  learning_rate: float = 1.0
  # 'constant', or 'linear': word2vec.c's (and gensim's) decay to 10^-4 of
  # the learning rate over the run (`optimizers.learning_rate_schedule`).
  learning_rate_schedule: str = 'constant'
  dim: int = 100
  window: int = 5
  negatives: int = 5
  min_count: int = 5
  sample: float = 1e-3
  epochs: int = 1
  batch_size: int = 1024
  seed: int = 0
  update: str = 'dense'  # One of steps.UPDATES.
  # fa_sgd / cf_sgd's η_max, the paper's 1/(4L); None: no cap.
  max_learning_rate: Optional[float] = None
  # CBOW: 'word2vec' (each context row gets the hidden vector's gradient,
  # as word2vec.c and gensim do) or 'autodiff' (the mean's own gradient).
  cbow_gradient: str = 'word2vec'
  # How the sparse path combines repeated ids (fasgd_optax's `duplicates`).
  duplicates: str = 'auto'
  # Where passes are made: 'host' (NumPy), 'device' (the accelerator,
  # `device_pipeline`), 'auto' (the device unless it is a CPU).
  input_pipeline: str = 'auto'
  evals_per_epoch: int = 4
  test_fraction: float = 0.1
  max_test_examples: int = 200_000


def check_config(config: Config) -> None:
  """Raises a ValueError naming the first setting that cannot work."""
  model_lib.check_model(config.model, config.cbow_gradient)
  steps_lib.check_update(config.update, config.optimizer, config.duplicates)
  steps_lib.check_cap(config.optimizer, config.max_learning_rate)
  device_pipeline.check_pipeline(config.input_pipeline)
  if not 0 < config.learning_rate < float('inf'):
    raise ValueError('learning_rate must be a positive finite number; got '
                     f'{config.learning_rate}.')
  if not 0 <= config.sample < float('inf'):
    raise ValueError(f'sample must be a finite number >= 0; got '
                     f'{config.sample}.')
  if config.seed < 0:
    raise ValueError(f'seed must be >= 0; got {config.seed}.')
  if config.learning_rate_schedule not in optimizers.SCHEDULES:
    raise ValueError(
        'learning_rate_schedule must be one of '
        f'{", ".join(optimizers.SCHEDULES)}; got '
        f'{config.learning_rate_schedule!r}.')
  for name in ('dim', 'window', 'negatives', 'min_count', 'epochs',
               'batch_size', 'evals_per_epoch'):
    if getattr(config, name) < 1:
      raise ValueError(f'{name} must be >= 1; got {getattr(config, name)}.')


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
  same samples. (Their negatives come from word2vec's 1M-slot table, as
  when the recorded results were measured; training draws from the exact
  distribution, `noise`.)
  """
  vocab: corpora.Vocabulary
  train: corpora.EncodedCorpus
  keep_probability: np.ndarray
  negative_table: np.ndarray
  noise: negatives_lib.AliasTable
  heldout: dict[str, HeldOut]
  num_heldout_sentences: int


def _heldout_examples(sentences, vocab, keep_probability, negative_table,
                      config: Config, stream: int) -> HeldOut:
  # A random stream of its own, apart from the training passes'.
  rng = np.random.default_rng([config.seed, 2**31 - 1, stream])
  inputs, targets, _ = input_pipeline.epoch_examples(
      corpora.encode(sentences, vocab), model=config.model,
      window=config.window, keep_probability=keep_probability, rng=rng)
  if targets.shape[0] > config.max_test_examples:
    keep = np.sort(rng.choice(targets.shape[0], config.max_test_examples,
                              replace=False))
    inputs, targets = inputs[keep], targets[keep]
  negatives = negative_table[rng.integers(
      0, negative_table.shape[0], (targets.shape[0], config.negatives))]
  return HeldOut(inputs, targets, negatives)


def prepare_data(config: Config, sentences: corpora.Sentences) -> Data:
  """Splits the corpus; builds the vocabulary and the held-out sets."""
  model_lib.check_model(config.model, config.cbow_gradient)
  train_sentences, heldout_sentences = corpora.split_sentences(
      sentences, test_fraction=config.test_fraction)
  if len(heldout_sentences) < 2:
    raise corpora.CorpusError(
        f'The corpus has {len(sentences)} sentences: too few to hold out '
        f'{config.test_fraction:.0%} for validation and test.')
  vocab = corpora.build_vocabulary(train_sentences, config.min_count)
  train = corpora.encode(train_sentences, vocab)
  keep_probability = input_pipeline.keep_probabilities(vocab.counts,
                                                       config.sample)
  negative_table = input_pipeline.unigram_table(vocab.counts)
  noise = negatives_lib.alias_table(
      input_pipeline.noise_distribution(vocab.counts))
  heldout = {
      split: _heldout_examples(heldout_sentences[start::2], vocab,
                               keep_probability, negative_table, config,
                               stream)
      for stream, (split, start) in enumerate(
          (('validation', 0), ('test', 1)))}
  return Data(vocab, train, keep_probability, negative_table, noise, heldout,
              len(heldout_sentences))


def data_fingerprint(data: Data) -> dict[str, Any]:
  """What identifies a run's data: its vocabulary, training words and
  held-out examples, hashed (sha256), with the training words' count.

  Two corpora give the same fingerprint only if they give the run the same
  words in the same order.
  """
  arrays = [data.vocab.counts, data.train.word_ids, data.train.sentence_ids]
  for name in sorted(data.heldout):
    arrays += [data.heldout[name].inputs, data.heldout[name].targets]
  return {'sha256': fingerprints.host_sha256(arrays,
                                             '\n'.join(data.vocab.words)),
          'training_words': int(data.train.word_ids.shape[0])}


def make_epoch(data: Data, config: Config, epoch: int,
               num_batches: Optional[int] = None
               ) -> input_pipeline.EpochData:
  """Pass `epoch` (0-based) over the training corpus, batched."""
  return input_pipeline.make_epoch(
      data.train, model=config.model, window=config.window,
      keep_probability=data.keep_probability, batch_size=config.batch_size,
      seed=config.seed, epoch=epoch, num_batches=num_batches)


def steps_per_epoch(data: Data, config: Config) -> int:
  """Batches in every pass: the first pass's full batches."""
  examples = input_pipeline.count_examples(
      data.train, model=config.model, window=config.window,
      keep_probability=data.keep_probability, seed=config.seed, epoch=0)
  if examples < config.batch_size:
    raise corpora.CorpusError(
        f'An epoch has {examples} examples, fewer than one batch of '
        f'{config.batch_size}: use a smaller --batch_size or a larger corpus.')
  return examples // config.batch_size


def table_frequencies(data: Data, config: Config,
                      first_pass: input_pipeline.EpochData) -> dict:
  """FA-SGD's p_k per table: expected reads of row k per step.

  Input table: occurrences as center (skip-gram) or context word (CBOW).
  Output table: occurrences as target, plus expected negative draws
  (batch · negatives · q_k per step, q the unigram^0.75 distribution).
  Counted on the first pass's examples.
  """
  vocab_size = len(data.vocab)
  inputs = np.asarray(first_pass.inputs).ravel()
  input_counts = fasgd_optax.count_ids(inputs[inputs >= 0], vocab_size)
  output_counts = fasgd_optax.count_ids(np.asarray(first_pass.targets),
                                        vocab_size)
  noise = input_pipeline.noise_distribution(data.vocab.counts)
  expected_negatives = (first_pass.num_batches * config.batch_size *
                        config.negatives * noise)
  return optimizers.frequencies_for_tables(
      {INPUT_TABLE: input_counts,
       OUTPUT_TABLE: output_counts + expected_negatives},
      first_pass.num_batches)


# --------------------------------------------------------------------------
# Training.


def train_and_evaluate(
    config: Config,
    sentences: corpora.Sentences,
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
  (seed, pass, step), so a resumed run ends exactly where an uninterrupted
  one does.

  Throughput counts the training rounds' wall time, from counting the first
  pass's examples (compiling the step and building the first pass included)
  to the last step's loss, without the held-out evaluations and
  checkpoints.

  Args:
    config: the run's hyperparameters.
    sentences: the corpus (see `corpora.read_corpus`).
    workdir: checkpoints and `results.json` go here; None keeps nothing.
    wordsim_rows: WordSim-353 rows (`quality.read_wordsim`), if any.
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
  check_config(config)
  if data is None:
    data = prepare_data(config, sentences)
  logging.info('vocabulary %d words; %d training words (%d raw); %d test '
               'examples', len(data.vocab), data.train.word_ids.shape[0],
               data.train.num_raw_words, data.heldout['test'].size)
  model = model_lib.Word2Vec(len(data.vocab), config.dim, model=config.model,
                             cbow_gradient=config.cbow_gradient,
                             rngs=nnx.Rngs(config.seed))
  graphdef, params = model_lib.split(model)
  evaluate = steps_lib.make_evaluate(graphdef)
  initial_losses = {split: evaluate(params, heldout)
                    for split, heldout in data.heldout.items()}

  # Full garbage collections would walk the corpus and vocabulary, alive for
  # the whole run, inside the timed rounds (see `training.frozen_heap`).
  with training.frozen_heap() as collector:
    # From here on the clock runs for throughput (see the docstring).
    clock_start = time.perf_counter()
    num_batches = steps_per_epoch(data, config)
    num_steps = config.epochs * num_batches
    rounds_per_epoch = max(1, min(config.evals_per_epoch, num_batches))
    round_bounds = [num_batches * r // rounds_per_epoch
                    for r in range(rounds_per_epoch + 1)]

    pipeline = device_pipeline.resolve(config.input_pipeline)

    def make_pass(epoch):
      if pipeline == 'device':
        return device_pipeline.make_pass(
            data.train, model=config.model, window=config.window,
            keep_probability=data.keep_probability,
            batch_size=config.batch_size, seed=config.seed, epoch=epoch,
            num_batches=num_batches)
      epoch_data = make_epoch(data, config, epoch, num_batches)
      # `device_put`, not `jnp.asarray`: bringing a CBOW pass (27 MB) to a
      # CPU device took 0.5-18 ms against 14-66 ms (two ad hoc timings on
      # this project's CPU, 2026-11-27).
      return input_pipeline.EpochData(*jax.device_put(
          (epoch_data.inputs, epoch_data.targets)), epoch_data.num_words)

    # A device pass takes the host a few hundredths of a second: one ahead is
    # enough.
    depth = 1 if pipeline == 'device' else input_pipeline.prefetch_depth()
    # A host pass is NumPy work between which its thread needs the GIL back
    # while the step is traced (see `Prefetcher`); a device pass is one call.
    prefetcher = input_pipeline.Prefetcher(
        make_pass, config.epochs, depth=depth,
        first_pass_switch_interval=None if pipeline == 'device' else 2e-4)
    checkpointer = None
    try:
      frequencies = None
      current_pass = {}  # The pass being trained on, on the device.
      if config.optimizer == 'fa_sgd':
        # FA-SGD's frequencies are counted on the first pass: wait for it.
        current_pass[0] = prefetcher.get(0)
        frequencies = table_frequencies(data, config, current_pass[0])
      else:
        for epoch in range(depth):
          prefetcher.start(epoch)
      step_fn, opt_state = steps_lib.make_step(
          config, graphdef, params, num_steps=num_steps,
          frequencies=frequencies)
      train_state = {'params': params, 'opt_state': opt_state}
      key = jax.random.key(config.seed)
      accept = jnp.asarray(data.noise.accept)
      alias = jnp.asarray(data.noise.alias)
      batch_shape = jax.ShapeDtypeStruct(
          (num_batches, config.batch_size) + (
              () if config.model == 'skipgram' else (2 * config.window,)),
          jnp.int32)
      # Compiled ahead, while the first pass is being built.
      compile_start = time.perf_counter()
      lowered = steps_lib.make_train_round(step_fn, config.negatives).lower(
          train_state, batch_shape,
          jax.ShapeDtypeStruct(batch_shape.shape[:2], jnp.int32),
          np.int32(0), np.int32(0), key, accept, alias)
      lower_seconds = time.perf_counter() - compile_start
      train_round_fn = steps_lib.compile_round(lowered)
      compile_seconds = time.perf_counter() - compile_start

      setup_seconds = time.perf_counter() - clock_start
      timing = {'pending': setup_seconds}

      def train_round(train_state, round_number):
        epoch, part = divmod(round_number - 1, rounds_per_epoch)
        if stop_after_rounds is not None and round_number > stop_after_rounds:
          raise Interrupted(round_number)
        round_start = time.perf_counter()
        if epoch not in current_pass:
          current_pass.clear()
          current_pass[epoch] = prefetcher.get(epoch)
        pass_wait = time.perf_counter() - round_start
        device_pass = current_pass[epoch]
        begin, end = round_bounds[part], round_bounds[part + 1]
        train_state, losses = train_round_fn(
            train_state, device_pass.inputs, device_pass.targets,
            np.int32(begin), np.int32(end),
            jax.random.fold_in(key, epoch), accept, alias)
        losses = np.asarray(losses)[begin:end]
        fraction = (end - begin) / num_batches
        # The time before the first round (counting, compiling, building the
        # first pass) belongs to the first round this process runs.
        seconds = time.perf_counter() - round_start + timing.pop('pending', 0.0)
        timing.update(
            seconds=seconds, pass_wait_seconds=pass_wait,
            raw_words=fraction * data.train.num_raw_words,
            effective_words=fraction * device_pass.num_words,
            step=epoch * num_batches + end)
        return train_state, losses

      def evaluate_round(train_state):
        losses = {split: evaluate(train_state['params'], heldout)
                  for split, heldout in data.heldout.items()}
        if not np.isfinite(losses['validation']):
          raise training.Diverged(
              f'{config.optimizer} with learning_rate={config.learning_rate} '
              f'diverged (held-out loss {losses["validation"]} at step '
              f'{timing["step"]}); use a smaller --learning_rate.',
              step=timing['step'], loss=losses['validation'])
        return {**{split: {'loss': loss} for split, loss in losses.items()},
                'progress': {'step': timing['step'],
                             'epoch': timing['step'] / num_batches},
                'throughput': {key: float(value)
                               for key, value in timing.items()
                               if key != 'step'}}

      if workdir is not None:
        os.makedirs(workdir, exist_ok=True)
        # The pipeline as resolved: 'auto' makes other passes on another
        # backend, which a resumed run must not take for the same ones; and
        # the corpus, which the flags name but do not pin (a file's text may
        # change, --corpus_path may point elsewhere).
        checkpointer = checkpointing.EpochCheckpointer(
            os.path.join(workdir, 'checkpoints'),
            dict(dataclasses.asdict(config), input_pipeline=pipeline,
                 corpus=data_fingerprint(data)),
            options=checkpoint_options, unit='round')
      train_state, history = training.run_epochs(
          train_state, num_epochs=config.epochs * rounds_per_epoch,
          train_epoch=train_round, evaluate=evaluate_round,
          checkpointer=checkpointer, show_progress=show_progress,
          desc=f'{config.model} {config.optimizer}')
    finally:
      prefetcher.close()
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
  vectors = np.asarray(model_lib.tables(train_state['params'])[0])
  results = {
      'config': dataclasses.asdict(config),
      'vocab_size': len(data.vocab),
      'train_raw_words_per_epoch': data.train.num_raw_words,
      'heldout_sentences': data.num_heldout_sentences,
      'validation_examples': data.heldout['validation'].size,
      'test_examples': data.heldout['test'].size,
      'steps_per_epoch': num_batches,
      'input_pipeline': pipeline,
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
      # Each round's, timed by the process that ran it; the first round a
      # process runs also counts the examples, compiles the step and waits
      # for its pass.
      'round_seconds': [r['throughput']['seconds'] for r in history],
      # Of those, the time each round waited for its pass to be made.
      'pass_wait_seconds': [r['throughput'].get('pass_wait_seconds')
                            for r in history],
      # This process's time from the clock's start to the compiled step:
      # counting the examples, the optimizer's state, lowering, compiling
      # (the first pass is made meanwhile, in the background; FA-SGD, which
      # counts its frequencies on it, waits for it here).
      'setup_seconds': setup_seconds,
      # Tracing and lowering included; `lower_seconds` is that part (the rest
      # is XLA's compile, or loading it from the cache).
      'compile_seconds': compile_seconds,
      'lower_seconds': lower_seconds,
      # Python's garbage collections from the clock's start to the last
      # evaluation (`training.frozen_heap`).
      'garbage_collection': collector.as_dict(),
      'words_per_second': raw_words / seconds,
      'effective_words_per_second': effective_words / seconds,
      'steady_words_per_second': steady_words_per_second,
      'total_seconds': time.perf_counter() - start_time,
      'nearest_neighbours': quality.nearest_neighbours(vectors, data.vocab),
      'optimizer_state_bytes': optimizers.state_bytes(
          train_state['opt_state']),
      'params_bytes': optimizers.state_bytes(train_state['params']),
  }
  if wordsim_rows:
    results['wordsim353'] = quality.wordsim_spearman(vectors, data.vocab,
                                                     wordsim_rows)
  if workdir is not None:
    files.write_json(os.path.join(workdir, 'results.json'), results, indent=1)
  results['train_state'] = train_state
  return results


def sweep_run(config: Config, sentences: corpora.Sentences, data: Data,
              wordsim_rows: Optional[list[tuple[str, str, float]]]
              ) -> dict[str, Any]:
  """One run as the experiments record it (`compare.py`, `cap_study.py`).

  `train_and_evaluate`'s results without the trained state and the config;
  for a run that diverged, the divergence (`diverged`, its message) and
  infinite held-out losses, so that the experiment goes on to its next run.
  """
  try:
    results = train_and_evaluate(config, sentences, data=data,
                                 wordsim_rows=wordsim_rows,
                                 show_progress=False)
  except training.Diverged as error:
    return {'diverged': str(error), 'final_validation_loss': float('inf'),
            'final_test_loss': float('inf')}
  results.pop('train_state')
  results.pop('config')
  return results


class Interrupted(Exception):
  """Raised by `stop_after_rounds` to stop a run as a kill would."""
