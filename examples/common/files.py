"""Result files that a killed run never leaves half written.

A report written in place is truncated the moment it is opened: a run killed
then leaves an empty or cut `results.json`, and a killed rerun of a finished
run destroys the good one it had. Here each file is written to a temporary
name in the same folder and renamed over the old one (`os.replace`, atomic on
POSIX), so the path holds the old file or the new one, whole. Each process
writes its own temporary file (named by its scope, `machine.process_scope`:
host and PID namespace, and its process id), so two runs writing the
same report (a rerun beside a finishing run) cannot mix their bytes; one whole
file wins. Temporary files that dead processes of this scope left (killed
mid-write) are removed by the next write of the same path; other scopes'
(other hosts, or containers that share this host's name but not its process
ids) are left alone, since whether their writers live cannot be told here.
The new file keeps the old one's permissions.

`scratch_directory` gives a process a private folder of the same kind, for
files that a tool writes under names of its own (pip's downloads): removed
when done, and by a later call if its process was killed.
"""

import contextlib
import glob
import json
import os
import shutil
import stat
import tempfile
from typing import Any, Iterator, Optional

from examples.common import machine

_SUFFIX = '.partial'
_SCOPE = machine.process_scope()  # No dots: they end it in a file name.


def _process_exists(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Someone else's process.
    return True
  return True


def remove_stale(path: str) -> None:
  """Removes what dead processes of this scope left for ``path``.

  Their temporary files (`replacing`) and folders (`scratch_directory`).
  """
  path = os.path.realpath(path)
  prefix = f'{path}.{_SCOPE}.'
  for stale in glob.glob(glob.escape(prefix) + '*' + _SUFFIX):
    # `replacing`'s names end in the process id; `scratch_directory`'s add
    # a part of their own after it.
    pid = stale[len(prefix):-len(_SUFFIX)].split('.')[0]
    if pid.isdigit() and not _process_exists(int(pid)):
      _remove(stale)


def _remove(path: str) -> None:
  """Removes a file or a folder (whole), if it is there."""
  if os.path.isdir(path) and not os.path.islink(path):
    shutil.rmtree(path, ignore_errors=True)
  else:
    with contextlib.suppress(FileNotFoundError):
      os.remove(path)


@contextlib.contextmanager
def replacing(path: str) -> Iterator[str]:
  """Yields a temporary path to write; renamed to `path` if the body succeeds.

  Example:
    >>> with replacing('plot.png') as temporary:
    ...   figure.savefig(temporary, format='png')
  """
  path = os.path.realpath(path)  # Through a symlink, as open() writes.
  remove_stale(path)
  temporary = f'{path}.{_SCOPE}.{os.getpid()}{_SUFFIX}'
  try:
    yield temporary
    with contextlib.suppress(FileNotFoundError):
      os.chmod(temporary, stat.S_IMODE(os.stat(path).st_mode))
    os.replace(temporary, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(temporary)
    raise


@contextlib.contextmanager
def scratch_directory(path: str) -> Iterator[str]:
  """Yields a new, empty folder of this process's own beside `path`.

  The folder and what is in it are removed when the body ends, whether it
  succeeds or not. Its name holds this process's scope and id, as
  `replacing`'s temporary files do: one that a killed process of this scope
  left is removed by the next call for the same `path`. Two processes, or two
  threads, never share one.

  Example:
    >>> with scratch_directory('cache/recbole-wheel') as scratch:
    ...   subprocess.run(['pip', 'download', '-d', scratch, ...])
  """
  path = os.path.realpath(path)
  remove_stale(path)
  # The process id, then a part of its own: two threads get two folders.
  directory = tempfile.mkdtemp(
      prefix=f'{os.path.basename(path)}.{_SCOPE}.{os.getpid()}.',
      suffix=_SUFFIX, dir=os.path.dirname(path))
  try:
    yield directory
  finally:
    _remove(directory)


def remove_temporaries(path: str) -> None:
  """Removes every temporary file of writes of `path`, any host's.

  Only for a caller that knows no other process is writing `path` now (e.g.
  one holding the workdir's lock).
  """
  for temporary in glob.glob(glob.escape(path) + '.*' + _SUFFIX):
    _remove(temporary)


def write_text(path: str, text: str) -> None:
  """Writes `text` to `path`, all or nothing."""
  with replacing(path) as temporary:
    with open(temporary, 'w') as f:
      f.write(text)


def write_json(path: str, value: Any, **dump_kwargs: Any) -> None:
  """Writes `value` as JSON to `path`, all or nothing (`json.dump` kwargs)."""
  with replacing(path) as temporary:
    with open(temporary, 'w') as f:
      json.dump(value, f, **dump_kwargs)


def read_cached_summary(path: str) -> Optional[dict[str, Any]]:
  """A finished run's cached summary (a JSON object with a 'config'
  object); None if there is none, or if it cannot be read.

  Such a file only caches results that its run can make again: one that is
  damaged (cut, emptied, edited by hand) is named in a printed line and read
  as missing, so its caller makes it again.
  """
  if not os.path.isfile(path):
    return None
  try:
    with open(path) as f:
      summary = json.load(f)
    if isinstance(summary, dict) and isinstance(summary.get('config'), dict):
      return summary
    problem = 'it holds no run summary'
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    problem = f'{type(e).__name__}: {e}'
  print(f'{path} cannot be read ({problem}); making it again.', flush=True)
  return None
