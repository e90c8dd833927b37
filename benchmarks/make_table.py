r"""Renders `embedding_step.py`'s JSON as a Markdown report with the targets.

  python benchmarks/make_table.py --input benchmarks/results/cpu.json \
      --output benchmarks/results/README.md
  # With a check against an earlier run on the same machine:
  python benchmarks/make_table.py --input /tmp/new.json \
      --baseline benchmarks/results/cpu.json --output -
"""

from collections.abc import Sequence
import json
import os
import sys
from typing import Any, Optional

if __package__ in (None, ''):
  # Run as a script: `examples.*` is found from the repository root.
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
      __file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app
from absl import flags

from examples.common import files
# pylint: enable=g-import-not-at-top,wrong-import-position

_INPUT = flags.DEFINE_string('input', 'benchmarks/results/cpu.json',
                             'JSON written by embedding_step.py.')
_OUTPUT = flags.DEFINE_string(
    'output', 'benchmarks/results/README.md',
    'Markdown file to write; "-" prints to stdout.')
_BASELINE = flags.DEFINE_string(
    'baseline', None,
    'An earlier JSON of embedding_step.py on the same machine: adds the '
    'target that no sparse step is more than 10% slower than there (synced '
    'medians, which every report has).')

ORDER = ('sgd', 'adagrad', 'adam', 'rowwise_adagrad', 'fa_sgd', 'cf_sgd',
         'sparse_sgd', 'sparse_cf_sgd', 'sparse_fa_sgd',
         'sparse_rowwise_adagrad', 'no_update')
LABELS = {
    'sgd': '`optax.sgd`', 'adagrad': '`optax.adagrad`',
    'adam': '`optax.adam`', 'rowwise_adagrad': 'row-wise Adagrad',
    'fa_sgd': 'FA-SGD', 'cf_sgd': 'CF-SGD', 'sparse_sgd': 'SGD, sparse',
    'sparse_cf_sgd': 'CF-SGD, sparse', 'sparse_fa_sgd': 'FA-SGD, sparse',
    'sparse_rowwise_adagrad': 'row-wise Adagrad, sparse',
    'no_update': 'gather and loss only (no update)',
}
DUPLICATE_MODES = ('auto', 'scatter', 'reduce', 'occurrences')


def _label(name: str) -> str:
  """'sparse_cf_sgd@reduce' -> 'CF-SGD, sparse, `reduce` duplicates'."""
  base, _, duplicates = name.partition('@')
  label = LABELS.get(base, f'`{base}`')
  return f'{label}, `{duplicates}` duplicates' if duplicates else label


def _names(results) -> list[str]:
  """The optimizers in `results`, in ORDER, each base's @modes after it."""

  def key(name):
    base, _, duplicates = name.partition('@')
    return (ORDER.index(base) if base in ORDER else len(ORDER), base,
            DUPLICATE_MODES.index(duplicates or 'auto')
            if (duplicates or 'auto') in DUPLICATE_MODES else 99, name)

  return sorted({r['optimizer'] for r in results}, key=key)


def main_ms(result: Optional[dict[str, Any]]) -> Optional[float]:
  """The main number: back-to-back ms per step (synced, for older reports)."""
  if result is None:
    return None
  return result.get('back_to_back_ms', result.get('median_ms'))


def _sizes(results) -> list[int]:
  return sorted({r['num_rows'] for r in results})


def _find(results, name: str, num_rows: int) -> Optional[dict[str, Any]]:
  for result in results:
    if result['optimizer'] == name and result['num_rows'] == num_rows:
      return result
  return None


def _median(results, name, num_rows) -> Optional[float]:
  return main_ms(_find(results, name, num_rows))


def _rows_label(num_rows: int) -> str:
  exponent = len(str(num_rows)) - 1
  if num_rows == 10 ** exponent:
    return f'1e{exponent}'
  return f'{num_rows:,}'


def _format_ms(value: float) -> str:
  if value >= 100:
    return f'{value:.0f}'
  if value >= 10:
    return f'{value:.1f}'
  return f'{value:.2f}'


def _format_bytes(num_bytes: int) -> str:
  for unit, size in (('GB', 1e9), ('MB', 1e6), ('kB', 1e3)):
    if num_bytes >= size:
      return f'{num_bytes / size:.3g} {unit}'
  return f'{num_bytes} B'


