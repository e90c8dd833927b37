"""Tests for the examples' persistent compilation cache."""

import json
import os
import subprocess
import sys
import tempfile
import textwrap

from absl.testing import absltest
import jax

from examples.common import compilation_cache

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))

# Compiles one program in a fresh process with the cache in argv[1]; prints
# its result and the cache events JAX reported.
_PROGRAM = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp
    from examples.common import compilation_cache
    events = []
    jax.monitoring.register_event_listener(
        lambda event, **kwargs: events.append(event))
    compilation_cache.enable(sys.argv[1], min_compile_seconds=0.0)

    @jax.jit
    def f(x):
      return jax.lax.fori_loop(0, 10, lambda i, y: jnp.sin(y) * 1.5 + i, x)

    value = f(jnp.linspace(0.0, 1.0, 16)).tolist()
    print(json.dumps({'value': value, 'events': [
        e for e in events if 'compilation_cache' in e]}))
""")


def _run(cache_dir):
  completed = subprocess.run(
      [sys.executable, '-c', _PROGRAM, cache_dir], cwd=REPO,
      env=dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=REPO),
      capture_output=True, text=True, timeout=300, check=True)
  return json.loads(completed.stdout.strip().splitlines()[-1])


class CompilationCacheTest(absltest.TestCase):

  def test_a_second_process_loads_the_program_instead_of_compiling(self):
    cache_dir = os.path.join(tempfile.mkdtemp(), 'nested', 'cache')
    first = _run(cache_dir)
    # One folder for this runtime and CPU, holding the entries.
    (runtime,) = os.listdir(cache_dir)
    self.assertEqual(runtime, compilation_cache.runtime_fingerprint())
    self.assertIn(f'jax-{jax.__version__}_', runtime)
    entries = sorted(os.listdir(os.path.join(cache_dir, runtime)))
    self.assertNotEmpty(entries)
    self.assertIn('/jax/compilation_cache/cache_misses', first['events'])
    self.assertNotIn('/jax/compilation_cache/cache_hits', first['events'])
    second = _run(cache_dir)
    self.assertIn('/jax/compilation_cache/cache_hits', second['events'])
    self.assertEqual(sorted(os.listdir(os.path.join(cache_dir, runtime))),
                     entries)
    self.assertEqual(second['value'], first['value'])

  def test_a_truncated_entry_is_compiled_again(self):
    # What a kill in the middle of JAX's write leaves behind.
    cache_dir = tempfile.mkdtemp()
    first = _run(cache_dir)
    folder = os.path.join(cache_dir, compilation_cache.runtime_fingerprint())
    entries = [os.path.join(folder, name) for name in os.listdir(folder)]
    for path in entries:
      with open(path, 'rb') as f:
        data = f.read()
      with open(path, 'wb') as f:
        f.write(data[:len(data) // 2])
    second = _run(cache_dir)
    self.assertEqual(second['value'], first['value'])
    self.assertNotIn('/jax/compilation_cache/cache_hits', second['events'])

  def test_an_empty_entry_is_removed_and_written_again(self):
    # What a kill right after JAX opened an entry leaves: JAX would warn at
    # every run and never write the entry again.
    cache_dir = tempfile.mkdtemp()
    first = _run(cache_dir)
    folder = os.path.join(cache_dir, compilation_cache.runtime_fingerprint())
    sizes = {name: os.path.getsize(os.path.join(folder, name))
             for name in os.listdir(folder)}
    for name in sizes:
      open(os.path.join(folder, name), 'wb').close()
    lock = os.path.join(folder, '.lockfile')  # JAX's, empty by design.
    open(lock, 'wb').close()
    second = _run(cache_dir)
    self.assertTrue(os.path.exists(lock))
    os.remove(lock)
    self.assertEqual(second['value'], first['value'])
    # Written again, whole.
    self.assertCountEqual(os.listdir(folder), sizes)
    for name in sizes:
      self.assertGreater(os.path.getsize(os.path.join(folder, name)), 0)
    third = _run(cache_dir)
    self.assertIn('/jax/compilation_cache/cache_hits', third['events'])

  def test_empty_directory_leaves_the_cache_off(self):
    result = _run('')
    self.assertNotIn('/jax/compilation_cache/cache_hits', result['events'])
    self.assertNotIn('/jax/compilation_cache/cache_misses', result['events'])

  def test_a_directory_that_cannot_be_made_is_named(self):
    blocker = os.path.join(tempfile.mkdtemp(), 'file')
    with open(blocker, 'w') as f:
      f.write('not a directory')
    with self.assertRaisesRegex(OSError, 'compilation cache directory.*file'):
      compilation_cache.enable(os.path.join(blocker, 'cache'))

  def test_negative_threshold_is_refused(self):
    with self.assertRaisesRegex(ValueError, 'min_compile_seconds'):
      compilation_cache.enable('', min_compile_seconds=-1.0)


if __name__ == '__main__':
  absltest.main()
