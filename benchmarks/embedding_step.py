r"""Times one jitted training step on an embedding table, dense and sparse.

For each table size N and optimizer: the step (`workload.py`: a loss over the
rows a batch of Zipf ids gathers, its gradient and the update, table and state
donated), timed (`timing.py`) as K steps back to back with one sync at the end
(the main number, ms per step) and as the median of steps each followed by a
sync (the second), and the optimizer state's bytes. Each size's dense and
sparse optimizers run in a fresh subprocess each (`isolation.py`). Pairs that
cannot fit in the device's memory are skipped, and one that runs out of memory
or fails never loses the others' results. Results go to ``<output>/<name>.json``
(with the device's kind and platform) and ``<output>/<name>.png``
(`plotting.py`); ``make_table.py`` renders the JSON as Markdown.

  python benchmarks/embedding_step.py --output benchmarks/results --name cpu
  # Both ways of combining duplicate ids, on one machine:
  python benchmarks/embedding_step.py --duplicates=auto,scatter,reduce \
      --optimizers=sparse_cf_sgd,no_update --num_rows=1e5,1e7 --name=dup
"""

import os
import platform
import signal
import sys
import time
from typing import Any, Optional

if __package__ in (None, ''):
  # Run as a script: its siblings are `benchmarks.*` from the repository root.
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
      __file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app
from absl import flags
import jax
import optax

from benchmarks import isolation
from benchmarks import plotting
from benchmarks import timing
from benchmarks import workload
from benchmarks import workload_flags
from examples.common import files
from examples.common import machine
# pylint: enable=g-import-not-at-top,wrong-import-position

_DEFAULTS = timing.Settings()

_NUM_ROWS = workload_flags.define_num_rows(
    ['10000', '100000', '1000000', '10000000'])
_STEPS = flags.DEFINE_integer(
    'steps', _DEFAULTS.steps,
    'Synced steps timed at least (each followed by a host sync; their median '
    'is the second number).', lower_bound=1)
_BACK_TO_BACK_STEPS = flags.DEFINE_integer(
    'back_to_back_steps', _DEFAULTS.back_to_back_steps,
    'K: steps per back-to-back block, one sync at its end (fewer for slow '
    'steps, so that 3 blocks fit in about --min_seconds). The main number is '
    'the median block time / K.', lower_bound=1)
_MIN_SECONDS = flags.DEFINE_float(
    'min_seconds', _DEFAULTS.min_seconds,
    'Keep timing fast steps until this many seconds are timed, per way of '
    'timing (at most --max_steps), so that medians of sub-millisecond steps '
    'on a shared machine rest on many samples.', lower_bound=0.0)
_MAX_STEPS = flags.DEFINE_integer(
    'max_steps', _DEFAULTS.max_steps, 'Timed steps at most, per way of timing.',
    lower_bound=1)
_WARMUP = flags.DEFINE_integer(
    'warmup', _DEFAULTS.warmup, 'Untimed steps first (the first one compiles).',
    lower_bound=0)
_REPEATS = flags.DEFINE_integer(
    'repeats', _DEFAULTS.repeats,
    'Times each (N, optimizer) pair this many times, in interleaved rounds; '
    'the median of the rounds\' medians is reported.', lower_bound=1)
_ISOLATE = flags.DEFINE_boolean(
    'isolate', True,
    'Measure each table size\'s dense and sparse optimizers in a fresh '
    'subprocess each, so no step is timed in the aftermath of another '
    'size\'s or path\'s allocations.')
_DONATE = flags.DEFINE_boolean(
    'donate', _DEFAULTS.donate,
    'Donate the table and the optimizer state to the jitted step (updates in '
    'place). --nodonate times what a jit without donate_argnums does.')
_OPTIMIZERS = flags.DEFINE_list(
    'optimizers', list(workload.ALL_OPTIMIZERS),
    f'Optimizers to time, from {", ".join(workload.ALL_OPTIMIZERS)}; a '
    'sparse one may name its duplicates mode, e.g. sparse_cf_sgd@reduce.')
_DUPLICATES = flags.DEFINE_list(
    'duplicates', ['auto'],
    'Time each sparse optimizer named without @mode once per mode listed, '
    'from auto (the backend\'s own: scatter on CPU, reduce elsewhere), '
    'scatter, reduce.')
