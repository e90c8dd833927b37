"""Quiet logs: the example's own messages, and only warnings from libraries.

Orbax logs dozens of INFO lines per save and restore (its checkpoint manager's
internals), and other libraries add their own. All of them, and the examples,
log through absl (or Python's `logging`), so they are told apart by the file a
message comes from: INFO and below pass only from files of the `examples`
package; WARNING and above always pass.
"""

import functools
import logging as std_logging
import os

from absl import logging

_EXAMPLES_DIR = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))


@functools.lru_cache(maxsize=None)
def _is_example_file(pathname: str) -> bool:
  return os.path.realpath(pathname).startswith(_EXAMPLES_DIR + os.sep)


class ExamplesInfoOnly(std_logging.Filter):
  """Passes warnings and errors, and lower levels from examples/ files."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return (record.levelno >= std_logging.WARNING or
            _is_example_file(record.pathname))


_FILTER = ExamplesInfoOnly()


def configure(verbose_libraries: bool = False) -> None:
  """Logs the examples' INFO messages, and libraries' only if asked.

  Call once at the start of a main(). Messages go to absl's handler (stderr).

  Args:
    verbose_libraries: also show libraries' INFO messages (Orbax's checkpoint
      internals, ...).
  """
  logging.set_verbosity(logging.INFO)
  handlers = [logging.get_absl_handler(), *std_logging.getLogger().handlers]
  for handler in handlers:
    handler.removeFilter(_FILTER)
    if not verbose_libraries:
      handler.addFilter(_FILTER)
