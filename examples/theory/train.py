"""Training loops for the theory check: SGD, FA-SGD and CF-SGD on `problem`.

Every run is one jitted `jax.lax.scan` over the T steps, vmapped over a grid of
α and over seeds, so a whole method's grid compiles once. Along the way the
full-batch per-row gradient norms ‖∇_k f(Θ^t)‖² are recorded at K evenly
spaced iterates t = T/K, 2T/K, ..., T; their mean is E_τ‖∇_k f(Θ^τ)‖² for a
stopping time τ uniform on that grid (with K = T, exactly τ ~ Unif{1..T}, the
output rule of the paper's theorems).
"""

import dataclasses
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import fasgd_optax
from examples.theory import analysis
from examples.theory import problem as problem_lib

METHODS = ('sgd', 'fa_sgd', 'cf_sgd')


@dataclasses.dataclass(frozen=True)
class Setup:
  """Everything that defines one experiment except α and the seed."""
  num_users: int = 32
  num_items: int = 32
  dim: int = 4
  distribution: str = 'exponential'
  tau: float = 0.15
  zipf_exponent: float = 1.0
  planted_norm: float = 2.0
  init_norm: float = 2.0
  batch_size: int = 1
  num_steps: int = 200_000
  num_evals: int = 200

  def __post_init__(self):
    for name in ('num_users', 'num_items', 'dim', 'batch_size', 'num_steps',
                 'num_evals'):
      value = getattr(self, name)
      if not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f'{name} must be a positive int; got {value!r}.')
    if self.num_steps % self.num_evals:
      raise ValueError(
          f'num_steps ({self.num_steps}) must be a multiple of num_evals '
          f'({self.num_evals}) so the evaluated iterates are evenly spaced.')
    for name in ('planted_norm', 'init_norm'):
      if not getattr(self, name) > 0:
        raise ValueError(f'{name} must be > 0; got {getattr(self, name)!r}.')
    # Validates distribution, tau and zipf_exponent.
    self.user_probs()

  def user_probs(self) -> np.ndarray:
    return problem_lib.rank_probabilities(
        self.num_users, self.distribution, tau=self.tau,
        zipf_exponent=self.zipf_exponent)

  def item_probs(self) -> np.ndarray:
    return problem_lib.rank_probabilities(
        self.num_items, self.distribution, tau=self.tau,
        zipf_exponent=self.zipf_exponent)

  @property
  def smoothness(self) -> float:
    return problem_lib.smoothness_at_planted(self.planted_norm)

  @property
  def max_learning_rate(self) -> float:
    """The paper's cap 1/(4L) on every step size."""
    return 1.0 / (4.0 * self.smoothness)

  @property
  def reference_alpha(self) -> float:
    """sqrt(T)/(4L): the α at which a row seen every step reaches the cap."""
    return math.sqrt(self.num_steps) * self.max_learning_rate


def sgd_learning_rate(alpha: Any, setup: Setup) -> Any:
  """The paper's Theorem 2 step size, min(1/(4L), α/sqrt(T))."""
  return jnp.minimum(setup.max_learning_rate,
                     alpha / math.sqrt(setup.num_steps))


def row_step_sizes(method: str, alpha: float,
                   setup: Setup) -> dict[str, np.ndarray]:
  """Each row's step size η_k per table; CF-SGD's is its value once n_k/t ≈ p_k."""
  cap = setup.max_learning_rate
  probs = {'users': setup.user_probs(), 'items': setup.item_probs()}
  if method == 'sgd':
    eta = min(cap, alpha / math.sqrt(setup.num_steps))
    return {t: np.full(len(p), eta) for t, p in probs.items()}
  if method in ('fa_sgd', 'cf_sgd'):
    return {t: np.minimum(cap, alpha / np.sqrt(
        setup.num_steps * setup.batch_size * p)) for t, p in probs.items()}
  raise ValueError(f'method must be one of {METHODS}; got {method!r}.')


def make_optimizer(method: str, alpha: Any,
                   setup: Setup) -> optax.GradientTransformationExtraArgs:
  """The optimizer for `method` with α = `alpha` (may be traced).

  FA-SGD gets the true expected occurrences per step, p_k = B π_k, so its
  step for row k is min(1/(4L), α/sqrt(T p_k)); CF-SGD estimates p_k online.
  """
  if method == 'sgd':
    return optax.sgd(sgd_learning_rate(alpha, setup))
  if method == 'fa_sgd':
    frequencies = {
        'users': setup.batch_size * setup.user_probs(),
        'items': setup.batch_size * setup.item_probs(),
    }
    return fasgd_optax.fa_sgd(alpha, frequencies, num_steps=setup.num_steps,
                              max_learning_rate=setup.max_learning_rate)
  if method == 'cf_sgd':
    return fasgd_optax.cf_sgd(alpha, num_steps=setup.num_steps,
                              max_learning_rate=setup.max_learning_rate)
  raise ValueError(f'method must be one of {METHODS}; got {method!r}.')


def train_one(method: str, setup: Setup, alpha: jax.Array,
              seed: jax.Array) -> dict[str, Any]:
  """`train_with` the optimizer of `method` at α = `alpha` (may be traced)."""
  return train_with(make_optimizer(method, alpha, setup), setup, seed)


