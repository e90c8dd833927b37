"""Plots of training runs with matplotlib (Agg: no display needed)."""

from collections.abc import Mapping, Sequence
from typing import Optional

import matplotlib

matplotlib.use('Agg')
from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from examples.common import files  # pylint: disable=g-import-not-at-top


def line_plot(
    path: str,
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    smooth: int = 1,
    log_x: bool = False,
    log_y: bool = False,
) -> None:
  """One line per series, saved as a PNG.

  Args:
    path: the PNG file to write.
    series: {label: (x values, y values)}.
    xlabel: the x axis label.
    ylabel: the y axis label.
    title: the plot's title.
    smooth: plot a running mean over this many points (e.g. for step losses).
    log_x: log-scale x axis (e.g. learning rates).
    log_y: log-scale y axis.
  """
  figure, axes = plt.subplots(figsize=(6.4, 4.0))
  for label, (x, y) in series.items():
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if smooth > 1 and y.size >= smooth:
      y = np.convolve(y, np.ones(smooth) / smooth, mode='valid')
      x = x[smooth - 1:]
    axes.plot(x, y, label=label, linewidth=1.2, marker='.' if log_x else None)
  axes.set_xlabel(xlabel)
  axes.set_ylabel(ylabel)
  axes.set_title(title)
  if log_x:
    axes.set_xscale('log')
  if log_y:
    axes.set_yscale('log')
  axes.grid(alpha=0.3)
  axes.legend(fontsize='small')
  figure.tight_layout()
  save(figure, path)


def grouped_bar_plot(
    path: str,
    groups: Sequence[str],
    series: Mapping[str, Sequence[float]],
    *,
    ylabel: str,
    title: str,
    errors: Optional[Mapping[str, Sequence[float]]] = None,
    y_min: Optional[float] = None,
) -> None:
  """Bars grouped by `groups` (x axis), one colour per series, saved as a PNG.

  Args:
    path: the PNG file to write.
    groups: names of the groups along the x axis (e.g. frequency buckets).
    series: {label: one value per group}.
    ylabel: the y axis label.
    title: the plot's title.
    errors: optional {label: error bar half-height per group}.
    y_min: lower limit of the y axis (bars of AUCs read better from ~0.5).
  """
  figure, axes = plt.subplots(figsize=(6.4, 4.0))
  width = 0.8 / max(len(series), 1)
  positions = np.arange(len(groups))
  for i, (label, values) in enumerate(series.items()):
    axes.bar(
        positions + (i - (len(series) - 1) / 2) * width,
        values,
        width,
        yerr=None if errors is None else errors.get(label),
        label=label,
        capsize=2,
    )
  axes.set_xticks(positions)
  axes.set_xticklabels(groups)
  axes.set_ylabel(ylabel)
  axes.set_title(title)
  if y_min is not None:
    axes.set_ylim(bottom=y_min)
  axes.grid(alpha=0.3, axis='y')
  axes.legend(fontsize='small')
  figure.tight_layout()
  save(figure, path)


def save(figure, path: str, dpi: int = 110) -> None:
  """Saves `figure` as a PNG at `path`, all or nothing, and closes it."""
  with files.replacing(path) as temporary:
    figure.savefig(temporary, dpi=dpi, format='png')
  plt.close(figure)
