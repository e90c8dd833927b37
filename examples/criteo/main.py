"""Trains DeepFM on Criteo-format data with row-sharded tables.

With no --data, it writes synthetic data (labels from a planted model; see
synthetic.py) under --workdir and trains CF-SGD on the sparse path:

  python -m examples.criteo.main
  python -m examples.criteo.main --optimizer=adam --update=dense --learning_rate=1e-3
  python -m examples.criteo.main --data=/data/day_0.gz,/data/day_1.gz \\
      --test_data=/data/day_23.gz --table_rows=40000000 --embedding_dim=64

Several processes (e.g. one per host), each running the same command:

  python -m examples.criteo.main --coordinator_address=host0:1234 \\
      --num_processes=2 --process_id=0 ...
"""

import glob
import json
import os
import sys

from absl import app
from absl import flags
from absl import logging


_DATA = flags.DEFINE_list(
    'data', None,
    'Training files in the Criteo format, plain or gzip (comma-separated; '
    'globs allowed). Default: synthetic data written under --workdir.')
_VALIDATION_DATA = flags.DEFINE_list(
    'validation_data', None, 'Validation files (default: synthetic, or none '
    'with --data).')
_TEST_DATA = flags.DEFINE_list(
    'test_data', None, 'Test files (default: synthetic, or none with --data).')
_SYNTHETIC_LINES = flags.DEFINE_integer(
    'synthetic_lines', 1_000_000,
    'Without --data: lines of the synthetic training file (validation and '
    'test get a tenth each).', lower_bound=10)
_SYNTHETIC_VOCABULARY = flags.DEFINE_integer(
    'synthetic_vocabulary', 100_000,
    'Without --data: distinct values of the largest categorical feature of '
    'the synthetic data (the others have fewer, down to 3).',
    lower_bound=3)
_OPTIMIZER = flags.DEFINE_string(
    'optimizer', 'cf_sgd',
    'The tables\' optimizer: sgd, adagrad, adam, rowwise_adagrad, cf_sgd.')
_LEARNING_RATE = flags.DEFINE_float(
    'learning_rate', None,
    'The tables\' learning rate (α for cf_sgd); default: the rate tuned on '
    'synthetic data (config.TUNED_LEARNING_RATES).')
_DENSE_OPTIMIZER = flags.DEFINE_string(
    'dense_optimizer', 'adam',
    'Optimizer of the other parameters (MLP, integer features, bias).')
_DENSE_LEARNING_RATE = flags.DEFINE_float(
    'dense_learning_rate', 1e-3, 'Learning rate of --dense_optimizer.')
_UPDATE = flags.DEFINE_enum(
    'update', None, ['sparse', 'dense'],
    'sparse: the tables by fasgd_optax.sparse_* (only the batch\'s rows); '
    'dense: one Optax optimizer over all parameters. Default: sparse where '
    'the optimizer has a sparse path (sgd, rowwise_adagrad, cf_sgd).')
_TABLE_ROWS = flags.DEFINE_list(
    'table_rows', ['32768'],
    'Rows of each categorical feature\'s table: one number for all 26, or 26 '
    'comma-separated; values are hashed into them.')
_EMBEDDING_DIM = flags.DEFINE_integer('embedding_dim', 16, 'Embedding dim d.',
                                      lower_bound=1)
_MLP_FEATURES = flags.DEFINE_list('mlp_features', ['128', '64'],
                                  'DeepFM\'s hidden layer widths.')
_BATCH_SIZE = flags.DEFINE_integer(
    'batch_size', 1024, 'Global examples per step (all devices, processes).',
    lower_bound=1)
_NUM_STEPS = flags.DEFINE_integer(
    'num_steps', None,
    'Training steps (CF-SGD\'s horizon T); passes over the data repeat as '
    'needed. Default: one pass over the synthetic training file; required '
    'with --data.')