_MAX_MEMORY_GB = flags.DEFINE_float(
    'max_memory_gb', None,
    'Skip a (N, optimizer) pair whose estimated peak memory exceeds this or '
    'the device\'s own limit (memory_stats()[\'bytes_limit\'], where the '
    f'backend reports one); default: the device\'s limit, or '
    f'{timing.DEFAULT_MEMORY_GB} GB where there is none (CPUs).',
    lower_bound=0.0)
_OUTPUT = flags.DEFINE_string(
    'output', 'benchmarks/results', 'Folder for the JSON and PNG results.')
_PLOT = flags.DEFINE_boolean(
    'plot', True, 'Also write <output>/<name>.png (the subprocesses of '
    '--isolate skip it: their parent plots every size).')
_NAME = flags.DEFINE_string(
    'name', 'cpu', 'Results file stem: <output>/<name>.json and .png.')


def settings_from_flags() -> timing.Settings:
  return timing.Settings(
      dim=workload_flags.DIM.value, batch=workload_flags.BATCH.value,
      steps=_STEPS.value,
      min_seconds=_MIN_SECONDS.value, max_steps=_MAX_STEPS.value,
      warmup=_WARMUP.value, back_to_back_steps=_BACK_TO_BACK_STEPS.value,
      repeats=_REPEATS.value, donate=_DONATE.value,
      zipf_exponent=workload_flags.ZIPF_EXPONENT.value,
      num_batches=workload_flags.NUM_BATCHES.value,
      max_memory_gb=_MAX_MEMORY_GB.value, seed=workload_flags.SEED.value)


def machine_description() -> dict[str, Any]:
  """The machine, its accelerator named first (examples.common.machine)."""
  device = jax.devices()[0]
  try:
    memory = device.memory_stats() or {}
  except Exception:  # pylint: disable=broad-except
    memory = {}
  return {
      **machine.machine_info(),
      'description': machine.describe_machine(),
      'device_bytes_limit': memory.get('bytes_limit'),
      'os': platform.platform(),
      'jax_backend': jax.default_backend(),
      'devices': [str(d) for d in jax.devices()[:1]],
      'jax_version': jax.__version__,
      'optax_version': optax.__version__,
      'python': platform.python_version(),
      # Random row reads in a large table miss the TLB with 4 KiB pages; the
      # kernel's transparent huge page mode and glibc's malloc tunables
      # decide whether XLA's buffers get 2 MiB pages.
      'transparent_hugepage': _read_first_line(
          '/sys/kernel/mm/transparent_hugepage/enabled'),
      'glibc_tunables': os.environ.get('GLIBC_TUNABLES'),
  }


def _read_first_line(path: str) -> Optional[str]:
  try:
    with open(path) as f:
      return f.readline().strip()
  except OSError:
    return None


def load_average() -> list[float]:
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except OSError:
    return []


def _skip_by_flag(optimizer: workload.Optimizer, num_rows: int,
                  settings: timing.Settings) -> Optional[str]:
  """Why --max_memory_gb rules `optimizer` out at `num_rows`, or None."""
  if settings.max_memory_gb is None:
    return None  # Only the device knows its limit.
  return timing.skip_reason(optimizer, num_rows, settings,
                            timing.flag_limit(settings.max_memory_gb))


def unknown_machine() -> dict[str, Any]:
  """What a parent whose every child failed can say without starting JAX."""
  return {
      'description': f'a machine with a {os.cpu_count()}-core CPU (no '
                     'measuring process finished to name its device)',
      'jax_version': jax.__version__,
      'jax_backend': 'unknown',
      'transparent_hugepage': _read_first_line(
          '/sys/kernel/mm/transparent_hugepage/enabled'),
      'glibc_tunables': os.environ.get('GLIBC_TUNABLES'),
  }


