r"""This code's sparse steps against an earlier commit's, in one process.

Separate processes of the two codes (`ab_check.sh`) differ on a shared VM by
more than the 10% in question: even `no_update`, the same code in both, moved
0.3-2.8x between processes. Here both codes are imported into one process
(the earlier commit's `fasgd_optax` under the name `fasgd_optax_before`, from
`git archive`), their jitted sparse steps are built on the same inputs
(`workload.py`'s Zipf ids, B = 4096, d = 64), and blocks of K back-to-back
steps of each are timed in alternating, shuffled order, so both see the same
machine from one block to the next. Reported per (optimizer, N): the median
over rounds of (now / before) per-step time, its quartiles, and each code's
median per-step time; `no_update` (identical in both) shows the noise floor.

  python benchmarks/ab_inprocess.py --before=7aa868b \
      --output=benchmarks/results/cpu_ab_7aa868b.md
"""

import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from typing import Any

from absl import app
from absl import flags
import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fasgd_optax  # pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import workload  # pylint: disable=g-import-not-at-top,wrong-import-position
from examples.common import files  # pylint: disable=g-import-not-at-top,wrong-import-position
from examples.common import machine as machine_lib  # pylint: disable=g-import-not-at-top,wrong-import-position

BEFORE_NAME = 'fasgd_optax_before'


def import_before(commit: str, repo: str, directory: str):
  """`fasgd_optax` of `commit`, importable as `fasgd_optax_before`.

  Raises:
    ValueError: `commit` is no revision of `repo`, or has no `fasgd_optax`
      (git's message).
  """
  archived = subprocess.run(
      ['git', '-C', repo, 'archive', '--format=tar', commit, 'fasgd_optax'],
      capture_output=True, check=False)
  if archived.returncode:
    message = archived.stderr.decode(errors='replace').strip().splitlines()
    raise ValueError(message[-1] if message else
                     f'git archive exited with status {archived.returncode}')
  archive = archived.stdout
  extract_to = os.path.join(directory, 'extracted')
  with tempfile.TemporaryFile() as f:
    f.write(archive)
    f.seek(0)
    with tarfile.open(fileobj=f) as tar:
      tar.extractall(extract_to, filter='data')
  target = os.path.join(directory, BEFORE_NAME)
  os.rename(os.path.join(extract_to, 'fasgd_optax'), target)
  for root, _, files in os.walk(target):
    for name in files:
      if name.endswith('.py'):
        path = os.path.join(root, name)
        with open(path) as f:
          text = f.read()
        with open(path, 'w') as f:
          f.write(re.sub(r'\bfasgd_optax\b', BEFORE_NAME, text))
  sys.path.insert(0, directory)
  return __import__(BEFORE_NAME)


def time_pair(steps: dict[str, Any], inputs, num_rows: int, dim: int,
              rounds: int, block: int, rng: np.random.Generator
              ) -> dict[str, list[float]]:
  """Per-step ms of each code's block, `rounds` times, order shuffled."""
  carries = {}
  for code, (step, init) in steps.items():
    table = workload.make_table(num_rows, dim)
    state = init(table)
    for ids, targets in inputs.batches[:2]:  # Compile and warm up.
      table, state, loss = step(table, state, ids, targets)
    jax.block_until_ready(loss)
    carries[code] = (table, state)
  times = {code: [] for code in steps}
  batches = inputs.batches
  for _ in range(rounds):
    for code in rng.permutation(list(steps)):
      step = steps[code][0]
      table, state = carries[code]
      start = time.perf_counter()
      for i in range(block):
        ids, targets = batches[i % len(batches)]
        table, state, loss = step(table, state, ids, targets)
      jax.block_until_ready((table, loss))
      times[code].append(1e3 * (time.perf_counter() - start) / block)
      carries[code] = (table, state)
  return times


def summarise(times: dict[str, list[float]]) -> dict[str, float]:
  ratios = np.asarray(times['now']) / np.asarray(times['before'])
  return {'now_ms': float(np.median(times['now'])),
          'before_ms': float(np.median(times['before'])),
          'median_ratio': float(np.median(ratios)),
          'ratio_q25': float(np.quantile(ratios, 0.25)),
          'ratio_q75': float(np.quantile(ratios, 0.75))}


