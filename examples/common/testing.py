"""Running an example's module as a user does, in a fresh process (tests).

The examples' main modules each define absl flags (--batch_size, --workdir,
...), and two of them cannot be imported into one test process.
"""

import os
import subprocess
import sys
from typing import Optional

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def run_module(module: str, *args: str, env: Optional[dict[str, str]] = None,
               timeout: float = 600) -> subprocess.CompletedProcess:
  """``python -m module *args`` from the repository root; never raises on
  a non-zero exit (the caller checks `returncode`, `stdout`, `stderr`)."""
  return subprocess.run(
      [sys.executable, '-m', module, *args], cwd=ROOT,
      env=dict(os.environ, PYTHONPATH=ROOT, **(env or {})),
      capture_output=True, text=True, timeout=timeout, check=False)
