"""FM and DeepFM on MovieLens: model, loss, training and evaluation steps.

Both models read all six fields from ONE embedding table with per-field
offsets (see input_pipeline), plus a one-column table of linear weights over
the same rows. Frequency-aware optimizers get the rows each step touched as
``ids={'embedding/embedding': rows, 'linear/embedding': rows}``; every other
parameter (the global bias, DeepFM's MLP) is dense and counted by presence.
"""

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import fasgd_optax
from examples.common import checkpointing
from examples.common import fingerprints
from examples.common import metrics
from examples.common import optimizers
from examples.common import training
from examples.movielens import config as config_lib
from examples.movielens import input_pipeline

EMBEDDING_PATHS = ('embedding/embedding', 'linear/embedding')


class FM(nnx.Module):
  """Factorization machine (Rendle 2010) over (row, value) slots.

  logit = w0 + Σ_i w_i x_i + ½ Σ_f [(Σ_i v_if x_i)² − Σ_i v_if² x_i²],
  the pairwise term in O(k·d) for k slots and d factors.
  """

  def __init__(
      self, num_features: int, embedding_dim: int, *, init_scale: float,
      rngs: nnx.Rngs,
  ):
    self.embedding = nnx.Embed(
        num_features, embedding_dim,
        embedding_init=nnx.initializers.normal(init_scale), rngs=rngs,
    )
    self.linear = nnx.Embed(
        num_features, 1, embedding_init=nnx.initializers.zeros, rngs=rngs
    )
    self.bias = nnx.Param(jnp.zeros((), jnp.float32))

  def __call__(self, feature_ids: jax.Array, feature_values: jax.Array):
    """Logits, shape (batch,), of (batch, slots) rows and values."""
    return self.from_rows(
        self.embedding(feature_ids), self.linear(feature_ids)[..., 0],
        feature_values,
    )

  def from_rows(self, embedded, linear_weights, feature_values):
    """Logits from rows already gathered from the two tables.

    The sparse path differentiates with respect to these rows.

    Args:
      embedded: (batch, slots, dim) rows of the embedding table.
      linear_weights: (batch, slots) rows of the linear table.
      feature_values: (batch, slots) slot values.
    """
    scaled = embedded * feature_values[..., None]
    return self.fm_logit(scaled, linear_weights, feature_values)

  def fm_logit(self, scaled_embeddings, linear_weights, feature_values):
    linear = jnp.sum(linear_weights * feature_values, axis=-1)
    square_of_sum = jnp.square(jnp.sum(scaled_embeddings, axis=1))
    sum_of_squares = jnp.sum(jnp.square(scaled_embeddings), axis=1)
    pairwise = 0.5 * jnp.sum(square_of_sum - sum_of_squares, axis=-1)
    return self.bias[...] + linear + pairwise


class DeepFM(FM):
  """DeepFM (Guo et al. 2017): FM plus an MLP over the same embeddings.

  The MLP reads one vector per field: the (value-weighted) sum of the field's
  slot embeddings, i.e. the genres' mean for the multi-valued genre field.
  """

  def __init__(
      self, num_features: int, embedding_dim: int, *, init_scale: float,
      slot_fields: Sequence[int], mlp_features: Sequence[int],
      rngs: nnx.Rngs,
  ):
    super().__init__(num_features, embedding_dim, init_scale=init_scale,
                     rngs=rngs)
    num_fields = max(slot_fields) + 1
    self.slot_fields = tuple(slot_fields)  # static: part of the graph
    widths = [num_fields * embedding_dim, *mlp_features, 1]
    self.mlp = nnx.List([
        nnx.Linear(n_in, n_out, rngs=rngs)
        for n_in, n_out in zip(widths[:-1], widths[1:])
    ])

  def from_rows(self, embedded, linear_weights, feature_values):
    scaled = embedded * feature_values[..., None]
    slot_to_field = jax.nn.one_hot(jnp.array(self.slot_fields),
                                   max(self.slot_fields) + 1)
    fields = jnp.einsum('bsd,sf->bfd', scaled, slot_to_field)
    hidden = fields.reshape(fields.shape[0], -1)
    for layer in self.mlp[:-1]:
      hidden = nnx.relu(layer(hidden))
    deep = self.mlp[-1](hidden)[:, 0]
    return self.fm_logit(scaled, linear_weights, feature_values) + deep