def time_table(results, key: str = 'back_to_back_ms') -> list[str]:
  """Rows of optimizers, columns of N, cells of `key` (ms per step)."""
  sizes = _sizes(results)
  lines = ['| optimizer | ' + ' | '.join(f'N = {_rows_label(n)}' for n in sizes)
           + ' |', '|---|' + '---:|' * len(sizes)]
  for name in _names(results):
    cells = []
    for num_rows in sizes:
      result = _find(results, name, num_rows)
      if result is None:
        cells.append('')
      elif 'skipped' in result:
        cells.append('skipped¹')
      elif 'error' in result:
        cells.append('failed³')
      else:
        cells.append(_format_ms(result[key]))
    if any(cells):
      lines.append(f'| {_label(name)} | ' + ' | '.join(cells) + ' |')
  return lines


def memory_table(results) -> list[str]:
  sizes = _sizes(results)
  lines = ['| optimizer | (state + frequencies²) / params | ' + ' | '.join(
      f'state, N = {_rows_label(n)}' for n in sizes) + ' |',
           '|---|---:|' + '---:|' * len(sizes)]
  for name in _names(results):
    measured = [r for r in results
                if r['optimizer'] == name and 'state_bytes' in r]
    if not measured:
      continue
    largest = max(measured, key=lambda r: r['num_rows'])
    ratio = (largest['state_bytes'] + largest.get('frequencies_bytes', 0)
             ) / largest['params_bytes']
    cells = []
    for num_rows in sizes:
      result = _find(results, name, num_rows)
      cell = ''
      if result and 'state_bytes' in result:
        cell = _format_bytes(result['state_bytes'])
        if result.get('frequencies_bytes'):
          cell += f" + {_format_bytes(result['frequencies_bytes'])}²"
      cells.append(cell)
    lines.append(f'| {_label(name)} | {ratio:.4f} | ' + ' | '.join(cells)
                 + ' |')
  return lines


def _verdict(ok: Optional[bool], lacking: Sequence[int] = ()) -> str:
  """'met', '**not met**' or 'not measured'; withheld if sizes are `lacking`.

  Args:
    ok: whether the target is met; None if it was not measured.
    lacking: sizes the target needs that the run was asked for but stopped
      before: a verdict on the sizes done could be overturned by them.
  """
  if lacking:
    return ('not judged (the run stopped before N = '
            + ', '.join(_rows_label(n) for n in lacking) + ')')
  return {True: 'met', False: '**not met**', None: 'not measured'}[ok]


def missing_sizes(report: dict[str, Any]) -> list[int]:
  """The sizes the run was asked for and did not finish: it was stopped.

  A report names the sizes asked for (`sizes`); an older one only in its
  command's --num_rows, if it gave the flag (if not, none count as missing).
  """
  asked = report.get('sizes') or _sizes_in_command(report['command'])
  done = set(report.get('sizes_done', _sizes(report['results'])))
  return [n for n in asked if n not in done]


def _sizes_in_command(command: str) -> list[int]:
  """--num_rows in `command` (the last one, as absl reads it); [] if none."""
  words = command.split()  # The report joined sys.argv with spaces.
  sizes = []
  for word, following in zip(words, words[1:] + ['']):
    if word.startswith('--num_rows='):
      value = word.partition('=')[2]
    elif word == '--num_rows':
      value = following
    else:
      continue
    try:
      sizes = [int(float(n)) for n in value.split(',')]
    except ValueError:
      sizes = []
  return sizes


