"""Timing the benchmark's steps, and skipping those that cannot fit.

An accelerator runs a jitted step asynchronously: the host dispatches it and
moves on. Waiting for each step (`block_until_ready`) adds a host sync to each,
and on an H200 one sync cost about 70 µs, more than a sparse step's 20 µs of
kernels. So each (N, optimizer) is timed two ways, after `warmup` steps:

- synced: each step followed by a sync, the median over at least `steps`
  steps (more, up to `min_seconds` of timing and `max_steps` steps, for fast
  ones). What earlier reports called the median (`median_ms`).
- back to back, the main number: blocks of K steps dispatched one after the
  other with one sync at the end, per step = block time / K; the median over
  at least 3 blocks (more, up to `min_seconds` and `max_steps`). K is
  `back_to_back_steps`, fewer for slow steps so that 3 blocks fit in about
  `min_seconds` (a sync is negligible beside them).

Pairs whose estimated peak memory exceeds the device's own limit
(`memory_stats()['bytes_limit']`, where the backend reports one) or
`max_memory_gb` are skipped; a pair that runs out of memory anyway is
recorded as skipped, and any other failure as an error, without losing the
other pairs' results.
"""

import dataclasses
import gc
import json
import statistics
import sys
import time
import traceback
from typing import Any, Callable, Optional

import jax
import numpy as np

from benchmarks import workload

# The memory budget where the device reports none (CPUs) and no
# --max_memory_gb is given.
DEFAULT_MEMORY_GB = 12.0
MIN_BLOCKS = 3


@dataclasses.dataclass(frozen=True)
class Settings:
  """How to time: the workload's shape and the timing's lengths."""
  dim: int = 64
  batch: int = 4096
  steps: int = 20
  min_seconds: float = 2.0
  max_steps: int = 1000
  warmup: int = 2
  back_to_back_steps: int = 100
  repeats: int = 1
  donate: bool = True
  zipf_exponent: float = 1.1
  num_batches: int = 8
  max_memory_gb: Optional[float] = None
  seed: int = 0


def flag_limit(max_memory_gb: float) -> tuple[float, str]:
  """(bytes, where that number comes from) of --max_memory_gb."""
  return max_memory_gb * 1e9, f'--max_memory_gb={max_memory_gb}'


def memory_limit(device: Any, max_memory_gb: Optional[float]
                 ) -> tuple[float, str]:
  """(bytes one step may use, where that number comes from).

  The smaller of the device's `memory_stats()['bytes_limit']` (GPUs and TPUs
  report it; CPUs do not) and `max_memory_gb`; `DEFAULT_MEMORY_GB` if neither
  is known.
  """
  try:
    stats = device.memory_stats()
  except Exception:  # pylint: disable=broad-except
    stats = None  # Some backends do not implement it.
  limits = []
  if stats and stats.get('bytes_limit'):
    limits.append((float(stats['bytes_limit']),
                   f"the {device.device_kind}'s bytes_limit"))
  if max_memory_gb is not None:
    limits.append(flag_limit(max_memory_gb))
  if not limits:
    limits.append((DEFAULT_MEMORY_GB * 1e9,
                   f'--max_memory_gb default {DEFAULT_MEMORY_GB}'))
  return min(limits)


def untimed(name: str, num_rows: int, path: str,
            **why: str) -> dict[str, Any]:
  """The result of a pair not timed: 'skipped' or 'error', with why."""
  return {'optimizer': name, 'num_rows': num_rows, 'path': path, **why}


def skip_reason(optimizer: workload.Optimizer, num_rows: int,
                settings: Settings, limit: tuple[float, str]) -> Optional[str]:
  """Why `optimizer` cannot fit at `num_rows` within `limit`, or None."""
  limit_bytes, limit_source = limit
  tables = workload.tables_in_memory(optimizer, settings.donate)
  needed = tables * num_rows * settings.dim * 4
  if needed <= limit_bytes:
    return None
  return (f'needs about {tables} tables, {needed / 1e9:.3g} GB > '
          f'{limit_bytes / 1e9:.3g} GB ({limit_source})')


def is_out_of_memory(error: BaseException) -> bool:
  """Whether `error` is an allocation failure (XLA's or the host's)."""
  if isinstance(error, MemoryError):
    return True
  text = str(error)
  return isinstance(error, jax.errors.JaxRuntimeError) and (
      'RESOURCE_EXHAUSTED' in text or 'Out of memory' in text)


def _first_line(error: BaseException) -> str:
  lines = str(error).strip().splitlines()
  return f'{type(error).__name__}: {lines[0] if lines else ""}'[:300]


