"""Progress bars (tqdm) that step aside when output is not a terminal."""

import sys
from collections.abc import Iterable
from typing import Any, Optional

import tqdm


def progress_bar(
    iterable: Optional[Iterable[Any]] = None,
    *,
    desc: str,
    total: Optional[int] = None,
    enabled: Optional[bool] = None,
    leave: bool = False,
) -> tqdm.tqdm:
  """A tqdm bar; by default shown only when stderr is a terminal.

  Args:
    iterable: what to iterate over (or None and call `.update`).
    desc: the bar's label.
    total: number of items, when `iterable` has no length.
    enabled: force the bar on or off; None decides by `sys.stderr.isatty()`,
      so logs of background runs are not flooded with bar redraws.
    leave: keep the finished bar on screen.

  Returns:
    The tqdm bar.
  """
  if enabled is None:
    enabled = sys.stderr.isatty()
  return tqdm.tqdm(
      iterable,
      desc=desc,
      total=total,
      disable=not enabled,
      leave=leave,
      dynamic_ncols=True,
  )
