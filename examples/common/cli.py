"""Flags that every example's main.py shares: checkpoints, logs, compiles.

Importing this module defines them; a main.py then calls `configure()` first
thing (logs, and JAX's persistent compilation cache) and passes
`checkpoint_options()` to its training::

  from examples.common import cli

  def main(argv):
    cli.configure()
    train.train_and_evaluate(..., checkpoint_options=cli.checkpoint_options())

  if __name__ == '__main__':
    cli.run(main)

A step-based example also defines `--save_interval_steps` with
`define_save_interval_steps(default)`.
"""

import math
import os
import sys
from typing import Any, Callable, Optional

from absl import app
from absl import flags

from examples.common import checkpointing
from examples.common import compilation_cache
from examples.common import logs

CHECKPOINT_FALLBACK = flags.DEFINE_bool(
    'checkpoint_fallback', False,
    'When the latest checkpoint in --workdir is corrupt, move it aside and '
    'resume from the one before it (without this flag the run refuses to '
    'start and names the corrupt checkpoint).')
ASYNC_CHECKPOINTS = flags.DEFINE_bool(
    'async_checkpoints', False,
    'Write checkpoints in the background while training goes on; a kill '
    'during a write loses only that checkpoint, as with blocking saves.')
VERBOSE_LIBRARIES = flags.DEFINE_bool(
    'verbose_libraries', False,
    'Also log libraries\' INFO messages (e.g. Orbax\'s checkpoint internals); '
    'by default only their warnings and errors, and the example\'s own '
    'messages.')

COMPILATION_CACHE_DIR = flags.DEFINE_string(
    'compilation_cache_dir', compilation_cache.DEFAULT_DIR,
    'JAX\'s persistent compilation cache: compiled steps are kept here and '
    'loaded, not compiled again, by the next run of the same program '
    '(a rerun, a resumed run, the next run of a sweep). "" compiles without '
    'a cache.')

_save_interval_steps: Optional[flags.FlagHolder[int]] = None


def define_save_interval_steps(default: int) -> flags.FlagHolder[int]:
  """Defines --save_interval_steps (for examples that checkpoint by step)."""
  global _save_interval_steps
  _save_interval_steps = flags.DEFINE_integer(
      'save_interval_steps', default,
      'Training steps between checkpoints (the last step is always saved).',
      lower_bound=1)
  return _save_interval_steps


def configure_logs() -> None:
  """Quiet library logs unless --verbose_libraries (see `logs.configure`)."""
  logs.configure(verbose_libraries=VERBOSE_LIBRARIES.value)


def configure_compilation_cache() -> None:
  """Turns on JAX's persistent compilation cache (see `compilation_cache`)."""
  compilation_cache.enable(COMPILATION_CACHE_DIR.value)


def configure() -> None:
  """What a main() calls first: logs, then the compilation cache."""
  configure_logs()
  configure_compilation_cache()


def checkpoint_options() -> checkpointing.Options:
  """The checkpointing flags as `checkpointing.Options`."""
  kwargs = {}
  if _save_interval_steps is not None:
    kwargs['save_interval_steps'] = _save_interval_steps.value
  return checkpointing.Options(
      async_save=ASYNC_CHECKPOINTS.value,
      fallback=CHECKPOINT_FALLBACK.value,
      **kwargs)


def require_positive(*flag_names: str) -> None:
  """Makes absl refuse a value ≤ 0, inf or NaN of these float flags (None
  passes).

  Checked when the flags are parsed, so a bad rate is a one-line error before
  any data is loaded.
  """
  for name in flag_names:
    flags.register_validator(
        name, lambda value: value is None or 0 < value < math.inf,
        message=f'--{name} must be a positive finite number.')


def check_workdir(path: Optional[str]) -> None:
  """Raises an `app.UsageError` when --workdir names something not a folder."""
  if path and os.path.exists(path) and not os.path.isdir(path):
    raise app.UsageError(
        f'--workdir {path} is a file, not a directory; use another --workdir.')


def run(main: Callable[[list[str]], Any]) -> None:
  """`app.run(main)`, with a user's mistakes and Ctrl-C in one line each.

  An `app.UsageError` (a bad flag value, found by `main`) prints
  ``error: ...`` instead of the whole usage text, and Ctrl-C prints how to
  go on instead of a traceback; both exit non-zero. Flag parsing errors are
  absl's own, already one line.
  """
  def main_with_errors(argv):
    try:
      return main(argv)
    except app.UsageError as error:
      sys.exit(f'error: {error} (--helpfull lists the flags)')
    except KeyboardInterrupt:
      sys.stderr.write('Interrupted. Rerun the same command to resume from '
                       'the last checkpoint.\n')
      sys.exit(130)

  app.run(main_with_errors)