def train_with(optimizer: optax.GradientTransformationExtraArgs, setup: Setup,
               seed: jax.Array) -> dict[str, Any]:
  """One run: draws the problem and the initial tables from `seed`, trains T steps.

  Args:
    optimizer: called as ``update(grads, state, params, ids={'users': ...,
      'items': ...})`` with the step's sampled rows.
    setup: the experiment.
    seed: an int32 scalar; it picks the planted tables, the initial tables and
      the sample stream (the same for every optimizer).

  Returns:
    A dict with 'final_loss' (f(Θ^T) - f*), 'loss_curve' ((K,) f(Θ^t) - f* at
    the evaluated iterates), 'mean_grad_sq' and 'final_grad_sq' (per table:
    the mean of ‖∇_k f‖² over the K evaluated iterates, and at Θ^T), and
    'params' (Θ^T).
  """
  root = jax.random.fold_in(jax.random.key(0), seed)
  problem_key, init_key, data_key = jax.random.split(root, 3)
  problem = problem_lib.make_problem(
      problem_key, setup.user_probs(), setup.item_probs(), dim=setup.dim,
      planted_norm=setup.planted_norm)
  params = problem_lib.init_params(init_key, problem, setup.init_norm)
  opt_state = optimizer.init(params)
  optimal = problem_lib.optimal_loss(problem)
  grad_fn = jax.grad(problem_lib.batch_loss)
  steps_per_eval = setup.num_steps // setup.num_evals

  def train_step(carry, step):
    params, opt_state = carry
    user_ids, item_ids, labels = problem_lib.sample_batch(
        jax.random.fold_in(data_key, step), problem, setup.batch_size)
    grads = grad_fn(params, user_ids, item_ids, labels)
    # SGD and FA-SGD ignore ids; CF-SGD counts them.
    updates, opt_state = optimizer.update(
        grads, opt_state, params, ids={'users': user_ids, 'items': item_ids})
    return (optax.apply_updates(params, updates), opt_state), None

  def train_segment(carry, segment):
    carry, _ = jax.lax.scan(
        train_step, carry,
        segment * steps_per_eval + jnp.arange(steps_per_eval))
    params, _ = carry
    metrics = (problem_lib.full_loss(params, problem) - optimal,
               problem_lib.row_grad_sq_norms(params, problem))
    return carry, metrics

  (params, _), (loss_curve, grad_sq) = jax.lax.scan(
      train_segment, (params, opt_state), jnp.arange(setup.num_evals))
  return {
      'final_loss': loss_curve[-1],
      'loss_curve': loss_curve,
      'mean_grad_sq': jax.tree.map(lambda g: jnp.mean(g, axis=0), grad_sq),
      'final_grad_sq': jax.tree.map(lambda g: g[-1], grad_sq),
      'params': params,
  }


def run_grid(method: str, setup: Setup, alphas: np.ndarray,
             seeds: np.ndarray) -> dict[str, Any]:
  """`train_one` for every (α, seed) pair; outputs lead with (len(alphas), len(seeds))."""
  run = jax.vmap(
      jax.vmap(lambda a, s: train_one(method, setup, a, s), in_axes=(None, 0)),
      in_axes=(0, None))
  outputs = jax.jit(run)(jnp.asarray(alphas, jnp.float32),
                         jnp.asarray(seeds, jnp.int32))
  return jax.tree.map(np.asarray, outputs)


def tune_and_evaluate(method: str, setup: Setup, alphas: np.ndarray,
                      tuning_seeds: np.ndarray,
                      eval_seeds: np.ndarray) -> dict[str, Any]:
  """Picks α by the mean final excess loss on `tuning_seeds`; reports `eval_seeds`.

  Both seed sets run in one compiled grid; the reported runs never took part
  in choosing α.

  Returns:
    A dict with 'alpha', 'alpha_index', 'tuning_losses' (mean final excess
    loss per α on the tuning seeds) and 'runs' (the `train_one` outputs at the
    chosen α, leading axis over `eval_seeds`).
  """
  seeds = np.concatenate([tuning_seeds, eval_seeds])
  outputs = run_grid(method, setup, alphas, seeds)
  num_tuning = len(tuning_seeds)
  tuning_losses = outputs['final_loss'][:, :num_tuning].mean(axis=1)
  finite = np.isfinite(tuning_losses)
  if not finite.any():
    raise ValueError(
        f'every α on the grid diverged for {method}: {alphas.tolist()}; lower '
        'the grid (--alpha_log2_max).')
  # A diverged run gives nan or inf: never choose it.
  best = int(np.nanargmin(np.where(finite, tuning_losses, np.nan)))
  runs = jax.tree.map(lambda x: x[best, num_tuning:], outputs)
  return {
      'alpha': float(alphas[best]),
      'alpha_index': best,
      'tuning_losses': tuning_losses,
      'runs': runs,
  }


