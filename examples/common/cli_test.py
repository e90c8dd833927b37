"""The shared command-line behaviour: one-line errors, Ctrl-C, --workdir."""

import os
import shutil
import subprocess
import sys
import tempfile

from absl import app
from absl.testing import absltest
from absl.testing import parameterized

from examples.common import cli

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))

# A main.py whose main raises what the test asks for.
_PROGRAM = '''
import sys
from absl import app
from examples.common import cli

def main(argv):
  if sys.argv[-1] == "usage":
    raise app.UsageError("--thing 3: expected 4")
  raise KeyboardInterrupt

cli.run(main)
'''


class RunTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ('usage_error', 'usage', 1,
       'error: --thing 3: expected 4 (--helpfull lists the flags)'),
      ('ctrl_c', 'interrupt', 130,
       'Interrupted. Rerun the same command to resume from the last '
       'checkpoint.'))
  def test_one_line_and_exit_status(self, what, status, message):
    completed = subprocess.run(
        [sys.executable, '-c', _PROGRAM, what], cwd=_ROOT,
        env=dict(os.environ, PYTHONPATH=_ROOT), capture_output=True,
        text=True, timeout=120, check=False)
    self.assertEqual(completed.returncode, status)
    # The last line (libraries may warn above it on other machines), and no
    # traceback or usage text.
    self.assertEqual(completed.stderr.strip().splitlines()[-1], message)
    self.assertNotIn('Traceback', completed.stderr)
    self.assertLess(len(completed.stderr.splitlines()), 10)
    self.assertEqual(completed.stdout, '')


class FlagChecksTest(parameterized.TestCase):

  @parameterized.parameters(
      ('movielens', '--learning_rate=-1',
       '--learning_rate must be a positive finite number'),
      ('criteo', '--dense_learning_rate=0',
       '--dense_learning_rate must be a positive finite number'),
      ('criteo', '--learning_rate=inf',
       '--learning_rate must be a positive finite number'),
      ('criteo', '--mlp_features=0', 'mlp_features must be one or more widths'),
      ('criteo', '--data_shards=0', '0 is not a positive integer'),
      ('criteo', '--test_data=/nonexistent.txt',
       '--validation_data and --test_data go with --data'),
      ('criteo', '--table_rows=1 --mlp_features=1024',
       'as many as the stacked table'),
      ('movielens', '--batch_size=0', '0 is not a positive integer'),
      ('movielens', '--seed=-1', '-1 is not a non-negative integer'),
      ('movielens', '--sweep --learning_rate_grid=1,inf',
       '--learning_rate_grid: each rate must be a positive finite number'),
      ('word2vec', '--learning_rate=inf',
       '--learning_rate must be a positive finite number'),
      ('word2vec', '--sample=nan', '--sample must be a finite number >= 0'),
      ('word2vec', '--seed=-1', '-1 is not a non-negative integer'),
      # A corpus that reads but is too small to train on (this repository's
      # CI script, 11 lines).
      ('word2vec', '--corpus=text --corpus_path=.ci/run --wordsim=',
       'too few to hold out 10% for validation and test'),
      ('criteo', '--batch_size=4096 --synthetic_lines=1000',
       '--batch_size 4096 exceeds the 1000 synthetic training lines'))
  def test_bad_values_are_refused_before_any_work(self, example, flag,
                                                 message):
    workdir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, workdir)
    completed = subprocess.run(
        [sys.executable, '-m', f'examples.{example}.main', *flag.split(),
         f'--workdir={workdir}/run'], cwd=_ROOT,
        env=dict(os.environ, PYTHONPATH=_ROOT), capture_output=True,
        text=True, timeout=120, check=False)
    self.assertNotEqual(completed.returncode, 0)
    self.assertIn(message, completed.stderr)
    # One line, not a traceback or the usage text (libraries may add a few
    # lines of their own on other machines, e.g. an accelerator's).
    self.assertNotIn('Traceback', completed.stderr)
    self.assertLess(len(completed.stderr.splitlines()), 10)
    self.assertFalse(os.path.exists(os.path.join(workdir, 'run')))


class CheckWorkdirTest(absltest.TestCase):

  def test_a_file_is_refused_a_folder_or_nothing_passes(self):
    directory = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, directory)
    cli.check_workdir(directory)
    cli.check_workdir(os.path.join(directory, 'new'))
    cli.check_workdir(None)
    with tempfile.NamedTemporaryFile(dir=directory) as f:
      with self.assertRaisesRegex(app.UsageError,
                                  f'--workdir {f.name} is a file'):
        cli.check_workdir(f.name)


if __name__ == '__main__':
  absltest.main()
