r"""Where the benchmark's step spends its time, op by op, on this machine.

For each table size N and optimizer: the step `embedding_step.py` times (
`workload.make_step`, same batch, d and Zipf ids), K steps back to back (the
fastest of 3 untraced rounds, then one in a `jax.profiler` trace), and the
costliest ops of the compiled step
(`examples.common.profiling`: on an accelerator the device's kernel times,
named by XLA instruction with the JAX ops each computes). What a target that
the benchmark misses is made of, e.g. a scatter that hot rows serialize:

  python benchmarks/profile_ops.py --num_rows=1e6 \
      --optimizers=sparse_cf_sgd@reduce,sparse_cf_sgd@scatter,no_update
  python benchmarks/profile_ops.py --zipf_exponent=0  # uniform ids

Prints a block per (N, optimizer); --output also writes them as JSON.
"""

import os
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
from examples.common import profiling
# pylint: enable=g-import-not-at-top,wrong-import-position

_NUM_ROWS = workload_flags.define_num_rows(['1000000'])
_OPTIMIZERS = workload_flags.define_optimizers(
    ['sparse_cf_sgd@reduce', 'sparse_cf_sgd@scatter', 'sparse_fa_sgd',
     'sparse_rowwise_adagrad', 'sparse_sgd', 'no_update'])
_STEPS = flags.DEFINE_integer('steps', 50, 'K: steps traced back to back.',
                              lower_bound=1)
_TOP = flags.DEFINE_integer('top', 8, 'Ops listed per optimizer.',
                            lower_bound=1)
_OUTPUT = flags.DEFINE_string(
    'output', None, 'JSON file for the results, rewritten after each.')
_REPEATS = 3  # Untraced rounds of K steps timed; the fastest counts.


def profile_one(optimizer: workload.Optimizer, num_rows: int,
                inputs: workload.Inputs) -> dict[str, Any]:
  """Back-to-back ms per step and the costliest ops of `optimizer`'s step."""
  num_steps = _STEPS.value
  step, init = workload.make_step(optimizer, inputs, num_steps=num_steps,
                                  donate=True)
  table = workload.make_table(num_rows, workload_flags.DIM.value)
  holder = {'table': table, 'state': init(table), 'loss': None, 'i': 0}
  ids, targets = inputs.batches[0]
  compiled = step.lower(holder['table'], holder['state'], ids,
                        targets).compile()

  def run():
    for _ in range(num_steps):
      ids, targets = inputs.batches[holder['i'] % len(inputs.batches)]
      holder['table'], holder['state'], holder['loss'] = compiled(
          holder['table'], holder['state'], ids, targets)
      holder['i'] += 1
    jax.block_until_ready((holder['table'], holder['state'], holder['loss']))

  run()  # Warm-up.
  times = []
  for _ in range(_REPEATS):
    start = time.perf_counter()
    run()
    times.append(time.perf_counter() - start)
  back_to_back_ms = 1e3 * min(times) / num_steps  # The least disturbed.
  traced = profiling.profile_ops(run, num_steps, compiled.as_text(),
                                 _TOP.value)
  return {'optimizer': optimizer.name, 'num_rows': num_rows,
          'back_to_back_ms': back_to_back_ms,
          'op_ms': traced.ms_per_step,
          'unattributed_ms': traced.unattributed_ms_per_step,
          'traced_from': traced.source,
          'ops': [op._asdict() for op in traced.ops]}


def render(result: dict[str, Any]) -> str:
  unattributed = (f', other device time {result["unattributed_ms"]:.4f} ms'
                  if result['unattributed_ms'] else '')
  lines = [f'{result["optimizer"]}, N = {result["num_rows"]:,}: '
           f'{result["back_to_back_ms"]:.4f} ms per step back to back; ops '
           f'{result["op_ms"]:.4f} ms per step{unattributed} '
           f'({result["traced_from"]})']
  for op in result['ops']:
    lines.append(f'  {op["ms_per_step"]:9.4f} ms  {op["name"]:36s} '
                 f'{op["what"][:90]}')
  return '\n'.join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  # Kernels in the trace, not CUDA graphs; before JAX starts its backend.
  profiling.turn_off_command_buffers()
  sizes, optimizers = workload_flags.sizes_and_optimizers(
      _NUM_ROWS.value, _OPTIMIZERS.value)
  dim = workload_flags.DIM.value
  batch = workload_flags.BATCH.value
  zipf_exponent = workload_flags.ZIPF_EXPONENT.value
  report = {'machine': machine.describe_machine(),
            'settings': {'batch': batch, 'dim': dim,
                         'zipf_exponent': zipf_exponent,
                         'num_batches': workload_flags.NUM_BATCHES.value,
                         'seed': workload_flags.SEED.value,
                         'steps': _STEPS.value},
            'results': []}
  print(f'{report["machine"]}; B = {batch}, d = {dim}, Zipf {zipf_exponent}, '
        f'{_STEPS.value} steps traced', flush=True)
  for num_rows in sizes:
    inputs = workload.make_inputs(
        num_rows, dim=dim, batch=batch, zipf_exponent=zipf_exponent,
        num_batches=workload_flags.NUM_BATCHES.value,
        seed=workload_flags.SEED.value)
    for optimizer in optimizers:
      result = profile_one(optimizer, num_rows, inputs)
      report['results'].append(result)
      print(render(result), flush=True)
      if _OUTPUT.value:  # Each result kept, should a later one never end.
        files.write_json(_OUTPUT.value, report, indent=1)


if __name__ == '__main__':
  app.run(main)
