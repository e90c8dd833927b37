r"""Now against before: step times of two codes, from interleaved runs.

On a shared machine one run of each code cannot resolve 10%: whichever runs
second is often slower. `ab_check.sh` runs the benchmark of both codes in
alternating order, a fresh process each; this pairs run i of one with run i
of the other and reports, per (optimizer, N), the median over pairs of the
ratio now / before of synced medians (the one timing both codes have), its
range, and the same ratio divided by `no_update`'s in that pair (the step
that does nothing but gather, whose code is the same in both):

  python benchmarks/ab_compare.py --now='/tmp/ab/new*/x.json' \
      --before='/tmp/ab/old*/x.json' --output=benchmarks/results/ab.md
"""

import glob
import json
import os
import re
import sys
from typing import Any

if __package__ in (None, ''):
  # Run as a script: `examples.*` is found from the repository root.
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
      __file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app
from absl import flags
import numpy as np

from examples.common import files
# pylint: enable=g-import-not-at-top,wrong-import-position

REFERENCE = 'no_update'


def _run_index(path: str) -> int:
  """The pair a file belongs to: the last number in its path."""
  numbers = re.findall(r'\d+', path)
  if not numbers:
    raise ValueError(f'{path}: no run number in the path to pair it by.')
  return int(numbers[-1])


def _load(pattern: str) -> dict[int, dict[str, Any]]:
  paths = glob.glob(pattern)
  if not paths:
    raise ValueError(f'No file matches {pattern!r}.')
  runs = {}
  for path in paths:
    index = _run_index(os.path.dirname(path) or path)
    with open(path) as f:
      runs[index] = json.load(f)
  return runs


def _medians(report: dict[str, Any]) -> dict[tuple[str, int], float]:
  return {(r['optimizer'], r['num_rows']): r['median_ms']
          for r in report['results'] if r.get('median_ms') is not None}


def compare(now: dict[int, dict], before: dict[int, dict]) -> list[dict]:
  """Per (optimizer, N): ratios now / before over the pairs both have."""
  pairs = sorted(set(now) & set(before))
  if not pairs:
    raise ValueError(f'No pair: runs {sorted(now)} now, {sorted(before)} '
                     'before.')
  ratios, relative = {}, {}
  for index in pairs:
    new, old = _medians(now[index]), _medians(before[index])
    for key in sorted(set(new) & set(old)):
      ratio = new[key] / old[key]
      ratios.setdefault(key, []).append(ratio)
      reference = (REFERENCE, key[1])
      if reference in new and reference in old:
        relative.setdefault(key, []).append(
            ratio / (new[reference] / old[reference]))
  rows = []
  for key, values in ratios.items():
    rows.append({'optimizer': key[0], 'num_rows': key[1],
                 'pairs': len(values),
                 'median_ratio': float(np.median(values)),
                 'min_ratio': float(min(values)),
                 'max_ratio': float(max(values)),
                 'median_relative_to_reference': (
                     float(np.median(relative[key])) if key in relative
                     else None)})
  return sorted(rows, key=lambda r: (r['optimizer'], r['num_rows']))


def render(rows: list[dict], now_pattern: str, before_pattern: str,
           machine: str, tolerance: float) -> str:
  lines = [f'# Now against before: {now_pattern} / {before_pattern}', '',
           f'Machine: {machine}. Synced medians per step; ratio = now / '
           f'before, median over {rows[0]["pairs"]} interleaved pairs of '
           f'processes [min, max]; "÷ {REFERENCE}" divides each pair\'s '
           f'ratio by {REFERENCE}\'s in the same pair. Flagged: median ratio '
           f'above {1 + tolerance:.2f}.', '',
           f'| step | N | now / before | ÷ {REFERENCE} | flag |',
           '|---|---|---|---|---|']
  for row in rows:
    relative = row['median_relative_to_reference']
    flagged = (row['optimizer'] != REFERENCE and
               row['median_ratio'] > 1 + tolerance)
    lines.append(
        f'| {row["optimizer"]} | {row["num_rows"]:.0e} | '
        f'{row["median_ratio"]:.3f} [{row["min_ratio"]:.3f}, '
        f'{row["max_ratio"]:.3f}] | '
        f'{"–" if relative is None else f"{relative:.3f}"} | '
        f'{"slower" if flagged else ""} |')
  return '\n'.join(lines) + '\n'


def main(argv):
  del argv
  now, before = _load(_NOW.value), _load(_BEFORE.value)
  rows = compare(now, before)
  machine = next(iter(now.values())).get('machine', 'unknown machine')
  if isinstance(machine, dict):
    machine = machine.get('description', json.dumps(machine))
  markdown = render(rows, _NOW.value, _BEFORE.value, machine,
                    _TOLERANCE.value)
  if _OUTPUT.value == '-':
    print(markdown)
    return
  # Each file whole or not at all: a kill mid-write keeps the old one.
  files.write_text(_OUTPUT.value, markdown)
  files.write_json(os.path.splitext(_OUTPUT.value)[0] + '.json',
                   {'now': _NOW.value, 'before': _BEFORE.value,
                    'machine': machine, 'rows': rows}, indent=1)
  print(markdown)


if __name__ == '__main__':
  # Defined only when run as a script: tests import this module into a
  # process that holds other scripts' flags.
  _NOW = flags.DEFINE_string('now', None, 'Glob of the new code\'s JSONs.')
  _BEFORE = flags.DEFINE_string('before', None,
                                'Glob of the old code\'s JSONs.')
  _OUTPUT = flags.DEFINE_string('output', '-', 'Markdown file; - prints it.')
  _TOLERANCE = flags.DEFINE_float(
      'tolerance', 0.10, 'A step is flagged when its median ratio exceeds '
      '1 + this.')
  flags.mark_flags_as_required(['now', 'before'])
  app.run(main)