def time_steps(step: Callable[..., Any], init: Callable[..., Any],
               num_rows: int, batches, settings: Settings) -> dict[str, Any]:
  """One round on a fresh table: synced step times (s), back-to-back blocks.

  Returns:
    times: each synced step's seconds.
    blocks: each back-to-back block's seconds per step.
    block_steps: K, the steps in each block.
    loss, state_bytes, params_bytes.
  """
  table = workload.make_table(num_rows, settings.dim)
  params_bytes = workload.tree_bytes(table)
  state = init(table)
  state_bytes = workload.tree_bytes(state)
  i = 0
  loss = None

  def run(count):
    nonlocal table, state, loss, i
    for _ in range(count):
      ids, targets = batches[i % len(batches)]
      table, state, loss = step(table, state, ids, targets)
      i += 1

  for _ in range(settings.warmup):
    run(1)
    jax.block_until_ready((table, state, loss))
  times = []
  while (len(times) < settings.steps or sum(times) < settings.min_seconds
         ) and len(times) < max(settings.steps, settings.max_steps):
    start = time.perf_counter()
    run(1)
    jax.block_until_ready((table, state, loss))
    times.append(time.perf_counter() - start)

  synced = statistics.median(times)
  block_steps = max(1, min(settings.back_to_back_steps, int(
      settings.min_seconds / (MIN_BLOCKS * synced))))
  blocks = []
  while (len(blocks) < MIN_BLOCKS or
         sum(blocks) * block_steps < settings.min_seconds) and (
             len(blocks) < max(MIN_BLOCKS, settings.max_steps // block_steps)):
    start = time.perf_counter()
    run(block_steps)
    jax.block_until_ready((table, state, loss))
    blocks.append((time.perf_counter() - start) / block_steps)
  return {'times': times, 'blocks': blocks, 'block_steps': block_steps,
          'loss': float(loss), 'state_bytes': state_bytes,
          'params_bytes': params_bytes}


def _summary(optimizer: workload.Optimizer, num_rows: int,
             rounds: list[dict[str, Any]],
             inputs: workload.Inputs) -> dict[str, Any]:
  """The JSON result of one (N, optimizer) from its rounds."""
  medians = [1e3 * statistics.median(r['times']) for r in rounds]
  back_to_back = [1e3 * statistics.median(r['blocks']) for r in rounds]
  all_times = [t for r in rounds for t in r['times']]
  result = {
      'optimizer': optimizer.name,
      'path': optimizer.path,
      'num_rows': num_rows,
      'back_to_back_ms': statistics.median(back_to_back),
      'round_back_to_back_ms': back_to_back,
      'back_to_back_steps': [r['block_steps'] for r in rounds],
      'back_to_back_timed_steps': sum(
          len(r['blocks']) * r['block_steps'] for r in rounds),
      'median_ms': statistics.median(medians),
      'round_medians_ms': medians,
      'min_ms': 1e3 * min(all_times),
      'max_ms': 1e3 * max(all_times),
      'timed_steps': len(all_times),
      'state_bytes': rounds[0]['state_bytes'],
      # FA-SGD keeps its per-row frequencies outside the state, as constants.
      'frequencies_bytes': (int(inputs.frequencies.nbytes)
                            if 'fa_sgd' in optimizer.base else 0),
      'params_bytes': rounds[0]['params_bytes'],
  }
  if optimizer.base in workload.WITH_DUPLICATES:
    result['duplicates'] = optimizer.duplicates
  return result


def measure_size(
    num_rows: int, optimizers: list[workload.Optimizer], settings: Settings,
    *, device: Any = None,
    make_step: Callable[..., Any] = workload.make_step,
    emit: Callable[[dict[str, Any]], None] = lambda r: print(
        json.dumps(r), flush=True),
) -> list[dict[str, Any]]:
  """Results for each optimizer at one table size, in this process.

  Every optimizer is timed `settings.repeats` times, in rounds that go
  through all of them before the next, so that a slow spell on a shared
  machine touches every optimizer alike; a result holds the median of the
  rounds' medians.

  Args:
    num_rows: N.
    optimizers: what to time, in order.
    settings: how.
    device: whose memory limit applies; default the default backend's first.
    make_step: `workload.make_step` (tests pass one that fails).
    emit: called with each result as soon as it is final, skipped ones
      first (prints a JSON line, so that a parent process can recover what a
      crashed child had finished).

  Returns:
    One dict per optimizer, in order: timings, or 'skipped' (does not fit, or
    ran out of memory) or 'error' with the reason.
  """
  device = jax.devices()[0] if device is None else device
  limit = memory_limit(device, settings.max_memory_gb)
  results = {}  # name -> final result, emitted as soon as it is final.

  def finish(optimizer: workload.Optimizer, result: dict[str, Any]) -> None:
    results[optimizer.name] = result
    emit(result)

  for optimizer in optimizers:
    reason = skip_reason(optimizer, num_rows, settings, limit)
    if reason is not None:
      finish(optimizer, untimed(optimizer.name, num_rows, optimizer.path,
                                skipped=reason))
  if len(results) == len(optimizers):  # Nothing fits: no inputs to build.
    return [results[optimizer.name] for optimizer in optimizers]
  inputs = workload.make_inputs(
      num_rows, dim=settings.dim, batch=settings.batch,
      zipf_exponent=settings.zipf_exponent,
      num_batches=settings.num_batches, seed=settings.seed)

  rounds = {optimizer.name: [] for optimizer in optimizers}
  for repeat in range(settings.repeats):
    for optimizer in optimizers:
      if optimizer.name in results:
        continue
      failed = False
      try:
        # The horizon T only scales step sizes; it does not change the work.
        step, init = make_step(optimizer, inputs,
                               num_steps=settings.steps + settings.warmup,
                               donate=settings.donate)
        measured = time_steps(step, init, num_rows, inputs.batches, settings)
        if not np.isfinite(measured['loss']):
          raise FloatingPointError(f'loss is {measured["loss"]}')
        rounds[optimizer.name].append(measured)
        if repeat == settings.repeats - 1:
          finish(optimizer,
                 _summary(optimizer, num_rows, rounds[optimizer.name], inputs))
      except Exception as error:  # pylint: disable=broad-except
        failed = True
        if is_out_of_memory(error):
          finish(optimizer, untimed(
              optimizer.name, num_rows, optimizer.path,
              skipped=f'out of memory: {_first_line(error)}'))
        else:
          traceback.print_exc(file=sys.stderr)
          finish(optimizer, untimed(optimizer.name, num_rows, optimizer.path,
                                    error=_first_line(error)))
      if failed:  # Out of the except block nothing holds its frames:
        gc.collect()  # this frees the failed step's buffers before the next.

  jax.clear_caches()
  return [results[optimizer.name] for optimizer in optimizers]
