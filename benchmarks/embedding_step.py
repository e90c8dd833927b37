r"""Times one jitted training step on an embedding table, dense and sparse.

The step is what a user's training step does: a loss over the rows a batch of
Zipf-distributed ids gathers, its gradient, and the optimizer's update, all in
one `jax.jit` with the table and the optimizer state donated. Dense optimizers
get the gradient with respect to the whole table (an N×d array) and update all
of it; sparse ones get the gradient with respect to the gathered rows and
update only those.

For each table size N and optimizer it reports the median step time over
at least ``--steps`` steps (more for fast steps, up to ``--min_seconds`` of
timing) after ``--warmup`` steps, and the optimizer state's bytes
(summed over the state pytree's arrays; FA-SGD's per-row frequencies, held
outside its state, are reported separately). With ``--repeats`` > 1 every
(N, optimizer) pair is timed that many times, in rounds that go through all
optimizers before the next, so that a slow spell on a shared machine touches
every optimizer alike; the reported median is the median of the rounds'
medians. ``--nodonate`` times the same steps without donating the table and the
state, as a ``jax.jit`` without ``donate_argnums`` does: every step then writes
a fresh table and state. Each size's dense and sparse optimizers are timed in
a fresh subprocess each (``--noisolate`` times everything in one process), so
that no step is timed in the aftermath of another's large allocations. Results
go to ``<output>/<name>.json``
and ``<output>/<name>.png``; ``make_table.py`` renders the JSON as Markdown.

  python benchmarks/embedding_step.py --output benchmarks/results --name cpu
"""

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Optional

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import optax

import fasgd_optax

DENSE_OPTIMIZERS = ('sgd', 'adagrad', 'adam', 'rowwise_adagrad', 'fa_sgd',
                    'cf_sgd')
SPARSE_OPTIMIZERS = ('sparse_cf_sgd', 'sparse_fa_sgd',
                     'sparse_rowwise_adagrad', 'no_update')
ALL_OPTIMIZERS = DENSE_OPTIMIZERS + SPARSE_OPTIMIZERS

# Peak memory of one step, in tables' worth of bytes (table, gradient, update
# temporaries and optimizer state), used only to skip sizes that cannot fit.
TABLES_IN_MEMORY = {
    'sgd': 3, 'adagrad': 4, 'adam': 5, 'rowwise_adagrad': 3, 'fa_sgd': 3,
    'cf_sgd': 3, 'sparse_cf_sgd': 1, 'sparse_fa_sgd': 1,
    'sparse_rowwise_adagrad': 1, 'no_update': 1,
}
# Tables' worth of optimizer state, written anew each step without donation.
STATE_TABLES = {'adagrad': 1, 'adam': 2}


def path_of(name: str) -> str:
  """'sparse' or 'dense': how optimizer `name` takes gradients and updates."""
  return 'sparse' if name in SPARSE_OPTIMIZERS else 'dense'

_NUM_ROWS = flags.DEFINE_list(
    'num_rows', ['10000', '100000', '1000000', '10000000'],
    'Table sizes N (rows) to time.')
_DIM = flags.DEFINE_integer('dim', 64, 'Embedding dimension d.')
_BATCH = flags.DEFINE_integer('batch', 4096, 'Ids per step B.')
_STEPS = flags.DEFINE_integer(
    'steps', 20, 'Timed steps at least (the median is reported).')
_MIN_SECONDS = flags.DEFINE_float(
    'min_seconds', 2.0,
    'Keep timing fast steps until this many seconds are timed (at most '
    '--max_steps), so that medians of sub-millisecond steps on a shared '
    'machine rest on many samples.')
_MAX_STEPS = flags.DEFINE_integer('max_steps', 1000,
                                  'Timed steps at most.')
_WARMUP = flags.DEFINE_integer(
    'warmup', 2, 'Untimed steps first (the first one compiles).')
_REPEATS = flags.DEFINE_integer(
    'repeats', 1,
    'Times each (N, optimizer) pair this many times, in interleaved rounds; '
    'the median of the rounds\' medians is reported.')
