"""Memory of DeepFM at paper scale, per optimizer, without allocating it.

For each optimizer and update path, the state (parameters and optimizer
state) comes from `jax.eval_shape` of the model and optimizer construction,
and the peak of one training step from XLA's buffer assignment of the jitted
step, compiled for abstract (`jax.ShapeDtypeStruct`) inputs: argument +
output − donated (aliased) + temporary bytes. Nothing is allocated, so
terabyte configurations are measured on a laptop. The step is compiled for
one device and, with the table row-sharded, for 8 devices (per-device peak).

Table sizes: 26 tables capped at 4·10^7 rows, either MLPerf DLRM's per-feature
sizes on Criteo 1TB (config.MLPERF_TABLE_ROWS, 2.04·10^8 rows in all) or all
26 at the cap (1.04·10^9 rows), d = 16, 64, 128.

  python -m examples.criteo.memory --output_dir=examples/criteo/results
"""

import os
import sys

from absl import app
from absl import flags

_OUTPUT_DIR = flags.DEFINE_string('output_dir', None,
                                  'Write memory.json and memory.md here.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 4096,
                                   'Global batch size of the step.')
_DIMS = flags.DEFINE_list('dims', ['16', '64', '128'], 'Embedding dims d.')
_PLATFORM = flags.DEFINE_string(
    'platform', 'cpu', 'Compile for this platform\'s devices (needs 8 of them '
    'for the sharded column; on CPU this script asks XLA for 8).')

if __name__ == '__main__':
  # XLA reads this once, when JAX starts: 8 CPU devices for the 8-way mesh.
  if 'xla_force_host_platform_device_count' not in os.environ.get(
      'XLA_FLAGS', ''):
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                               ' --xla_force_host_platform_device_count=8')

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

from examples.common import files  # pylint: disable=g-import-not-at-top
from examples.common import machine  # pylint: disable=g-import-not-at-top
from examples.common import optimizers  # pylint: disable=g-import-not-at-top
from examples.criteo import config as config_lib  # pylint: disable=g-import-not-at-top
from examples.criteo import placement  # pylint: disable=g-import-not-at-top
from examples.criteo import train  # pylint: disable=g-import-not-at-top

GIB = 1 << 30
# What XLA can use of each GPU, as the device machines of this project report
# it (nominal 80 GB and 141 GB).
GPUS = {'H100 80GB': 78.0 * GIB, 'H200 141GB': 139.0 * GIB}
TABLES = {
    'MLPerf sizes': config_lib.MLPERF_TABLE_ROWS,
    '26 × 4e7': (config_lib.MLPERF_ROW_CAP,) * config_lib.NUM_CATEGORICAL,
}
# (optimizer, update path); the dense part (MLP etc.) uses Adam in every run.
VARIANTS = (
    ('sgd', 'sparse'), ('sgd', 'dense'),
    ('cf_sgd', 'sparse'), ('cf_sgd', 'dense'),
    ('rowwise_adagrad', 'sparse'), ('rowwise_adagrad', 'dense'),
    ('adagrad', 'dense'), ('adam', 'dense'),
)


def measure(config: config_lib.Config, devices) -> dict:
  """State bytes (eval_shape) and the compiled step's peak, per device."""
  mesh = placement.make_mesh((len(devices),), devices)
  trainer = train.Trainer(config, mesh)
  state = jax.tree.map(
      lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype,
                                                  sharding=sharding),
      trainer.abstract_state, trainer.state_shardings)
  batch = {
      'labels': jax.ShapeDtypeStruct((config.batch_size,), jnp.float32),
      'dense': jax.ShapeDtypeStruct(
          (config.batch_size, config_lib.NUM_INTEGER), jnp.float32),
      'ids': jax.ShapeDtypeStruct(
          (config.batch_size, config_lib.NUM_CATEGORICAL), jnp.int32),
  }
  stats = trainer.train_step.lower(state, batch).compile().memory_analysis()
  parameters = optimizers.state_bytes(state[0])
  return {
      'num_rows': trainer.layout.num_rows,
      'parameter_bytes': parameters,
      'optimizer_state_bytes': optimizers.state_bytes(state) - parameters,
      'argument_bytes': stats.argument_size_in_bytes,
      'output_bytes': stats.output_size_in_bytes,
      'alias_bytes': stats.alias_size_in_bytes,
      'temp_bytes': stats.temp_size_in_bytes,
      'peak_bytes': (stats.argument_size_in_bytes + stats.output_size_in_bytes
                     - stats.alias_size_in_bytes + stats.temp_size_in_bytes),
  }


