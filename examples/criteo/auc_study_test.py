"""auc_study.py on tiny data: a diverging grid point is scored, not fatal.

Runs `python -m examples.criteo.auc_study` in a subprocess (`examples.common.testing` says why).
"""

import json
import math
import os
import shutil
import tempfile

from absl.testing import absltest

from examples.common import testing

TINY = ['--optimizers=sgd', '--train_lines=512', '--eval_lines=128',
        '--vocabulary=200', '--table_rows=64', '--embedding_dim=4',
        '--batch_size=64', '--num_seeds=1', '--max_grid_growth=0']


class AucStudyTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.tmp = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self.tmp)

  def study(self, *flags):
    return testing.run_module('examples.criteo.auc_study',
                              f'--workdir={self.tmp}', *TINY, *flags,
                              env={'JAX_PLATFORMS': 'cpu'})

  def test_a_diverging_rate_is_reported_and_the_study_goes_on(self):
    completed = self.study('--grid=0.1,1e6')
    self.assertEqual(completed.returncode, 0, completed.stderr)
    self.assertIn('step 1:', completed.stderr)  # It trained.
    with open(os.path.join(self.tmp, 'auc.json')) as f:
      report = json.load(f)
    tuning = report['tuning']['sgd']
    self.assertEqual(tuning['grid'], [0.1, 1e6])
    self.assertEqual(tuning['best'], 0.1)
    self.assertTrue(math.isfinite(tuning['validation_auc'][0]))
    self.assertEqual(tuning['validation_auc'][1], -math.inf)
    with open(os.path.join(self.tmp, 'runs', 'sgd_lr1e+06_seed0.json')) as f:
      diverged = json.load(f)
    self.assertGreater(diverged['diverged']['train_loss'], 100)
    with open(os.path.join(self.tmp, 'auc.md')) as f:
      self.assertIn('1e+06: diverged', f.read())
    # A rerun takes every run from the cache, the diverged one included.
    completed = self.study('--grid=0.1,1e6')
    self.assertEqual(completed.returncode, 0, completed.stderr)
    self.assertNotIn('step 1:', completed.stderr)

  def test_every_rate_diverging_is_one_clear_error(self):
    completed = self.study('--grid=1e6')
    self.assertNotEqual(completed.returncode, 0)
    self.assertEqual(
        completed.stderr.strip().splitlines()[-1],
        'error: sgd: every learning rate tried (1000000.0) diverged or '
        'scored no AUC; start its grid lower (INITIAL_GRIDS or --grid).')

  def test_bad_grid_is_refused_before_any_run(self):
    completed = self.study('--grid=0.1,-1')
    self.assertNotEqual(completed.returncode, 0)
    self.assertIn('--grid must list positive learning rates', completed.stderr)
    self.assertFalse(os.path.exists(os.path.join(self.tmp, 'runs')))


if __name__ == '__main__':
  absltest.main()
