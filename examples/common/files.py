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
"""

import contextlib
import glob
import json
import os
import stat
from typing import Any, Iterator

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


def _remove_stale(path: str) -> None:
  """Removes ``path``'s temporary files left by dead processes of this scope."""
  prefix = f'{path}.{_SCOPE}.'
  for stale in glob.glob(glob.escape(prefix) + '*' + _SUFFIX):
    pid = stale[len(prefix):-len(_SUFFIX)]
    if pid.isdigit() and not _process_exists(int(pid)):
      with contextlib.suppress(FileNotFoundError):
        os.remove(stale)


@contextlib.contextmanager
def replacing(path: str) -> Iterator[str]:
  """Yields a temporary path to write; renamed to `path` if the body succeeds.

  Example:
    >>> with replacing('plot.png') as temporary:
    ...   figure.savefig(temporary, format='png')
  """
  path = os.path.realpath(path)  # Through a symlink, as open() writes.
  _remove_stale(path)
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


def remove_temporaries(path: str) -> None:
  """Removes every temporary file of writes of `path`, any host's.

  Only for a caller that knows no other process is writing `path` now (e.g.
  one holding the workdir's lock).
  """
  for temporary in glob.glob(glob.escape(path) + '.*' + _SUFFIX):
    with contextlib.suppress(FileNotFoundError):
      os.remove(temporary)


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
