"""Registry downloads: what a tool leaves is yielded, failures say why."""

import os
import shutil
import sys
import tempfile
import time
from unittest import mock

from absl.testing import absltest

from examples.common import downloads
from examples.common import files


def python(code: str) -> downloads.Command:
  """A stand-in tool: Python running `code` with the folder as sys.argv[1]."""
  return lambda folder: [sys.executable, '-c', code, folder]


class FetchedTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.cache = tempfile.mkdtemp()
    self.addCleanup(lambda: os.path.isdir(self.cache) and os.rmdir(self.cache))
    self.scratch = os.path.join(self.cache, 'tool')

  def test_the_file_the_tool_left_is_yielded_then_removed(self):
    tool = python('import os, sys\n'
                  'open(os.path.join(sys.argv[1], "pkg-1.0.whl"), "w")'
                  '.write("PK")\n')
    with downloads.fetched(tool, self.scratch, '*.whl') as path:
      self.assertEqual(os.path.basename(path), 'pkg-1.0.whl')
      with open(path) as f:
        self.assertEqual(f.read(), 'PK')
      self.assertEqual(os.path.dirname(os.path.dirname(path)), self.cache)
    self.assertEqual(os.listdir(self.cache), [])

  def test_a_failing_tool_is_named_with_its_exit_and_message(self):
    tool = python('import sys\n'
                  'sys.exit("ERROR: No matching distribution found")')
    with self.assertRaisesRegex(
        downloads.DownloadError,
        r'(?s)`.* -c .*` failed \(exit 1\): ERROR: No matching distribution'):
      with downloads.fetched(tool, self.scratch, '*.whl'):
        self.fail('nothing to yield')
    self.assertEqual(os.listdir(self.cache), [])

  def test_a_tool_that_leaves_no_such_file(self):
    # It succeeds and talks on stderr (as `npm pack` always does), but leaves
    # another file: the error says so, not what it printed.
    tool = python('import os, sys\n'
                  'print("npm notice Tarball Contents", file=sys.stderr)\n'
                  'open(os.path.join(sys.argv[1], "other.tgz"), "w")\n')
    with self.assertRaisesRegex(
        downloads.DownloadError,
        r"left no file matching '\*\.whl' \(it left \['other.tgz'\]\)$"):
      with downloads.fetched(tool, self.scratch, '*.whl'):
        self.fail('nothing to yield')
    # A failure without a message still gives its exit status.
    with self.assertRaisesRegex(downloads.DownloadError,
                                r'failed \(exit 3\): no message$'):
      with downloads.fetched(python('raise SystemExit(3)'), self.scratch,
                             '*.whl'):
        self.fail('nothing to yield')
    self.assertEqual(os.listdir(self.cache), [])

  def test_tidy_removes_what_killed_downloads_left_and_nothing_else(self):
    scope = files._SCOPE  # pylint: disable=protected-access
    dead = os.path.join(self.cache, f'tool.{scope}.4194999.abc.partial')
    other_host = os.path.join(self.cache, 'tool.another_host.12.abc.partial')
    # Earlier versions' tempfile folders: an old one holding a cut wheel, and
    # three to keep: one still in use (young), one holding something else, an
    # empty one (in a shared folder such as /tmp it may be anyone's).
    legacy = {name: os.path.join(self.cache, name) for name in
              ('tmp_old', 'tmp_empty', 'tmp_young', 'tmp_other')}
    for folder in [dead, other_host] + list(legacy.values()):
      os.makedirs(folder)
    for name, file_name in (('tmp_old', 'gensim-4.4.0-cp311.whl'),
                            ('tmp_young', 'gensim-4.4.0-cp311.whl'),
                            ('tmp_other', 'notes.txt')):
      with open(os.path.join(legacy[name], file_name), 'w') as f:
        f.write('PK')
    old = time.time() - 2 * downloads.TIMEOUT_SECONDS
    for name in ('tmp_old', 'tmp_empty', 'tmp_other'):
      os.utime(legacy[name], (old, old))
    downloads.tidy(self.scratch, legacy_pattern='gensim-*.whl')
    self.assertCountEqual(
        os.listdir(self.cache),
        [os.path.basename(other_host), 'tmp_young', 'tmp_other', 'tmp_empty'])
    for folder in [other_host, legacy['tmp_young'], legacy['tmp_other'],
                   legacy['tmp_empty']]:
      shutil.rmtree(folder)

  def test_a_missing_tool_and_a_hung_one(self):
    with self.assertRaisesRegex(downloads.DownloadError, 'could not start'):
      with downloads.fetched(lambda folder: ['/nonexistent/npm', folder],
                             self.scratch, '*'):
        self.fail('nothing to yield')
    with mock.patch.object(downloads, 'TIMEOUT_SECONDS', 0.5):
      with self.assertRaisesRegex(downloads.DownloadError,
                                  'did not finish within 0.5 s'):
        with downloads.fetched(python('import time; time.sleep(60)'),
                               self.scratch, '*'):
          self.fail('nothing to yield')
    self.assertEqual(os.listdir(self.cache), [])

  def test_pips_command_downloads_one_wheel_without_dependencies(self):
    command = downloads.pip_download('gensim==4.4.0')('/cache/x')
    self.assertEqual(command[:3], [sys.executable, '-m', 'pip'])
    for argument in ('download', '--no-deps', '--only-binary=:all:',
                     'gensim==4.4.0'):
      self.assertIn(argument, command)
    self.assertEqual(command[command.index('-d') + 1], '/cache/x')


if __name__ == '__main__':
  absltest.main()
