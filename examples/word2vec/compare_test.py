"""compare.py: reports with diverged optimizers, and --capped's usage errors.

Runs `python -m examples.word2vec.compare` in a subprocess (`examples.common.testing` says why).
"""

import json
import os
import shutil
import tempfile

from absl.testing import absltest

from examples.common import testing

_SWEEP = os.path.join(testing.ROOT, 'examples', 'word2vec', 'results',
                      'sweep.json')


class CompareTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.out = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self.out)

  def compare(self, *flags):
    return testing.run_module('examples.word2vec.compare',
                              f'--out={self.out}', *flags)

  def write_sweep(self, keep) -> None:
    with open(_SWEEP) as f:
      sweep = json.load(f)
    sweep['runs'] = [run for run in sweep['runs'] if keep(run)]
    with open(os.path.join(self.out, 'sweep.json'), 'w') as f:
      json.dump(sweep, f)

  def test_an_optimizer_whose_every_run_diverged_is_named_not_a_crash(self):
    self.write_sweep(lambda run: run['model'] == 'skipgram')
    with open(os.path.join(self.out, 'sweep.json')) as f:
      sweep = json.load(f)
    for run in sweep['runs']:
      if run['optimizer'] == 'adam':  # As compare.py records divergence.
        for key in list(run):
          if key not in ('model', 'optimizer', 'learning_rate',
                         'max_learning_rate', 'update', 'cbow_gradient'):
            del run[key]
        run.update(diverged='adam diverged', final_validation_loss=1e309,
                   final_test_loss=1e309)
    adam_rates = sorted(r['learning_rate'] for r in sweep['runs']
                        if r['optimizer'] == 'adam')
    with open(os.path.join(self.out, 'sweep.json'), 'w') as f:
      json.dump(sweep, f)
    completed = self.compare('--models=skipgram', '--report')
    self.assertEqual(completed.returncode, 0, completed.stderr)
    with open(os.path.join(self.out, 'RESULTS.md')) as f:
      results = f.read()
    self.assertIn('- adam: every run diverged (learning rates '
                  + ', '.join(f'{lr:g}' for lr in adam_rates) + ').', results)
    self.assertNotIn('| adam (', results)
    self.assertIn('| cf_sgd (sparse) |', results)

  def test_capped_without_sgd_is_a_usage_error_before_any_data(self):
    self.write_sweep(lambda run: run['optimizer'] == 'cf_sgd')
    completed = self.compare('--models=skipgram', '--optimizers=cf_sgd',
                             '--capped=cf_sgd')
    self.assertNotEqual(completed.returncode, 0)
    self.assertEqual(
        completed.stderr.strip().splitlines()[-1],
        f'error: --capped=cf_sgd caps at SGD\'s best rate, and '
        f'{os.path.join(self.out, "sweep.json")} has no skipgram SGD run '
        'that trained: add sgd to --optimizers. (--helpfull lists the flags)')

  def test_max_learning_rate_needs_capped_and_a_positive_value(self):
    for flags, message in (
        (('--max_learning_rate=500',),
         'error: --max_learning_rate is the η_max of --capped: name the '
         'optimizers to cap with --capped.'),
        (('--capped=cf_sgd', '--max_learning_rate=-5'),
         'error: --max_learning_rate must be > 0; got -5.0.')):
      completed = self.compare('--models=cbow', '--optimizers=cf_sgd', *flags)
      self.assertNotEqual(completed.returncode, 0)
      self.assertEqual(completed.stderr.strip().splitlines()[-1],
                       f'{message} (--helpfull lists the flags)')
      self.assertEqual(os.listdir(self.out), [])  # Nothing read or written.


if __name__ == '__main__':
  absltest.main()