def alpha_grid(setup: Setup, log2_min: float, log2_max: float,
               points_per_octave: int) -> np.ndarray:
  """α = reference_alpha · 2^e for e from log2_min to log2_max, evenly spaced."""
  if log2_max < log2_min or points_per_octave < 1:
    raise ValueError(
        f'need log2_min <= log2_max and points_per_octave >= 1; got '
        f'{log2_min}, {log2_max}, {points_per_octave}.')
  count = int(round((log2_max - log2_min) * points_per_octave)) + 1
  return setup.reference_alpha * 2.0 ** np.linspace(log2_min, log2_max, count)


def run_experiment(setup: Setup, alphas: np.ndarray, *, num_seeds: int,
                   num_tuning_seeds: int,
                   num_bootstrap: int = 1000) -> dict[str, Any]:
  """Tunes and evaluates the three methods; fits the ratio slopes.

  Evaluation seeds are 0..num_seeds-1; tuning seeds start at 10,000. The fits'
  95% intervals come from `num_bootstrap` resamples of the evaluation seeds.

  Returns:
    A JSON-ready dict: the setup, each method's chosen α, tuning losses and
    per-rank gradient norms, and the fits of `analysis.slope_fits`.
  """
  eval_seeds = np.arange(num_seeds)
  tuning_seeds = 10_000 + np.arange(num_tuning_seeds)
  probs = {'users': setup.user_probs(), 'items': setup.item_probs()}
  methods, runs_by_method = {}, {}
  for method in METHODS:
    started = time.perf_counter()
    result = tune_and_evaluate(method, setup, alphas, tuning_seeds, eval_seeds)
    runs = result['runs']
    methods[method] = {
        'alpha': result['alpha'],
        'alpha_over_reference': result['alpha'] / setup.reference_alpha,
        'alpha_at_grid_edge': result['alpha_index'] in (0, len(alphas) - 1),
        'tuning_final_excess_loss': result['tuning_losses'].tolist(),
        'final_excess_loss_mean': float(runs['final_loss'].mean()),
        'final_excess_loss_std': float(runs['final_loss'].std()),
        'excess_loss_curve': runs['loss_curve'].mean(axis=0).tolist(),
        'mean_grad_sq': {t: v.mean(axis=0).tolist()
                         for t, v in runs['mean_grad_sq'].items()},
        'final_grad_sq': {t: v.mean(axis=0).tolist()
                          for t, v in runs['final_grad_sq'].items()},
        'per_seed': {
            quantity: {t: v.tolist() for t, v in runs[quantity].items()}
            for quantity in ('mean_grad_sq', 'final_grad_sq')},
        'row_step_sizes': {
            t: v.tolist()
            for t, v in row_step_sizes(method, result['alpha'], setup).items()},
        'seconds': time.perf_counter() - started,
    }
    runs_by_method[method] = runs
  fits = {}
  sgd_steps = methods['sgd']['row_step_sizes']
  for method in ('fa_sgd', 'cf_sgd'):
    # The tail: rows where this method steps further than SGD (where Corollary
    # 3 expects the speed-up) and below the cap 1/(4L), so that the ratio of
    # step sizes is ∝ p_k^(-1/2) as in the bounds.
    tail = {}
    for t in probs:
      steps = np.asarray(methods[method]['row_step_sizes'][t])
      tail[t] = (steps > np.asarray(sgd_steps[t])) & (
          steps < setup.max_learning_rate)
    fits[method] = {
        quantity: analysis.slope_fits(
            runs_by_method['sgd'][quantity], runs_by_method[method][quantity],
            probs, tail,
            num_bootstrap=num_bootstrap)
        for quantity in ('mean_grad_sq', 'final_grad_sq')
    }
    fits[method]['tail_rows'] = {t: m.tolist() for t, m in tail.items()}
    # Where the uncapped FA-SGD step α/sqrt(T B p) equals SGD's step, in
    # x = ln(p_1/p): the knee a step-size-ratio model of the ratio predicts.
    crossing_prob = methods[method]['alpha'] ** 2 / (
        setup.num_steps * setup.batch_size * sgd_steps['users'][0] ** 2)
    fits[method]['step_crossing_depth'] = {
        t: float(np.log(p[0] / crossing_prob)) for t, p in probs.items()}
  prediction = {
      'slope_vs_log_frequency_bounds': 0.5,
      'slope_vs_log_frequency_corollary': 1.0,
  }
  if setup.distribution == 'exponential':
    prediction['slope_per_rank_bounds'] = setup.tau / 2
    prediction['slope_per_rank_corollary'] = setup.tau
  return {
      'setup': dataclasses.asdict(setup),
      'smoothness_L': setup.smoothness,
      'max_learning_rate': setup.max_learning_rate,
      'reference_alpha': setup.reference_alpha,
      'alphas': alphas.tolist(),
      'num_seeds': num_seeds,
      'num_tuning_seeds': num_tuning_seeds,
      'num_bootstrap': num_bootstrap,
      'probs': {t: p.tolist() for t, p in probs.items()},
      'eval_steps': ((np.arange(setup.num_evals) + 1)
                     * (setup.num_steps // setup.num_evals)).tolist(),
      'methods': methods,
      'fits': fits,
      'prediction': prediction,
  }
