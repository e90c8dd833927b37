"""A tiny step-based training run that checkpoints, for the checkpointing tests.

CF-SGD on a row-sharded embedding table (rows over the first 8 CPU devices)
with a linear readout; each step's batch is a function of (seed, step), so a
resumed run must end exactly where an uninterrupted one does. It prints a line
per step and per save, saves every --save_interval_steps (and the last step),
and writes the final state and every step's loss to --out:

  python -m examples.common.tiny_training --workdir=/tmp/tiny --out=/tmp/tiny.npz

checkpointing_test.py kills it at random moments (--kill_in_save and
--kill_in_restore pick a moment inside a save or a restore), reruns it, and
compares --out with an uninterrupted run's.
With --num_processes=2 --process_id=0|1 --coordinator=localhost:PORT it runs as
one of the processes of a multi-process JAX run (the test gives each 4 CPU
devices through XLA_FLAGS).
"""

import contextlib
import functools
import os
import signal
import sys
import threading

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

import fasgd_optax
from examples.common import checkpointing
from examples.common import cli

_WORKDIR = flags.DEFINE_string('workdir', None, 'Checkpoint directory.')
_OUT = flags.DEFINE_string('out', None, 'Final state and losses (.npz).')
_NUM_STEPS = flags.DEFINE_integer('num_steps', 30, 'Training steps.')
_ROWS = flags.DEFINE_integer('rows', 64, 'Embedding rows (a multiple of 8).')
_SEED = flags.DEFINE_integer('seed', 0, 'Initialisation and data seed.')
_KILL_IN_SAVE = flags.DEFINE_string(
    'kill_in_save', None,
    'SAVE:CALLS: SIGKILL this process at the CALLS-th call of an Orbax '
    'function during its SAVE-th save (1-based; saves of this process).')
_KILL_IN_RESTORE = flags.DEFINE_integer(
    'kill_in_restore', None,
    'SIGKILL this process at this call of an Orbax function while it opens '
    'the checkpoint directory and restores.')
_COUNT_CALLS = flags.DEFINE_bool(
    'count_calls', False, 'Print the Orbax calls of the restore and saves.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', 1,
                                      'JAX processes of the run.')
_PROCESS_ID = flags.DEFINE_integer('process_id', 0, 'This process\'s index.')
_COORDINATOR = flags.DEFINE_string('coordinator', None,
                                   'host:port of process 0 (multi-process).')
_SAVE_INTERVAL_STEPS = cli.define_save_interval_steps(3)
_DIM = 8
_BATCH = 32


def _batch(step):
  rng = np.random.default_rng([_SEED.value, step])
  ids = (rng.zipf(1.3, _BATCH) - 1) % _ROWS.value
  return ids.astype(np.int32), np.sin(ids).astype(np.float32)


def _print(*args):
  if jax.process_index() == 0:
    print(*args, flush=True)


def _kill():
  os.kill(os.getpid(), signal.SIGKILL)


class _OrbaxCallCounter:
  """Counts calls of Orbax functions on every thread while in the block.

  With `kill_at`, SIGKILLs the process at that call, or at the end of the
  block if it makes fewer calls: either way, inside what the block does.
  """

  def __init__(self, kill_at=None):
    self.calls = 0
    self.kill_at = kill_at

  def __call__(self, frame, event, arg):
    del arg
    if event == 'call' and '/orbax/' in frame.f_code.co_filename:
      self.calls += 1
      if self.kill_at is not None and self.calls >= self.kill_at:
        _kill()

  def __enter__(self):
    sys.setprofile(self)
    threading.setprofile(self)
    return self

  def __exit__(self, exc_type, *exc_info):
    sys.setprofile(None)
    threading.setprofile(None)
    if self.kill_at is not None and exc_type is None:
      _kill()


def main(argv):
  del argv
  cli.configure()
  if _NUM_PROCESSES.value > 1:
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value,
                               _PROCESS_ID.value)
  mesh = jax.sharding.Mesh(np.array(jax.devices('cpu')[:8]), ('rows',))
  rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('rows'))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  key = jax.random.key(_SEED.value)
  params = {
      'embed': jax.jit(
          lambda: 0.1 * jax.random.normal(key, (_ROWS.value, _DIM)),
          out_shardings=rows)(),
      'w': jax.device_put(jnp.ones(_DIM) / _DIM, replicated),
  }
  tx = fasgd_optax.cf_sgd(1.0, num_steps=_NUM_STEPS.value)
  # Eager init places the counts like the table's rows; a jitted one on an
  # Auto mesh would leave them where XLA puts constants (one device).
  state = {'params': params, 'opt_state': tx.init(params)}

  # Explicit shardings: the state keeps its own, inputs and loss replicated
  # (so every process can read the loss).
  state_shardings = jax.tree.map(lambda x: x.sharding, state)

  @functools.partial(
      jax.jit, in_shardings=(state_shardings, replicated, replicated),
      out_shardings=(state_shardings, replicated))
  def train_step(state, ids, targets):
    def loss_fn(params):
      predictions = params['embed'][ids] @ params['w']
      return jnp.mean((predictions - targets) ** 2)
    loss, grads = jax.value_and_grad(loss_fn)(state['params'])
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'],
                                   ids={'embed': ids})
    params = jax.tree.map(jnp.add, state['params'], updates)
    return {'params': params, 'opt_state': opt_state}, loss

  config = {'num_steps': _NUM_STEPS.value, 'rows': _ROWS.value,
            'seed': _SEED.value}
  options = cli.checkpoint_options()
  kill_save, kill_calls = None, None
  if _KILL_IN_SAVE.value:
    kill_save, kill_calls = map(int, _KILL_IN_SAVE.value.split(':'))
  counter = _OrbaxCallCounter(_KILL_IN_RESTORE.value)
  with counter if (_KILL_IN_RESTORE.value or _COUNT_CALLS.value) else (
      contextlib.nullcontext()):
    checkpointer = checkpointing.Checkpointer(_WORKDIR.value, config, options)
    try:
      restored = checkpointer.restore(state)
    except BaseException:
      checkpointer.close()
      raise
  if _COUNT_CALLS.value:
    _print(f'restore calls {counter.calls}')
  try:
    losses, first = [], 1
    if restored is not None:
      state, losses, first = (restored.state, restored.record['losses'],
                              restored.step + 1)
    _print(f'start {first}')
    saves = 0
    for step in range(first, _NUM_STEPS.value + 1):
      state, loss = train_step(state, *_batch(step))
      losses.append(float(loss))
      _print(f'step {step}')
      last = step == _NUM_STEPS.value
      if not (checkpointer.should_save(step) or last):
        continue
      saves += 1
      counter = contextlib.nullcontext()
      if saves == kill_save or _COUNT_CALLS.value:
        counter = _OrbaxCallCounter(kill_calls if saves == kill_save else None)
      with counter:
        checkpointer.save(step, state, {'losses': losses}, force=last)
        if isinstance(counter, _OrbaxCallCounter):  # Async writes count too.
          checkpointer.wait_until_finished()
      if _COUNT_CALLS.value:
        _print(f'save {step} calls {counter.calls}')
  finally:
    checkpointer.close()
  if _OUT.value:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    leaves = [np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
              for leaf in jax.tree.leaves(state)]
    if jax.process_index() == 0:
      np.savez(_OUT.value + '.partial.npz', losses=np.array(losses),
               **{f'leaf{i:02d}': leaf for i, leaf in enumerate(leaves)})
      os.replace(_OUT.value + '.partial.npz', _OUT.value)
  _print('done')


if __name__ == '__main__':
  flags.mark_flag_as_required('workdir')
  app.run(main)