_SEED = flags.DEFINE_integer('seed', 0, 'Parameter initialisation seed.')
_DATA_SHARDS = flags.DEFINE_integer(
    'data_shards', None,
    'Split the training lines into this many shards (line i to shard i mod '
    'S); each gives an equal part of every batch. Default: the number of '
    'processes. A run with the same value reads the same batches whatever its '
    'number of processes.', lower_bound=1)
_MESH_SHAPE = flags.DEFINE_list(
    'mesh_shape', None,
    'Device mesh: "N" (axis data) or "N,M" (axes data, model); the tables '
    'are row-sharded over all devices, the batch over data. Default: all '
    'devices on data.')
_COORDINATOR_ADDRESS = flags.DEFINE_string(
    'coordinator_address', None,
    'Multi-process: host:port of process 0, passed to '
    'jax.distributed.initialize.')
_NUM_PROCESSES = flags.DEFINE_integer(
    'num_processes', None, 'Multi-process: number of processes.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None,
                                   'Multi-process: this process\'s index.')
_INITIALIZATION_TIMEOUT = flags.DEFINE_integer(
    'initialization_timeout', 300,
    'Multi-process: seconds a process waits for all the others to join '
    '(jax.distributed.initialize\'s initialization_timeout). A process that '
    'is never started, or stops before joining, ends the others when this '
    'runs out, by JAX\'s abort.', lower_bound=1)
_HEARTBEAT_TIMEOUT = flags.DEFINE_integer(
    'heartbeat_timeout', 100,
    'Multi-process: seconds without word from a process after which the '
    'others take it for dead and abort (jax.distributed.initialize\'s '
    'heartbeat_timeout_seconds).', lower_bound=1)
_BAD_LINES = flags.DEFINE_enum(
    'bad_lines', 'skip', ['skip', 'fail'],
    'Malformed lines: skip (count them; the report names the first few) or '
    'fail on the first.')
_MAX_EVAL_EXAMPLES = flags.DEFINE_integer(
    'max_eval_examples', None, 'Evaluate on at most this many examples.',
    lower_bound=1)
_EVAL_EVERY = flags.DEFINE_integer(
    'eval_every', 0, 'Validation metrics every this many steps (0: at the '
    'end only).', lower_bound=0)
_LOG_EVERY = flags.DEFINE_integer('log_every', 100,
                                  'Log the training loss every this many steps.',
                                  lower_bound=1)
_STOP_AFTER_STEP = flags.DEFINE_integer(
    'stop_after_step', None,
    'Stop after this step, with a checkpoint there, e.g. to split a run over '
    'several jobs; rerun the same command without it to go on.')
_WORKDIR = flags.DEFINE_string(
    'workdir', os.path.join('runs', 'criteo'),
    'Synthetic data, checkpoints and results.json go here.')

from examples.common import cli  # pylint: disable=g-import-not-at-top
from examples.common import checkpointing  # pylint: disable=g-import-not-at-top
from examples.common import files  # pylint: disable=g-import-not-at-top
from examples.criteo import config as config_lib  # pylint: disable=g-import-not-at-top

cli.require_positive('learning_rate', 'dense_learning_rate')

_SAVE_INTERVAL_STEPS = cli.define_save_interval_steps(500)


def _files(patterns):
  files = []
  for pattern in patterns or []:
    matches = sorted(glob.glob(pattern))
    if not matches:
      raise app.UsageError(f'No data file matches {pattern!r}.')
    files.extend(os.path.normpath(match) for match in matches)
  return files


def _integers(flag) -> list[int]:
  try:
    return [int(float(value)) for value in flag.value]
  except ValueError:
    raise app.UsageError(
        f'--{flag.name} {",".join(flag.value)}: expected integers.') from None


