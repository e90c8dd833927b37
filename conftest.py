"""Test setup shared by tests/ and examples/, done before any test starts JAX.

XLA reads XLA_FLAGS, and JAX its JAX_* variables, once, when JAX first starts
a backend, so this must run before any test module uses JAX.

1. Eight fake CPU devices, for the multi-device tests. They exist beside a GPU
   or TPU too; those tests take them from `tests/cpu_devices.py`, never from
   the default backend. This is XLA's flag, which JAX reads whenever its
   `jax_num_cpu_devices` option is unset. That option (JAX_NUM_CPU_DEVICES)
   is left alone: it would win over XLA_FLAGS in every subprocess a test
   starts, and some tests start JAX processes with their own device count.
2. Deterministic GPU kernels (`--xla_gpu_exclude_nondeterministic_ops=true`).
   The exact-resume tests of the examples compare a resumed run with an
   uninterrupted one bit for bit. On a GPU, scatter-adds (atomics) and
   autotuned kernels round differently from run to run, and those tests
   differed by one ulp on an H200 (7.45e-09 on `params/bias`). With this
   flag XLA uses deterministic scatters, matrix products and convolutions,
   and its autotuner takes the first working kernel rather than the fastest
   measured one, so every compilation of a program picks the same kernels.
   CPUs and TPUs ignore it. Tests keep their exact comparisons.
   Alone, the flag turns every scatter-add whose indices may repeat (every
   embedding gradient) into a while loop of one update per index, which the
   GPU runs serially; `--xla_gpu_enable_scatter_determinism_expander=true`
   (off by default in XLA) makes them sort and sum instead, deterministic
   and fast. Both are added where JAX starts with both.
   XLA aborts the process on a flag it does not know ("Unknown flag in
   XLA_FLAGS"), and XLA renames flags now and then, so the flags are added only
   after a throwaway Python process has started JAX with it. The first pytest
   process checks once; pytest-xdist's workers inherit its environment.
3. Full float32 matrix products (JAX_DEFAULT_MATMUL_PRECISION=highest, unless
   set). By default JAX computes float32 products in TF32 on recent NVIDIA
   GPUs and in bfloat16 on TPUs, about 3 significant digits, and the tests
   compare models' outputs and gradients with NumPy references at float32
   tolerances. The library's own products (the 'reduce' duplicates design)
   ask for full precision themselves; this only makes the tests' models and
   references agree on every backend.
"""

import os
import subprocess
import sys

_NUM_CPU_DEVICES = 8
_CPU_DEVICES_FLAG = (
    f'--xla_force_host_platform_device_count={_NUM_CPU_DEVICES}')
_DETERMINISM_FLAG = '--xla_gpu_exclude_nondeterministic_ops=true'
_SCATTER_EXPANDER_FLAG = '--xla_gpu_enable_scatter_determinism_expander=true'
# Set once the determinism flag has been tried, so workers do not try again.
_CHECKED = 'FASGD_TEST_XLA_FLAGS_CHECKED'

_rejected_flag_message = None


def _with_flag(flag: str) -> str:
  return (os.environ.get('XLA_FLAGS', '') + ' ' + flag).strip()


def _jax_starts_with(xla_flags: str) -> tuple[bool, str]:
  """Whether JAX starts every backend with these XLA_FLAGS, and its stderr."""
  try:
    completed = subprocess.run(
        [sys.executable, '-c', 'import jax; jax.devices()'],
        env=dict(os.environ, XLA_FLAGS=xla_flags), capture_output=True,
        text=True, timeout=300, check=False)
  except subprocess.TimeoutExpired:
    return False, 'JAX did not start within 300 s'
  return completed.returncode == 0, completed.stderr.strip()[-300:]


if 'xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS',
                                                                ''):
  os.environ['XLA_FLAGS'] = _with_flag(_CPU_DEVICES_FLAG)

os.environ.setdefault('JAX_DEFAULT_MATMUL_PRECISION', 'highest')

if _CHECKED not in os.environ:
  os.environ[_CHECKED] = '1'
  if 'xla_gpu_exclude_nondeterministic_ops' not in os.environ['XLA_FLAGS']:
    _flags = f'{_DETERMINISM_FLAG} {_SCATTER_EXPANDER_FLAG}'
    if 'xla_gpu_enable_scatter_determinism_expander' in os.environ['XLA_FLAGS']:
      _flags = _DETERMINISM_FLAG  # The user's choice stands.
    _accepted, _stderr = _jax_starts_with(_with_flag(_flags))
    if not _accepted and _flags != _DETERMINISM_FLAG:
      _flags = _DETERMINISM_FLAG  # An XLA without the expander's flag.
      _accepted, _stderr = _jax_starts_with(_with_flag(_flags))
    if _accepted:
      os.environ['XLA_FLAGS'] = _with_flag(_flags)
    else:
      _rejected_flag_message = (
          f'conftest.py: JAX did not start with XLA_FLAGS {_DETERMINISM_FLAG} '
          f'({_stderr}); running without it, so exact-resume tests may differ '
          'by rounding on a GPU.')


def pytest_terminal_summary(terminalreporter):
  if _rejected_flag_message:
    terminalreporter.write_line(_rejected_flag_message, yellow=True)