def make_model(
    config: config_lib.Config, dataset: input_pipeline.Dataset
) -> nnx.Module:
  """The model `config.model` sized for `dataset`."""
  rngs = nnx.Rngs(config.seed)
  if config.model == 'fm':
    return FM(dataset.num_features, config.embedding_dim,
              init_scale=config.init_scale, rngs=rngs)
  if config.model == 'deepfm':
    return DeepFM(dataset.num_features, config.embedding_dim,
                  init_scale=config.init_scale,
                  slot_fields=dataset.slot_fields,
                  mlp_features=config.mlp_features, rngs=rngs)
  raise ValueError(
      f'Unknown --model {config.model!r}; expected one of '
      f'{", ".join(config_lib.MODELS)}.'
  )


def make_optimizer(
    config: config_lib.Config,
    dataset: input_pipeline.Dataset,
    params: Any,
) -> optax.GradientTransformationExtraArgs:
  """The config's optimizer(s); FA-SGD's frequencies from training counts."""
  num_batches = input_pipeline.batches_per_epoch(dataset, config.batch_size)
  num_steps = config.num_epochs * num_batches
  counts = input_pipeline.training_row_counts(dataset)
  frequencies = optimizers.frequencies_for_tables(
      {path: counts for path in EMBEDDING_PATHS}, num_batches
  )

  def build(name, learning_rate):
    return optimizers.make_optimizer(
        name, learning_rate, num_steps=num_steps,
        frequencies=frequencies if name == 'fa_sgd' else None,
    )

  embedding_tx = build(config.optimizer, config.learning_rate)
  if config.dense_optimizer is None and config.dense_learning_rate is None:
    return embedding_tx
  # As on the sparse path: the dense parameters get `dense_optimizer` (or
  # `optimizer`) at `dense_learning_rate` (or `learning_rate`).
  dense_tx = build(config.dense_optimizer or config.optimizer,
                   _dense_learning_rate(config))
  labels = optimizers.label_embeddings(params, lambda p: p in EMBEDDING_PATHS)
  return optimizers.make_split_optimizer(embedding_tx, dense_tx, labels)


def _dense_learning_rate(config: config_lib.Config) -> float:
  if config.dense_learning_rate is None:
    return config.learning_rate
  return config.dense_learning_rate


def split_tables(params: Any) -> tuple[dict[str, jax.Array], Any]:
  """({path: table} for EMBEDDING_PATHS, the other parameters)."""
  dense = jax.tree.map(lambda x: x, params)  # a copy we may edit
  tables = {}
  for path in EMBEDDING_PATHS:
    module, leaf = path.split('/')
    tables[path] = dense[module].pop(leaf)
    if not dense[module]:
      del dense[module]
  return tables, dense


def join_tables(tables: Mapping[str, jax.Array], dense: Any) -> Any:
  """Inverse of `split_tables`."""
  params = jax.tree.map(lambda x: x, dense)
  for path, table in tables.items():
    module, leaf = path.split('/')
    params.setdefault(module, {})[leaf] = table
  return params


def make_sparse_optimizers(
    config: config_lib.Config,
    dataset: input_pipeline.Dataset,
) -> tuple[dict[str, Any], optax.GradientTransformationExtraArgs]:
  """Sparse optimizers of the two tables and the dense parameters' optimizer."""
  num_batches = input_pipeline.batches_per_epoch(dataset, config.batch_size)
  num_steps = config.num_epochs * num_batches
  frequencies = fasgd_optax.frequencies_from_counts(
      input_pipeline.training_row_counts(dataset), num_batches=num_batches
  )
  sparse_txs = {
      path: optimizers.make_sparse_optimizer(
          config.optimizer, config.learning_rate, num_steps=num_steps,
          frequencies=frequencies,
      )
      for path in EMBEDDING_PATHS
  }
  dense_name = config.dense_optimizer or config.optimizer
  dense_tx = optimizers.make_optimizer(
      dense_name, _dense_learning_rate(config),
      num_steps=num_steps,
      # The dense parameters are not embedding rows: p = 1 (every step).
      frequencies={} if dense_name == 'fa_sgd' else None,
  )
  return sparse_txs, dense_tx


def _scan_epoch(train_step):
  """Jits one epoch of `train_step` over the batches that `batch_indices` picks.

  The training state is donated, so each epoch updates it in place.
  """

  @functools.partial(jax.jit, donate_argnums=0)
  def train_epoch(state, feature_ids, feature_values, labels, batch_indices):
    batches = (
        feature_ids[batch_indices], feature_values[batch_indices],
        labels[batch_indices],
    )
    return jax.lax.scan(train_step, state, batches)

  return train_epoch