def targets(results, dim: int, missing: Sequence[int] = ()) -> list[str]:
  """The issue's targets, each computed from the measurements.

  Args:
    results: the report's results.
    dim: the table's d.
    missing: sizes asked for that a stopped run did not finish; a target
      that needs one is not judged.
  """
  lines = ['| target | measured | verdict |', '|---|---|---|']

  def verdict(ok, *needs):
    return _verdict(ok, [n for n in needs if n in missing])

  def ratio(numerator, denominator):
    if numerator is None or denominator is None:
      return None
    return numerator / denominator

  cf, sgd, adagrad = (_median(results, n, 1_000_000)
                      for n in ('cf_sgd', 'sgd', 'adagrad'))
  value = ratio(cf, sgd)
  lines.append('| CF-SGD dense step ≤ 1.1× `optax.sgd`, N = 1e6 | '
               + ('' if value is None else f'{value:.2f}×') + ' | '
               + verdict(None if value is None else value <= 1.1, 1_000_000)
               + ' |')
  value = ratio(cf, adagrad)
  lines.append('| CF-SGD dense step ≤ 0.5× `optax.adagrad`, N = 1e6 | '
               + ('' if value is None else f'{value:.2f}×') + ' | '
               + verdict(None if value is None else value <= 0.5, 1_000_000)
               + ' |')

  excess = []
  for result in results:
    if result['optimizer'] in ('cf_sgd', 'sparse_cf_sgd') and (
        'state_bytes' in result):
      excess.append(result['state_bytes'] - result['params_bytes'] / dim)
  worst = max(excess) if excess else None
  lines.append('| CF-SGD state bytes ≤ params bytes / d + 1 KiB | '
               + ('' if worst is None else
                  f'at most params / d + {worst:.0f} B') + ' | '
               + _verdict(None if worst is None else worst <= 1024) + ' |')

  value = ratio(sgd, _median(results, 'sparse_cf_sgd', 1_000_000))
  lines.append('| CF-SGD sparse step ≥ 100× faster than `optax.sgd`, N = 1e6 | '
               + ('' if value is None else f'{value:.0f}×') + ' | '
               + verdict(None if value is None else value >= 100, 1_000_000)
               + ' |')
  large, small = (_find(results, 'sparse_cf_sgd', n)
                  for n in (10_000_000, 100_000))
  value = ratio(_median(results, 'sparse_cf_sgd', 10_000_000),
                _median(results, 'sparse_cf_sgd', 100_000))
  spread = ''
  rounds_key = ('round_back_to_back_ms' if 'round_back_to_back_ms' in (
      large or {}) else 'round_medians_ms')
  if value is not None and len(large.get(rounds_key, [])) > 1:
    # Round i of every optimizer ran close in time, at each size.
    round_ratios = [a / b for a, b in zip(large[rounds_key],
                                          small[rounds_key])]
    spread = (f' (rounds: {min(round_ratios):.2f}× to '
              f'{max(round_ratios):.2f}×)')
  lines.append('| CF-SGD sparse step grows < 1.5× from N = 1e5 to 1e7 | '
               + ('' if value is None else f'{value:.2f}×{spread}') + ' | '
               + verdict(None if value is None else value < 1.5, 100_000,
                         10_000_000) + ' |')
  return lines


def _target_line(target: str, measured: str, ok: Optional[bool],
                 judged: bool = True, run: str = 'a CPU run',
                 lacking: Sequence[int] = ()) -> str:
  verdict = _verdict(ok, lacking) if judged else f'not judged ({run})'
  return f'| {target} | {measured} | {verdict} |'


def accelerator_targets(results, judged: bool = True,
                        run: str = 'a CPU run',
                        missing: Sequence[int] = ()) -> list[str]:
  """Issue 10's targets for the sparse path on an accelerator.

  Args:
    results: the report's results.
    judged: whether the run was on an accelerator. Other runs' ratios are
      shown without a verdict: the targets are not for CPUs.
    run: what the run was, for a verdict withheld.
    missing: sizes asked for that a stopped run did not finish; a target
      that needs one is not judged.
  """
  lines = ['| target | measured | verdict |', '|---|---|---|']
  sizes = (100_000, 1_000_000, 10_000_000, 100_000_000)
  for name in ('sparse_cf_sgd', 'sparse_fa_sgd', 'sparse_rowwise_adagrad'):
    ratios = []
    for num_rows in sizes:
      step, floor = (_median(results, n, num_rows) for n in (name, 'no_update'))
      if step is not None and floor is not None:
        ratios.append((num_rows, step / floor))
    measured = ', '.join(f'{_rows_label(n)}: {r:.2f}×' for n, r in ratios)
    if 0 < len(ratios) < len(sizes):
      measured += f' (only {len(ratios)} of the {len(sizes)} sizes)'
    ok = None  # Met only if measured at every size.
    if any(r > 2 for _, r in ratios):
      ok = False
    elif len(ratios) == len(sizes):
      ok = True
    lines.append(_target_line(
        f'{_label(name)} ≤ 2× `no_update`, every N in 1e5 … 1e8', measured,
        ok, judged, run, [n for n in sizes if n in missing]))
  sgd, sparse = (_median(results, n, 10_000_000)
                 for n in ('sgd', 'sparse_cf_sgd'))
  value = None if sgd is None or sparse is None else sgd / sparse
  lines.append(_target_line(
      'CF-SGD sparse step ≥ 10× faster than `optax.sgd`, N = 1e7',
      '' if value is None else f'{value:.1f}×',
      None if value is None else value >= 10, judged, run,
      [n for n in (10_000_000,) if n in missing]))
  return lines


