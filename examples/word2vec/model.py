"""Skip-gram and CBOW with negative sampling: the model and its loss.

The model is two embedding tables, as in word2vec: `input_embed` (the word
vectors one keeps) and `output_embed` (the vectors words are scored against).
For an example with input vector h (a center word for skip-gram, the mean of
the context words for CBOW), a positive target t and negatives n_1..n_K drawn
from the unigram^0.75 distribution, the loss is

  -log σ(h·u_t) - Σ_k log σ(-h·u_{n_k}),

averaged over the batch.

CBOW's gradient comes in two conventions (`CBOW_GRADIENTS`). Both compute h
as the mean of the context rows. 'autodiff' differentiates that mean, so each
context row receives ∂loss/∂h divided by the number of context words.
'word2vec' is word2vec.c's and gensim's (``cbow_mean=1``): each context row
receives ∂loss/∂h itself, unscaled. Optimizers that normalise per row or per
element (Adam, Adagrad, row-wise Adagrad) barely notice the difference; SGD,
FA-SGD and CF-SGD take steps about 2·window/2 times larger on the input table
with 'word2vec'.
"""

from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp

MODELS = ('skipgram', 'cbow')
CBOW_GRADIENTS = ('word2vec', 'autodiff')
INPUT_TABLE = 'input_embed/embedding'
OUTPUT_TABLE = 'output_embed/embedding'


def check_model(model: str, cbow_gradient: str = 'word2vec') -> None:
  if model not in MODELS:
    raise ValueError(f'model must be skipgram or cbow; got {model!r}.')
  if cbow_gradient not in CBOW_GRADIENTS:
    raise ValueError(f'cbow_gradient must be one of {", ".join(CBOW_GRADIENTS)}'
                     f'; got {cbow_gradient!r}.')


class Word2Vec(nnx.Module):
  """Skip-gram or CBOW with negative sampling: two (vocab, dim) tables."""

  def __init__(self, vocab_size: int, dim: int, *, model: str,
               rngs: nnx.Rngs, cbow_gradient: str = 'word2vec'):
    check_model(model, cbow_gradient)
    self.model = model
    self.cbow_gradient = cbow_gradient
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
                          output_rows, cbow_gradient=self.cbow_gradient)


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


@jax.custom_vjp
def _mean_with_unscaled_gradient(rows: jax.Array,
                                 weights: jax.Array) -> jax.Array:
  return _context_mean(rows, weights)


def _mean_forward(rows, weights):
  return _context_mean(rows, weights), weights


def _mean_backward(weights, hidden_grad):
  # word2vec.c: every context word's row gets the hidden layer's error, not
  # error / |context|.
  return hidden_grad[..., None, :] * weights[..., None], jnp.zeros_like(
      weights)


_mean_with_unscaled_gradient.defvjp(_mean_forward, _mean_backward)


def _context_mean(rows: jax.Array, weights: jax.Array) -> jax.Array:
  # A batched matrix product, as for the scores: XLA's CPU reduction of
  # (rows * weights).sum(-2) took 15 times longer.
  mean_weights = weights / jnp.maximum(weights.sum(-1), 1.0)[..., None]
  return jnp.einsum('bc,bcd->bd', mean_weights, rows)


def cbow_hidden(context_ids: jax.Array, context_rows: jax.Array,
                cbow_gradient: str = 'word2vec') -> jax.Array:
  """CBOW's hidden vector: the mean of the context rows, -1 slots left out.

  Args:
    context_ids: (batch, 2·window), -1 for empty slots.
    context_rows: (batch, 2·window, dim), their rows.
    cbow_gradient: 'word2vec' (each context row's gradient is the hidden
      vector's) or 'autodiff' (the mean's own gradient: divided by the number
      of context words).

  Returns:
    (batch, dim); the value is the same for both conventions.
  """
  weights = (context_ids >= 0).astype(context_rows.dtype)
  if cbow_gradient == 'word2vec':
    return _mean_with_unscaled_gradient(context_rows, weights)
  if cbow_gradient == 'autodiff':
    return _context_mean(context_rows, weights)
  raise ValueError(f'cbow_gradient must be one of {", ".join(CBOW_GRADIENTS)}'
                   f'; got {cbow_gradient!r}.')


