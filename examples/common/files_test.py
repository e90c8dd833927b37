"""Result files are written whole or not at all."""

import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import tempfile

from absl.testing import absltest

from examples.common import files

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


class FilesTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.directory = tempfile.mkdtemp()
    self.path = os.path.join(self.directory, 'results.json')

  def run_killed(self, code: str) -> None:
    """Runs `code` in a new process that kills itself; `path` is self.path."""
    killed = subprocess.run(
        [sys.executable, '-c',
         'import os, signal, sys\n'
         'from examples.common import files\n'
         'path = sys.argv[1]\n' + code, self.path],
        env=dict(os.environ, PYTHONPATH=_ROOT), check=False, timeout=60)
    self.assertEqual(killed.returncode, -9)

  def test_writes_and_replaces(self):
    files.write_json(self.path, {'auc': 0.7})
    files.write_json(self.path, {'auc': 0.8}, indent=1)
    with open(self.path) as f:
      self.assertEqual(json.load(f), {'auc': 0.8})
    files.write_text(self.path + '.md', 'table')
    with open(self.path + '.md') as f:
      self.assertEqual(f.read(), 'table')
    self.assertCountEqual(os.listdir(self.directory),
                          ['results.json', 'results.json.md'])

  def test_a_failed_write_keeps_the_old_file_and_leaves_nothing(self):
    files.write_json(self.path, {'auc': 0.7})
    with self.assertRaises(TypeError):  # Not JSON: fails halfway through.
      files.write_json(self.path, {'auc': 0.8, 'state': object()})
    with open(self.path) as f:
      self.assertEqual(json.load(f), {'auc': 0.7})
    self.assertEqual(os.listdir(self.directory), ['results.json'])

  def test_a_process_killed_mid_write_leaves_the_old_file(self):
    files.write_json(self.path, {'auc': 0.7})
    self.run_killed('with files.replacing(path) as temporary:\n'
                    '  with open(temporary, "w") as f:\n'
                    '    f.write("{\\"auc\\": 0.")\n'
                    '    f.flush()\n'
                    '    os.kill(os.getpid(), signal.SIGKILL)\n')
    with open(self.path) as f:
      self.assertEqual(json.load(f), {'auc': 0.7})
    stale = [name for name in os.listdir(self.directory)
             if name.endswith('.partial')]
    self.assertLen(stale, 1)  # The dead process's half-written file.
    files.write_json(self.path, {'auc': 0.9})  # The rerun's write.
    self.assertEqual(os.listdir(self.directory), ['results.json'])

  def test_live_processes_and_other_hosts_files_are_left_alone(self):
    live = f'{self.path}.{files._SCOPE}.{os.getppid()}.partial'  # pylint: disable=protected-access
    other_host = f'{self.path}.another_host.{os.getpid() + 1000000}.partial'
    # This host's name in another PID namespace (a container).
    other_scope = (f'{self.path}.{socket.gethostname().replace(".", "_")}.'
                   f'{os.getpid() + 1000000}.partial')
    for path in (live, other_host, other_scope):
      with open(path, 'w') as f:
        f.write('{')
    files.write_json(self.path, {'auc': 0.9})
    self.assertTrue(os.path.exists(live))
    self.assertTrue(os.path.exists(other_host))
    self.assertTrue(os.path.exists(other_scope))

  def test_a_scratch_directory_is_private_and_removed(self):
    with files.scratch_directory(self.path) as first:
      with files.scratch_directory(self.path) as second:
        self.assertNotEqual(first, second)
        self.assertEqual(os.listdir(first), [])
        with open(os.path.join(first, 'download.whl'), 'w') as f:
          f.write('PK')
    with self.assertRaises(KeyError):
      with files.scratch_directory(self.path) as third:
        raise KeyError('the body failed')
    self.assertFalse(os.path.exists(third))
    self.assertEqual(os.listdir(self.directory), [])

  def test_a_killed_processs_scratch_directory_goes_a_live_ones_stays(self):
    self.run_killed('with files.scratch_directory(path) as scratch:\n'
                    '  open(os.path.join(scratch, "part.whl"), "w").write("PK")\n'
                    '  os.kill(os.getpid(), signal.SIGKILL)\n')
    (stale,) = os.listdir(self.directory)
    live = f'{self.path}.{files._SCOPE}.{os.getppid()}.x.partial'  # pylint: disable=protected-access
    os.makedirs(live)
    with files.scratch_directory(self.path):
      self.assertFalse(os.path.exists(os.path.join(self.directory, stale)))
    self.assertEqual(os.listdir(self.directory), [os.path.basename(live)])

  def test_a_cached_summary_that_cannot_be_read_is_missing(self):
    self.assertIsNone(files.read_cached_summary(self.path))
    summary = {'config': {'seed': 0}, 'auc': 0.75}
    files.write_json(self.path, summary)
    self.assertEqual(files.read_cached_summary(self.path), summary)
    text = json.dumps(summary)
    for damaged in (text[:len(text) // 2].encode(), b'', b'[]', b'{"config": 1}',
                    b'\xff\xfe'):
      with open(self.path, 'wb') as f:
        f.write(damaged)
      with contextlib.redirect_stdout(io.StringIO()) as output:
        self.assertIsNone(files.read_cached_summary(self.path))
      self.assertIn(f'{self.path} cannot be read (', output.getvalue())
      self.assertIn('making it again', output.getvalue())

  def test_a_symlink_is_written_through(self):
    target = os.path.join(self.directory, 'target.json')
    files.write_text(target, 'old')
    os.symlink(target, self.path)
    files.write_text(self.path, 'new')
    self.assertTrue(os.path.islink(self.path))
    with open(target) as f:
      self.assertEqual(f.read(), 'new')

  def test_the_old_files_permissions_are_kept(self):
    files.write_text(self.path, 'old')
    os.chmod(self.path, 0o640)
    files.write_text(self.path, 'new')
    self.assertEqual(os.stat(self.path).st_mode & 0o777, 0o640)


if __name__ == '__main__':
  absltest.main()