def baseline_targets(results, baseline: dict[str, Any],
                     baseline_name: str) -> list[str]:
  """No sparse step more than 10% slower than in `baseline` (synced medians)."""
  lines = ['| sparse step | N | now (ms) | ' + baseline_name
           + ' (ms) | ratio | verdict |', '|---|---:|---:|---:|---:|---|']
  for result in results:
    before = _find(baseline['results'], result['optimizer'],
                   result['num_rows'])
    if (result.get('path') != 'sparse' or 'median_ms' not in result
        or before is None or 'median_ms' not in before):
      continue
    ratio = result['median_ms'] / before['median_ms']
    lines.append(
        f"| {_label(result['optimizer'])} | {_rows_label(result['num_rows'])} "
        f"| {_format_ms(result['median_ms'])} | "
        f"{_format_ms(before['median_ms'])} | {ratio:.2f}× | "
        f'{_verdict(ratio <= 1.1)} |')
  return lines


def _method(config: dict[str, Any]) -> str:
  donate = config.get('donate', True)
  repeats = config.get('repeats', 1)
  text = ('One jitted training step (loss over the gathered rows, its '
          "gradient and the optimizer's update, "
          + ('table and optimizer state donated' if donate else
             'table and optimizer state **not** donated, so each step writes '
             'a fresh table and state')
          + f") on an N × {config['dim']} float32 table with batches of "
          f"{config['batch']} Zipf ids (exponent {config['zipf_exponent']}), "
          f"after {config['warmup']} warm-up steps. ")
  if 'back_to_back_steps' in config:
    text += (
        f"Main number: blocks of up to {config['back_to_back_steps']} steps "
        'dispatched back to back with one host sync at the end (fewer steps '
        'per block for slow steps), ms per step = block time / steps, median '
        f"over at least 3 blocks (fast steps: {config.get('min_seconds', 0)} "
        f"s of blocks, at most {config.get('max_steps')} steps). Second "
        'number: the median of steps each followed by a host sync, ')
  else:
    text += 'Median step time, each step followed by a host sync, '
  text += (f"over at least {config['steps']} steps (fast steps: as many "
           f"as fit in {config.get('min_seconds', 0)} s, at most "
           f"{config.get('max_steps', config['steps'])})")
  if repeats > 1:
    text += (f'; each pair timed in {repeats} rounds (every optimizer of a '
             'size once per round, on a fresh table) and the median of the '
             "rounds' medians reported")
  if config.get('isolate'):
    text += ('. Each size\'s dense and sparse optimizers ran in a fresh '
             'process each')
  return text + ('. Dense optimizers take the gradient w.r.t. the whole table '
                 'and update all of it; sparse ones take it w.r.t. the '
                 'gathered rows and update only those. A sparse optimizer '
                 'named with `@scatter` or `@reduce` combines duplicate ids '
                 'that way; without, `auto` compiles the backend\'s own '
                 '(`scatter` on CPU, `reduce` on GPU and TPU).')


def _machine(machine: dict[str, Any]) -> str:
  """'NVIDIA H200 (gpu) with a 16-core CPU (...)', or the CPU for old runs."""
  if 'description' in machine:
    return (f'{machine["description"]} (JAX {machine["jax_version"]}, '
            f'backend {machine["jax_backend"]}{_pages(machine)})')
  return (f'{machine["cpu"]} ({machine["cpu_count"]} cores, JAX '
          f'{machine["jax_version"]}, backend '
          f'{machine["jax_backend"]}{_pages(machine)})')


def _pages(machine: dict[str, Any]) -> str:
  """The huge page settings the run had, if it recorded them."""
  if 'transparent_hugepage' not in machine:
    return ''
  text = f'; transparent huge pages {machine["transparent_hugepage"]!r}'
  tunables = machine.get('glibc_tunables')
  return text + (f', GLIBC_TUNABLES={tunables}' if tunables else
                 ', no GLIBC_TUNABLES')