_ISOLATE = flags.DEFINE_boolean(
    'isolate', True,
    'Measure each table size\'s dense and sparse optimizers in a fresh '
    'subprocess each, so no step is timed in the aftermath of another '
    'size\'s or path\'s allocations.')
_DONATE = flags.DEFINE_boolean(
    'donate', True,
    'Donate the table and the optimizer state to the jitted step (updates in '
    'place). --nodonate times what a jit without donate_argnums does.')
_OPTIMIZERS = flags.DEFINE_list(
    'optimizers', list(ALL_OPTIMIZERS),
    f'Optimizers to time, from {", ".join(ALL_OPTIMIZERS)}.')
_ZIPF_EXPONENT = flags.DEFINE_float(
    'zipf_exponent', 1.1, 'Exponent s of the ids\' Zipf law, p(rank) ∝ rank^-s.')
_NUM_BATCHES = flags.DEFINE_integer(
    'num_batches', 8, 'Distinct id batches cycled through during timing.')
_MAX_MEMORY_GB = flags.DEFINE_float(
    'max_memory_gb', 12.0,
    'Skip a (N, optimizer) pair whose estimated peak memory exceeds this.')
_OUTPUT = flags.DEFINE_string(
    'output', 'benchmarks/results', 'Folder for the JSON and PNG results.')
_PLOT = flags.DEFINE_boolean(
    'plot', True, 'Also write <output>/<name>.png (the subprocesses of '
    '--isolate skip it: their parent plots every size).')
_NAME = flags.DEFINE_string(
    'name', 'cpu', 'Results file stem: <output>/<name>.json and .png.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed for ids and targets.')

LEARNING_RATE = 0.01


def zipf_probabilities(num_rows: int, exponent: float) -> np.ndarray:
  """p(row) of a Zipf law over ranks 1..N, with ranks scattered over rows.

  Rank r lives at row (r · 2654435761) mod N, a bijection when N shares no
  factor with that prime, so hot rows are spread through the table.
  """
  ranks = np.arange(1, num_rows + 1, dtype=np.float64)
  probabilities = ranks ** -exponent
  probabilities /= probabilities.sum()
  rows = row_of_rank(np.arange(num_rows), num_rows)
  by_row = np.zeros(num_rows, np.float64)
  by_row[rows] = probabilities
  return by_row


def row_of_rank(rank_index: np.ndarray, num_rows: int) -> np.ndarray:
  return (rank_index.astype(np.int64) * 2654435761) % num_rows


def zipf_ids(rng: np.random.Generator, num_rows: int, exponent: float,
             shape: tuple[int, ...]) -> np.ndarray:
  """Ids drawn from `zipf_probabilities`, by inverting the ranks' CDF."""
  ranks = np.arange(1, num_rows + 1, dtype=np.float64)
  cdf = np.cumsum(ranks ** -exponent)
  cdf /= cdf[-1]
  rank_index = np.searchsorted(cdf, rng.random(shape), side='right')
  rank_index = np.minimum(rank_index, num_rows - 1)
  return row_of_rank(rank_index, num_rows).astype(np.int32)


def make_table(num_rows: int, dim: int) -> jax.Array:
  """A deterministic table in [-0.5, 0.5), made on device without a copy."""

  @jax.jit
  def fill():
    rows = jax.lax.broadcasted_iota(jnp.int32, (num_rows, dim), 0)
    cols = jax.lax.broadcasted_iota(jnp.int32, (num_rows, dim), 1)
    return ((rows * 7 + cols * 13) % 101).astype(jnp.float32) / 101.0 - 0.5

  return fill()


def row_loss(rows: jax.Array, weights: jax.Array,
             targets: jax.Array) -> jax.Array:
  """Squared error of each gathered row's dot product with fixed weights."""
  return jnp.mean((rows @ weights - targets) ** 2)


