"""Training throughput: sparse CF-SGD against dense Adam and Adagrad.

The same DeepFM (26 tables of --table_rows rows each, d = --embedding_dim,
the dense part on Adam) trained with

- cf_sgd/sparse: the tables by `fasgd_optax.sparse_cf_sgd` (only the batch's
  rows are read and written);
- adam/dense, adagrad/dense: `optax.adam` / `optax.adagrad` over all
  parameters (the tables' dense N×(d+1) gradient, moments for every row);

and, for each, three numbers (examples per second, steady state):

- step: the jitted step alone, on batches already on the device, K steps back
  to back with one sync at the end, repeated until --min_seconds;
- end to end: `train.train_and_evaluate` reading a synthetic Criteo file
  (parsing in a background thread while the step runs), first steps left out;
  the time it waited for data is reported beside it;
- loading: the reader alone (parse, hash, batch), no training.

  python -m examples.criteo.throughput --output_dir=examples/criteo/results
  # The GPU run (see README.md):
  python -m examples.criteo.throughput --table_rows=mlperf --embedding_dim=128 \\
      --variants=cf_sgd/sparse --batch_size=16384 --platform=gpu
"""

import os
import sys
import tempfile
import time

from absl import app
from absl import flags

_TABLE_ROWS = flags.DEFINE_list(
    'table_rows', ['10000', '100000', '1000000'],
    'Rows of each of the 26 tables, one run per value; "mlperf" for MLPerf '
    'DLRM\'s per-feature sizes (config.MLPERF_TABLE_ROWS).')
