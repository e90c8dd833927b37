"""Tests of the theory check: the problem, the training loops and the fits."""

import math
import os
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

import fasgd_optax
from examples.common import testing
from examples.theory import analysis
from examples.theory import problem as problem_lib
from examples.theory import train


def _tiny_problem(seed=0, num_users=5, num_items=4, dim=3):
  probs_u = problem_lib.rank_probabilities(num_users, 'exponential', tau=0.5)
  probs_v = problem_lib.rank_probabilities(num_items, 'zipf', zipf_exponent=1.2)
  return problem_lib.make_problem(jax.random.key(seed), probs_u, probs_v,
                                  dim=dim, planted_norm=1.5)


class ProblemTest(parameterized.TestCase):

  def test_row_gradients_match_autodiff(self):
    problem = _tiny_problem()
    params = problem_lib.init_params(jax.random.key(1), problem, init_norm=1.0)
    closed_form = problem_lib.full_row_gradients(params, problem)
    autodiff = jax.grad(problem_lib.full_loss)(params, problem)
    chex.assert_trees_all_close(closed_form, autodiff, rtol=1e-5, atol=1e-7)
    norms = problem_lib.row_grad_sq_norms(params, problem)
    np.testing.assert_allclose(norms['users'],
                               np.sum(np.square(autodiff['users']), axis=1),
                               rtol=1e-5)

  def test_planted_tables_are_the_minimum(self):
    problem = _tiny_problem()
    planted = {'users': problem.true_users, 'items': problem.true_items}
    grads = problem_lib.full_row_gradients(planted, problem)
    chex.assert_trees_all_close(grads, jax.tree.map(jnp.zeros_like, grads),
                                atol=1e-6)
    other = problem_lib.init_params(jax.random.key(2), problem, init_norm=1.5)
    self.assertGreater(problem_lib.full_loss(other, problem),
                       problem_lib.optimal_loss(problem))

  @parameterized.parameters(('exponential', 0.4, 1.0), ('zipf', 1.0, 1.3))
  def test_sampled_frequencies_match_the_distribution(self, distribution, tau,
                                                      zipf_exponent):
    num_rows, num_samples = 12, 200_000
    probs = problem_lib.rank_probabilities(
        num_rows, distribution, tau=tau, zipf_exponent=zipf_exponent)
    ranks = np.arange(1, num_rows + 1)
    expected = (np.exp(-tau * ranks) if distribution == 'exponential'
                else ranks ** -zipf_exponent)
    np.testing.assert_allclose(probs, expected / expected.sum(), rtol=1e-12)
    problem = problem_lib.make_problem(jax.random.key(0), probs, probs, dim=2,
                                       planted_norm=1.0)
    user_ids, item_ids, _ = problem_lib.sample_batch(jax.random.key(3),
                                                     problem, num_samples)
    for ids in (user_ids, item_ids):
      counts = fasgd_optax.count_ids(ids, num_rows)
      # Within 5 binomial standard deviations of the requested probability.
      tolerance = 5 * np.sqrt(probs * (1 - probs) / num_samples)
      np.testing.assert_array_less(np.abs(counts / num_samples - probs),
                                   tolerance)

  def test_batch_loss_is_unbiased_for_full_loss(self):
    # Checks the labels too: P(y = +1 | i, j) must be σ(⟨θ*_i, θ*_j⟩).
    problem = _tiny_problem()
    params = problem_lib.init_params(jax.random.key(4), problem, init_norm=1.0)
    num_samples = 400_000
    batch = problem_lib.sample_batch(jax.random.key(5), problem, num_samples)
    user_ids, item_ids, labels = batch
    logits = jnp.sum(params['users'][user_ids] * params['items'][item_ids], 1)
    losses = np.asarray(jax.nn.softplus(-labels * logits))
    standard_error = losses.std() / math.sqrt(num_samples)
    self.assertAlmostEqual(float(losses.mean()),
                           float(problem_lib.full_loss(params, problem)),
                           delta=5 * standard_error)

  def test_bad_distribution_is_named(self):
    with self.assertRaisesRegex(ValueError, "distribution.*'pareto'"):
      problem_lib.rank_probabilities(4, 'pareto')
    with self.assertRaisesRegex(ValueError, 'tau must be > 0.*-1'):
      problem_lib.rank_probabilities(4, 'exponential', tau=-1.0)


