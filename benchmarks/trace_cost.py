r"""What tracing and lowering the benchmark's step costs, by duplicates mode.

A sparse transformation with ``duplicates='auto'`` holds both designs and
keeps the one for the platform its step is lowered for, so each trace of the
step traces both; naming the design (or `fasgd_optax.resolve_duplicates`)
traces one. A short run pays this once per process (the persistent
compilation cache skips XLA's compile, not JAX's tracing), so this is part
of its fixed cost. For each optimizer: a new step each repeat (a new
transformation, so no trace is reused), timed from `jit(...).trace` and
`.lower()` on the size's table, state and first batch, after an untimed
round; medians and ranges:

  python benchmarks/trace_cost.py --num_rows=1e6 --repeats=9 \
      --optimizers=sparse_cf_sgd,sparse_cf_sgd@scatter,sparse_cf_sgd@reduce \
      --output=benchmarks/results/trace_cost_cpu.json
"""

import os
import statistics
import sys
import time
from typing import Any

# pylint: disable=g-import-not-at-top,wrong-import-position
if __package__ in (None, ''):
  # Run as a script: make `benchmarks` and `examples` importable.
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
      __file__))))

from absl import app
from absl import flags
import jax

from benchmarks import workload
from benchmarks import workload_flags
from examples.common import files
from examples.common import machine
# pylint: enable=g-import-not-at-top,wrong-import-position

_NUM_ROWS = workload_flags.define_num_rows(['1000000'])
_OPTIMIZERS = workload_flags.define_optimizers(
    ['sparse_cf_sgd', 'sparse_cf_sgd@scatter', 'sparse_cf_sgd@reduce'])
_REPEATS = flags.DEFINE_integer('repeats', 7, 'Traces per optimizer.',
                                lower_bound=1)
_OUTPUT = flags.DEFINE_string('output', None, 'JSON file for the results.')


def time_trace(optimizer: workload.Optimizer, table: jax.Array,
               inputs: workload.Inputs) -> tuple[float, float]:
  """Seconds to trace a new step, and to trace and lower it."""
  ids, targets = inputs.batches[0]
  step, init = workload.make_step(optimizer, inputs, num_steps=1000,
                                  donate=True)
  state = init(table)
  start = time.perf_counter()
  traced = step.trace(table, state, ids, targets)
  traced_at = time.perf_counter()
  traced.lower()
  return traced_at - start, time.perf_counter() - start


def summary_line(result: dict[str, Any]) -> str:
  def ms(values):
    return (f'{1e3 * statistics.median(values):.1f} ms '
            f'[{1e3 * min(values):.1f}, {1e3 * max(values):.1f}]')
  return (f'{result["optimizer"]:<28} N={result["num_rows"]:.0e}: trace '
          f'{ms(result["trace_seconds"])}, trace and lower '
          f'{ms(result["trace_and_lower_seconds"])}')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  sizes, optimizers = workload_flags.sizes_and_optimizers(
      _NUM_ROWS.value, _OPTIMIZERS.value)
  results = {'machine': machine.machine_info(), 'backend': jax.default_backend(),
             'jax': jax.__version__, 'repeats': _REPEATS.value,
             'batch': workload_flags.BATCH.value,
             'dim': workload_flags.DIM.value,
             'load_average_before': os.getloadavg()[0], 'runs': []}
  for num_rows in sizes:
    inputs = workload.make_inputs(
        num_rows, dim=workload_flags.DIM.value,
        batch=workload_flags.BATCH.value,
        zipf_exponent=workload_flags.ZIPF_EXPONENT.value, num_batches=1,
        seed=workload_flags.SEED.value)
    table = workload.make_table(num_rows, workload_flags.DIM.value)
    runs = {optimizer.name: {'optimizer': optimizer.name,
                             'num_rows': num_rows, 'trace_seconds': [],
                             'trace_and_lower_seconds': []}
            for optimizer in optimizers}
    # A first, untimed round: the process's first trace also warms JAX's
    # own caches, whichever optimizer it is of. Then rounds over the
    # optimizers, so that a change in the machine's load falls on all.
    for optimizer in optimizers:
      time_trace(optimizer, table, inputs)
    for _ in range(_REPEATS.value):
      for optimizer in optimizers:
        trace, lower = time_trace(optimizer, table, inputs)
        runs[optimizer.name]['trace_seconds'].append(trace)
        runs[optimizer.name]['trace_and_lower_seconds'].append(lower)
    for run in runs.values():
      print(summary_line(run))
      results['runs'].append(run)
  if _OUTPUT.value:
    files.write_json(_OUTPUT.value, results, indent=1)


if __name__ == '__main__':
  app.run(main)
