"""Measuring a table size in a fresh Python process.

A large dense step allocates and frees several tables' worth of memory; timing
the next optimizer in the same process measures that aftermath too (on this
project's CPU VM, sparse steps at N = 1e7 ran about 1.8× slower right after
the dense ones). A fresh process per size and path is what a user's training
job sees. A child that crashes (killed for memory, say) loses only the
results it had not finished: each finished result is a JSON line on its
stdout, and the rest are recorded as errors. A parent stopped by a signal
stops its child too (`Stopped`).
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
from typing import Any, NamedTuple, Optional

from benchmarks import timing


class Measured(NamedTuple):
  """A child's results, and its machine description if it finished."""
  results: list[dict[str, Any]]
  machine: Optional[dict[str, Any]]


class Stopped(Exception):
  """This process got a signal that stops it (`raise_stopped`)."""

  def __init__(self, signum: int):
    super().__init__(signal.Signals(signum).name)
    self.signum = signum


def raise_stopped(signum: int, frame) -> None:
  """A signal handler: SIGTERM or SIGINT as `Stopped`, raised where it lands.

  SIGTERM's default ends the process where it stands: its measuring child
  went on (on a GPU, holding the device) with no one to read it. Raised, the
  signal unwinds through `measure_in_subprocess`, which stops the child, and
  through the `finally` blocks that remove temporary files.
  """
  del frame
  raise Stopped(signum)


def _finished_results(stdout: str) -> dict[str, dict[str, Any]]:
  """The results a child printed, by optimizer name."""
  finished = {}
  for line in stdout.splitlines():
    if not line.startswith('{'):
      continue
    try:
      result = json.loads(line)
    except json.JSONDecodeError:
      continue
    if isinstance(result, dict) and 'optimizer' in result:
      finished[result['optimizer']] = result
  return finished


def measure_in_subprocess(script: str, flag_lines: str, num_rows: int,
                          names: list[str], path: str) -> Measured:
  """`script`'s measurement of `names` at `num_rows`, with this run's flags.

  Args:
    script: the benchmark's entry point, run as ``python script
      --flagfile=... --num_rows=N --optimizers=... --noisolate``.
    flag_lines: this run's flags, as `flags.FLAGS.flags_into_string()` gives
      them; the arguments above override them.
    num_rows: N.
    names: optimizer names, all of one `path`.
    path: 'dense' or 'sparse', for the error entries of a crashed child.

  Returns:
    One result per name, in order, with an 'error' entry for each that the
    child did not finish; and the child's machine description (the device
    it measured on), or None if it did not finish. The parent never starts
    an accelerator itself: on a GPU it would hold memory the child needs.
  """
  with tempfile.TemporaryDirectory() as folder:
    flagfile = os.path.join(folder, 'flags')
    with open(flagfile, 'w') as f:
      f.write(flag_lines)
    command = [sys.executable, script, f'--flagfile={flagfile}',
               f'--num_rows={num_rows}', f'--optimizers={",".join(names)}',
               '--duplicates=auto', '--noisolate', '--noplot',
               f'--output={folder}', '--name=part']
    with subprocess.Popen(command, stdout=subprocess.PIPE,
                          text=True) as child:
      try:
        stdout = child.communicate()[0]
      except BaseException:  # `Stopped`, say: the child must not go on.
        child.kill()
        raise
    sys.stdout.write(stdout)
    sys.stdout.flush()
    report = os.path.join(folder, 'part.json')
    if os.path.exists(report):  # Written last: the child finished.
      with open(report) as f:
        report = json.load(f)
      return Measured(report['results'], report['machine'])
  finished = _finished_results(stdout)
  reason = (f'its process exited with status {child.returncode} before '
            'finishing (its stderr is in the log)')
  return Measured([finished.get(name)
                   or timing.untimed(name, num_rows, path, error=reason)
                   for name in names], None)