def dense_optimizer(name: str, frequencies: np.ndarray, num_steps: int):
  if name == 'sgd':
    return optax.with_extra_args_support(optax.sgd(LEARNING_RATE))
  if name == 'adagrad':
    return optax.with_extra_args_support(optax.adagrad(LEARNING_RATE))
  if name == 'adam':
    return optax.with_extra_args_support(optax.adam(LEARNING_RATE))
  if name == 'rowwise_adagrad':
    return fasgd_optax.rowwise_adagrad(LEARNING_RATE)
  if name == 'fa_sgd':
    return fasgd_optax.fa_sgd(LEARNING_RATE, frequencies, num_steps=num_steps)
  if name == 'cf_sgd':
    return fasgd_optax.cf_sgd(LEARNING_RATE, num_steps=num_steps)
  raise ValueError(f'Unknown dense optimizer {name!r}.')


def sparse_optimizer(name: str, frequencies: np.ndarray, num_steps: int):
  if name == 'sparse_cf_sgd':
    return fasgd_optax.sparse_cf_sgd(LEARNING_RATE, num_steps=num_steps)
  if name == 'sparse_fa_sgd':
    return fasgd_optax.sparse_fa_sgd(LEARNING_RATE, frequencies,
                                     num_steps=num_steps)
  if name == 'sparse_rowwise_adagrad':
    return fasgd_optax.sparse_rowwise_adagrad(LEARNING_RATE)
  if name == 'no_update':
    # The sparse step's own part, the gather and the loss, with no update:
    # what any sparse optimizer's step costs at least.
    return fasgd_optax.SparseTransformation(
        lambda table: optax.EmptyState(),
        lambda table, state, ids, row_grads: (table, state))
  raise ValueError(f'Unknown sparse optimizer {name!r}.')


def make_step(name: str, frequencies: np.ndarray, num_steps: int,
              weights: jax.Array) -> tuple[Callable[..., Any], Any]:
  """(jitted step(table, state, ids, targets), init) for optimizer `name`."""
  donated = (0, 1) if _DONATE.value else ()
  if name in SPARSE_OPTIMIZERS:
    sparse = sparse_optimizer(name, frequencies, num_steps)

    def sparse_step(table, state, ids, targets):
      loss, row_grads = jax.value_and_grad(row_loss)(table[ids], weights,
                                                     targets)
      table, state = sparse.apply(table, state, ids, row_grads)
      return table, state, loss

    return jax.jit(sparse_step, donate_argnums=donated), sparse.init

  tx = dense_optimizer(name, frequencies, num_steps)

  def dense_step(table, state, ids, targets):
    loss, grads = jax.value_and_grad(
        lambda t: row_loss(t[ids], weights, targets))(table)
    updates, state = tx.update(grads, state, table, ids=ids)
    return optax.apply_updates(table, updates), state, loss

  return jax.jit(dense_step, donate_argnums=donated), tx.init


def tree_bytes(tree: Any) -> int:
  return int(sum(leaf.nbytes for leaf in jax.tree.leaves(tree)))


def time_steps(step, init, num_rows: int, batches) -> dict[str, Any]:
  """Step times (s) on a fresh table, and the state's and table's bytes."""
  steps, warmup = _STEPS.value, _WARMUP.value
  table = make_table(num_rows, _DIM.value)
  params_bytes = tree_bytes(table)
  state = init(table)
  state_bytes = tree_bytes(state)
  times = []
  i = 0
  while (len(times) < steps or sum(times) < _MIN_SECONDS.value) and (
      len(times) < max(steps, _MAX_STEPS.value)):
    ids, targets = batches[i % len(batches)]
    start = time.perf_counter()
    table, state, loss = step(table, state, ids, targets)
    jax.block_until_ready((table, state, loss))
    if i >= warmup:
      times.append(time.perf_counter() - start)
    i += 1
  return {'times': times, 'loss': float(loss), 'state_bytes': state_bytes,
          'params_bytes': params_bytes}


