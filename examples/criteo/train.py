"""DeepFM on Criteo-format data: the state, train and eval steps, the loop.

The state lives on a device mesh as `placement` says (the table and its
per-row optimizer state row-sharded, the batch over 'data'), and the steps are
`jax.jit` with those shardings: XLA partitions the table's gathers and
scatters so that each device reads and writes only its own rows, and only
batch-sized arrays (ids, gathered rows, row gradients) cross devices.

Two update paths on the same model:

- 'sparse': `fasgd_optax.nnx_sparse.value_and_grad` differentiates with
  respect to the rows the batch looked up, a `fasgd_optax.sparse_*`
  transformation updates only those rows, and any Optax optimizer the other
  parameters;
- 'dense': one Optax optimizer over all parameters, the table's gradient a
  dense N×(d+1) array (what Adam and Adagrad need).

Multi-process runs (`jax.distributed.initialize`) work the same: every process
runs this code on its part of each global batch.
"""

import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple, Optional

from absl import logging
from flax import nnx
import jax
from jax.experimental import multihost_utils
import numpy as np
import optax

from fasgd_optax import nnx_sparse

from examples.common import checkpointing
from examples.common import metrics
from examples.common import optimizers
from examples.common import progress
from examples.common import training
from examples.criteo import config as config_lib
from examples.criteo import criteo_format
from examples.criteo import input_pipeline
from examples.criteo import model as model_lib
from examples.criteo import placement


def diverged(mean_losses: Sequence[float]) -> bool:
  """Whether a run's logged mean train losses (oldest first) say it diverged.

  Diverged: the last is non-finite, or the last two are above 100 (log loss
  above 100 means logits off by e^100). Runs at high rates come back from one
  such window (Adagrad at 3.16 here: 563, then 9.7), not from two.
  """
  if not mean_losses:
    return False
  return not math.isfinite(mean_losses[-1]) or (
      len(mean_losses) >= 2 and min(mean_losses[-2:]) > 100)


def _sparse_transformation(name: str, learning_rate: float, num_steps: int):
  return optimizers.make_sparse_optimizer(name, learning_rate,
                                          num_steps=num_steps)


def _dense_transformation(config: config_lib.Config):
  return optimizers.make_optimizer(
      config.dense_optimizer or config.optimizer,
      config.dense_learning_rate or config.learning_rate,
      num_steps=config.num_steps)


def _is_table(path: str) -> bool:
  return path.startswith(model_lib.TABLE_PATH)


class Transformations(NamedTuple):
  """The optimizers of a run: for the tables and the other parameters."""
  tables: Any  # 'sparse': a SparseTransformation; 'dense': None.
  dense: optax.GradientTransformation  # 'dense': over all parameters.


def make_transformations(config: config_lib.Config) -> Transformations:
  """The config's optimizers (built once, outside the jitted programs)."""
  if config.update == 'sparse':
    return Transformations(
        _sparse_transformation(config.optimizer, config.learning_rate,
                               config.num_steps),
        _dense_transformation(config))
  table_tx = optimizers.make_optimizer(config.optimizer, config.learning_rate,
                                       num_steps=config.num_steps)
  if config.dense_optimizer is None and config.dense_learning_rate is None:
    return Transformations(None, table_tx)
  return Transformations(None, optimizers.make_split_optimizer(
      table_tx, _dense_transformation(config),
      lambda params: optimizers.label_embeddings(params, _is_table)))


def make_model(config: config_lib.Config, num_rows: int) -> model_lib.DeepFM:
  return model_lib.DeepFM(num_rows, config.embedding_dim,
                          mlp_features=config.mlp_features,
                          init_scale=config.init_scale,
                          rngs=nnx.Rngs(config.seed))


def build(config: config_lib.Config, model: model_lib.DeepFM,
          transformations: Transformations):
  """The model and its optimizers, as a tuple of NNX objects.

  'sparse': (model, dense_optimizer, SparseOptimizer); 'dense': (model,
  optimizer over all parameters).
  """
  if config.update == 'sparse':
    dense_opt = nnx.Optimizer(model, transformations.dense, wrt=nnx.Param)
    sparse_opt = nnx_sparse.SparseOptimizer(model, transformations.tables)
    return model, dense_opt, sparse_opt
  return model, nnx.Optimizer(model, transformations.dense,
                              wrt=(nnx.Param, nnx_sparse.SparseTable))


def loss_fn(model: model_lib.DeepFM, batch: Mapping[str, jax.Array]):
  logits = model(batch['dense'], batch['ids'])
  return optax.sigmoid_binary_cross_entropy(logits, batch['labels']).mean()


