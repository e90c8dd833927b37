"""The 8 CPU devices multi-device tests run on, whatever the default backend.

`conftest.py` asks for 8 host devices before JAX starts. They exist beside a
GPU or TPU too, where `jax.devices()` is the accelerator (often one chip), so
multi-device tests take their devices from here and never from the default
backend, and place their inputs on them: `use(self)` in `setUp` makes the first
CPU device the default one for the test, so the arrays it builds and the
single-device reference runs it compares against live beside the mesh.
"""

import unittest

import jax

NUM_DEVICES = 8


def get(count: int = NUM_DEVICES) -> list[jax.Device]:
  """The first `count` CPU devices; skips the test if there are fewer."""
  devices = jax.devices('cpu')
  if len(devices) < count:
    raise unittest.SkipTest(
        f'needs {count} CPU devices and JAX has {len(devices)}: set '
        f'XLA_FLAGS=--xla_force_host_platform_device_count={count} (or '
        f'JAX_NUM_CPU_DEVICES={count}) before JAX starts, as conftest.py does')
  return devices[:count]


def use(test: unittest.TestCase, count: int = NUM_DEVICES) -> list[jax.Device]:
  """`get(count)`, with the first of them the default device while `test` runs.

  Args:
    test: an `absltest.TestCase` (it needs `enter_context`), in its `setUp`.
    count: how many CPU devices the test needs.

  Returns:
    The devices, for `pmap(..., devices=...)` and `Mesh(np.array(...), ...)`.
  """
  devices = get(count)
  test.enter_context(jax.default_device(devices[0]))
  return devices
