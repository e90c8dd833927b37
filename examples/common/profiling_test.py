"""examples.common.profiling: per-op times from a jax.profiler trace."""

from typing import Any, NamedTuple

from absl.testing import absltest
import jax
import jax.numpy as jnp

from examples.common import profiling


class _Event(NamedTuple):
  name: str
  duration_ns: float
  stats: list[tuple[str, Any]]


class _Line(NamedTuple):
  name: str
  events: list[_Event]


class _Plane(NamedTuple):
  name: str
  lines: list[_Line]


def _op(name, nanoseconds, kernel=None):
  """An event of op `name` (a kernel named `kernel` where given)."""
  return _Event(kernel or name, nanoseconds, [('hlo_op', name),
                                              ('hlo_module', 'jit_step')])


_PROGRAM = {
    'sort.1': profiling.Instruction('sort', 'jit(step)/sort'),
    'scatter_fusion': profiling.Instruction('fusion', 'jit(step)/scatter-add'),
    'while.3': profiling.Instruction('while', 'jit(step)/while'),
}


class OpSecondsTest(absltest.TestCase):

  def test_gpu_streams_count_and_the_host_and_spanning_lines_do_not(self):
    # A GPU trace as XLA's tracer writes it: kernels on stream lines named by
    # their hlo_op stat, host-side launches of the same ops on the host
    # plane, and lines whose events span several ops.
    planes = [
        _Plane('/host:CPU', [_Line('tf_pjrt_thread', [
            _op('sort.1', 5_000), _op('scatter_fusion', 9_000)])]),
        _Plane('/device:GPU:0', [
            _Line('Stream #13(Compute)', [
                _op('sort.1', 2_000, kernel='cub::DeviceRadixSortKernel'),
                _op('scatter_fusion', 500_000),
                _op('sort.1', 3_000),
                _Event('Memcpy HtoD', 1_000, [])]),
            _Line('XLA Modules', [_Event('jit_step', 900_000, [])]),
            _Line('Steps', [_Event('0', 950_000, [])])]),
    ]
    seconds, source = profiling.op_seconds(planes, _PROGRAM)
    self.assertEqual(seconds, {'sort.1': 5e-6, 'scatter_fusion': 5e-4,
                               'Memcpy HtoD': 1e-6})
    self.assertEqual(source, '/device:GPU:0')

  def test_an_xla_ops_line_is_preferred_to_streams(self):
    planes = [_Plane('/device:TPU:0', [
        _Line('XLA Ops', [_op('sort.1', 4_000)]),
        _Line('XLA Modules', [_Event('jit_step', 9_000, [])])])]
    self.assertEqual(profiling.op_seconds(planes, _PROGRAM)[0],
                     {'sort.1': 4e-6})

  def test_cpu_counts_host_events_that_name_an_op_but_not_control_flow(self):
    planes = [
        _Plane('/host:metadata', []),
        _Plane('/host:CPU', [
            _Line('python', [_Event('$profiler.py trace', 80_000, [])]),
            _Line('tf_XLAPjRtCpuClient', [
                _op('while.3', 70_000), _op('sort.1', 30_000),
                _Event('end: sort.1', 100, []),
                _op('scatter_fusion', 40_000)])]),
        # A device plane without events does not hide the host's.
        _Plane('/device:GPU:0', [_Line('Stream #1', [])]),
    ]
    seconds, source = profiling.op_seconds(planes, _PROGRAM)
    self.assertEqual(seconds, {'sort.1': 3e-5, 'scatter_fusion': 4e-5})
    self.assertEqual(source, '/host:CPU')


class InstructionsTest(absltest.TestCase):

  def test_opcodes_and_what_each_computes(self):

    def loop(x):
      return jax.lax.fori_loop(0, 3, lambda i, y: jnp.sort(y) * 2.0, x)

    hlo = jax.jit(loop).lower(jnp.arange(8.0)).compile().as_text()
    program = profiling.instructions(hlo)
    opcodes = {instruction.opcode for instruction in program.values()}
    self.assertIn('while', opcodes)
    self.assertIn('sort', opcodes)
    sorts = [i for i in program.values() if i.opcode == 'sort']
    self.assertTrue(all('sort' in i.what for i in sorts), sorts)


class ProfileOpsTest(absltest.TestCase):

  def test_a_traced_loop_lists_its_ops_per_step_without_the_loop(self):
    x = jnp.linspace(1.0, 0.0, 4096)

    def loop(x):
      return jax.lax.fori_loop(0, 4, lambda i, y: jnp.sort(y) + 1.0, x)

    compiled = jax.jit(loop).lower(x).compile()
    compiled(x).block_until_ready()
    num_steps = 5

    def run():
      for _ in range(num_steps):
        result = compiled(x)
      result.block_until_ready()

    profile = profiling.profile_ops(run, num_steps, compiled.as_text(),
                                    top=50)
    program = profiling.instructions(compiled.as_text())
    self.assertTrue(profile.ops)
    self.assertGreater(profile.ms_per_step, 0.0)
    self.assertAlmostEqual(
        sum(op.ms_per_step for op in profile.ops), profile.ms_per_step,
        delta=1e-9)
    names = [op.name for op in profile.ops]
    self.assertTrue(any(program[name].opcode == 'sort' for name in names
                        if name in program), profile.ops)
    self.assertFalse([name for name in names if name in program and
                      program[name].opcode in profiling.CONTROL_FLOW])


if __name__ == '__main__':
  absltest.main()
