"""The step benchmark's plot: step time against table size, log-log."""

from typing import Any

from benchmarks import workload
from examples.common import files


def plot(results: list[dict[str, Any]], path: str, title: str) -> None:
  """One line per optimizer: back-to-back ms per step (synced where absent)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, ax = plt.subplots(figsize=(7, 5))
  names = list(dict.fromkeys(r['optimizer'] for r in results))
  for name in names:
    points = sorted((r['num_rows'], r.get('back_to_back_ms', r.get(
        'median_ms'))) for r in results
                    if r['optimizer'] == name and 'median_ms' in r)
    if not points:
      continue
    sizes, times = zip(*points)
    sparse = workload.parse(name).path == 'sparse'
    ax.plot(sizes, times, marker='o', linestyle='--' if sparse else '-',
            label=name)
  ax.set_xscale('log')
  ax.set_yscale('log')
  ax.set_xlabel('table rows N')
  ax.set_ylabel('ms per step (steps back to back)')
  ax.set_title(title)
  ax.grid(True, which='both', alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  # Whole or not at all: a run killed mid-write keeps the old plot. The
  # temporary file's name does not end in .png, so the format is named.
  with files.replacing(path) as temporary:
    fig.savefig(temporary, dpi=120, format='png')
  plt.close(fig)