def write_report(json_path: str, results: list[dict[str, Any]],
                 settings: timing.Settings, load_before: list[float],
                 started: float, sizes: list[int], sizes_done: list[int],
                 machine_fields: dict[str, Any]) -> dict[str, Any]:
  """Writes the JSON report of the results so far; returns it.

  `sizes` (asked for) beside `sizes_done` tells `make_table.py` that a run
  was stopped midway, and which sizes it lacks.
  """
  report = {
      'command': ' '.join(['python'] + sys.argv),
      'machine': machine_fields,
      'load_average_before': load_before,
      'load_average_after': load_average(),
      'total_seconds': round(time.time() - started, 1),
      'sizes': sizes,
      'sizes_done': sizes_done,
      'config': {
          'dim': settings.dim, 'batch': settings.batch,
          'steps': settings.steps, 'warmup': settings.warmup,
          'min_seconds': settings.min_seconds,
          'back_to_back_steps': settings.back_to_back_steps,
          'repeats': settings.repeats, 'donate': settings.donate,
          'isolate': _ISOLATE.value, 'max_steps': settings.max_steps,
          'zipf_exponent': settings.zipf_exponent,
          'num_batches': settings.num_batches, 'dtype': 'float32',
          'max_memory_gb': settings.max_memory_gb,
      },
      'results': results,
  }
  files.write_json(json_path, report, indent=1)
  return report


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    optimizers = workload.expand(_OPTIMIZERS.value, _DUPLICATES.value)
  except ValueError as e:
    raise app.UsageError(f'--optimizers/--duplicates: {e}.') from e
  sizes = workload_flags.sizes(_NUM_ROWS.value)
  settings = settings_from_flags()

  os.makedirs(_OUTPUT.value, exist_ok=True)
  json_path = os.path.join(_OUTPUT.value, f'{_NAME.value}.json')
  if _ISOLATE.value:  # SIGTERM or SIGINT stops the measuring child too.
    for signum in (signal.SIGTERM, signal.SIGINT):
      signal.signal(signum, isolation.raise_stopped)
  try:
    return run(sizes, optimizers, settings, json_path)
  except isolation.Stopped as stopped:
    print(f'Stopped by {stopped}, and its measuring process with it; '
          f'{json_path} holds the sizes finished before, if any.',
          file=sys.stderr)
    return 128 + stopped.signum  # What the signal's default would give.


def run(sizes: list[int], optimizers: list[workload.Optimizer],
        settings: timing.Settings, json_path: str) -> int:
  """Measures every size, writing `json_path` after each; the exit status."""
  load_before = load_average()
  started = time.time()
  results = []
  # Isolated, the children name the device they measured on: this process
  # never starts the accelerator (on a GPU it would hold memory they need).
  machine_fields = None if _ISOLATE.value else machine_description()
  for done, num_rows in enumerate(sizes, 1):
    if not _ISOLATE.value:
      results += timing.measure_size(num_rows, optimizers, settings)
    else:
      for path in ('dense', 'sparse'):
        chosen = [o for o in optimizers if o.path == path]
        # What --max_memory_gb alone rules out needs no child process (one
        # that starts JAX only to skip it).
        by_name = {
            o.name: timing.untimed(o.name, num_rows, path, skipped=reason)
            for o in chosen
            if (reason := _skip_by_flag(o, num_rows, settings))}
        names = [o.name for o in chosen if o.name not in by_name]
        if names:
          measured = isolation.measure_in_subprocess(
              os.path.abspath(__file__), flags.FLAGS.flags_into_string(),
              num_rows, names, path)
          by_name.update(zip(names, measured.results))
          machine_fields = machine_fields or measured.machine
        results += [by_name[o.name] for o in chosen]
    # Written after every size, so a run stopped midway keeps what it did.
    report = write_report(json_path, results, settings, load_before, started,
                          sizes=sizes, sizes_done=sizes[:done],
                          machine_fields=machine_fields or unknown_machine())
  if _PLOT.value:
    machine_fields = report['machine']
    plotting.plot(
        results, os.path.join(_OUTPUT.value, f'{_NAME.value}.png'),
        f'One training step, d={settings.dim}, B={settings.batch} Zipf ids '
        f'({machine_fields.get("platform", "unknown")}: '
        f'{machine_fields.get("device_kind", "unknown")})')
  print(f'Wrote {json_path}')
  failed = [r for r in results if 'error' in r]
  if failed:
    print(f'{len(failed)} (N, optimizer) pairs failed: ' + '; '.join(
        f"{r['optimizer']} at N={r['num_rows']}: {r['error']}"
        for r in failed), file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  app.run(main)