def check_layout(config: config_lib.Config, mesh: jax.sharding.Mesh,
                 transformations: Any = None) -> Any:
  """Raises a ValueError if `config` cannot be laid out on `mesh`.

  Costs no compile and no memory (the model is built abstractly), so a run
  can check before it writes data or takes a lock.

  Args:
    config: the run.
    mesh: its devices.
    transformations: `make_transformations(config)` (made if None).

  Returns:
    The abstract (model, optimizers) that `Trainer` builds.
  """
  num_rows = placement.padded_rows(config.table_rows, mesh.size)
  data_size = mesh.shape[placement.DATA_AXIS]
  if config.batch_size % data_size:
    raise ValueError(f'batch_size {config.batch_size} is not a multiple of '
                     f'the mesh\'s data axis ({data_size}).')
  if transformations is None:
    transformations = make_transformations(config)
  abstract = nnx.eval_shape(
      lambda: build(config, make_model(config, num_rows), transformations))
  for path, leaf in jax.tree_util.tree_leaves_with_path(
      nnx.state(abstract[0], nnx.Param)):
    if leaf.ndim and leaf.shape[0] == num_rows:
      raise ValueError(
          f'Parameter {jax.tree_util.keystr(path)} has {num_rows} rows, as '
          'many as the stacked table: choose other table_rows.')
  return abstract


