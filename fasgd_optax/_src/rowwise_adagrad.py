"""Row-wise Adagrad: one accumulator per row (FBGEMM's EXACT_ROWWISE_ADAGRAD).

The industrial baseline for embedding tables: it adapts each row's step size
like Adagrad, but keeps one float per row instead of one per element, so its
memory is (1 + 1/d)× the table's, the same as FA-SGD and CF-SGD.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fasgd_optax._src import checks
from fasgd_optax._src import counting
from fasgd_optax._src import tree_args

ScalarOrSchedule = optax.ScalarOrSchedule


class ScaleByRowwiseAdagradState(NamedTuple):
  """State of `scale_by_rowwise_adagrad`: one accumulator per row."""
  accumulators: optax.Params  # per leaf: shape=leaf.shape[:1], float32.


def check_hyperparameters(epsilon, initial_accumulator_value) -> None:
  """Raises a ValueError naming a hyperparameter that is out of range."""
  checks.check_positive('epsilon', epsilon)
  if checks.is_traced(initial_accumulator_value):
    return
  # NumPy, not jnp: inside a trace (`jit`, `eval_shape`) a jnp value of a
  # Python float would be traced and could not be tested.
  value = np.asarray(initial_accumulator_value)
  if (not checks.is_number_dtype(value.dtype) or value.ndim != 0
      or not np.isfinite(value) or value < 0):
    raise ValueError(
        '`initial_accumulator_value` must be a finite scalar >= 0; got '
        f'{initial_accumulator_value!r}.')


def row_mean_squares(grad: jax.Array) -> jax.Array:
  """mean(g_k²) over each row's elements, float32, shape ``grad.shape[:1]``."""
  squares = jnp.square(grad.astype(jnp.float32))
  if grad.ndim <= 1:
    return squares
  return jnp.mean(squares, axis=tuple(range(1, grad.ndim)))


def rowwise_scale(accumulators: jax.Array, epsilon: float) -> jax.Array:
  """1 / (sqrt(acc_k) + eps), float32."""
  return 1.0 / (jnp.sqrt(accumulators) + jnp.asarray(epsilon, jnp.float32))


def scale_by_rowwise_adagrad(
    epsilon: float = 1e-8,
    initial_accumulator_value: float = 0.0,
) -> optax.GradientTransformationExtraArgs:
  r"""Scales each row's gradient by its row-wise Adagrad factor.

  For row k of each leaf, with :math:`g_k` the row's gradient of d elements,

  .. math::
    a_k \leftarrow a_k + \frac{1}{d}\sum_j g_{kj}^2, \qquad
    u_k = \frac{g_k}{\sqrt{a_k} + \epsilon}.

  Every row's accumulator is updated every step; a row with a zero gradient
  gets a zero update and keeps its accumulator. A scalar leaf is one row.

  Args:
    epsilon: ε, added to sqrt(a_k) for numerical stability.
    initial_accumulator_value: a_k before the first update.

  Returns:
    An `optax.GradientTransformationExtraArgs` with a
    `ScaleByRowwiseAdagradState`; extra args such as ``ids`` are accepted and
    ignored, so the same ``update`` call serves it and `cf_sgd`.
  """
  check_hyperparameters(epsilon, initial_accumulator_value)

  def init_fn(params):
    return ScaleByRowwiseAdagradState(accumulators=counting.per_row_state(
        params, jnp.float32, fill=initial_accumulator_value))

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    if not isinstance(state, ScaleByRowwiseAdagradState):
      raise TypeError(
          'scale_by_rowwise_adagrad (rowwise_adagrad) needs the state its '
          '`init` made, a ScaleByRowwiseAdagradState; got '
          f'{type(state).__name__}.')

    def accumulate(path, grad, acc):
      counting.check_row_state(tree_args.path_to_str(path), grad, acc,
                               'accumulators', jnp.float32)
      return counting.keep_sharding(acc + row_mean_squares(grad), acc)

    counting.row_state_leaves(tree_args.leaves_with_paths(updates)[1],
                              state.accumulators, 'accumulators')
    accumulators = jax.tree_util.tree_map_with_path(
        accumulate, updates, state.accumulators)
    new_updates = jax.tree.map(
        lambda grad, acc: counting.scale_rows(grad, rowwise_scale(acc, epsilon)),
        updates, accumulators)
    return new_updates, ScaleByRowwiseAdagradState(accumulators=accumulators)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def rowwise_adagrad(
    learning_rate: ScalarOrSchedule,
    *,
    epsilon: float = 1e-8,
    initial_accumulator_value: float = 0.0,
) -> optax.GradientTransformationExtraArgs:
  r"""Row-wise Adagrad, as FBGEMM's ``EXACT_ROWWISE_ADAGRAD``.

  Row k of each parameter leaf moves by
  :math:`-\frac{\alpha_t}{\sqrt{a_k} + \epsilon} g_k` after
  :math:`a_k \mathrel{+}= \mathrm{mean}_j(g_{kj}^2)`. One float32 accumulator per
  row: (1 + 1/d)× the parameters' memory, against 2× for `optax.adagrad`.
  This dense version updates every row every step; `sparse_rowwise_adagrad`
  updates only the rows a batch touched.

  Args:
    learning_rate: α, a float or an Optax schedule.
    epsilon: ε, added to sqrt(a_k).
    initial_accumulator_value: a_k before the first update (≥ 0).

  Returns:
    An `optax.GradientTransformationExtraArgs` (extra args such as ``ids`` are
    accepted and ignored). Its state is
    ``(ScaleByRowwiseAdagradState, <scale_by_learning_rate state>)``.

  Example:
    >>> import jax.numpy as jnp, optax, fasgd_optax
    >>> params = {'embed': jnp.zeros((4, 2))}
    >>> tx = fasgd_optax.rowwise_adagrad(0.1)
    >>> state = tx.init(params)
    >>> grads = {'embed': jnp.array([[3., 4.], [0., 0.], [1., 1.], [0., 0.]])}
    >>> updates, state = tx.update(grads, state, params)
    >>> state[0].accumulators['embed'].tolist()
    [12.5, 0.0, 1.0, 0.0]

  References:
    Mudigere et al., `Software-Hardware Co-design for Fast and Scalable
    Training of Deep Learning Recommendation Models
    <https://arxiv.org/abs/2104.05158>`_, 2021 (FBGEMM's row-wise Adagrad).
  """
  checks.check_positive('learning_rate', learning_rate)
  scale = optax.scale_by_learning_rate(learning_rate)
  return optax.chain(
      scale_by_rowwise_adagrad(
          epsilon=epsilon, initial_accumulator_value=initial_accumulator_value),
      optax.GradientTransformation(
          lambda params: counting.replicate_scalars(scale.init(params),
                                                    params),
          scale.update),
  )