def _gib(value: float) -> str:
  return f'{value / GIB:,.1f}'


def markdown(rows, command: str, machine_name: str, batch_size: int) -> str:
  gpus = list(GPUS)
  lines = [
      f'`{command}` on {machine_name}: state from `jax.eval_shape`, step '
      f'peaks from XLA\'s buffer assignment of the jitted step compiled for '
      f'abstract inputs (batch {batch_size}; CPU compilation), nothing '
      'allocated. GiB = 2^30 bytes. "Fits" compares the one-device peak with '
      + ', '.join(f'{name} ({GPUS[name] / GIB:.0f} GiB usable)'
                  for name in gpus) +
      ', and the per-device peak on 8 devices (table row-sharded) with the '
      'same GPUs.',
      '',
      '| tables | d | optimizer | path | params | optimizer state | step peak, '
      '1 device | fits one ' + ' / '.join(gpus) + ' | per-device peak, 8 '
      'devices | fits 8 × ' + ' / '.join(gpus) + ' |',
      '|---|---|---|---|---|---|---|---|---|---|',
  ]
  for row in rows:
    one, eight = row['one_device'], row['eight_devices']
    fits_one = ' / '.join('yes' if one['peak_bytes'] <= GPUS[g] else 'no'
                          for g in gpus)
    fits_eight = ' / '.join('yes' if eight['peak_bytes'] <= GPUS[g] else 'no'
                            for g in gpus)
    lines.append(
        f'| {row["tables"]} | {row["embedding_dim"]} | {row["optimizer"]} | '
        f'{row["update"]} | {_gib(one["parameter_bytes"])} | '
        f'{_gib(one["optimizer_state_bytes"])} | {_gib(one["peak_bytes"])} | '
        f'{fits_one} | {_gib(eight["peak_bytes"])} | {fits_eight} |')
  return '\n'.join(lines) + '\n'


def main(argv):
  del argv
  devices = jax.devices(_PLATFORM.value)
  if len(devices) < 8:
    raise app.UsageError(f'Needs 8 {_PLATFORM.value} devices, found '
                         f'{len(devices)}.')
  rows = []
  for tables, table_rows in TABLES.items():
    for dim in _DIMS.value:
      for optimizer, update in VARIANTS:
        config = config_lib.Config(
            optimizer=optimizer, update=update, learning_rate=0.01,
            dense_optimizer='adam', dense_learning_rate=1e-3,
            table_rows=table_rows, embedding_dim=int(dim),
            batch_size=_BATCH_SIZE.value)
        row = {'tables': tables, 'embedding_dim': int(dim),
               'optimizer': optimizer, 'update': update,
               'one_device': measure(config, devices[:1]),
               'eight_devices': measure(config, devices[:8])}
        rows.append(row)
        print(f'{tables} d={dim} {optimizer} {update}: params '
              f'{_gib(row["one_device"]["parameter_bytes"])} GiB, state '
              f'{_gib(row["one_device"]["optimizer_state_bytes"])} GiB, peak '
              f'{_gib(row["one_device"]["peak_bytes"])} GiB (1 device), '
              f'{_gib(row["eight_devices"]["peak_bytes"])} GiB (per device '
              'of 8)', flush=True)
  command = 'python -m examples.criteo.memory ' + ' '.join(sys.argv[1:])
  machine_name = machine.describe_machine()
  table = markdown(rows, command.strip(), machine_name, _BATCH_SIZE.value)
  print(table)
  if _OUTPUT_DIR.value:
    os.makedirs(_OUTPUT_DIR.value, exist_ok=True)
    files.write_json(os.path.join(_OUTPUT_DIR.value, 'memory.json'),
                     {'command': command, 'machine': machine_name,
                      'batch_size': _BATCH_SIZE.value, 'rows': rows}, indent=1)
    files.write_text(os.path.join(_OUTPUT_DIR.value, 'memory.md'), table)


if __name__ == '__main__':
  app.run(main)
