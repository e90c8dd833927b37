"""How the tables are updated, and the jitted loop that runs the steps.

Three update paths (`UPDATES`):

- 'dense': autodiff through the model and an Optax update of both whole
  tables (any optimizer); frequency-aware ones get the rows each table read
  as ``ids={INPUT_TABLE: ..., OUTPUT_TABLE: ...}``.
- 'sparse': gradients with respect to the gathered rows (on a CPU in closed
  form, `model.loss_and_row_grads`; see `resolve_gradients`), and only those
  rows updated, through `fasgd_optax`'s sparse path (`SPARSE_OPTIMIZERS`).
  Repeated ids (`library_duplicates`): by default each occurrence is added
  on a CPU, as word2vec.c and gensim do (``duplicates='occurrences'``), and
  each row's occurrences are summed first on accelerators (``'reduce'``).
- 'scatter': 'sparse' with ``duplicates='occurrences'`` on every backend.
  The name is older than the library's option and stays so that recorded
  commands still run.

A round of steps runs in one jitted call (`make_train_round`): a
`lax.fori_loop` over the pass's batches, which stay on the device for the
whole pass, with negatives drawn inside from (key, step).
"""

from typing import Any, Callable, Optional

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax

import fasgd_optax
from examples.common import optimizers
from examples.word2vec import model as model_lib
from examples.word2vec import negatives as negatives_lib

INPUT_TABLE = model_lib.INPUT_TABLE
OUTPUT_TABLE = model_lib.OUTPUT_TABLE
UPDATES = ('dense', 'sparse', 'scatter')
SPARSE_OPTIMIZERS = optimizers.SPARSE
DUPLICATES = ('auto', 'scatter', 'reduce', 'occurrences')
# How the sparse step gets the rows' gradients (`sparse_step`).
GRADIENTS = ('auto', 'closed_form', 'autodiff')
# The held-out loss is computed in fixed-size chunks so it compiles once.
EVAL_CHUNK = 8192

StepFn = Callable[[Any, jax.Array, jax.Array, jax.Array], tuple[Any, Any]]


def check_update(update: str, optimizer: str, duplicates: str) -> None:
  """Raises a ValueError naming what does not fit together."""
  if update not in UPDATES:
    raise ValueError(f'update must be one of {", ".join(UPDATES)}; got '
                     f'{update!r}.')
  if duplicates not in DUPLICATES:
    raise ValueError(f'duplicates must be one of {", ".join(DUPLICATES)}; '
                     f'got {duplicates!r}.')
  if update != 'dense' and optimizer not in SPARSE_OPTIMIZERS:
    raise ValueError(
        f'--update={update} needs one of {", ".join(SPARSE_OPTIMIZERS)}; '
        f'optimizer {optimizer!r} has no such path. Use --update=dense.')
  if update == 'scatter' and duplicates == 'reduce':
    raise ValueError(f'--update=scatter is --update=sparse with '
                     f'duplicates=occurrences; got duplicates={duplicates!r}.')


def library_duplicates(update: str, duplicates: str) -> str:
  """The library's `duplicates` for a run's --update and --duplicates.

  'auto' adds each occurrence to its row on a CPU, as word2vec.c and gensim
  do (and as the recorded CPU results were measured): the cheapest update
  there, and this model's steps are large against its weights, where the
  library's exact CPU design ('scatter', summing each row's occurrences
  first) matters for small ones. Accelerators sum first ('reduce').
  """
  if update == 'scatter':
    return 'occurrences'
  if duplicates == 'auto':
    return ('occurrences' if fasgd_optax.resolve_duplicates() == 'scatter'
            else 'reduce')
  return duplicates


def check_cap(optimizer: str, max_learning_rate: Optional[float]) -> None:
  """η_max is for fa_sgd and cf_sgd, and positive."""
  if max_learning_rate is not None and (
      optimizer not in ('fa_sgd', 'cf_sgd') or not max_learning_rate > 0):
    raise ValueError(
        'max_learning_rate (η_max) is for fa_sgd and cf_sgd and must be > 0; '
        f'got {max_learning_rate!r} with optimizer {optimizer!r}.')


def sparse_optimizers(optimizer: str, learning_rate: float, *,
                      num_steps: int, frequencies: Optional[dict] = None,
                      max_learning_rate: Optional[float] = None,
                      duplicates: str = 'auto', schedule: str = 'constant'
                      ) -> dict[str, fasgd_optax.SparseTransformation]:
  """One `fasgd_optax.sparse_*` transformation per table."""
  def for_table(path):
    return optimizers.make_sparse_optimizer(
        optimizer, learning_rate, num_steps=num_steps,
        frequencies=None if frequencies is None else frequencies[path],
        max_learning_rate=max_learning_rate, duplicates=duplicates,
        schedule=schedule)

  return {path: for_table(path) for path in (INPUT_TABLE, OUTPUT_TABLE)}


