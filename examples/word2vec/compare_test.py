"""compare.py: reports with diverged optimizers, and --capped's usage errors;
cap_study.py: its table and usage errors.

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


class CapStudyTest(absltest.TestCase):

  def test_caps_parse_and_bad_ones_are_usage_errors(self):
    from examples.word2vec import cap_study  # pylint: disable=g-import-not-at-top
    self.assertEqual(cap_study.parse_caps(['none', '500', 'None', '1e3']),
                     [None, 500.0, None, 1000.0])
    for bad in ('0', '-3', 'inf', 'nan', 'big'):
      with self.assertRaisesRegex(Exception, f"got '{bad}'"):
        cap_study.parse_caps([bad])

  def test_report_has_each_seed_and_the_means(self):
    from examples.word2vec import cap_study  # pylint: disable=g-import-not-at-top
    study = {'sweep': 's.json', 'model': 'cbow', 'learning_rate': 56200.0,
             'machine': 'a CPU', 'max_learning_rates': [None, 500.0, 100.0],
             'runs': [
                 dict(seed=0, max_learning_rate=None, wordsim353=0.1,
                      final_test_loss=2.2),
                 dict(seed=1, max_learning_rate=None, wordsim353=0.2,
                      final_test_loss=2.4),
                 dict(seed=0, max_learning_rate=500.0, wordsim353=0.3,
                      final_test_loss=2.3),
                 dict(seed=1, max_learning_rate=500.0, diverged='nan'),
                 dict(seed=0, max_learning_rate=100.0, diverged='nan')]}
    lines = cap_study.report_lines(study)
    self.assertIn('| none | 0.100 / 2.2000 | 0.200 / 2.4000 | 0.150 | '
                  '2.3000 |', lines)
    self.assertIn('| 500 | 0.300 / 2.3000 | diverged | 0.300 | 2.3000 |',
                  lines)
    self.assertIn('| 100 | diverged | – | – | – |', lines)

  def test_bad_flags_are_one_line_errors(self):
    out = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, out)
    for flag, message in (('--max_learning_rates=none,-1',
                           '--max_learning_rates takes positive numbers or '
                           '"none"; got \'-1\'.'),
                          ('--seeds=0,x', "--seeds takes integers; got "
                           "['0', 'x'].")):
      completed = testing.run_module(
          'examples.word2vec.cap_study', f'--sweep={_SWEEP}',
          f'--out={out}/study', flag)
      self.assertNotEqual(completed.returncode, 0)
      self.assertEqual(completed.stderr.strip().splitlines()[-1],
                       f'error: {message} (--helpfull lists the flags)')
      self.assertEqual(os.listdir(out), [])


if __name__ == '__main__':
  absltest.main()