class TrainTest(absltest.TestCase):

  def test_fa_sgd_with_unit_frequencies_is_sgd(self):
    setup = train.Setup(num_users=6, num_items=5, dim=3, num_steps=300,
                        num_evals=3, batch_size=4)
    alpha = 0.8
    ones = {'users': np.ones(6), 'items': np.ones(5)}
    fa_sgd = fasgd_optax.fa_sgd(alpha, ones, num_steps=setup.num_steps)
    sgd = optax.sgd(alpha / math.sqrt(setup.num_steps))
    run = jax.jit(train.train_with, static_argnums=(0, 1))
    fa_out = run(fa_sgd, setup, jnp.int32(7))
    sgd_out = run(sgd, setup, jnp.int32(7))
    chex.assert_trees_all_close(fa_out['params'], sgd_out['params'],
                                rtol=1e-6, atol=1e-7)
    chex.assert_trees_all_close(fa_out['mean_grad_sq'],
                                sgd_out['mean_grad_sq'], rtol=1e-5)
    # The runs moved: the comparison is not between two untouched tables.
    self.assertLess(float(sgd_out['final_loss']),
                    float(sgd_out['loss_curve'][0]))

  def test_tiny_experiment_end_to_end(self):
    setup = train.Setup(num_users=8, num_items=8, dim=2, num_steps=400,
                        num_evals=4)
    alphas = train.alpha_grid(setup, -4.0, -2.0, 1)
    np.testing.assert_allclose(alphas / setup.reference_alpha,
                               [1 / 16, 1 / 8, 1 / 4])
    results = train.run_experiment(setup, alphas, num_seeds=2,
                                   num_tuning_seeds=2, num_bootstrap=10)
    for method, values in results['methods'].items():
      self.assertIn(values['alpha'], results['alphas'], method)
      self.assertTrue(np.all(np.isfinite(values['mean_grad_sq']['users'])))
      self.assertLen(values['excess_loss_curve'], setup.num_evals)
    # SGD's step is one value; FA-SGD's grows down the ranks.
    self.assertLen(set(results['methods']['sgd']['row_step_sizes']['users']),
                   1)
    fa_steps = results['methods']['fa_sgd']['row_step_sizes']['users']
    self.assertTrue(np.all(np.diff(fa_steps) >= 0))
    self.assertEqual(results['prediction']['slope_per_rank_bounds'],
                     setup.tau / 2)

  def test_bad_setup_is_named(self):
    with self.assertRaisesRegex(ValueError, 'num_steps .*1000.*num_evals .*3'):
      train.Setup(num_steps=1000, num_evals=3)
    with self.assertRaisesRegex(ValueError, "method.*'adam'"):
      train.make_optimizer('adam', 1.0, train.Setup())


class AnalysisTest(absltest.TestCase):

  def test_an_empty_tail_is_a_fit_error(self):
    # A short horizon: no row's FA-SGD step exceeds SGD's, so no tail.
    probs = {'users': problem_lib.rank_probabilities(8, 'exponential',
                                                     tau=0.25)}
    values = {'users': np.ones((2, 8))}
    with self.assertRaisesRegex(analysis.FitError, 'the tail has 0 rows'):
      analysis.slope_fits(values, values, probs,
                          {'users': np.zeros(8, bool)})

  def test_fits_recover_a_planted_hinge(self):
    probs = problem_lib.rank_probabilities(20, 'exponential', tau=0.25)
    x = analysis.log_frequency_depth(probs)
    np.testing.assert_allclose(x, 0.25 * np.arange(20), atol=1e-12)
    rng = np.random.default_rng(0)
    # SGD's norms exceed FA's by p_k^(-1/2) past x = 1.5, as the bounds say.
    excess = 0.5 * np.maximum(0.0, x - 1.5)
    fa = np.exp(rng.normal(0.0, 0.01, (8, 20)))
    sgd = fa * np.exp(excess)
    tail = x > 1.5
    fits = analysis.slope_fits({'users': sgd}, {'users': fa},
                               {'users': probs}, {'users': tail},
                               num_bootstrap=50)
    self.assertAlmostEqual(fits['hinge']['slope'], 0.5, delta=0.02)
    self.assertAlmostEqual(fits['hinge']['knee'], 1.5, delta=0.3)
    self.assertAlmostEqual(fits['tail']['slope'], 0.5, delta=0.02)
    low, high = fits['tail']['ci95']
    self.assertLessEqual(low, fits['tail']['slope'])
    self.assertGreaterEqual(high, fits['tail']['slope'])

  def test_too_small_tail_is_rejected(self):
    probs = problem_lib.rank_probabilities(4, 'exponential', tau=0.5)
    values = {'users': np.ones((2, 4))}
    with self.assertRaisesRegex(ValueError, 'tail has 1 rows'):
      analysis.slope_fits(values, values, {'users': probs},
                          {'users': np.array([0, 0, 0, 1], bool)})



class MainTest(absltest.TestCase):

  def test_bad_setup_flags_are_one_line_errors(self):
    output_dir = tempfile.mkdtemp()
    self.addCleanup(os.rmdir, output_dir)  # Fails if anything was written.
    completed = testing.run_module(
        'examples.theory.main', '--num_steps=1000', '--num_evals=3',
        f'--output_dir={output_dir}', timeout=300)
    self.assertEqual(completed.returncode, 1)
    self.assertEqual(
        completed.stderr.strip(),
        'error: num_steps (1000) must be a multiple of num_evals (3) so the '
        'evaluated iterates are evenly spaced. (--helpfull lists the flags)')
    for flag_values, message in (
        (('--alpha_points_per_octave=0',),
         '--alpha_points_per_octave must be >= 1; got 0.'),
        (('--alpha_log2_min=1', '--alpha_log2_max=0'),
         '--alpha_log2_max (0.0) must be >= --alpha_log2_min (1.0).')):
      completed = testing.run_module('examples.theory.main', *flag_values,
                                     f'--output_dir={output_dir}', timeout=300)
      self.assertEqual(completed.returncode, 1)
      self.assertEqual(completed.stderr.strip(),
                       f'error: {message} (--helpfull lists the flags)')


if __name__ == '__main__':
  absltest.main()