def make_sparse_train_epoch(
    graphdef: nnx.GraphDef,
    sparse_txs: Mapping[str, Any],
    dense_tx: optax.GradientTransformation,
):
  """Like `make_train_epoch`, with the tables on the sparse path.

  The state is {'params', 'opt_state': {'dense': ..., 'sparse': {path: ...}}}.
  The loss is differentiated with respect to the gathered rows of each table
  (not the whole table), and each table's optimizer updates only those rows.
  """

  def train_step(state, batch):
    feature_ids, feature_values, labels = batch
    tables, dense = split_tables(state['params'])
    rows = {path: table[feature_ids] for path, table in tables.items()}

    def loss_fn(dense, rows):
      model = nnx.merge(graphdef, join_tables(tables, dense))
      logits = model.from_rows(rows['embedding/embedding'],
                               rows['linear/embedding'][..., 0],
                               feature_values)
      return optax.sigmoid_binary_cross_entropy(logits, labels).mean()

    loss, (dense_grads, row_grads) = jax.value_and_grad(
        loss_fn, argnums=(0, 1))(dense, rows)
    updates, dense_state = dense_tx.update(
        dense_grads, state['opt_state']['dense'], dense)
    dense = optax.apply_updates(dense, updates)
    sparse_states = {}
    for path, sparse_tx in sparse_txs.items():
      tables[path], sparse_states[path] = sparse_tx.apply(
          tables[path], state['opt_state']['sparse'][path], feature_ids,
          row_grads[path])
    return {
        'params': join_tables(tables, dense),
        'opt_state': {'dense': dense_state, 'sparse': sparse_states},
    }, loss

  return _scan_epoch(train_step)


def make_train_epoch(graphdef: nnx.GraphDef, tx: optax.GradientTransformation):
  """A jitted function running one epoch of steps with `lax.scan`.

  Returns:
    ``train_epoch(state, feature_ids, feature_values, labels, batch_indices)
    -> (state, step_losses)`` where state = {'params', 'opt_state'} and
    batch_indices has shape (steps, batch_size).
  """

  def train_step(state, batch):
    feature_ids, feature_values, labels = batch

    def loss_fn(params):
      logits = nnx.merge(graphdef, params)(feature_ids, feature_values)
      return optax.sigmoid_binary_cross_entropy(logits, labels).mean()

    loss, grads = jax.value_and_grad(loss_fn)(state['params'])
    rows = feature_ids.reshape(-1)
    updates, opt_state = tx.update(
        grads, state['opt_state'], state['params'],
        ids={path: rows for path in EMBEDDING_PATHS},
    )
    params = optax.apply_updates(state['params'], updates)
    return {'params': params, 'opt_state': opt_state}, loss

  return _scan_epoch(train_step)


def make_predict(graphdef: nnx.GraphDef):
  """A jitted ``predict(params, feature_ids, feature_values) -> logits``."""

  @jax.jit
  def predict(params, feature_ids, feature_values):
    return nnx.merge(graphdef, params)(feature_ids, feature_values)

  return predict


def evaluate_split(
    labels: np.ndarray,
    logits: np.ndarray,
    bucket_of_example: Optional[np.ndarray] = None,
) -> dict[str, Any]:
  """AUC and log loss (and AUC per frequency bucket, if buckets are given)."""
  probabilities = 0.5 * (1.0 + np.tanh(0.5 * logits.astype(np.float64)))
  result = {
      'auc': metrics.auc(labels, logits),
      'log_loss': metrics.log_loss(labels, probabilities),
  }
  if bucket_of_example is not None:
    result['auc_by_bucket'] = dict(metrics.auc_by_bucket(
        labels, logits, bucket_of_example, input_pipeline.FREQUENCY_BUCKETS
    ))
  return result