def time_rounds(names: list[str], num_rows: int, batches, frequencies,
                weights) -> list[dict[str, Any]]:
  """Times each optimizer in `names` in `--repeats` interleaved rounds."""
  # The horizon T only scales step sizes; it does not change the work.
  steps = {name: make_step(name, frequencies, _STEPS.value + _WARMUP.value,
                           weights) for name in names}
  rounds = {name: [] for name in names}
  for _ in range(_REPEATS.value):
    for name in names:
      measured = time_steps(*steps[name], num_rows, batches)
      if not np.isfinite(measured['loss']):
        raise FloatingPointError(
            f'{name} at N={num_rows}: loss is {measured["loss"]}.')
      rounds[name].append(measured)
  results = []
  for name in names:
    medians = [1e3 * statistics.median(m['times']) for m in rounds[name]]
    all_times = [t for m in rounds[name] for t in m['times']]
    results.append({
        'optimizer': name,
        'path': path_of(name),
        'num_rows': num_rows,
        'median_ms': statistics.median(medians),
        'round_medians_ms': medians,
        'min_ms': 1e3 * min(all_times),
        'max_ms': 1e3 * max(all_times),
        'timed_steps': len(all_times),
        'state_bytes': rounds[name][0]['state_bytes'],
        # FA-SGD keeps its per-row frequencies outside the state, as constants.
        'frequencies_bytes': (int(frequencies.nbytes) if 'fa_sgd' in name
                              else 0),
        'params_bytes': rounds[name][0]['params_bytes'],
    })
  return results


def measure_size(num_rows: int, names: list[str]) -> list[dict[str, Any]]:
  """Results for each optimizer in `names` at one table size, in this process.

  Ids, targets and weights come from a generator seeded with (seed, N), so a
  size gets the same batches whichever process or order measures it.
  """
  rng = np.random.default_rng([_SEED.value, num_rows])
  weights = jnp.asarray(rng.normal(size=(_DIM.value,)), jnp.float32)
  frequencies = (_BATCH.value * zipf_probabilities(
      num_rows, _ZIPF_EXPONENT.value)).astype(np.float32)
  batches = []
  for _ in range(_NUM_BATCHES.value):
    ids = zipf_ids(rng, num_rows, _ZIPF_EXPONENT.value, (_BATCH.value,))
    targets = rng.normal(size=(_BATCH.value,)).astype(np.float32)
    batches.append((jnp.asarray(ids), jnp.asarray(targets)))
  table_gb = num_rows * _DIM.value * 4 / 1e9
  results, timed = [], []
  for name in names:
    tables = TABLES_IN_MEMORY[name]
    if not _DONATE.value:
      tables += 1 + STATE_TABLES.get(name, 0)
    estimate_gb = tables * table_gb
    if estimate_gb > _MAX_MEMORY_GB.value:
      result = {
          'optimizer': name, 'num_rows': num_rows,
          'path': path_of(name),
          'skipped': (f'needs about {tables} tables, {estimate_gb:.3g} GB '
                      f'> --max_memory_gb={_MAX_MEMORY_GB.value}'),
      }
      results.append(result)
      print(json.dumps(result), flush=True)
    else:
      timed.append(name)
  for result in time_rounds(timed, num_rows, batches, frequencies, weights):
    results.append(result)
    print(json.dumps(result), flush=True)
  jax.clear_caches()
  return results


def measure_in_subprocess(num_rows: int,
                          names: list[str]) -> list[dict[str, Any]]:
  """`measure_size` in a fresh Python process with this run's flags.

  A large dense step allocates and frees several tables' worth of memory;
  timing the next optimizer in the same process measures that aftermath too
  (on this project's CPU VM, sparse steps at N = 1e7 ran about 1.8× slower
  right after the dense ones). A fresh process per size and path is what a user's
  training job sees.
  """
  with tempfile.TemporaryDirectory() as folder:
    flagfile = os.path.join(folder, 'flags')
    with open(flagfile, 'w') as f:
      f.write(flags.FLAGS.flags_into_string())
    command = [sys.executable, os.path.abspath(__file__),
               f'--flagfile={flagfile}', f'--num_rows={num_rows}',
               f'--optimizers={",".join(names)}', '--noisolate', '--noplot',
               f'--output={folder}', '--name=part']
    completed = subprocess.run(command, stdout=subprocess.PIPE, text=True,
                               check=False)
    sys.stdout.write(completed.stdout)
    if completed.returncode:
      raise RuntimeError(
          f'Measuring {names} at N={num_rows} in a subprocess failed with '
          f'exit status {completed.returncode}; its stderr is above.')
    with open(os.path.join(folder, 'part.json')) as f:
      return json.load(f)['results']