_EMBEDDING_DIM = flags.DEFINE_integer('embedding_dim', 16, 'Embedding dim d.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 4096, 'Examples per step.')
_VARIANTS = flags.DEFINE_list(
    'variants', ['cf_sgd/sparse', 'adam/dense', 'adagrad/dense'],
    'optimizer/path pairs to measure.')
_MIN_SECONDS = flags.DEFINE_float(
    'min_seconds', 10.0, 'Time each step measurement at least this long.')
_MIN_STEPS = flags.DEFINE_integer('min_steps', 5,
                                  'and at least this many steps.')
_END_TO_END_STEPS = flags.DEFINE_integer(
    'end_to_end_steps', 40,
    'Timed steps of the end-to-end run (fewer for slow variants: as many as '
    'the step measurement took).')
_SYNTHETIC_LINES = flags.DEFINE_integer(
    'synthetic_lines', 200_000, 'Lines of the synthetic file read.')
_PLATFORM = flags.DEFINE_string('platform', None,
                                'Devices to run on (default: JAX\'s default).')
_OUTPUT_DIR = flags.DEFINE_string(
    'output_dir', None, 'Write throughput.json, throughput.md and a plot here.')

def _table_rows(value: str):
  from examples.criteo import config as config_lib  # pylint: disable=g-import-not-at-top
  if value == 'mlperf':
    return config_lib.MLPERF_TABLE_ROWS
  return (int(float(value)),) * config_lib.NUM_CATEGORICAL


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from examples.common import files  # pylint: disable=g-import-not-at-top
  from examples.common import machine  # pylint: disable=g-import-not-at-top
  from examples.common import optimizers  # pylint: disable=g-import-not-at-top
  from examples.common import plotting  # pylint: disable=g-import-not-at-top
  from examples.criteo import config as config_lib  # pylint: disable=g-import-not-at-top
  from examples.criteo import criteo_format  # pylint: disable=g-import-not-at-top
  from examples.criteo import input_pipeline  # pylint: disable=g-import-not-at-top
  from examples.criteo import placement  # pylint: disable=g-import-not-at-top
  from examples.criteo import synthetic  # pylint: disable=g-import-not-at-top
  from examples.criteo import train  # pylint: disable=g-import-not-at-top

  device = jax.devices(_PLATFORM.value)[0]
  mesh = placement.make_mesh((1,), [device])
  batch_size = _BATCH_SIZE.value
  # Removed when the program ends, whichever way (weakref.finalize).
  directory = tempfile.TemporaryDirectory(prefix='criteo_throughput_')
  data_path = os.path.join(directory.name, 'train.txt')
  synthetic.write(data_path, _SYNTHETIC_LINES.value, seed=1)

  def loading_rate(table_rows):
    hashing = criteo_format.Hashing(table_rows)
    start = time.perf_counter()
    examples = 0
    for batch in input_pipeline.process_batches(
        [data_path], hashing, batch_size=batch_size, shards=[0],
        num_shards=1, repeat=False):
      examples += batch.size
    return examples / (time.perf_counter() - start)

  def peak_memory():
    stats = device.memory_stats() or {}
    return stats.get('peak_bytes_in_use')

  def step_rate(config):
    trainer = train.Trainer(config, mesh)
    hashing = criteo_format.Hashing(config.table_rows)
    batches = []
    for batch in input_pipeline.process_batches(
        [data_path], hashing, batch_size=batch_size, shards=[0],
        num_shards=1, repeat=True):
      batches.append(trainer.global_batch(batch.arrays()))
      if len(batches) == 8:
        break
    state = trainer.init()
    state, _ = trainer.train_step(state, batches[0])  # compile
    jax.block_until_ready(state)
    steps, seconds = 0, 0.0
    chunk = 2
    while seconds < _MIN_SECONDS.value or steps < _MIN_STEPS.value:
      start = time.perf_counter()
      for i in range(chunk):
        state, loss = trainer.train_step(state, batches[(steps + i) % 8])
      jax.block_until_ready((state, loss))
      seconds += time.perf_counter() - start
      steps += chunk
      chunk = min(chunk * 2, 64)
    result = {'steps': steps, 'seconds': seconds,
              'examples_per_second': steps * batch_size / seconds,
              'loss_finite': bool(np.isfinite(float(loss))),
              'state_bytes': optimizers.state_bytes(state),
              'peak_device_bytes': peak_memory()}
    del state, batches
    return result

  def end_to_end_rate(config, steps):
    # The first steps of the config's own horizon (the tuned rates assume
    # it: CF-SGD's steps grow as the horizon shrinks, and diverge at ~10).
    warmup = 3
    results = train.train_and_evaluate(
        config, train.Data(train=[data_path]), mesh, warmup_steps=warmup,
        log_every=10**9, stop_after_step=steps + warmup)
    del results['state']
    return results['timing']

  runs = []
  for table_rows_value in _TABLE_ROWS.value:
    table_rows = _table_rows(table_rows_value)
    loading = loading_rate(table_rows)
    print(f'table_rows={table_rows_value}: loading {loading:,.0f} examples/s',
          flush=True)
    for variant in _VARIANTS.value:
      optimizer, update = variant.split('/')
      config = config_lib.Config(
          optimizer=optimizer, update=update,
          learning_rate=config_lib.TUNED_LEARNING_RATES[optimizer],
          dense_optimizer='adam',
          dense_learning_rate=1e-3, table_rows=table_rows,
          embedding_dim=_EMBEDDING_DIM.value, batch_size=batch_size,
          num_steps=1000)
      step = step_rate(config)
      steps = max(_MIN_STEPS.value, min(_END_TO_END_STEPS.value,
                                        step['steps']))
      end_to_end = end_to_end_rate(config, steps)
      run = {'table_rows': table_rows_value, 'total_rows': sum(table_rows),
             'variant': variant, 'step': step, 'end_to_end': end_to_end,
             'loading_examples_per_second': loading}
      runs.append(run)
      print(f'  {variant}: step {step["examples_per_second"]:,.0f} '
            f'examples/s ({step["steps"]} steps), end to end '
            f'{end_to_end["examples_per_second"]:,.0f} examples/s '
            f'({end_to_end["steps"]} steps, '
            f'{end_to_end["data_wait_seconds"]:.2f} s of '
            f'{end_to_end["seconds"]:.2f} s waiting for data)', flush=True)
  command = 'python -m examples.criteo.throughput ' + ' '.join(sys.argv[1:])
  report = {'command': command.strip(), 'machine': machine.describe_machine(),
            'platform': device.platform, 'batch_size': batch_size,
            'embedding_dim': _EMBEDDING_DIM.value, 'runs': runs,
            'load_average': os.getloadavg()}
  table = markdown(report)
  print(table)
  if _OUTPUT_DIR.value:
    os.makedirs(_OUTPUT_DIR.value, exist_ok=True)
    name = f'throughput_{device.platform}'
    files.write_json(os.path.join(_OUTPUT_DIR.value, name + '.json'), report,
                     indent=1)
    files.write_text(os.path.join(_OUTPUT_DIR.value, name + '.md'), table)
    series = {}
    for run in runs:
      for kind in ('step', 'end_to_end'):
        x, y = series.setdefault(f'{run["variant"]} ({kind})', ([], []))
        x.append(run['total_rows'] / config_lib.NUM_CATEGORICAL)
        y.append(run[kind]['examples_per_second'])
    plotting.line_plot(
        os.path.join(_OUTPUT_DIR.value, name + '.png'), series,
        xlabel='rows per table (26 tables)', ylabel='examples / s',
        title=f'DeepFM d={_EMBEDDING_DIM.value}, batch {batch_size}, '
              f'{device.platform}', log_x=True, log_y=True)


def markdown(report) -> str:
  lines = [
      f'`{report["command"]}` on {report["machine"]} (load average at the '
      f'end {report["load_average"][0]:.2f}); batch {report["batch_size"]}, '
      f'd = {report["embedding_dim"]}. Examples per second, steady state.',
      '',
      '| rows per table | variant | step | end to end | waiting for data | '
      'loading alone | vs adam/dense (step) | vs adam/dense (end to end) |',
      '|---|---|---|---|---|---|---|---|',
  ]
  by_rows = {}
  for run in report['runs']:
    by_rows.setdefault(run['table_rows'], {})[run['variant']] = run
  for table_rows, runs in by_rows.items():
    adam = runs.get('adam/dense')
    for variant, run in runs.items():
      step = run['step']['examples_per_second']
      end = run['end_to_end']['examples_per_second']
      wait = run['end_to_end']['data_wait_seconds'] / max(
          run['end_to_end']['seconds'], 1e-9)
      ratios = ['', '']
      if adam is not None:
        ratios = [
            f'{step / adam["step"]["examples_per_second"]:.1f}×',
            f'{end / adam["end_to_end"]["examples_per_second"]:.1f}×']
      lines.append(
          f'| {table_rows} | {variant} | {step:,.0f} | {end:,.0f} | '
          f'{100 * wait:.0f}% | {run["loading_examples_per_second"]:,.0f} | '
          f'{ratios[0]} | {ratios[1]} |')
  return '\n'.join(lines) + '\n'


if __name__ == '__main__':
  app.run(main)
