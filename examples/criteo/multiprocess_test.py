"""Two processes × 4 CPU devices train as one process with 8, and resume.

Starts `main.py` as 2 JAX processes (`jax.distributed.initialize` on
localhost, CPU collectives over gloo), each with 4 CPU devices, on one global
(4, 2) mesh, twice: once through, and once stopped at step 3 (with a
checkpoint) and started again to resume to step 6. The final checkpoints,
restored here, must be equal, and hold the state of one process training on 8
CPU devices over the same batches (data_shards=2 in both).
"""

import os
import shutil
import socket
import subprocess
import sys
import tempfile

from absl.testing import absltest
import chex
import jax
import numpy as np

from examples.common import checkpointing
from examples.criteo import config as config_lib
from examples.criteo import sharding_test
from examples.criteo import placement
from examples.criteo import train

_REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
NUM_PROCESSES = 2
NUM_STEPS = 6
LEARNING_RATE = 0.3
FLAGS = ('--table_rows=40', '--embedding_dim=4', '--mlp_features=8',
         '--batch_size=32', f'--num_steps={NUM_STEPS}',
         f'--learning_rate={LEARNING_RATE}',
         '--optimizer=cf_sgd', '--mesh_shape=4,2', '--log_every=1',
         '--save_interval_steps=100')


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def run_processes(args, workdir, per_process=((), ()), check=True):
  """Runs main.py as NUM_PROCESSES processes; returns their outputs.

  `per_process` adds each process's own flags; with `check` False the
  outputs come back whatever the processes' exit statuses.
  """
  env = dict(os.environ, JAX_PLATFORMS='cpu', JAX_NUM_CPU_DEVICES='4',
             XLA_FLAGS='--xla_force_host_platform_device_count=4',
             PYTHONPATH=_REPOSITORY)
  port = free_port()
  processes = [
      subprocess.Popen(
          [sys.executable, '-m', 'examples.criteo.main', *args,
           f'--workdir={workdir}', f'--coordinator_address=localhost:{port}',
           f'--num_processes={NUM_PROCESSES}', f'--process_id={index}',
           '--compilation_cache_dir=', *per_process[index]],
          cwd=_REPOSITORY, env=env, stdout=subprocess.PIPE,
          stderr=subprocess.STDOUT, text=True)
      for index in range(NUM_PROCESSES)
  ]
  outputs = []
  for process in processes:
    try:
      output, _ = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
      for other in processes:
        other.kill()
      raise
    outputs.append(output)
  for index, (process, output) in enumerate(zip(processes, outputs)):
    if check and process.returncode:
      raise AssertionError(f'process {index} exited with {process.returncode}:'
                           f'\n{output[-3000:]}')
  return outputs


class MultiProcessTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.devices = sharding_test.cpu_devices(self)
    self.tmp = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self.tmp)

  def restore(self, workdir, config, like_state, data):
    # --log_every=1, as in FLAGS.
    with checkpointing.Checkpointer(
        os.path.join(workdir, 'checkpoints'),
        train.checkpoint_record(config, log_every=1, files=data)
    ) as checkpointer:
      restored = checkpointer.restore(like_state)
    self.assertEqual(restored.step, NUM_STEPS)
    return restored

  def test_processes_with_different_flags_are_refused(self):
    # Another --learning_rate on one process trained a silently mixed state;
    # another --save_interval_steps (a shared flag of examples.common.cli)
    # hung in the save the other process never joined.
    data = sharding_test.write_data(self.tmp, 100)
    outputs = run_processes(
        (*FLAGS, f'--data={data}'), os.path.join(self.tmp, 'run'),
        per_process=((), ('--learning_rate=0.1', '--eval_every=2',
                          '--save_interval_steps=2',
                          # Each process's own, not compared:
                          '--initialization_timeout=200',
                          '--heartbeat_timeout=50')),
        check=False)
    for output in outputs:
      self.assertIn('these differ between them: --eval_every, '
                    '--learning_rate, --save_interval_steps.', output)
      self.assertNotIn('step 1:', output)
    self.assertFalse(os.path.exists(os.path.join(self.tmp, 'run')))

  def test_a_process_whose_peer_never_joins_stops_at_its_timeout(self):
    # JAX's default is to wait 300 s; --initialization_timeout shortens it.
    env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=_REPOSITORY)
    completed = subprocess.run(
        [sys.executable, '-m', 'examples.criteo.main', *FLAGS,
         f'--workdir={os.path.join(self.tmp, "run")}',
         f'--coordinator_address=localhost:{free_port()}',
         f'--num_processes={NUM_PROCESSES}', '--process_id=1',
         '--compilation_cache_dir=', '--initialization_timeout=3'],
        cwd=_REPOSITORY, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, timeout=120, check=False)
    self.assertNotEqual(completed.returncode, 0)
    self.assertNotIn('Unknown command line flag', completed.stdout)
    self.assertNotIn('step 1:', completed.stdout)

  def test_two_processes_resume_exactly_and_match_one_process(self):
    data = sharding_test.write_data(self.tmp, 300)
    args = (*FLAGS, f'--data={data}')
    uninterrupted = os.path.join(self.tmp, 'uninterrupted')
    run_processes(args, uninterrupted)
    resumed = os.path.join(self.tmp, 'resumed')
    first = run_processes((*args, '--stop_after_step=3'), resumed)
    self.assertIn('step 3: train loss', first[0])
    self.assertNotIn('step 4:', first[0])
    second = run_processes(args, resumed)
    self.assertNotIn('step 3:', second[0])
    self.assertIn(f'step {NUM_STEPS}: train loss', second[0])

    config = config_lib.Config(
        table_rows=(40,) * 26, embedding_dim=4, mlp_features=(8,),
        batch_size=32, num_steps=NUM_STEPS, learning_rate=LEARNING_RATE,
        dense_optimizer='adam', dense_learning_rate=1e-3,
        data_shards=NUM_PROCESSES)
    mesh = placement.make_mesh((4, 2), self.devices)
    files = train.Data(train=[data])
    expected = train.train_and_evaluate(config, files, mesh)
    restored = self.restore(resumed, config, expected['state'], files)
    # Both read the same 2 data shards: the same lines of every batch.
    self.assertEqual(restored.record['positions'],
                     [[0, 0, 32 * NUM_STEPS - 1], [0, 0, 32 * NUM_STEPS]])
    state, uninterrupted_state, reference = jax.device_get((
        restored.state,
        self.restore(uninterrupted, config, expected['state'], files).state,
        expected['state']))
    # Resuming on 2 processes is exact.
    chex.assert_trees_all_equal(state, uninterrupted_state)
    # 2 processes compute what 1 does, up to the order of float sums.
    counts = train.counts(state)
    self.assertNotEmpty(counts)
    for path, count in train.counts(reference).items():
      np.testing.assert_array_equal(counts[path], count, err_msg=path)
    chex.assert_trees_all_close(state, reference, rtol=1e-5, atol=1e-6)
    # The table and its counts come back row-sharded as declared.
    num_rows = placement.padded_rows(config.table_rows, mesh.size)
    rows = placement.Layout(mesh, num_rows).rows
    leaves = sharding_test.row_leaves(restored.state, num_rows)
    self.assertLen(leaves, 2)
    for leaf in leaves.values():
      self.assertTrue(leaf.sharding.is_equivalent_to(rows, leaf.ndim))


if __name__ == '__main__':
  absltest.main()
