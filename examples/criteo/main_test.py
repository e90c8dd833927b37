"""End to end: main.py on synthetic data, resume, and malformed lines.

Each run is `python -m examples.criteo.main` in a subprocess, as a user runs
it: the examples' main modules each define absl flags such as --optimizer,
and two of them cannot be imported into one test process.
"""

import json
import os
import shutil
import tempfile

from absl.testing import absltest

from examples.common import testing
from examples.criteo import synthetic
from examples.criteo import train

TINY = dict(table_rows=['64'], embedding_dim=4, mlp_features=['8'],
            batch_size=64, log_every=10, learning_rate=1.0,
            dense_optimizer='adam', dense_learning_rate=0.01,
            # Tests leave the user's compilation cache alone.
            compilation_cache_dir='')


def _argv(flag_values):
  argv = []
  for name, value in flag_values.items():
    if isinstance(value, (list, tuple)):
      value = ','.join(str(v) for v in value)
    argv.append(f'--{name}={value}')
  return argv


class MainFailed(Exception):
  """main.py exited with an error; the message is its stderr."""


class MainTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.tmp = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self.tmp)

  def run_main(self, **overrides):
    """Runs main.py; returns its results.json, or raises with its stderr."""
    completed = testing.run_module('examples.criteo.main',
                                   *_argv({**TINY, **overrides}))
    if completed.returncode:
      raise MainFailed(completed.stderr)
    with open(os.path.join(overrides['workdir'], 'results.json')) as f:
      return json.load(f)

  def test_synthetic_data_trains_and_a_rerun_resumes_at_the_end(self):
    workdir = os.path.join(self.tmp, 'run')
    results = self.run_main(workdir=workdir, synthetic_lines=8000,
                            synthetic_vocabulary=300)
    for name in ('train.txt', 'validation.txt', 'test.txt'):
      self.assertTrue(os.path.exists(os.path.join(
          workdir, 'synthetic', '8000_lines_300_vocabulary', name)))
    self.assertEqual(results['synthetic_data'],
                     {'lines': 8000, 'vocabulary': 300})
    self.assertEqual(results['test']['examples'], 800)
    self.assertEqual(results['validation']['examples'], 800)
    self.assertGreater(results['test']['auc'], 0.65)
    losses = [loss for _, loss in results['train_loss']]
    self.assertLess(losses[-1], losses[0])
    self.assertEqual(results['steps'], 8000 // 64)  # one pass by default
    self.assertGreater(results['timing']['examples_per_second'], 0)
    self.assertEqual(results['bad_lines']['counts']['label'], 0)
    # The same command again: restores step 125, trains nothing, evaluates
    # the same state.
    again = self.run_main(workdir=workdir, synthetic_lines=8000,
                          synthetic_vocabulary=300)
    self.assertEqual(again['test'], results['test'])
    self.assertEqual(again['train_loss'], results['train_loss'])
    # Other synthetic data in the same workdir: refused, naming the setting,
    # never trained or reported on the data of the other flags.
    with self.assertRaisesRegex(MainFailed, 'synthetic_data'):
      self.run_main(workdir=workdir, synthetic_lines=4000,
                    synthetic_vocabulary=300)
    # Refused before that data was written.
    self.assertFalse(os.path.exists(
        os.path.join(workdir, 'synthetic', '4000_lines_300_vocabulary')))

  def test_a_run_stopped_between_log_points_resumes_the_same_curve(self):
    # Stopped at step 25 (log points every 10, checkpoints every 15): the
    # losses of steps 21-25 are in the checkpoint, so the resumed run logs
    # the same mean at step 30 as the uninterrupted one.
    data = dict(synthetic_lines=3200, synthetic_vocabulary=300,
                save_interval_steps=15)
    whole = self.run_main(workdir=os.path.join(self.tmp, 'whole'), **data)
    split = os.path.join(self.tmp, 'split')
    first = self.run_main(workdir=split, stop_after_step=25, **data)
    self.assertEqual([step for step, _ in first['train_loss']], [10, 20])
    with self.assertRaisesRegex(MainFailed, r'other settings.*log_every: 10 '
                                '-> 5'):
      self.run_main(workdir=split, log_every=5, **data)
    # Synthetic data cut since it was written is refused, not trained on;
    # deleted, it is written again (the same) and the run resumes.
    train_file = os.path.join(split, 'synthetic', '3200_lines_300_vocabulary',
                              'train.txt')
    size = os.path.getsize(train_file)
    os.truncate(train_file, size // 2)
    with self.assertRaisesRegex(
        MainFailed, f'Data error: The synthetic file {train_file} has '
        f'{size // 2} bytes, but {size} were written: it was cut or changed'):
      self.run_main(workdir=split, **data)
    os.remove(train_file)
    resumed = self.run_main(workdir=split, **data)
    self.assertEqual(resumed['train_loss'], whole['train_loss'])
    self.assertEqual(resumed['test'], whole['test'])

  def test_a_resume_needs_the_same_files_and_counts_bad_lines_once(self):
    paths = {}
    for seed, name in enumerate(('day_0.txt', 'day_1.txt', 'valid.txt')):
      paths[name] = os.path.join(self.tmp, name)
      synthetic.write(paths[name], 300, seed=seed + 1)
    with open(paths['valid.txt'], 'rb') as f:
      lines = f.read().split(b'\n')
    lines[4] = b'1\t2\t3'
    with open(paths['valid.txt'], 'wb') as f:
      f.write(b'\n'.join(lines))
    workdir = os.path.join(self.tmp, 'run')
    run = dict(workdir=workdir, num_steps=4, eval_every=1,
               validation_data=[paths['valid.txt']])
    first = self.run_main(data=[paths['day_0.txt']], stop_after_step=2, **run)
    # Evaluated after steps 1 and 2 and at the end: its bad line counted once.
    self.assertLen(first['validation_history'], 2)
    self.assertEqual(first['bad_lines']['counts']['field count'], 1)
    self.assertLen(first['bad_lines']['first'], 1)
    # Another file list would read on from day_0's saved line in it.
    with self.assertRaisesRegex(MainFailed, r'other settings \(data: '):
      self.run_main(data=[paths['day_0.txt'], paths['day_1.txt']], **run)
    with self.assertRaisesRegex(MainFailed, r'other settings \(evaluation: '):
      self.run_main(data=[paths['day_0.txt']], **dict(run, eval_every=2))
    resumed = self.run_main(data=[paths['day_0.txt']], **run)
    self.assertEqual([point['step'] for point in resumed['validation_history']],
                     [1, 2, 3, 4])

  def test_bad_multi_process_flags_are_one_line_errors(self):
    # Before jax.distributed.initialize, which hung or gave a traceback.
    workdir = os.path.join(self.tmp, 'run')
    for flag_values, message in (
        (dict(process_id=2, num_processes=2), r'--process_id must be in '
         r'\[0, 1\] for --num_processes=2; got 2\.'),
        (dict(process_id=0, num_processes=0),
         '--num_processes must be >= 1; got 0.'),
        (dict(process_id=0, num_processes=2,
              coordinator_address='localhost'),
         "--coordinator_address must be host:port .*got 'localhost'"),
    ):
      flag_values.setdefault('coordinator_address', 'localhost:12345')
      with self.assertRaisesRegex(MainFailed, message) as raised:
        self.run_main(workdir=workdir, **flag_values)
      self.assertNotIn('Traceback', str(raised.exception))

  def test_divergence_is_an_error(self):
    with self.assertRaisesRegex(MainFailed, 'diverged.*smaller '
                                '--learning_rate'):
      self.run_main(workdir=os.path.join(self.tmp, 'run'),
                    synthetic_lines=2000, synthetic_vocabulary=300,
                    learning_rate=1e9, update='dense', optimizer='sgd')
    # Also when the run stops before its first log point (the throughput
    # script's end-to-end runs log nothing).
    with self.assertRaisesRegex(MainFailed, 'diverged.*at step 5'):
      self.run_main(workdir=os.path.join(self.tmp, 'stopped'),
                    synthetic_lines=2000, synthetic_vocabulary=300,
                    learning_rate=1e9, update='dense', optimizer='sgd',
                    stop_after_step=5)

  def test_divergence_needs_a_non_finite_loss_or_two_far_off_in_a_row(self):
    # The AUC study's Adagrad at 3.16 and SGD at 3.16: one spike, then NaN.
    self.assertFalse(train.diverged([563.1, 9.7]))
    self.assertFalse(train.diverged([563.1]))
    self.assertTrue(train.diverged([1.02e19, float('nan')]))
    self.assertTrue(train.diverged([0.6, float('inf')]))
    self.assertTrue(train.diverged([150.0, 101.0]))
    self.assertFalse(train.diverged([150.0, 100.0]))
    self.assertFalse(train.diverged([]))

  def test_malformed_lines_are_reported_or_fail(self):
    path = os.path.join(self.tmp, 'data.txt')
    synthetic.write(path, 300, seed=2)
    with open(path, 'rb') as f:
      lines = f.read().split(b'\n')
    lines[6] = b'1\t2\t3'
    lines[9] = b'x' + lines[9][1:]
    with open(path, 'wb') as f:
      f.write(b'\n'.join(lines))
    results = self.run_main(workdir=os.path.join(self.tmp, 'skip'),
                            data=[path], num_steps=3)
    report = results['bad_lines']
    self.assertEqual(report['counts']['field count'], 1)
    self.assertEqual(report['counts']['label'], 1)
    self.assertEqual(report['first'][0],
                     f'{path}:7: 3 tab-separated fields, expected 40')
    self.assertStartsWith(report['first'][1], f'{path}:10: label ')
    with self.assertRaisesRegex(MainFailed, f'Data error: {path}:7: '):
      self.run_main(workdir=os.path.join(self.tmp, 'fail'), data=[path],
                    num_steps=3, bad_lines='fail')
    # An evaluation file without a well-formed line: an error before
    # training, not a NaN AUC at its end.
    empty = os.path.join(self.tmp, 'empty.txt')
    with open(empty, 'w') as f:
      f.write('1\t2\t3\n')
    with self.assertRaisesRegex(MainFailed, 'Data error: The validation files '
                                rf'\({empty}\) hold no well-formed line'):
      self.run_main(workdir=os.path.join(self.tmp, 'empty'), data=[path],
                    validation_data=[empty], num_steps=3)
    with self.assertRaisesRegex(MainFailed, 'No data file matches'):
      self.run_main(workdir=os.path.join(self.tmp, 'none'),
                    data=[os.path.join(self.tmp, 'missing*.gz')],
                    num_steps=3)


if __name__ == '__main__':
  absltest.main()