def render(report: dict[str, Any], json_name: str,
           baseline: Optional[tuple[dict[str, Any], str]] = None) -> str:
  """The Markdown report; `baseline` is (an earlier report, its file name)."""
  results = report['results']
  config = report['config']
  machine = report['machine']
  missing = missing_sizes(report)
  back_to_back = any('back_to_back_ms' in r for r in results)
  lines = [
      '# Embedding step benchmark' + (' (a partial run)' if missing else ''),
      '',
      _method(config),
      '',
      f'Made by `{report["command"]}` on {_machine(machine)}, in '
      f'{report["total_seconds"]} s. Load average (1, 5, 15 min) '
      f'{report["load_average_before"]} before and '
      f'{report["load_average_after"]} after the run. Rendered from '
      f'`{json_name}` by `python benchmarks/make_table.py`; the plot is '
      f'`{os.path.splitext(json_name)[0]}.png`.',
      '',
  ]
  if missing:
    lines += [f'**A partial run**: {partial_run(missing)}. The tables cover '
              'the sizes it finished; targets that need a missing size are '
              'not judged.', '']
  if back_to_back:
    lines += ['## ms per step, steps back to back', '']
    lines += time_table(results, 'back_to_back_ms')
    lines += ['', '## Median ms per step, one host sync per step', '']
    lines += time_table(results, 'median_ms')
  else:
    lines += ['## Median step time (ms)', '']
    lines += time_table(results, 'median_ms')
  skipped = [r for r in results if 'skipped' in r]
  if skipped:
    lines += ['', '¹ Skipped: ' + '; '.join(
        f"{_label(r['optimizer'])} at N = {_rows_label(r['num_rows'])} "
        f"({r['skipped']})" for r in skipped) + '.']
  failed = [r for r in results if 'error' in r]
  if failed:
    lines += ['', '³ Failed: ' + '; '.join(
        f"{_label(r['optimizer'])} at N = {_rows_label(r['num_rows'])} "
        f"({r['error']})" for r in failed) + '.']
  lines += ['', '## Optimizer state', '']
  lines += memory_table(results)
  lines += ['', '² FA-SGD\'s per-row frequencies (float32), which it holds '
            'outside its state; the other optimizers have none.']
  lines += ['', '## Targets (issue 3)', '']
  lines += targets(results, config['dim'], missing)
  lines += ['', '## Targets for accelerators (issue 10)', '']
  # Judged only for a run known to be on an accelerator: 'unknown' is what
  # a run whose every measuring process crashed records.
  backend = machine['jax_backend']
  on_accelerator = backend in ('gpu', 'tpu', 'cuda', 'rocm')
  run = 'a CPU run' if backend == 'cpu' else f'backend {backend!r}'
  if backend == 'cpu':
    lines += ['These targets are for GPUs and TPUs; this run was on a CPU, so '
              'its ratios are shown without a verdict.', '']
  elif not on_accelerator:
    lines += ['These targets are for GPUs and TPUs; this run\'s backend is '
              f'{backend!r}, so its ratios are shown without a verdict.', '']
  lines += accelerator_targets(results, judged=on_accelerator, run=run,
                               missing=missing)
  if baseline is not None:
    lines += ['', f'## Against `{baseline[1]}` (synced medians)', '']
    lines += baseline_targets(results, *baseline)
  lines.append('')
  return '\n'.join(lines)


def partial_run(missing: Sequence[int]) -> str:
  """What a stopped run lacks, in words."""
  return ('stopped before N = ' + ', '.join(_rows_label(n) for n in missing)
          + ', which it was asked for')


def _load(path: str, flag: str) -> dict[str, Any]:
  try:
    with open(path) as f:
      report = json.load(f)
  except FileNotFoundError as e:
    raise app.UsageError(
        f'--{flag} {path}: no such file; run '
        'benchmarks/embedding_step.py first.') from e
  for key in ('results', 'config', 'machine', 'command'):
    if key not in report:
      raise app.UsageError(
          f'--{flag} {path}: not a benchmark report (no {key!r} key).')
  return report


def main(argv):
  del argv
  report = _load(_INPUT.value, 'input')
  baseline = None
  if _BASELINE.value:
    baseline = (_load(_BASELINE.value, 'baseline'),
                os.path.basename(_BASELINE.value))
  missing = missing_sizes(report)
  if missing:  # Said where a caller's log shows it, not only in the table.
    print(f'{_INPUT.value}: a partial run, {partial_run(missing)}.',
          file=sys.stderr)
  markdown = render(report, os.path.basename(_INPUT.value), baseline)
  if _OUTPUT.value == '-':
    print(markdown)
  else:
    files.write_text(_OUTPUT.value, markdown)  # A kill keeps the old one.
    print(f'Wrote {_OUTPUT.value}')


if __name__ == '__main__':
  app.run(main)