class Trainer:
  """The jitted steps of one config on one mesh.

  Attributes:
    config: the run.
    layout: the mesh and the table's rows.
    graphdef: the NNX graph of `build`'s objects.
    state_shardings: the state's shardings.
  """

  def __init__(self, config: config_lib.Config, mesh: jax.sharding.Mesh):
    self.config = config
    num_rows = placement.padded_rows(config.table_rows, mesh.size)
    self.layout = placement.Layout(mesh, num_rows)
    transformations = make_transformations(config)
    abstract = check_layout(config, mesh, transformations)
    self.graphdef, abstract_state = nnx.split(abstract)
    self.state_shardings = jax.tree.map(self.layout.of_leaf, abstract_state)
    self.abstract_state = abstract_state
    batch_shardings = {'labels': self.layout.batch,
                       'dense': self.layout.batch, 'ids': self.layout.batch}
    # Initialisation in two programs, the model, then the optimizers from it
    # (the model's buffers donated), each within the state's own memory and
    # each output laid out by the shardings given here.
    model_graphdef, abstract_model = nnx.split(
        nnx.eval_shape(lambda: make_model(config, num_rows)))
    model_shardings = jax.tree.map(self.layout.of_leaf, abstract_model)
    self._init_model = jax.jit(
        lambda: nnx.state(make_model(config, num_rows)),
        out_shardings=model_shardings)
    self._init_optimizers = jax.jit(
        lambda model_state: nnx.state(build(
            config, nnx.merge(model_graphdef, model_state), transformations)),
        in_shardings=(model_shardings,), out_shardings=self.state_shardings,
        donate_argnums=0)
    step = self._sparse_step if config.update == 'sparse' else self._dense_step
    self.train_step = jax.jit(
        step, in_shardings=(self.state_shardings, batch_shardings),
        out_shardings=(self.state_shardings, self.layout.replicated),
        donate_argnums=0)
    self.predict = jax.jit(
        self._predict, in_shardings=(self.state_shardings, batch_shardings),
        out_shardings=self.layout.batch)

  def init(self) -> Any:
    """The initial state, created sharded (never whole on one device)."""
    return self._init_optimizers(self._init_model())

  def _sparse_step(self, state, batch):
    model, dense_opt, sparse_opt = nnx.merge(self.graphdef, state)
    loss, grads, table_grads = nnx_sparse.value_and_grad(loss_fn)(model,
                                                                  batch)
    dense_opt.update(model, grads)
    sparse_opt.update(model, table_grads)
    return nnx.state((model, dense_opt, sparse_opt)), loss

  def _dense_step(self, state, batch):
    model, opt = nnx.merge(self.graphdef, state)
    loss, grads = nnx.value_and_grad(
        loss_fn, argnums=nnx.DiffState(
            0, (nnx.Param, nnx_sparse.SparseTable)))(model, batch)
    opt.update(model, grads, ids={model_lib.TABLE_PATH: batch['ids']})
    return nnx.state((model, opt)), loss

  def _predict(self, state, batch):
    model = nnx.merge(self.graphdef, state)[0]
    return model(batch['dense'], batch['ids'])

  def global_batch(self, arrays: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """This process's rows of a batch as global arrays on the mesh."""
    return self.layout.global_batch(arrays, self.config.batch_size)


def counts(state: Any) -> Any:
  """The arrays named row_counts in `state` (CF-SGD's), by path."""
  return {jax.tree_util.keystr(path): leaf
          for path, leaf in jax.tree_util.tree_leaves_with_path(state)
          if 'row_counts' in jax.tree_util.keystr(path)}


def evaluate(trainer: Trainer, state: Any,
             batches: Iterator[input_pipeline.Batch]) -> dict[str, float]:
  """AUC, log loss and example count of the model on `batches`."""
  start, stop = trainer.layout.local_rows(trainer.config.batch_size)
  labels, logits = [], []
  for batch in batches:
    arrays = {name: value[start:stop]
              for name, value in batch.arrays().items()}
    batch_logits = multihost_utils.process_allgather(
        trainer.predict(state, trainer.global_batch(arrays)), tiled=True)
    labels.append(batch.labels[:batch.size])
    logits.append(np.asarray(batch_logits)[:batch.size])
  labels = np.concatenate(labels) if labels else np.zeros((0,))
  logits = np.concatenate(logits) if logits else np.zeros((0,))
  probabilities = 0.5 * (1.0 + np.tanh(0.5 * logits.astype(np.float64)))
  return {
      'auc': metrics.auc(labels, logits) if labels.size else float('nan'),
      'log_loss': (metrics.log_loss(labels, probabilities) if labels.size
                   else float('nan')),
      'examples': int(labels.size),
  }


@dataclasses.dataclass(frozen=True)
class Data:
  """Where the data comes from and how it is read (none of it changes results
  of clean data; `bad_lines` decides what happens to malformed lines).

  Attributes:
    train: training files, read in order, pass after pass.
    validation: files for the validation metrics (None: none).
    test: files for the test metrics (None: none).
    bad_lines: 'skip' (count and report) or 'fail' (raise on the first).
    max_eval_examples: read at most this many examples of each evaluation
      split (None: all).
    block_bytes: bytes read from a file at a time.
    prefetch: batches parsed ahead of the training step.
  """
  train: Sequence[str]
  validation: Optional[Sequence[str]] = None
  test: Optional[Sequence[str]] = None
  bad_lines: str = 'skip'
  max_eval_examples: Optional[int] = None
  block_bytes: int = input_pipeline.DEFAULT_BLOCK_BYTES
  prefetch: int = 4


def _gather_positions(shards: Sequence[int],
                      positions: Sequence[input_pipeline.Position],
                      num_shards: int) -> list[list[int]]:
  """Every shard's position, from every process's (the same everywhere)."""
  local = np.full((num_shards, 3), -1, np.int64)
  for shard, position in zip(shards, positions):
    local[shard] = position.as_list()
  if jax.process_count() > 1:
    local = np.asarray(multihost_utils.process_allgather(local)).max(axis=0)
  return local.tolist()


def checkpoint_record(config: config_lib.Config, log_every: int, *,
                      files: Optional[Data] = None, eval_every: int = 0,
                      max_eval_examples: Optional[int] = None) -> dict:
  """The settings a checkpoint of `train_and_evaluate` must be resumed with.

  The config's; `log_every` (the losses since the last log point are in the
  checkpoint, so a resume with another interval would log means over mixed
  windows); the evaluation settings (one validation history, one setup);
  and the user's data files, if given as `files` (a resume reads on from the
  saved file and line of these files).
  """
  record = dict(config.record(), log_every=log_every,
                evaluation={'eval_every': eval_every,
                            'max_eval_examples': max_eval_examples})
  if files is not None:
    record['data'] = {split: list(getattr(files, split) or [])
                      for split in ('train', 'validation', 'test')}
  return record


def _check_device_count(checkpointer: Any, config: config_lib.Config,
                        mesh: jax.sharding.Mesh) -> None:
  """Refuses a resume on a device count that pads the table otherwise.

  The stacked table's rows are padded to a multiple of lcm(ROW_MULTIPLE,
  devices) (`placement.padded_rows`), and a checkpoint's state fits only a
  table of its own rows. Checkpoints record their device count.
  """
  record = checkpointer.latest_record()
  saved = (record or {}).get('devices')
  if saved is None:
    return
  saved_rows = placement.padded_rows(config.table_rows, saved)
  rows = placement.padded_rows(config.table_rows, mesh.size)
  if rows == saved_rows:
    return
  counts = [count for count in range(
      1, max(placement.ROW_MULTIPLE, saved) + 1)
            if placement.padded_rows(config.table_rows, count) == saved_rows]
  listed = ', '.join(map(str, counts[:12])) + (', ...' if len(counts) > 12
                                               else '')
  raise checkpointing.CheckpointError(
      f'Checkpoints in {checkpointer.directory} were written on {saved} '
      f'devices, and this run has {mesh.size}: the stacked table is padded '
      f'to a multiple of lcm({placement.ROW_MULTIPLE}, devices) rows, '
      f'{saved_rows} there and {rows} here, so its state does not fit. '
      f'Resume on {saved} devices, or on another count that gives '
      f'{saved_rows} rows ({listed}), or use a new --workdir.')


def train_and_evaluate(
    config: config_lib.Config,
    data: Data,
    mesh: jax.sharding.Mesh,
    *,
    checkpointer: Any = None,
    eval_every: int = 0,
    log_every: int = 100,
    warmup_steps: int = 5,
    stop_after_step: Optional[int] = None,
    on_step: Optional[Callable[[int, Any], None]] = None,
) -> dict[str, Any]:
  """Trains `config` for `config.num_steps` steps, then evaluates.

  Args:
    config: the run.
    data: the files.
    mesh: the device mesh (`placement.make_mesh`); every process passes the
      same.
    checkpointer: an `examples.common.checkpointing.Checkpointer` (or None):
      the run resumes from its latest checkpoint (state and every data
      shard's position) and saves as its options say, and at the last step.
    eval_every: also evaluate on the validation files every this many steps
      (0: only at the end).
    log_every: log the mean training loss every this many steps.
    warmup_steps: steps (compilation included) left out of the timing.
    stop_after_step: stop after this step (with a checkpoint there) without
      evaluating, e.g. to split a run over several jobs; rerun to go on.
    on_step: called as ``on_step(step, state)`` after each step (tests).

  Returns:
    {'config', 'steps', 'train_loss' ([step, mean loss] every `log_every`
    steps), 'validation' and 'test' metrics, 'validation_history',
    'timing', 'bad_lines', 'optimizer_state_bytes', 'state'}.

  Raises:
    training.Diverged: a logged mean train loss was non-finite, or two in a
      row were above 100 (`diverged`).
  """
  if (checkpointer is not None and
      checkpointer.config.get('log_every', log_every) != log_every):
    # The checkpoint's losses are means over its record's windows.
    raise ValueError(
        f'log_every={log_every}, but the checkpointer\'s record says '
        f'{checkpointer.config["log_every"]} (checkpoint_record).')
  if checkpointer is not None:
    _check_device_count(checkpointer, config, mesh)
  trainer = Trainer(config, mesh)
  hashing = criteo_format.Hashing(config.table_rows)
  log = input_pipeline.BadLineLog()
  state = trainer.init()
  first_step = 1
  shards = trainer.layout.local_shards(config.batch_size,
                                       config.data_shards)
  starts = None
  record = {}
  if checkpointer is not None:
    restored = checkpointer.restore(state)
    if restored is not None:
      first_step = restored.step + 1
      state = restored.state
      record = restored.record
      if restored.step >= config.num_steps and jax.process_index() == 0:
        logging.info('The run finished before (all %d steps are '
                     'checkpointed); evaluating its saved state.',
                     config.num_steps)
      starts = [input_pipeline.Position(*record['positions'][shard])
                for shard in shards]
  batches = input_pipeline.Prefetcher(
      input_pipeline.process_batches(
          data.train, hashing, batch_size=config.batch_size, shards=shards,
          num_shards=config.data_shards, starts=starts, repeat=True,
          bad_lines=data.bad_lines, log=log, block_bytes=data.block_bytes),
      data.prefetch)
  train_loss = list(record.get('train_loss', []))
  history = list(record.get('validation_history', []))
  # The losses since the last log point: checkpointed too, so that a resumed
  # run logs the same means as an uninterrupted one (float32, as computed).
  window: list[Any] = [np.float32(loss)
                       for loss in record.get('loss_window', [])]
  last_step = config.num_steps
  if stop_after_step is not None:
    last_step = max(min(last_step, stop_after_step), first_step - 1)
  timed_from = min(first_step + warmup_steps, last_step)
  timer = {'start': None, 'data_wait': 0.0, 'checkpoint': 0.0, 'eval': 0.0,
           'steps': 0}
  positions = None

  for split in ('validation', 'test'):
    files = getattr(data, split)
    # Checked before training: metrics of no examples are NaN.
    if files and not any(True for _ in input_pipeline.evaluation_batches(
        files, hashing, batch_size=1, max_examples=1, bad_lines='skip',
        block_bytes=data.block_bytes)):
      raise input_pipeline.DataError(
          f'The {split} files ({", ".join(files)}) hold no well-formed line '
          'to evaluate on.')
  evaluated = set()

  def evaluate_on(files):
    # Every evaluation reads the same lines: their malformed ones are counted
    # the first time only.
    first = tuple(files) not in evaluated
    evaluated.add(tuple(files))
    return evaluate(trainer, state, input_pipeline.evaluation_batches(
        files, hashing, batch_size=config.batch_size,
        max_examples=data.max_eval_examples, bad_lines=data.bad_lines,
        log=log if first else None, block_bytes=data.block_bytes))

  bar = progress.progress_bar(
      range(first_step, last_step + 1), desc=f'{config.optimizer} steps',
      enabled=None if jax.process_index() == 0 else False)
  try:
    for step in bar:
      if step == timed_from:
        jax.block_until_ready(state)
        timer['start'] = time.perf_counter()
      wait_start = time.perf_counter()
      batch = next(batches)
      if timer['start'] is not None:
        timer['data_wait'] += time.perf_counter() - wait_start
        timer['steps'] += 1
      state, loss = trainer.train_step(
          state, trainer.global_batch(batch.arrays()))
      positions = batch.positions
      window.append(loss)
      # Logged where an uninterrupted run logs: a stop (`stop_after_step`)
      # keeps its window in the checkpoint instead, and only checks it.
      logs = step % log_every == 0 or step == config.num_steps
      if logs or step == last_step:
        mean_loss = float(np.mean(jax.device_get(window)))
        # At a stop, a partial window's mean is checked for a non-finite
        # loss only: it is not a logged point, and two of them above 100
        # in a row would not be either.
        checked = [mean_loss]
        if logs:
          window = []
          train_loss.append([step, mean_loss])
          checked = [loss for _, loss in train_loss[-2:]]
          bar.set_postfix(train_loss=f'{mean_loss:.4f}')
          if jax.process_index() == 0:
            logging.info('step %d: train loss %.5f', step, mean_loss)
        if diverged(checked):
          raise training.Diverged(
              f'{config.optimizer} with learning_rate={config.learning_rate} '
              f'diverged (mean train loss {mean_loss:.4g} at step {step}); '
              'use a smaller --learning_rate. The tuned rates assume one '
              'pass of 976 steps of 1024, and CF-SGD\'s best α grows like '
              'sqrt(--num_steps).', step=step, loss=mean_loss)
      if eval_every and data.validation and step % eval_every == 0:
        eval_start = time.perf_counter()
        history.append({'step': step, **evaluate_on(data.validation)})
        if timer['start'] is not None:
          timer['eval'] += time.perf_counter() - eval_start
      if on_step is not None:
        on_step(step, state)
      if checkpointer is not None:
        last = step == last_step
        if last or checkpointer.should_save(step):
          save_start = time.perf_counter()
          checkpointer.save(step, state, {
              'positions': _gather_positions(shards, positions,
                                             config.data_shards),
              'train_loss': train_loss,
              'loss_window': [float(loss)
                              for loss in jax.device_get(window)],
              'validation_history': history,
              'devices': mesh.size,  # `_check_device_count`
          }, force=last)
          if timer['start'] is not None:
            timer['checkpoint'] += time.perf_counter() - save_start
    jax.block_until_ready(state)
    end = time.perf_counter()
  finally:
    bar.close()
    batches.close()
  timing = {}
  if timer['start'] is not None and timer['steps']:
    # Checkpoint saves and evaluations are not training: left out.
    seconds = end - timer['start'] - timer['checkpoint'] - timer['eval']
    timing = {
        'steps': timer['steps'],
        'seconds': seconds,
        'examples_per_second': timer['steps'] * config.batch_size / seconds,
        'data_wait_seconds': timer['data_wait'],
        'checkpoint_seconds': timer['checkpoint'],
    }
  results = {
      'config': config.record(),
      'steps': last_step,
      'train_loss': train_loss,
      'validation_history': history,
      'timing': timing,
      'parameter_bytes': optimizers.state_bytes(state[0]),
      'optimizer_state_bytes': (optimizers.state_bytes(state)
                                - optimizers.state_bytes(state[0])),
      'state': state,
  }
  for split in ('validation', 'test'):
    files = getattr(data, split)
    if files and last_step == config.num_steps:
      results[split] = evaluate_on(files)
  results['bad_lines'] = {'counts': dict(log.counts), 'first': list(log.first),
                          'summary': log.summary()}
  return results
