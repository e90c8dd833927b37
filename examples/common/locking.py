"""One run per directory: a lock that a killed process cannot leave stuck.

`DirectoryLock(directory)` holds an exclusive `fcntl.flock` on
`<directory>/LOCK`. The kernel drops the lock when the process ends, however it
ends (SIGKILL, OOM kill, a crashed host's lease running out on NFS), so a
killed run never blocks the next one. The file also records who holds it
(process id, host, start time, command) for the message a second run gets.

Some network filesystems have no working `flock`. There the file itself is the
lock: created exclusively, removed on release. A lock left by a dead process of
this scope (`machine.process_scope`: this host and PID namespace; its
process id gone, or reused by a process started later) is taken over; one from
another host, or from a container that shares this host's name but not its
process ids, cannot be checked from here, so the message names that host and
process, and the file can be deleted once that run is gone.

In a multi-process JAX run every process of the run shares the directory:
only process 0 takes the lock, and it tells the others whether it got it, so
either all processes go on or all raise the same error.
"""

import errno
import fcntl
import json
import os
import socket
import sys
import time
from typing import Any, Optional

import jax
import numpy as np

from examples.common import machine

LOCK_FILE = 'LOCK'
# errno values of a filesystem without working flock (the lock is not held by
# anyone; it just cannot be taken this way).
_NO_FLOCK = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS,
                       errno.EINVAL})
_MESSAGE_BYTES = 4096


class DirectoryLockedError(RuntimeError):
  """Another live run holds the directory's lock."""


def _process_start_ticks(pid: int) -> Optional[int]:
  """When `pid` started (clock ticks since boot), or None if unknown/gone."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      # The command name (field 2) may hold spaces; fields after ')' are fixed.
      return int(f.read().rsplit(')', 1)[1].split()[19])
  except (OSError, IndexError, ValueError):
    return None


def _holder_record() -> dict[str, Any]:
  return {
      'pid': os.getpid(),
      'host': socket.gethostname(),
      'scope': machine.process_scope(),
      'pid_start_ticks': _process_start_ticks(os.getpid()),
      'started': time.strftime('%Y-%m-%d %H:%M:%S'),
      'command': ' '.join(sys.argv),
  }


def _describe(holder: Optional[dict[str, Any]]) -> str:
  if not holder:
    return 'another process (it has not written its details yet)'
  return (f'process {holder.get("pid")} on host {holder.get("host")}, '
          f'started {holder.get("started")} ({holder.get("command")})')


def _in_this_scope(holder: dict[str, Any]) -> bool:
  """Whether the holder's process id can be checked here.

  Records without a scope (written before it was kept) are judged by host.
  """
  if 'scope' in holder:
    return holder['scope'] == machine.process_scope()
  return holder.get('host') == socket.gethostname()


def _is_alive_here(holder: dict[str, Any]) -> bool:
  """Whether the holder, a process of this scope, still runs."""
  pid = holder.get('pid')
  if not isinstance(pid, int):
    return False
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass  # Someone else's live process.
  started = holder.get('pid_start_ticks')
  # A pid reused by a process started later is not the holder.
  return started is None or _process_start_ticks(pid) in (None, started)


class DirectoryLock:
  """An exclusive lock on a directory for the life of one run.

  Use as a context manager, or call `release()` (also on exceptions).

  Args:
    directory: the directory to lock (created if missing).
    what: how the message names the directory, e.g. 'Workdir'.
    hint: what the message tells the user to do instead.

  Raises:
    DirectoryLockedError: when a live run (this process included, through
      another lock object) already holds it.
  """

  def __init__(self, directory: str, *, what: str = 'Directory',
               hint: str = 'or use another --workdir'):
    self.directory = os.path.abspath(directory)
    self.path = os.path.join(self.directory, LOCK_FILE)
    self._file = None
    self._owns_file = False
    error = ''
    if jax.process_index() == 0:
      os.makedirs(self.directory, exist_ok=True)
      holder = self._acquire()
      if holder is not None:
        error = (
            f'{what} {self.directory} is in use by {_describe(holder)}; lock '
            f'file {self.path}. Wait for that run to finish or stop it, '
            f'{hint}.'
        )
    if jax.process_count() > 1:
      error = _broadcast_text(error)
    if error:
      raise DirectoryLockedError(error)

  def _acquire(self) -> Optional[dict[str, Any]]:
    """Takes the lock; returns None, or the live holder's record."""
    handle = open(self.path, 'a+')
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
      if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
        handle.seek(0)
        holder = _parse(handle.read())
        handle.close()
        return holder or {}
      handle.close()
      if error.errno not in _NO_FLOCK:
        raise
      return self._acquire_by_exclusive_create()
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps(_holder_record()))
    handle.flush()
    self._file = handle
    return None

  def _acquire_by_exclusive_create(self) -> Optional[dict[str, Any]]:
    """The lock where flock does not work: the file exists iff it is held.

    The file is written under a private name and hard-linked into place, which
    is atomic and fails if the lock exists, so a lock file is never seen
    half-written.
    """
    private = f'{self.path}.{machine.process_scope()}.{os.getpid()}'
    with open(private, 'w') as f:
      f.write(json.dumps(_holder_record()))
    try:
      for _ in range(3):
        try:
          os.link(private, self.path)
        except FileExistsError:
          pass
        else:
          self._owns_file = True
          return None
        holder = _read_holder(self.path)
        # An empty file is no holder's: a holder's file is complete when it
        # appears. It is left by a try at flock on this filesystem.
        if holder is not None and (not _in_this_scope(holder) or
                                   _is_alive_here(holder)):
          return holder
        # Stale (its process is gone) or empty. Move it away and check that
        # what moved is what was read, not a new holder's lock taken since.
        stale = f'{self.path}.stale.{machine.process_scope()}.{os.getpid()}'
        try:
          os.rename(self.path, stale)
        except FileNotFoundError:
          continue
        moved = _read_holder(stale)
        if moved != holder:
          try:
            os.link(stale, self.path)
          except FileExistsError:
            pass
          os.remove(stale)
          return moved or {}
        os.remove(stale)
      return _read_holder(self.path) or {}
    finally:
      os.remove(private)

  def release(self) -> None:
    """Releases the lock (idempotent)."""
    if self._file is not None:
      self._file.close()  # Closing drops the flock.
      self._file = None
    if self._owns_file:
      self._owns_file = False
      try:
        os.remove(self.path)
      except FileNotFoundError:
        pass

  def __enter__(self) -> 'DirectoryLock':
    return self

  def __exit__(self, *exc_info) -> None:
    self.release()

  def __del__(self):
    self.release()


def _parse(text: str) -> Optional[dict[str, Any]]:
  try:
    holder = json.loads(text)
  except ValueError:
    return None
  return holder if isinstance(holder, dict) else None


def _read_holder(path: str) -> Optional[dict[str, Any]]:
  try:
    with open(path) as f:
      return _parse(f.read())
  except FileNotFoundError:
    return None


def _broadcast_text(text: str) -> str:
  """Process 0's `text`, on every process of a multi-process run."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  data = np.zeros(_MESSAGE_BYTES, np.uint8)
  encoded = text.encode()[:_MESSAGE_BYTES]
  data[:len(encoded)] = np.frombuffer(encoded, np.uint8)
  data = np.asarray(multihost_utils.broadcast_one_to_all(data))
  return bytes(data).rstrip(b'\0').decode(errors='replace')