def dense_optimizer(optimizer: str, learning_rate: float, *, num_steps: int,
                    frequencies: Optional[dict] = None,
                    max_learning_rate: Optional[float] = None,
                    schedule: str = 'constant'
                    ) -> optax.GradientTransformationExtraArgs:
  """The Optax transformation of both whole tables."""
  if max_learning_rate is None:
    return optimizers.make_optimizer(optimizer, learning_rate,
                                     num_steps=num_steps,
                                     frequencies=frequencies,
                                     schedule=schedule)
  # The shared factory has no η_max; the same optimizers, capped.
  learning_rate = optimizers.learning_rate_schedule(schedule, learning_rate,
                                                    num_steps)
  if optimizer == 'fa_sgd':
    tx = fasgd_optax.fa_sgd(learning_rate, frequencies, num_steps=num_steps,
                            max_learning_rate=max_learning_rate)
  else:
    tx = fasgd_optax.cf_sgd(learning_rate, num_steps=num_steps,
                            max_learning_rate=max_learning_rate)
  return optax.with_extra_args_support(tx)


def dense_step(graphdef, tx) -> StepFn:
  """Autodiff through the model; a dense Optax update of both tables."""

  def loss_fn(params, inputs, targets, negatives):
    return model_lib.merge(graphdef, params)(inputs, targets,
                                             negatives).mean()

  def step_fn(train_state, inputs, targets, negatives):
    params, opt_state = train_state['params'], train_state['opt_state']
    loss, grads = jax.value_and_grad(loss_fn)(params, inputs, targets,
                                              negatives)
    ids = {INPUT_TABLE: inputs,
           OUTPUT_TABLE: model_lib.output_ids(targets, negatives)}
    updates, opt_state = tx.update(grads, opt_state, params, ids=ids)
    return {'params': optax.apply_updates(params, updates),
            'opt_state': opt_state}, loss

  return step_fn


def resolve_gradients(gradients: str = 'auto') -> str:
  """'auto': 'closed_form' on a CPU, 'autodiff' on accelerators.

  On a CPU the closed form took a CBOW step in 0.57–0.76× the time
  (`profile_step --gradients`, README); the accelerators' speed against
  gensim was measured with autodiff's, and the closed form is not measured
  there.
  """
  if gradients not in GRADIENTS:
    raise ValueError(f'gradients must be one of {", ".join(GRADIENTS)}; got '
                     f'{gradients!r}.')
  if gradients == 'auto':
    return 'closed_form' if jax.default_backend() == 'cpu' else 'autodiff'
  return gradients


def sparse_step(model: str, sparse_txs, *, cbow_gradient: str = 'word2vec',
                gradients: str = 'auto') -> StepFn:
  """Gradients with respect to the gathered rows; only those rows updated.

  `gradients` (`resolve_gradients`): 'closed_form'
  (`model.loss_and_row_grads`) or 'autodiff' (``jax.value_and_grad``
  through `model.loss_from_rows`): the same values, computed differently.
  """
  gradients = resolve_gradients(gradients)

  def loss_and_grads(inputs, input_rows, targets, negatives, output_rows):
    if gradients == 'closed_form':
      return model_lib.loss_and_row_grads(
          model, inputs, input_rows, targets, negatives, output_rows,
          cbow_gradient=cbow_gradient)

    def loss_fn(input_rows, output_rows):
      return model_lib.loss_from_rows(
          model, inputs, input_rows, targets, negatives, output_rows,
          cbow_gradient=cbow_gradient).mean()

    loss, (input_grads, output_grads) = jax.value_and_grad(
        loss_fn, argnums=(0, 1))(input_rows, output_rows)
    return loss, input_grads, output_grads

  def step_fn(train_state, inputs, targets, negatives):
    input_table, output_table = model_lib.tables(train_state['params'])
    out_ids = model_lib.output_ids(targets, negatives)
    loss, input_grads, output_grads = loss_and_grads(
        inputs, model_lib.lookup(input_table, inputs), targets, negatives,
        model_lib.lookup(output_table, out_ids))
    opt_state = dict(train_state['opt_state'])
    input_table, opt_state[INPUT_TABLE] = sparse_txs[INPUT_TABLE].apply(
        input_table, opt_state[INPUT_TABLE], inputs, input_grads)
    output_table, opt_state[OUTPUT_TABLE] = sparse_txs[OUTPUT_TABLE].apply(
        output_table, opt_state[OUTPUT_TABLE], out_ids, output_grads)
    return {'params': model_lib.with_tables(input_table, output_table),
            'opt_state': opt_state}, loss

  return step_fn


