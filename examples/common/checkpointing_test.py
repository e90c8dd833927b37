"""Checkpoints that survive kills: resume, lock, corruption, sharding, chaos."""

import errno
import fcntl
import glob
import json
import logging as std_logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from unittest import mock

from absl import logging
from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

import fasgd_optax
from examples.common import checkpointing
from examples.common import locking
from examples.common import logs
from examples.common import machine

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
CONFIG = {'lr': 0.1}


def train_state(value, sharding=None):
  """CF-SGD state after one update (non-zero row counts).

  The table is too big (and random) for Orbax to store inline in its index:
  it gets a data file of its own, which the corruption tests damage.
  """
  params = {'table': jax.random.normal(jax.random.key(0), (64, 8)) + value,
            'bias': jnp.full((), value)}
  if sharding is not None:
    params['table'] = jax.device_put(params['table'], sharding)
    params['bias'] = jax.device_put(params['bias'], jax.sharding.NamedSharding(
        sharding.mesh, jax.sharding.PartitionSpec()))
  tx = fasgd_optax.cf_sgd(1.0, num_steps=10)
  opt_state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  _, opt_state = tx.update(grads, opt_state, params,
                           ids={'table': jnp.array([1, 1, 5])})
  return {'params': params, 'opt_state': opt_state}


def make_tempdir(test):
  directory = tempfile.mkdtemp()
  test.addCleanup(shutil.rmtree, directory, ignore_errors=True)
  return directory


def checkpoint_files(step_dir, subdir):
  """The data files of one item of a checkpoint, largest first."""
  files = [path for path in glob.glob(os.path.join(step_dir, subdir, '**'),
                                      recursive=True)
           if os.path.isfile(path) and os.path.basename(os.path.dirname(path))
           == 'd']
  return sorted(files, key=os.path.getsize, reverse=True)


class CheckpointerTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.directory = make_tempdir(self)

  def checkpointer(self, options=None, config=CONFIG):
    checkpointer = checkpointing.Checkpointer(self.directory, config, options)
    self.addCleanup(checkpointer.close)
    return checkpointer

  def save_steps(self, steps, options=None):
    with checkpointing.Checkpointer(self.directory, CONFIG, options) as ckpt:
      for step in steps:
        ckpt.save(step, train_state(float(step)), {'loss': step / 3},
                  force=True)

  def test_saves_every_interval_and_forced_steps(self):
    checkpointer = self.checkpointer(checkpointing.Options(
        save_interval_steps=3, max_to_keep=10))
    saved = [step for step in range(1, 8)
             if checkpointer.save(step, train_state(0.0), force=step == 7)]
    self.assertEqual(saved, [3, 6, 7])
    self.assertFalse(checkpointer.save(7, train_state(0.0), force=True))
    self.assertTrue(checkpointer.should_save(9))
    self.assertFalse(checkpointer.should_save(6))

  @parameterized.parameters(False, True)
  def test_restores_into_the_shardings_of_like_state(self, async_save):
    mesh = jax.sharding.Mesh(np.array(jax.devices('cpu')[:8]), ('rows',))
    rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('rows'))
    state = train_state(1.0, rows)
    counts = optax.tree.get(state['opt_state'], 'row_counts')['table']
    self.assertEqual(counts.sharding, rows)
    with checkpointing.Checkpointer(
        self.directory, CONFIG,
        checkpointing.Options(async_save=async_save)) as checkpointer:
      checkpointer.save(1, state, {'loss': 0.5})
    like = train_state(0.0, rows)
    restored = self.checkpointer().restore(like)
    self.assertEqual(restored.step, 1)
    self.assertEqual(restored.record['loss'], 0.5)
    chex.assert_trees_all_equal(restored.state, state)
    jax.tree.map(lambda x, y: self.assertEqual(x.sharding, y.sharding),
                 restored.state, like)
    restored_counts = optax.tree.get(restored.state['opt_state'],
                                     'row_counts')['table']
    np.testing.assert_array_equal(restored_counts[:8], [0, 2, 0, 0, 0, 1, 0, 0])

  def test_unfinished_save_is_removed_and_reported(self):
    self.save_steps([1])
    # Named as older Orbax versions name them (newer ones drop the time).
    unfinished = os.path.join(self.directory,
                              '2.orbax-checkpoint-tmp-1700000000')
    os.makedirs(os.path.join(unfinished, 'state'))
    checkpointer = self.checkpointer()
    with self.assertLogs('absl', 'INFO') as captured:
      restored = checkpointer.restore(train_state(0.0))
    self.assertEqual(restored.step, 1)
    self.assertIn(
        f'Resuming {self.directory} from step 1; discarded unfinished save '
        '2.orbax-checkpoint-tmp-1700000000', '\n'.join(captured.output))
    checkpointer.save(2, train_state(2.0))
    self.assertFalse(os.path.exists(unfinished))
    self.assertEqual(checkpointer.latest_step(), 2)

  def test_changed_config_is_refused(self):
    self.save_steps([1])
    with self.assertRaisesRegex(checkpointing.CheckpointError,
                                r'other settings \(lr: 0.1 -> 0.2\)'):
      self.checkpointer(config={'lr': 0.2}).restore(train_state(0.0))

  def test_changed_config_is_refused_before_any_restore(self):
    # check_config: nothing to refuse without checkpoints...
    with checkpointing.Checkpointer(self.directory, {'lr': 0.2}) as first:
      first.check_config()
    self.save_steps([1])
    # ...the newest record's settings are compared, no state is read.
    with checkpointing.Checkpointer(self.directory, CONFIG) as same:
      same.check_config()
    with self.assertRaisesRegex(checkpointing.CheckpointError,
                                r'other settings \(lr: 0.1 -> 0.2\)'):
      with checkpointing.Checkpointer(self.directory,
                                      {'lr': 0.2}) as other:
        other.check_config()

  def test_state_of_other_code_is_refused(self):
    self.save_steps([1])
    with self.assertRaisesRegex(checkpointing.CheckpointError,
                                r"\['params'\]\['table'\] float32\[64, 3\].*"
                                'written by different code'):
      self.checkpointer().restore(
          {'params': {'table': jnp.zeros((64, 3)), 'bias': jnp.zeros(())},
           'opt_state': train_state(0.0)['opt_state']})

  @parameterized.named_parameters(
      ('truncated_array_file', 'truncate', 'arrays cannot be read|checksum'),
      ('edited_array_file', 'edit', 'arrays cannot be read|checksum'),
      ('edited_record', 'record', 'record does not match its checksum'),
      ('deleted_arrays', 'delete', 'arrays cannot be read'),
  )
  def test_corrupt_checkpoint_is_refused_or_skipped(self, damage, reason):
    self.save_steps([1, 2])
    step_dir = os.path.join(self.directory, '2')
    if damage == 'truncate':
      path = checkpoint_files(step_dir, 'state')[0]
      with open(path, 'r+b') as f:
        f.truncate(os.path.getsize(path) // 2)
    elif damage == 'edit':
      path = checkpoint_files(step_dir, 'state')[0]
      with open(path, 'r+b') as f:
        data = bytearray(f.read())
        data[len(data) // 2] ^= 0xFF
        f.seek(0)
        f.write(data)
    elif damage == 'record':
      path = os.path.join(step_dir, 'record', 'metadata')
      with open(path) as f:
        record = json.load(f)
      record['loss'] = 0.0
      with open(path, 'w') as f:
        json.dump(record, f)
    else:
      shutil.rmtree(os.path.join(step_dir, 'state'))
    with self.assertRaisesRegex(
        checkpointing.CheckpointError,
        f'Checkpoint {step_dir} is corrupt: .*({reason}).*--checkpoint_fallback'):
      with checkpointing.Checkpointer(self.directory, CONFIG) as checkpointer:
        checkpointer.restore(train_state(0.0))

    checkpointer = self.checkpointer(checkpointing.Options(fallback=True))
    with self.assertLogs('absl', 'INFO') as captured:
      restored = checkpointer.restore(train_state(0.0))
    self.assertEqual(restored.step, 1)
    chex.assert_trees_all_equal(restored.state, train_state(1.0))
    moved = glob.glob(os.path.join(self.directory, 'corrupt-2-*'))
    self.assertLen(moved, 1)
    self.assertRegex('\n'.join(captured.output),
                     f'from step 1; step 2 was corrupt .* moved to {moved[0]}')
    self.assertTrue(checkpointer.save(2, restored.state))

  def test_a_failed_restores_abandoned_reads_print_nothing(self):
    # Orbax's other reads of the failed restore report as they end: through
    # sys.unraisablehook and asyncio's logger, up to hundreds of lines after
    # the run's one-line error. Those reports are dropped; others are not.
    reported = []
    self.enter_context(mock.patch.object(sys, 'unraisablehook',
                                         reported.append))
    asyncio_logger = std_logging.getLogger('asyncio')
    self.addCleanup(setattr, asyncio_logger, 'filters',
                    list(asyncio_logger.filters))
    self.save_steps([1])
    path = checkpoint_files(os.path.join(self.directory, '1'), 'state')[0]
    with open(path, 'r+b') as f:
      f.truncate(os.path.getsize(path) // 2)
    with self.assertRaises(checkpointing.CheckpointError):
      self.checkpointer().restore(train_state(0.0))

    scope = {}
    exec(compile('async def read(): pass', '/site/orbax/checkpoint/x.py',
                 'exec'), scope)
    unfinished_read = scope['read']()
    self.addCleanup(unfinished_read.close)
    reports = [(unfinished_read, Exception('reading array index')),
               (None, RuntimeError('Event loop is closed')),
               (None, RuntimeError('another problem'))]
    for source, error in reports:
      sys.unraisablehook(mock.Mock(object=source, exc_type=type(error),
                                   exc_value=error))
    self.assertEqual([str(info.exc_value) for info in reported],
                     ['another problem'])
    with self.assertLogs('asyncio', 'ERROR') as captured:
      asyncio_logger.error('Task exception was never retrieved\nfuture: '
                           '<Task exception=Exception("Encountered error '
                           'while reading array index: (slice(0, 4, 1),)")>')
      asyncio_logger.error('Task exception was never retrieved: another')
    self.assertEqual([record.getMessage() for record in captured.records],
                     ['Task exception was never retrieved: another'])

  def test_second_run_on_a_directory_is_refused(self):
    self.checkpointer()
    with self.assertRaisesRegex(
        checkpointing.CheckpointLockedError,
        f'{self.directory} is in use by process {os.getpid()} on host '
        f'{socket.gethostname()}'):
      checkpointing.Checkpointer(self.directory, CONFIG)

  def test_lock_of_a_killed_process_is_free(self):
    holder = subprocess.Popen(
        [sys.executable, '-c',
         'import sys, time\n'
         'from examples.common import locking\n'
         'lock = locking.DirectoryLock(sys.argv[1])\n'
         'print("locked", flush=True)\n'
         'time.sleep(600)\n', self.directory],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
        env=dict(os.environ, JAX_PLATFORMS='cpu'))
    self.addCleanup(holder.kill)
    self.assertEqual(holder.stdout.readline().strip(), 'locked')
    with self.assertRaisesRegex(locking.DirectoryLockedError,
                                f'in use by process {holder.pid} on host'):
      locking.DirectoryLock(self.directory)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with locking.DirectoryLock(self.directory):
      pass

  def test_lock_on_a_filesystem_without_flock(self):
    def no_flock(*args):
      del args
      raise OSError(errno.ENOLCK, 'No locks available')

    path = os.path.join(self.directory, locking.LOCK_FILE)
    sleeper = subprocess.Popen([sys.executable, '-c',
                                'import time; time.sleep(600)'])
    self.addCleanup(sleeper.kill)
    with mock.patch.object(fcntl, 'flock', no_flock):
      with locking.DirectoryLock(self.directory):
        self.assertTrue(os.path.exists(path))
        with self.assertRaisesRegex(locking.DirectoryLockedError,
                                    f'process {os.getpid()}'):
          locking.DirectoryLock(self.directory)
      self.assertFalse(os.path.exists(path))
      host = socket.gethostname()
      scope = machine.process_scope()
      cases = [
          ({'pid': sleeper.pid, 'host': host}, f'process {sleeper.pid}'),
          ({'pid': os.getpid(), 'host': 'elsewhere'}, 'on host elsewhere'),
          # This host's name, but another PID namespace: its dead-
          # looking process id cannot be judged here.
          ({'pid': 2**22 + 7, 'host': host, 'scope': f'{host}~other'},
           f'process {2**22 + 7} on host {host}'),
      ]
      for holder, message in cases:
        with open(path, 'w') as f:
          json.dump(holder, f)
        with self.assertRaisesRegex(locking.DirectoryLockedError, message):
          locking.DirectoryLock(self.directory)
      # A holder on this host whose process is gone (pid_start_ticks: the
      # pid now belongs to a process started later), and an empty file.
      for stale in ({'pid': sleeper.pid, 'host': host, 'pid_start_ticks': 1},
                    {'pid': 2**22 + 7, 'host': host, 'scope': scope},
                    None):
        with open(path, 'w') as f:
          f.write('' if stale is None else json.dumps(stale))
        with locking.DirectoryLock(self.directory):
          with open(path) as f:
            self.assertEqual(json.load(f)['pid'], os.getpid())


def run_tiny_training(workdir, *flags_, kill_after=None, env=None):
  """Runs examples.common.tiny_training; returns (returncode, output lines).

  Args:
    workdir: its --workdir.
    *flags_: more flags.
    kill_after: (steps, seconds): SIGKILL it `seconds` after it prints the
      line of its `steps`-th step after the one it started at.
    env: extra environment variables.
  """
  process = subprocess.Popen(
      [sys.executable, '-m', 'examples.common.tiny_training',
       f'--workdir={workdir}', '--compilation_cache_dir=', *flags_],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      env=dict(os.environ, JAX_PLATFORMS='cpu', **(env or {})))
  lines, kill_line = [], None
  for line in process.stdout:
    lines.append(line.rstrip('\n'))
    if kill_after is not None and lines[-1].startswith('start '):
      kill_line = f'step {int(lines[-1].split()[1]) + kill_after[0]}'
    if lines[-1] == kill_line:
      threading.Timer(kill_after[1], process.send_signal,
                      [signal.SIGKILL]).start()
  process.wait()
  return process.returncode, lines


def assert_same_results(test, path, reference_path):
  with np.load(path) as got, np.load(reference_path) as want:
    test.assertEqual(sorted(got), sorted(want))
    for key in want:
      # Bit for bit: the same bytes, NaN or not.
      test.assertEqual(got[key].tobytes(), want[key].tobytes(), key)


class ChaosTest(absltest.TestCase):

  def test_killed_at_random_moments_resumes_to_identical_results(self):
    tmp = make_tempdir(self)
    # 60 steps: the kills below stop the run well before its end.
    flags_ = ['--num_steps=60', '--save_interval_steps=3', '--count_calls']
    reference = os.path.join(tmp, 'reference.npz')
    returncode, lines = run_tiny_training(
        os.path.join(tmp, 'reference'), *flags_, f'--out={reference}')
    self.assertEqual(returncode, 0, '\n'.join(lines))

    def calls(lines, what):
      return [int(line.split()[-1]) for line in lines
              if line.startswith(what) and 'calls' in line]

    save_calls = min(calls(lines, 'save '))
    restore_calls = calls(lines, 'restore')[0]  # Updated by resumed runs.
    self.assertGreater(save_calls, 100)
    workdir = os.path.join(tmp, 'work')
    out = os.path.join(tmp, 'out.npz')
    rng = np.random.default_rng(13)
    starts, kinds, discarded = [1], [], 0
    unfinished = []
    for round_number in range(8):
      round_flags = list(flags_)
      if rng.random() < 0.5:
        round_flags.append('--async_checkpoints')
      kind = ('save', 'step', 'restore')[round_number % 3]
      kinds.append(kind)
      if kind == 'save':
        # Inside one of the run's first two saves, at a random call of an
        # Orbax function (writing, committing, deleting old ones, ...).
        kill = f'{rng.integers(1, 3)}:{rng.integers(1, save_calls)}'
        returncode, lines = run_tiny_training(
            workdir, *round_flags, f'--kill_in_save={kill}')
      elif kind == 'step':
        # A random moment a few steps after the run's start.
        returncode, lines = run_tiny_training(
            workdir, *round_flags,
            kill_after=(int(rng.integers(0, 3)), float(rng.uniform(0, 0.05))))
      else:
        # While opening the directory and restoring, at a random Orbax call
        # (up to as many as the last run's restore made).
        kill = rng.integers(1, restore_calls)
        returncode, lines = run_tiny_training(
            workdir, *round_flags, f'--kill_in_restore={kill}')
      self.assertEqual(returncode, -signal.SIGKILL, '\n'.join(lines))
      restore_calls = (calls(lines, 'restore') or [restore_calls])[0]
      start = [int(line.split()[1]) for line in lines
               if line.startswith('start ')]
      starts.append(start[0] if start else starts[-1])
      resumed = '\n'.join(line for line in lines if 'Resuming' in line)
      for name in unfinished:
        if start:  # The run got past its restore.
          self.assertIn(f'discarded unfinished save {name}', resumed)
          discarded += 1
      unfinished = [name for name in os.listdir(workdir)
                    if '.orbax-checkpoint-tmp' in name]
    returncode, lines = run_tiny_training(workdir, *flags_, f'--out={out}')
    self.assertEqual(returncode, 0, '\n'.join(lines))
    self.assertEqual(kinds.count('save'), 3)
    self.assertNotIn('start 1', lines)  # It did resume.
    assert_same_results(self, out, reference)
    self.assertGreater(discarded, 0)  # Some kills did cut a save short.
    self.assertEqual(starts, sorted(starts))  # No complete save was lost.


class MultiProcessTest(absltest.TestCase):

  def run_processes(self, workdir, *flags_, kill_after_step=None):
    """Runs tiny_training as 2 JAX processes of 4 CPU devices each."""
    with socket.socket() as s:
      s.bind(('localhost', 0))
      port = s.getsockname()[1]
    env = dict(os.environ, JAX_PLATFORMS='cpu',
               XLA_FLAGS='--xla_force_host_platform_device_count=4')
    processes = [
        subprocess.Popen(
            [sys.executable, '-m', 'examples.common.tiny_training',
             f'--workdir={workdir}', '--num_processes=2',
             f'--process_id={i}', f'--coordinator=localhost:{port}',
             '--compilation_cache_dir=', *flags_],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, env=env)
        for i in range(2)
    ]
    # A hung collective would otherwise wait for JAX's minutes-long timeouts.
    watchdog = threading.Timer(
        240, lambda: [process.kill() for process in processes])
    watchdog.start()
    self.addCleanup(watchdog.cancel)
    lines = []
    for line in processes[0].stdout:
      lines.append(line.rstrip('\n'))
      if line.startswith('start '):
        with open(os.path.join(workdir, locking.LOCK_FILE)) as f:
          self.assertEqual(json.load(f)['pid'], processes[0].pid)
      if kill_after_step is not None and line == f'step {kill_after_step}\n':
        for process in processes:
          process.send_signal(signal.SIGKILL)
    other_lines = processes[1].stdout.read().splitlines()
    for process in processes:
      process.wait()
    return [process.returncode for process in processes], lines, other_lines

  def test_two_processes_lock_save_and_resume(self):
    tmp = make_tempdir(self)
    workdir = os.path.join(tmp, 'work')
    flags_ = ['--num_steps=20', '--save_interval_steps=4']
    reference = os.path.join(tmp, 'reference.npz')
    returncode, lines = run_tiny_training(
        os.path.join(tmp, 'reference'), *flags_, f'--out={reference}')
    self.assertEqual(returncode, 0, '\n'.join(lines))

    # Process 0 holds the lock for the run; both processes hear it is taken.
    with locking.DirectoryLock(workdir):
      returncodes, lines, other_lines = self.run_processes(workdir, *flags_)
    self.assertEqual(returncodes, [1, 1])
    for output in (lines, other_lines):
      self.assertIn(f'is in use by process {os.getpid()}', '\n'.join(output))

    returncodes, lines, other_lines = self.run_processes(workdir, *flags_,
                                               kill_after_step=10)
    self.assertEqual(returncodes, [-signal.SIGKILL] * 2, '\n'.join(lines + other_lines))
    out = os.path.join(tmp, 'out.npz')
    returncodes, lines, other_lines = self.run_processes(
        workdir, *flags_, f'--out={out}')
    self.assertEqual(returncodes, [0, 0], '\n'.join(lines + other_lines))
    self.assertIn('start 9', lines)
    self.assertEqual(
        len([line for line in lines + other_lines if 'Resuming' in line]), 1)
    assert_same_results(self, out, reference)


class LogsTest(absltest.TestCase):

  def test_library_info_is_dropped_and_warnings_kept(self):
    def record(pathname, level):
      return std_logging.LogRecord('absl', level, pathname, 1, 'm', (), None)

    example = os.path.join(REPO, 'examples', 'movielens', 'train.py')
    library = os.path.dirname(checkpointing.ocp.__file__) + '/manager.py'
    only_examples = logs.ExamplesInfoOnly()
    self.assertTrue(only_examples.filter(record(example, std_logging.INFO)))
    self.assertFalse(only_examples.filter(record(library, std_logging.INFO)))
    self.assertTrue(only_examples.filter(record(library, std_logging.WARNING)))

    handler = logging.get_absl_handler()
    self.addCleanup(handler.removeFilter, logs._FILTER)
    self.addCleanup(logging.set_verbosity, logging.get_verbosity())
    logs.configure(verbose_libraries=False)
    self.assertIn(logs._FILTER, handler.filters)
    logs.configure(verbose_libraries=True)
    self.assertNotIn(logs._FILTER, handler.filters)


if __name__ == '__main__':
  absltest.main()