def _config(process_count: int, num_steps: int) -> config_lib.Config:
  rows = _integers(_TABLE_ROWS)
  if len(rows) == 1:
    rows = rows * config_lib.NUM_CATEGORICAL
  optimizer = _OPTIMIZER.value
  if optimizer not in config_lib.OPTIMIZERS:
    raise app.UsageError(f'--optimizer {optimizer!r}: expected one of '
                         f'{", ".join(config_lib.OPTIMIZERS)}.')
  update = _UPDATE.value or (
      'sparse' if optimizer in config_lib.SPARSE_OPTIMIZERS else 'dense')
  learning_rate = _LEARNING_RATE.value
  if learning_rate is None:
    learning_rate = config_lib.TUNED_LEARNING_RATES.get(optimizer)
    if learning_rate is None:
      raise app.UsageError(f'No tuned learning rate for {optimizer!r}; pass '
                           '--learning_rate.')
  try:
    return config_lib.Config(
        optimizer=optimizer,
        learning_rate=learning_rate,
        dense_optimizer=_DENSE_OPTIMIZER.value,
        dense_learning_rate=_DENSE_LEARNING_RATE.value,
        update=update,
        table_rows=tuple(rows),
        embedding_dim=_EMBEDDING_DIM.value,
        mlp_features=tuple(_integers(_MLP_FEATURES)),
        batch_size=_BATCH_SIZE.value,
        num_steps=num_steps,
        seed=_SEED.value,
        data_shards=(process_count if _DATA_SHARDS.value is None
                   else _DATA_SHARDS.value),
    )
  except ValueError as error:
    raise app.UsageError(str(error)) from None