def train_and_evaluate(
    config: config_lib.Config,
    dataset: input_pipeline.Dataset,
    workdir: Optional[str] = None,
    *,
    show_progress: Optional[bool] = None,
    on_epoch_end: Optional[Callable[..., None]] = None,
) -> dict[str, Any]:
  """Trains `config` on `dataset`, evaluating after every epoch.

  Args:
    config: the run.
    dataset: the data (see input_pipeline.load).
    workdir: checkpoints go in `workdir` every epoch, and a run restarted on
      the same workdir with the same config resumes after the last saved
      epoch, ending with exactly the state of an uninterrupted run. None: no
      checkpoints.
    show_progress: progress bar over epochs (None: when on a terminal).
    on_epoch_end: passed to `examples.common.training.run_epochs`.

  Returns:
    {'config', 'history' (per-epoch records), 'best' (the record of the best
    validation-AUC epoch, whose 'test' metrics are the run's result),
    'state' (final {'params', 'opt_state'}), 'optimizer_state_bytes'}.
  """
  model = make_model(config, dataset)
  graphdef, params = nnx.split(model, nnx.Param)
  params = nnx.to_pure_dict(params)
  if config.sparse:
    sparse_txs, dense_tx = make_sparse_optimizers(config, dataset)
    tables, dense = split_tables(params)
    opt_state = {
        'dense': dense_tx.init(dense),
        'sparse': {path: sparse_txs[path].init(tables[path])
                   for path in EMBEDDING_PATHS},
    }
    train_epoch_fn = make_sparse_train_epoch(graphdef, sparse_txs, dense_tx)
  else:
    tx = make_optimizer(config, dataset, params)
    opt_state = tx.init(params)
    train_epoch_fn = make_train_epoch(graphdef, tx)
  state = {'params': params, 'opt_state': opt_state}
  optimizer_state_bytes = optimizers.state_bytes(state['opt_state'])

  feature_ids = jnp.asarray(dataset.feature_ids)
  feature_values = jnp.asarray(dataset.feature_values)
  labels = jnp.asarray(dataset.labels)
  predict = make_predict(graphdef)
  movie_buckets = input_pipeline.movie_frequency_buckets(dataset)

  def train_epoch(state, epoch):
    batch_indices = input_pipeline.train_batch_indices(
        dataset, config.batch_size, config.seed, epoch
    )
    state, losses = train_epoch_fn(
        state, feature_ids, feature_values, labels, jnp.asarray(batch_indices)
    )
    return state, np.asarray(losses)

  def evaluate(state):
    result = {}
    for split in ('validation', 'test'):
      indices = dataset.splits[split]
      logits = np.asarray(predict(
          state['params'], feature_ids[indices], feature_values[indices]
      ))
      result[split] = evaluate_split(
          dataset.labels[indices], logits,
          movie_buckets[dataset.movies[indices]] if split == 'test' else None,
      )
    return result

  checkpointer = None
  if workdir is not None:
    checkpointer = checkpointing.EpochCheckpointer(
        workdir, config_record(config, dataset),
        options=checkpointing.Options(async_save=config.async_checkpoints,
                                      fallback=config.checkpoint_fallback),
    )
  try:
    state, history = training.run_epochs(
        state,
        num_epochs=config.num_epochs,
        train_epoch=train_epoch,
        evaluate=evaluate,
        checkpointer=checkpointer,
        on_epoch_end=on_epoch_end,
        show_progress=show_progress,
        desc=f'{config.model}/{config.optimizer}',
    )
  finally:
    if checkpointer is not None:
      checkpointer.close()
  return {
      'config': config_record(config, dataset),
      'history': history,
      'best': training.best_epoch(history, 'validation', 'auc'),
      'state': state,
      'optimizer_state_bytes': optimizer_state_bytes,
  }


# Config fields that say how a run is checkpointed, not what it computes.
CHECKPOINTING_FIELDS = ('checkpoint_fallback', 'async_checkpoints')


def config_record(
    config: config_lib.Config, dataset: input_pipeline.Dataset
) -> Mapping[str, Any]:
  """The run's settings as JSON data (checkpoints and cached results)."""
  record = {
      key: list(value) if isinstance(value, tuple) else value
      for key, value in config.__dict__.items()
      if key not in CHECKPOINTING_FIELDS
  }
  record['dataset'] = dataset.name
  record['num_examples'] = int(len(dataset.labels))
  # The data itself: the name and the count say where it came from, not that
  # its ratings are the same (an edited or other copy of the files).
  record['data_sha256'] = dataset_fingerprint(dataset)
  return record


def dataset_fingerprint(dataset: input_pipeline.Dataset) -> str:
  """sha256 of the examples, labels and splits (what a run computes from)."""
  return fingerprints.host_sha256(
      [dataset.feature_ids, dataset.feature_values, dataset.labels,
       dataset.movies] + [dataset.splits[name]
                          for name in sorted(dataset.splits)])