def make_step(config, graphdef, params, *, num_steps: int,
              frequencies: Optional[dict] = None,
              gradients: str = 'auto') -> tuple[StepFn, Any]:
  """(step function, initial optimizer state) for `config`'s update path.

  Args:
    config: a `train.Config` (model, optimizer, learning_rate,
      learning_rate_schedule, max_learning_rate, update, duplicates,
      cbow_gradient).
    graphdef: `model.split`'s graphdef.
    params: `model.split`'s params.
    num_steps: the horizon T of fa_sgd and cf_sgd.
    frequencies: fa_sgd's per-table frequencies.
    gradients: the sparse step's (`sparse_step`).
  """
  check_update(config.update, config.optimizer, config.duplicates)
  check_cap(config.optimizer, config.max_learning_rate)
  if config.update == 'dense':
    tx = dense_optimizer(config.optimizer, config.learning_rate,
                         num_steps=num_steps, frequencies=frequencies,
                         max_learning_rate=config.max_learning_rate,
                         schedule=config.learning_rate_schedule)
    return dense_step(graphdef, tx), tx.init(params)
  duplicates = library_duplicates(config.update, config.duplicates)
  txs = sparse_optimizers(config.optimizer, config.learning_rate,
                          num_steps=num_steps, frequencies=frequencies,
                          max_learning_rate=config.max_learning_rate,
                          duplicates=duplicates,
                          schedule=config.learning_rate_schedule)
  opt_state = {path: txs[path].init(table) for path, table in
               zip((INPUT_TABLE, OUTPUT_TABLE), model_lib.tables(params))}
  return (sparse_step(config.model, txs, cbow_gradient=config.cbow_gradient,
                      gradients=gradients), opt_state)


def make_train_round(step_fn: StepFn, num_negatives: int):
  """Jits the steps of a round: ``(state, pass, begin, end, key, noise)``.

  The returned function takes the training state (donated), a whole pass's
  batches (`inputs` (steps, batch, ...) and `targets` (steps, batch)), the
  round's steps [begin, end), the pass's key and the noise distribution's
  alias tables (`accept`, `alias`), and returns the new state and the
  per-step losses (zero outside [begin, end)).

  Negatives are drawn inside from ``fold_in(key, step)``, so a run is a pure
  function of (seed, pass, step) and resumes exactly. Running a round's steps
  in one call (a `lax.fori_loop`) keeps Python dispatch out of the step time;
  every pass has the same number of batches and the bounds are traced, so a
  run compiles this once.
  """

  def train_round(train_state, inputs, targets, begin, end, key, accept,
                  alias):
    def body(i, carry):
      state, losses = carry
      negative_ids = negatives_lib.draw(
          jax.random.fold_in(key, i), accept, alias,
          targets.shape[1:] + (num_negatives,))
      state, loss = step_fn(state, inputs[i], targets[i], negative_ids)
      return state, losses.at[i].set(loss)

    losses = jnp.zeros((targets.shape[0],), jnp.float32)
    return jax.lax.fori_loop(begin, end, body, (train_state, losses))

  return jax.jit(train_round, donate_argnums=(0,))


# XLA's CPU compiler (JAX 0.10 and 0.11) hands reductions to YNNPACK by
# default, and the closed-form gradients' products and sums (`model.
# loss_and_row_grads`) then made a CBOW step 3.5 times slower; without it,
# XLA fuses them into its own loops, and the step took 0.57× (JAX 0.10.2)
# and 0.76× (0.11.2) the time of autodiff's (`profile_step --gradients`,
# README).
CPU_COMPILER_OPTIONS = {'xla_cpu_experimental_ynn_fusion_type': ''}


def compile_round(lowered: jax.stages.Lowered, *,
                  cpu_options: bool = True) -> jax.stages.Compiled:
  """Compiles a lowered round, with `CPU_COMPILER_OPTIONS` on a CPU.

  An XLA that no longer has these options compiles without them, and says
  so: the step is the same, only slower. `cpu_options=False`: XLA's
  defaults (`profile_step`'s comparison).
  """
  if jax.default_backend() != 'cpu' or not cpu_options:
    return lowered.compile()
  try:
    return lowered.compile(compiler_options=CPU_COMPILER_OPTIONS)
  except jax.errors.JaxRuntimeError as error:
    if 'compile option' not in str(error):
      raise
    logging.warning('This XLA refuses the CPU compile options %s (%s); the '
                    'step compiles without them, and may be slower.',
                    CPU_COMPILER_OPTIONS, error)
    return lowered.compile()


def make_evaluate(graphdef) -> Callable[[Any, Any], float]:
  """Mean loss over fixed held-out examples and negatives.

  The returned function takes params and a `train.HeldOut`.
  """

  @jax.jit
  def chunk_loss(params, inputs, targets, negatives, weights):
    return (model_lib.merge(graphdef, params)(inputs, targets, negatives) *
            weights).sum()

  def evaluate(params, heldout) -> float:
    n = heldout.size
    # Summed on the device: one sync at the end, not one per chunk.
    total = jnp.zeros((), jnp.float32)
    for start in range(0, n, EVAL_CHUNK):
      stop = min(start + EVAL_CHUNK, n)
      pad = EVAL_CHUNK - (stop - start)

      def padded(x):
        return np.pad(x[start:stop], [(0, pad)] + [(0, 0)] * (x.ndim - 1))

      weights = np.pad(np.ones(stop - start, np.float32), (0, pad))
      total = total + chunk_loss(params, padded(heldout.inputs),
                                 padded(heldout.targets),
                                 padded(heldout.negatives), weights)
    return float(total) / max(n, 1)

  return evaluate
