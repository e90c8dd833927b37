"""Row-sharded training on device meshes gives the one-device result.

Runs on 8 CPU devices (conftest.py asks XLA for them), whatever the default
backend, so it also runs beside a GPU.
"""

import math
import os
import re
import shutil
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from examples.common import checkpointing
from examples.criteo import config as config_lib
from examples.criteo import synthetic
from examples.criteo import placement
from examples.criteo import train

NUM_DEVICES = 8


def cpu_devices(test: absltest.TestCase) -> list[jax.Device]:
  """The first 8 CPU devices, the first the default while `test` runs."""
  devices = jax.devices('cpu')
  if len(devices) < NUM_DEVICES:
    test.skipTest(
        f'needs {NUM_DEVICES} CPU devices, JAX has {len(devices)}: set '
        f'XLA_FLAGS=--xla_force_host_platform_device_count={NUM_DEVICES} '
        'before JAX starts (conftest.py does)')
  test.enter_context(jax.default_device(devices[0]))
  return devices[:NUM_DEVICES]


def tiny_config(**overrides) -> config_lib.Config:
  settings = dict(table_rows=(40,) * 26, embedding_dim=4, mlp_features=(8,),
                  batch_size=32, num_steps=4, learning_rate=0.5)
  settings.update(overrides)
  return config_lib.Config(**settings)


def write_data(directory: str, num_lines: int = 200) -> str:
  path = os.path.join(directory, 'train.txt')
  synthetic.write(path, num_lines, seed=1, model=synthetic.PlantedModel(
      0, synthetic.default_vocabulary_sizes(largest=200)))
  return path


def row_leaves(state, num_rows):
  """{path: leaf} of the state's arrays with a table row's axis first."""
  return {jax.tree_util.keystr(path): leaf
          for path, leaf in jax.tree_util.tree_leaves_with_path(state)
          if leaf.ndim and leaf.shape[0] == num_rows}


class MeshTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.devices = cpu_devices(self)
    directory = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, directory)
    self.data = train.Data(train=[write_data(directory)])

  def run_on(self, config, shape):
    mesh = placement.make_mesh(shape, self.devices[:int(np.prod(shape))])
    num_rows = placement.padded_rows(config.table_rows, mesh.size)
    declared = placement.Layout(mesh, num_rows).rows
    shardings = []

    def check_sharding(step, state):
      leaves = row_leaves(state, num_rows)
      shardings.append({path: leaf.sharding for path, leaf in leaves.items()})
      for path, leaf in leaves.items():
        self.assertTrue(leaf.sharding.is_equivalent_to(declared, leaf.ndim),
                        f'step {step}: {path} is {leaf.sharding}')

    results = train.train_and_evaluate(config, self.data, mesh,
                                       on_step=check_sharding, log_every=2)
    self.assertLen(shardings, config.num_steps)
    return results['state'], num_rows

  def test_a_checkpointer_with_another_log_every_is_refused(self):
    config = tiny_config()
    mesh = placement.make_mesh((1,), self.devices[:1])
    with tempfile.TemporaryDirectory() as workdir:
      with checkpointing.Checkpointer(
          workdir, train.checkpoint_record(config, log_every=5)) as saver:
        with self.assertRaisesRegex(ValueError, 'log_every=2, but the '
                                    "checkpointer's record says 5"):
          train.train_and_evaluate(config, self.data, mesh, checkpointer=saver,
                                   log_every=2)
        self.assertIsNone(saver.latest_step())

  def test_a_resume_on_another_device_count_needs_the_same_table(self):
    # 4 and 2 devices pad the table to 2048 rows, 3 devices to 3072: the
    # refusal said the checkpoint came from "different code".
    config = tiny_config(batch_size=48)
    with tempfile.TemporaryDirectory() as workdir:

      def run_on(num_devices, **kwargs):
        mesh = placement.make_mesh((num_devices,),
                                   self.devices[:num_devices])
        with checkpointing.Checkpointer(
            workdir, train.checkpoint_record(config, log_every=2)) as saver:
          return train.train_and_evaluate(config, self.data, mesh,
                                          checkpointer=saver, log_every=2,
                                          **kwargs)

      run_on(4, stop_after_step=2)
      with self.assertRaisesRegex(
          checkpointing.CheckpointError,
          r'written on 4 devices, and this run has 3: .* 2048 there and 3072 '
          r'here, .* Resume on 4 devices, or on another count that gives 2048 '
          r'rows \(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024\)'):
        run_on(3)
      self.assertEqual(
          [step for step, _ in run_on(2)['train_loss']], [2, 4])

  @parameterized.named_parameters(
      ('sparse_cf_sgd', dict(optimizer='cf_sgd', learning_rate=2.0,
                             dense_optimizer='adam',
                             dense_learning_rate=0.01), ('row_counts',)),
      ('dense_adam', dict(optimizer='adam', update='dense',
                          learning_rate=0.01), ('mu', 'nu')),
  )
  def test_meshes_give_the_one_device_result(self, overrides, row_state):
    config = tiny_config(**overrides)
    reference, num_rows = self.run_on(config, (1,))
    leaves = row_leaves(reference, num_rows)
    # The table and its optimizer's per-row arrays are all row-sharded.
    self.assertIn("[0]['tables']['embedding'].value", leaves)
    for name in row_state:
      self.assertTrue(any(name in path for path in leaves), leaves.keys())
    # Training moved the table and counted rows.
    self.assertGreater(float(np.abs(np.asarray(
        leaves["[0]['tables']['embedding'].value"])[:, -1]).max()), 0)
    counts = [np.asarray(v) for p, v in leaves.items() if 'row_counts' in p]
    for count in counts:
      self.assertEqual(int(count.sum()), 4 * 32 * 26)
    for shape in ((8,), (4, 2)):
      with self.subTest(mesh=shape):
        state, _ = self.run_on(config, shape)
        chex.assert_trees_all_close(jax.device_get(state),
                                    jax.device_get(reference),
                                    rtol=1e-4, atol=1e-6)


  @parameterized.parameters('cf_sgd', 'adam')
  def test_only_batch_sized_arrays_cross_devices(self, optimizer):
    config = tiny_config(optimizer=optimizer, table_rows=(65536,) * 26,
                         update='sparse' if optimizer == 'cf_sgd' else 'dense',
                         batch_size=64)
    trainer = train.Trainer(config, placement.make_mesh((4, 2),
                                                        self.devices))
    state = jax.tree.map(
        lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype,
                                                    sharding=sharding),
        trainer.abstract_state, trainer.state_shardings)
    batch = {
        'labels': jax.ShapeDtypeStruct((64,), jnp.float32),
        'dense': jax.ShapeDtypeStruct((64, 13), jnp.float32),
        'ids': jax.ShapeDtypeStruct((64, 26), jnp.int32),
    }
    hlo = trainer.train_step.lower(state, batch).compile().as_text()
    sizes = [
        math.prod(int(d) for d in dims.split(',') if d)
        for dims in re.findall(
            r'= \w+\[([\d,]*)\]\S* (?:all-gather|all-reduce|all-to-all|'
            r'collective-permute|reduce-scatter)', hlo)
    ]
    self.assertNotEmpty(sizes)  # The table is sharded: some do.
    # The largest is a batch's rows (64 × 26 × (d + 1)), 1/1024 of the table.
    self.assertLessEqual(max(sizes), 64 * 26 * 5)
    self.assertGreaterEqual(trainer.layout.num_rows * 5, 1024 * max(sizes))



class InitialisationMemoryTest(absltest.TestCase):

  def test_one_program_initialisation_needs_no_table_sized_temporaries(self):
    """Model and optimizers created in one jitted program, built in place.

    A jitted `init` that read the table (to place its counts like its rows)
    once made XLA keep several tables' worth of temporaries here.
    """
    mesh = placement.make_mesh((1,), jax.devices('cpu')[:1])
    config = tiny_config(table_rows=(1 << 12,) * 26, embedding_dim=16)
    num_rows = placement.padded_rows(config.table_rows, mesh.size)
    transformations = train.make_transformations(config)
    trainer = train.Trainer(config, mesh)
    create = jax.jit(
        lambda: nnx.state(train.build(
            config, train.make_model(config, num_rows), transformations)),
        out_shardings=trainer.state_shardings)
    memory = create.lower().compile().memory_analysis()
    table_bytes = num_rows * (config.embedding_dim + 1) * 4
    self.assertGreater(memory.output_size_in_bytes, table_bytes)
    self.assertLess(memory.temp_size_in_bytes, table_bytes // 4)


if __name__ == '__main__':
  absltest.main()