def loss_from_rows(model: str, inputs, input_rows, targets, negatives,
                   output_rows, *, cbow_gradient: str = 'word2vec'
                   ) -> jax.Array:
  """Per-example negative-sampling loss from gathered rows.

  Args:
    model: 'skipgram' (h = the center's row) or 'cbow' (h = the mean of the
      context rows, -1 slots left out; see `cbow_hidden`).
    inputs: input-table ids, (batch,) or (batch, 2·window) with -1 padding.
    input_rows: their rows, `inputs.shape + (dim,)`.
    targets: (batch,) positive output ids.
    negatives: (batch, K) negative output ids.
    output_rows: (batch, 1 + K, dim) rows of `output_ids(targets, negatives)`.
    cbow_gradient: CBOW's gradient convention (see the module docstring).

  Returns:
    -log σ(h·u_t) - Σ_k log σ(-h·u_{n_k}) per example, skipping a negative
    equal to the target as word2vec and gensim do.
  """
  if model == 'skipgram':
    hidden = input_rows
  else:
    hidden = cbow_hidden(inputs, input_rows, cbow_gradient)
  # A batched matrix product: on CPU much faster than a multiply and a
  # reduction over the last axis, and so is its transpose in the backward
  # pass.
  scores = jnp.einsum('bd,bkd->bk', hidden, output_rows)
  return _loss_from_scores(scores, _distinct(targets, negatives, scores.dtype))


def _distinct(targets: jax.Array, negatives: jax.Array, dtype) -> jax.Array:
  """1 for each negative that is not its example's target, else 0."""
  return (negatives != targets[:, None]).astype(dtype)


def _loss_from_scores(scores: jax.Array, distinct: jax.Array) -> jax.Array:
  """Per example, from the (batch, 1 + K) scores h·u: the target's first."""
  return -jax.nn.log_sigmoid(scores[:, 0]) - (
      jax.nn.log_sigmoid(-scores[:, 1:]) * distinct).sum(-1)


def loss_and_row_grads(model: str, inputs, input_rows, targets, negatives,
                       output_rows, *, cbow_gradient: str = 'word2vec'
                       ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The batch's mean loss and its gradients with respect to the rows.

  The same as ``jax.value_and_grad`` of ``loss_from_rows(...).mean()`` with
  respect to `input_rows` and `output_rows` (the tests check it), in
  word2vec.c's closed form: with g_k = σ(h·u_k) - 1 for the target and
  σ(h·u_k) for a negative (0 for a negative equal to the target), divided
  by the batch size, output row k gets g_k·h and the input side gets
  Σ_k g_k·u_k, as the hidden vector's gradient (see `cbow_hidden` for how
  CBOW hands it to the context rows).

  Written as products and sums over the batch's axes, with no batched matrix
  products: on a CPU, compiled with `steps.CPU_COMPILER_OPTIONS`, XLA fuses
  them into a few loops, and a CBOW step took 0.57–0.76× the time of
  autodiff through `loss_from_rows` (`profile_step.py`, README).

  Args: as `loss_from_rows`.

  Returns:
    (mean loss, gradient of `input_rows`' shape, gradient of `output_rows`'
    shape).
  """
  check_model(model, cbow_gradient)
  if model == 'skipgram':
    hidden = input_rows
  else:
    weights = (inputs >= 0).astype(input_rows.dtype)
    context_size = jnp.maximum(weights.sum(-1), 1.0)
    hidden = (input_rows * weights[..., None]).sum(-2) / context_size[:, None]
  scores = (hidden[:, None, :] * output_rows).sum(-1)
  distinct = _distinct(targets, negatives, scores.dtype)
  loss = _loss_from_scores(scores, distinct).mean()
  score_grads = jnp.concatenate(
      [jax.nn.sigmoid(scores[:, :1]) - 1.0,
       jax.nn.sigmoid(scores[:, 1:]) * distinct], axis=1) / scores.shape[0]
  output_grads = score_grads[:, :, None] * hidden[:, None, :]
  hidden_grad = (score_grads[:, :, None] * output_rows).sum(1)
  if model == 'skipgram':
    return loss, hidden_grad, output_grads
  slot_weights = (weights if cbow_gradient == 'word2vec'
                  else weights / context_size[:, None])
  return loss, hidden_grad[:, None, :] * slot_weights[..., None], output_grads


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
  """(input table, output table) of `split`'s params."""
  return params['input_embed']['embedding'], params['output_embed']['embedding']


def with_tables(input_table, output_table) -> dict[str, Any]:
  """`split`'s params holding these tables."""
  return {'input_embed': {'embedding': input_table},
          'output_embed': {'embedding': output_table}}