def render(report: dict[str, Any]) -> str:
  config = report['config']
  lines = [
      f'# Sparse steps: now against {config["before"]}, in one process', '',
      f'Machine: {report["machine"]}; 1-minute load average '
      f'{report["load_average_before"]:.2f} before, '
      f'{report["load_average_after"]:.2f} after. B = {config["batch"]}, '
      f'd = {config["dim"]}, Zipf {config["zipf_exponent"]}; '
      f'{config["rounds"]} rounds of {config["block"]} back-to-back steps '
      'per code, in shuffled order. Ratio = now / before per round: median '
      '[quartiles]. Command: `' + report['command'] + '`.', '',
      '| step | N | before ms | now ms | now / before | flag |',
      '|---|---|---|---|---|---|']
  for row in report['results']:
    flag = ('slower' if row['optimizer'] != 'no_update' and
            row['median_ratio'] > 1 + config['tolerance'] else '')
    lines.append(
        f'| {row["optimizer"]} | {row["num_rows"]:.0e} | '
        f'{row["before_ms"]:.3f} | {row["now_ms"]:.3f} | '
        f'{row["median_ratio"]:.3f} [{row["ratio_q25"]:.3f}, '
        f'{row["ratio_q75"]:.3f}] | {flag} |')
  return '\n'.join(lines) + '\n'


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    sizes = workload.parse_sizes(_NUM_ROWS.value)
  except ValueError as error:
    raise app.UsageError(f'--num_rows={",".join(_NUM_ROWS.value)}: '
                         f'{error}') from None
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  # The earlier package, for the run only: removed however the run ends.
  with tempfile.TemporaryDirectory(prefix='ab_inprocess_') as directory:
    try:
      before = import_before(_BEFORE.value, repo, directory)
    except ValueError as error:
      raise app.UsageError(f'--before={_BEFORE.value}: {error}') from None
    report = compare(before, sizes)
  if _OUTPUT.value:
    write(report, _OUTPUT.value)
  print(render(report))


def write(report: dict[str, Any], output: str) -> None:
  """`report` as Markdown to `output` and as JSON beside it.

  Each file whole or not at all: a run killed mid-write keeps the old one.
  """
  files.write_text(output, render(report))
  files.write_json(os.path.splitext(output)[0] + '.json', report, indent=1)


def compare(before, sizes: list[int]) -> dict[str, Any]:
  """The report: `before`'s sparse steps against this code's, per size."""
  report = {'command': ' '.join(['python'] + sys.argv),
            'machine': machine_lib.describe_machine(),
            'load_average_before': os.getloadavg()[0],
            'config': {'before': _BEFORE.value, 'batch': _BATCH.value,
                       'dim': _DIM.value, 'zipf_exponent': _ZIPF.value,
                       'rounds': _ROUNDS.value, 'block': _BLOCK.value,
                       'tolerance': _TOLERANCE.value},
            'results': []}
  rng = np.random.default_rng(0)
  num_steps = 1000
  for num_rows in sizes:
    inputs = workload.make_inputs(num_rows, dim=_DIM.value, batch=_BATCH.value,
                                  zipf_exponent=_ZIPF.value, num_batches=8,
                                  seed=0)
    for name in _OPTIMIZERS.value:
      steps = {}
      for code, package in (('before', before), ('now', fasgd_optax)):
        sparse = workload.sparse_optimizer(
            workload.parse(name), inputs.frequencies, num_steps, package)
        steps[code] = (workload.sparse_step(sparse, inputs.weights),
                       sparse.init)
      times = time_pair(steps, inputs, num_rows, _DIM.value, _ROUNDS.value,
                        _BLOCK.value, rng)
      row = {'optimizer': name, 'num_rows': num_rows, **summarise(times),
             'times_ms': times}
      report['results'].append(row)
      print(f'{name} N={num_rows:.0e}: before {row["before_ms"]:.3f} ms, now '
            f'{row["now_ms"]:.3f} ms, ratio {row["median_ratio"]:.3f}',
            flush=True)
  report['load_average_after'] = os.getloadavg()[0]
  return report


if __name__ == '__main__':
  _BEFORE = flags.DEFINE_string('before', '7aa868b',
                                'The earlier commit (git revision).')
  _NUM_ROWS = flags.DEFINE_list('num_rows', ['1e5', '1e6', '1e7'],
                                'Table sizes N.')
  _OPTIMIZERS = flags.DEFINE_list(
      'optimizers', ['sparse_cf_sgd', 'sparse_fa_sgd',
                     'sparse_rowwise_adagrad', 'no_update'],
      'Sparse steps both codes have.')
  _BATCH = flags.DEFINE_integer('batch', 4096, 'Ids per step B.',
                                lower_bound=1)
  _DIM = flags.DEFINE_integer('dim', 64, 'Embedding dimension d.',
                              lower_bound=1)
  _ZIPF = flags.DEFINE_float('zipf_exponent', 1.1, 'Zipf exponent of ids.',
                             lower_bound=0.0)
  _ROUNDS = flags.DEFINE_integer('rounds', 30, 'Timed blocks per code.',
                                 lower_bound=1)
  _BLOCK = flags.DEFINE_integer('block', 50, 'Back-to-back steps per block.',
                                lower_bound=1)
  _TOLERANCE = flags.DEFINE_float('tolerance', 0.10,
                                  'Flag a median ratio above 1 + this.')
  _OUTPUT = flags.DEFINE_string('output', None,
                                'Markdown file (and .json beside it).')
  app.run(main)