def machine_description() -> dict[str, Any]:
  cpu = platform.processor() or platform.machine()
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          cpu = line.split(':', 1)[1].strip()
          break
  except OSError:
    pass
  return {
      'platform': platform.platform(),
      'cpu': cpu,
      'cpu_count': os.cpu_count(),
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


def plot(results: list[dict[str, Any]], path: str, title: str) -> None:
  """Log-log plot of median step time against N, one line per optimizer."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, ax = plt.subplots(figsize=(7, 5))
  for name in ALL_OPTIMIZERS:
    points = sorted((r['num_rows'], r['median_ms']) for r in results
                    if r['optimizer'] == name and 'median_ms' in r)
    if not points:
      continue
    sizes, times = zip(*points)
    ax.plot(sizes, times, marker='o',
            linestyle='--' if name in SPARSE_OPTIMIZERS else '-', label=name)
  ax.set_xscale('log')
  ax.set_yscale('log')
  ax.set_xlabel('table rows N')
  ax.set_ylabel('median step time (ms)')
  ax.set_title(title)
  ax.grid(True, which='both', alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv):
  del argv
  unknown = sorted(set(_OPTIMIZERS.value) - set(ALL_OPTIMIZERS))
  if unknown:
    raise app.UsageError(
        f'--optimizers: unknown {unknown}; choose from {list(ALL_OPTIMIZERS)}.')
  try:
    sizes = [int(float(n)) for n in _NUM_ROWS.value]
  except ValueError as e:
    raise app.UsageError(f'--num_rows must be integers; got '
                         f'{_NUM_ROWS.value}.') from e
  if any(n <= 0 for n in sizes):
    raise app.UsageError(f'--num_rows must be positive; got {sizes}.')

  os.makedirs(_OUTPUT.value, exist_ok=True)
  load_before = load_average()
  started = time.time()
  results = []
  for num_rows in sizes:
    if not _ISOLATE.value:
      results += measure_size(num_rows, _OPTIMIZERS.value)
      continue
    for path in ('dense', 'sparse'):
      names = [name for name in _OPTIMIZERS.value if path_of(name) == path]
      if names:
        results += measure_in_subprocess(num_rows, names)

  report = {
      'command': ' '.join(['python'] + sys.argv),
      'machine': machine_description(),
      'load_average_before': load_before,
      'load_average_after': load_average(),
      'total_seconds': round(time.time() - started, 1),
      'config': {
          'dim': _DIM.value, 'batch': _BATCH.value, 'steps': _STEPS.value,
          'warmup': _WARMUP.value, 'min_seconds': _MIN_SECONDS.value,
          'repeats': _REPEATS.value, 'donate': _DONATE.value,
          'isolate': _ISOLATE.value,
          'max_steps': _MAX_STEPS.value,
          'zipf_exponent': _ZIPF_EXPONENT.value,
          'num_batches': _NUM_BATCHES.value, 'dtype': 'float32',
          'max_memory_gb': _MAX_MEMORY_GB.value,
      },
      'results': results,
  }
  json_path = os.path.join(_OUTPUT.value, f'{_NAME.value}.json')
  with open(json_path, 'w') as f:
    json.dump(report, f, indent=1)
  if _PLOT.value:
    plot(results, os.path.join(_OUTPUT.value, f'{_NAME.value}.png'),
         f'One training step, d={_DIM.value}, B={_BATCH.value} Zipf ids '
         f'({report["machine"]["jax_backend"]})')
  print(f'Wrote {json_path}')


if __name__ == '__main__':
  app.run(main)