def _write_synthetic_data(paths: list[str]) -> None:
  """Writes the missing synthetic train, validation and test files.

  Validation and test files have a tenth of the training lines. A write
  killed midway leaves only its temporary file, removed here. Their sizes
  are kept beside them (`_check_synthetic_sizes`).
  """
  import jax  # pylint: disable=g-import-not-at-top
  from examples.criteo import synthetic  # pylint: disable=g-import-not-at-top
  if jax.process_index() == 0:
    model = synthetic.PlantedModel(0, synthetic.default_vocabulary_sizes(
        _SYNTHETIC_VOCABULARY.value))
    sizes = (_SYNTHETIC_LINES.value, _SYNTHETIC_LINES.value // 10,
             _SYNTHETIC_LINES.value // 10)
    for seed, (path, size) in enumerate(zip(paths, sizes)):
      files.remove_temporaries(path)
      if not os.path.exists(path):
        synthetic.write(path, size, seed=seed + 1, model=model)
    _check_synthetic_sizes(paths)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices('criteo: synthetic data written')


def _check_synthetic_sizes(paths: list[str]) -> None:
  """Refuses synthetic files cut or changed since they were written.

  The first run to find them whole records their sizes in `sizes.json`
  beside them; later runs (a resume) compare. Training on a cut file would
  quietly use part of the data, and a resume would read on from a place
  that is no longer the one saved.
  """
  from examples.criteo import input_pipeline  # pylint: disable=g-import-not-at-top
  directory = os.path.dirname(paths[0])
  manifest = os.path.join(directory, 'sizes.json')
  sizes = {os.path.basename(path): os.path.getsize(path) for path in paths}
  try:
    with open(manifest) as f:
      written = json.load(f)
  except (OSError, ValueError):
    written = None
  if not isinstance(written, dict):  # None yet (or damaged): these sizes.
    files.write_json(manifest, sizes)
    return
  for name, size in sizes.items():
    if written.get(name) != size:
      raise input_pipeline.DataError(
          f'The synthetic file {os.path.join(directory, name)} has {size} '
          f'bytes, but {written.get(name)} were written: it was cut or '
          'changed since. Delete it, and the same command writes it again.')


def _check_processes_flags() -> None:
  """--num_processes, --process_id and --coordinator_address, checked."""
  count, index = _NUM_PROCESSES.value, _PROCESS_ID.value
  if count < 1:
    raise app.UsageError(f'--num_processes must be >= 1; got {count}.')
  if not 0 <= index < count:
    raise app.UsageError(f'--process_id must be in [0, {count - 1}] for '
                         f'--num_processes={count}; got {index}.')
  host, _, port = _COORDINATOR_ADDRESS.value.rpartition(':')
  if not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise app.UsageError(
        '--coordinator_address must be host:port (process 0\'s, a port in '
        f'1-65535); got {_COORDINATOR_ADDRESS.value!r}.')


def _check_same_flags() -> None:
  """Refuses processes of one run started with different flags.

  Each process would train its own part of the tables with its own settings
  (another --learning_rate gave a silently mixed state and a record naming
  process 0's), or wait in a collective that never comes (another
  --save_interval_steps: a save that the others never join). Every process
  gathers every other's flag values (this module's and the shared
  checkpointing flags of `cli`, by a hash each) and names the ones that
  differ.
  """
  import hashlib  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  # The coordinator's address may be spelt differently on each host, and
  # the compilation cache, library logs and patience are each host's own.
  own = ('process_id', 'coordinator_address', 'compilation_cache_dir',
         'verbose_libraries', 'initialization_timeout', 'heartbeat_timeout')
  names = sorted(
      flag.name for module in (sys.modules[__name__], cli)
      for flag in flags.FLAGS.get_flags_for_module(module)
      if flag.name not in own)
  hashes = np.array([int.from_bytes(hashlib.sha256(
      repr(flags.FLAGS[name].value).encode()).digest()[:3], 'little')
                     for name in names], np.int32)
  every = np.asarray(multihost_utils.process_allgather(hashes))
  differing = [name for column, name in enumerate(names)
               if len(set(every[:, column].tolist())) > 1]
  if differing:
    raise app.UsageError(
        'The processes of one run need the same flags (but each one\'s '
        f'{", ".join("--" + name for name in own)}); these differ between '
        f'them: --{", --".join(differing)}.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  cli.configure()
  cli.check_workdir(_WORKDIR.value)
  import jax  # pylint: disable=g-import-not-at-top
  multi_process = [_COORDINATOR_ADDRESS.value, _NUM_PROCESSES.value,
                   _PROCESS_ID.value]
  if any(value is not None for value in multi_process):
    if any(value is None for value in multi_process):
      raise app.UsageError(
          '--coordinator_address, --num_processes and --process_id go '
          'together.')
    _check_processes_flags()
    # CPU devices of several processes talk over gloo (JAX's default CPU
    # collectives in 0.10; said explicitly in case a version changes it).
    if hasattr(jax.config, 'jax_cpu_collectives_implementation'):
      jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    # JAX's preemption service takes SIGTERM for a notice that this run
    # never asks about: the run went on to its end. Off, SIGTERM stops the
    # run as it does a single process (`cli.run`).
    if hasattr(jax.config, 'jax_enable_preemption_service'):
      jax.config.update('jax_enable_preemption_service', False)
    jax.distributed.initialize(
        coordinator_address=_COORDINATOR_ADDRESS.value,
        num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value,
        initialization_timeout=_INITIALIZATION_TIMEOUT.value,
        heartbeat_timeout_seconds=_HEARTBEAT_TIMEOUT.value)
    _check_same_flags()
  from examples.common import machine  # pylint: disable=g-import-not-at-top
  from examples.criteo import input_pipeline  # pylint: disable=g-import-not-at-top
  from examples.criteo import placement  # pylint: disable=g-import-not-at-top
  from examples.criteo import train  # pylint: disable=g-import-not-at-top

  workdir = _WORKDIR.value
  num_steps = _NUM_STEPS.value
  if _DATA.value:
    if num_steps is None:
      raise app.UsageError('--num_steps is required with --data.')
    data_files = _files(_DATA.value)
    validation = _files(_VALIDATION_DATA.value)
    test = _files(_TEST_DATA.value)
  else:
    if _VALIDATION_DATA.value or _TEST_DATA.value:
      raise app.UsageError(
          '--validation_data and --test_data go with --data; without it the '
          'synthetic data\'s own validation and test files are used.')
    # One folder per setting: data made for other flags is never reused.
    directory = os.path.join(
        workdir, 'synthetic', f'{_SYNTHETIC_LINES.value}_lines_'
        f'{_SYNTHETIC_VOCABULARY.value}_vocabulary')
    data_files = [os.path.join(directory, 'train.txt')]
    validation = [os.path.join(directory, 'validation.txt')]
    test = [os.path.join(directory, 'test.txt')]
    if _BATCH_SIZE.value > _SYNTHETIC_LINES.value:
      raise app.UsageError(
          f'--batch_size {_BATCH_SIZE.value} exceeds the '
          f'{_SYNTHETIC_LINES.value} synthetic training lines '
          '(--synthetic_lines).')
    if num_steps is None:
      num_steps = _SYNTHETIC_LINES.value // _BATCH_SIZE.value
  config = _config(jax.process_count(), num_steps)
  mesh_shape = (_integers(_MESH_SHAPE) if _MESH_SHAPE.value
                else [jax.device_count()])
  try:
    mesh = placement.make_mesh(mesh_shape)
  except ValueError as error:
    raise app.UsageError(str(error)) from None
  data_axis = mesh.shape[placement.DATA_AXIS]
  if config.batch_size % data_axis:
    raise app.UsageError(
        f'--batch_size {config.batch_size} must be a multiple of the mesh\'s '
        f'data axis ({data_axis}).')
  if config.data_shards % jax.process_count():
    raise app.UsageError(
        f'--data_shards {config.data_shards} must be a multiple of the number '
        f'of processes ({jax.process_count()}).')
  try:
    # Before any data is written or lock taken.
    train.check_layout(config, mesh)
  except ValueError as error:
    raise app.UsageError(str(error)) from None
  data = train.Data(train=data_files, validation=validation or None,
                    test=test or None, bad_lines=_BAD_LINES.value,
                    max_eval_examples=_MAX_EVAL_EXAMPLES.value)
  if jax.process_index() == 0:
    logging.info('%s on %s, mesh %s', config, machine.describe_machine(),
                 dict(mesh.shape))
  record = train.checkpoint_record(
      config, _LOG_EVERY.value, files=data if _DATA.value else None,
      eval_every=_EVAL_EVERY.value, max_eval_examples=_MAX_EVAL_EXAMPLES.value)
  if not _DATA.value:
    record['synthetic_data'] = {'lines': _SYNTHETIC_LINES.value,
                                'vocabulary': _SYNTHETIC_VOCABULARY.value}
  try:
    # The checkpointer holds the workdir's lock, so a second command on it
    # is refused before it touches the data.
    with checkpointing.Checkpointer(
        os.path.join(workdir, 'checkpoints'), record,
        cli.checkpoint_options()) as checkpointer:
      # A checkpoint of other settings is refused before data is written.
      checkpointer.check_config()
      if not _DATA.value:
        _write_synthetic_data(data_files + validation + test)
      results = train.train_and_evaluate(
          config, data, mesh, checkpointer=checkpointer,
          eval_every=_EVAL_EVERY.value, log_every=_LOG_EVERY.value,
          stop_after_step=_STOP_AFTER_STEP.value)
  except input_pipeline.DataError as error:
    raise SystemExit(f'Data error: {error}') from None
  except (checkpointing.CheckpointError, FloatingPointError) as error:
    raise SystemExit(str(error)) from None
  results.pop('state')
  if not _DATA.value:
    results['synthetic_data'] = record['synthetic_data']
  results['machine'] = machine.describe_machine()
  results['mesh_shape'] = mesh_shape
  results['processes'] = jax.process_count()
  if jax.process_index() == 0:
    print(results['bad_lines']['summary'])
    for split in ('validation', 'test'):
      if split in results:
        metrics = results[split]
        print(f'{split}: AUC {metrics["auc"]:.4f}, log loss '
              f'{metrics["log_loss"]:.4f} ({metrics["examples"]} examples)')
    if results['timing']:
      timing = results['timing']
      print(f'{timing["examples_per_second"]:.0f} examples/s over '
            f'{timing["steps"]} steps ({timing["data_wait_seconds"]:.2f} s '
            'waiting for data)')
    files.write_json(os.path.join(workdir, 'results.json'), results, indent=1)
    print(f'Results in {os.path.abspath(os.path.join(workdir, "results.json"))}')


if __name__ == '__main__':
  cli.run(main)
