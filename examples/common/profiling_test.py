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


def _op(name, nanoseconds, kernel=None, module='jit_step'):
  """An event of op `name` (a kernel named `kernel` where given)."""
  return _Event(kernel or name, nanoseconds, [('hlo_op', name),
                                              ('hlo_module', module)])


_PROGRAM = profiling.Program('jit_step', {
    'sort.1': profiling.Instruction('sort', 'jit(step)/sort'),
    'scatter_fusion': profiling.Instruction('fusion', 'jit(step)/scatter-add'),
    'while.3': profiling.Instruction('while', 'jit(step)/while'),
})


class OpSecondsTest(absltest.TestCase):

  def test_gpu_streams_count_and_the_host_and_spanning_lines_do_not(self):
    # A GPU trace as XLA's tracer writes it: kernels on stream lines named by
    # their hlo_op stat, host-side launches of the same ops on the host
    # plane, and lines whose events span several ops.
    # Transfers and other programs' kernels are device time of no op of
    # the program.
    planes = [
        _Plane('/host:CPU', [_Line('tf_pjrt_thread', [
            _op('sort.1', 5_000), _op('scatter_fusion', 9_000)])]),
        _Plane('/device:GPU:0', [
            _Line('Stream #13(Compute)', [
                _op('sort.1', 2_000, kernel='cub::DeviceRadixSortKernel'),
                _op('scatter_fusion', 500_000),
                _op('outer::sort.1', 3_000),
                _op('while.3', 4_000),
                _op('sort.1', 7_000, module='jit_other')]),
            _Line('Stream #20(MemcpyH2D)', [
                _Event('MemcpyH2D', 1_000, [])]),
            _Line('XLA Modules', [_Event('jit_step', 900_000, [])]),
            _Line('Steps', [_Event('0', 950_000, [])])]),
        _Plane('/device:GPU:1', [_Line('Stream #2(Compute)', [])]),
    ]
    seconds = profiling.op_seconds(planes, _PROGRAM, on_device=True)
    # On a device a loop's own event is its own work (its condition's copy
    # to the host), not a span around its body's kernels.
    self.assertEqual(seconds.ops, {'sort.1': 5e-6, 'scatter_fusion': 5e-4,
                                   'while.3': 4e-6})
    self.assertEqual(seconds.unattributed, 8e-6)
    self.assertEqual(seconds.source, '/device:GPU:0')

  def test_device_events_of_other_programs_only_are_an_error(self):
    planes = [_Plane('/device:GPU:0', [_Line('Stream #1(Compute)', [
        _op('sort.1', 5_000, module='jit_step.1')])])]
    with self.assertRaisesRegex(RuntimeError,
                                'No device event names an op of jit_step'):
      profiling.op_seconds(planes, _PROGRAM, on_device=True)

  def test_a_trace_of_command_buffers_is_an_error(self):
    # What a GPU trace holds while XLA runs a step as one CUDA graph.
    planes = [_Plane('/device:GPU:0', [_Line('Stream #1(Compute)', [
        _op('command_buffer_1', 64_000)])])]
    with self.assertRaisesRegex(RuntimeError, 'command buffers.*XLA_FLAGS='
                                '--xla_gpu_enable_command_buffer='):
      profiling.op_seconds(planes, _PROGRAM, on_device=True)

  def test_turning_command_buffers_off_keeps_other_flags(self):
    for before, after in (
        (None, '--xla_gpu_enable_command_buffer='),
        ('--xla_dump_to=/tmp/d',
         '--xla_dump_to=/tmp/d --xla_gpu_enable_command_buffer='),
        ('--xla_gpu_enable_command_buffer=FUSION',
         '--xla_gpu_enable_command_buffer=FUSION')):  # The caller's choice.
      with absltest.mock.patch.dict('os.environ', clear=False) as environ:
        environ.pop('XLA_FLAGS', None)
        if before is not None:
          environ['XLA_FLAGS'] = before
        profiling.turn_off_command_buffers()
        self.assertEqual(environ['XLA_FLAGS'], after)

  def test_an_accelerator_without_device_events_is_an_error(self):
    # Host-side launch times would pass for kernel times.
    planes = [_Plane('/host:CPU', [_Line('t', [_op('sort.1', 5_000)])]),
              _Plane('/device:GPU:0', [_Line('Stream #1(Compute)', [])])]
    with self.assertRaisesRegex(RuntimeError, 'no device events.*CUPTI'):
      profiling.op_seconds(planes, _PROGRAM, on_device=True)

  def test_an_xla_ops_line_is_preferred_to_streams(self):
    # Its events are named by their op, with or without an hlo_op stat.
    planes = [_Plane('/device:TPU:0', [
        _Line('XLA Ops', [_op('sort.1', 4_000),
                          _Event('scatter_fusion', 6_000, [])]),
        _Line('XLA Modules', [_Event('jit_step', 9_000, [])])])]
    self.assertEqual(
        profiling.op_seconds(planes, _PROGRAM, on_device=True).ops,
        {'sort.1': 4e-6, 'scatter_fusion': 6e-6})

  def test_cpu_counts_host_events_that_name_an_op_but_not_control_flow(self):
    planes = [
        _Plane('/host:metadata', []),
        _Plane('/host:CPU', [
            _Line('python', [_Event('$profiler.py trace', 80_000, [])]),
            _Line('tf_XLAPjRtCpuClient', [
                _op('while.3', 70_000), _op('sort.1', 30_000),
                _Event('end: sort.1', 100, []),
                _op('scatter_fusion', 40_000),
                _op('sort.1', 9_000, module='jit_other')])]),
    ]
    seconds = profiling.op_seconds(planes, _PROGRAM, on_device=False)
    self.assertEqual(seconds.ops, {'sort.1': 3e-5, 'scatter_fusion': 4e-5})
    self.assertEqual(seconds.unattributed, 0.0)
    self.assertEqual(seconds.source, '/host:CPU')


class ParseProgramTest(absltest.TestCase):

  def test_module_opcodes_and_what_each_computes(self):

    def loop(x):
      return jax.lax.fori_loop(0, 3, lambda i, y: jnp.sort(y) * 2.0, x)

    hlo = jax.jit(loop).lower(jnp.arange(8.0)).compile().as_text()
    program = profiling.parse_program(hlo)
    self.assertEqual(program.module, 'jit_loop')
    opcodes = {i.opcode for i in program.instructions.values()}
    self.assertIn('while', opcodes)
    self.assertIn('sort', opcodes)
    sorts = [i for i in program.instructions.values() if i.opcode == 'sort']
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
    program = profiling.parse_program(compiled.as_text()).instructions
    self.assertTrue(profile.ops)
    self.assertGreater(profile.ms_per_step, 0.0)
    self.assertAlmostEqual(
        sum(op.ms_per_step for op in profile.ops), profile.ms_per_step,
        delta=1e-9)
    # What each op computes comes from the HLO (an accelerator may lower
    # the sort to a library call, which keeps the sort's metadata).
    self.assertTrue(any('sort' in op.what for op in profile.ops),
                    profile.ops)
    if jax.default_backend() == 'cpu':
      # The loop's host event spans its body's: it is not counted again.
      self.assertFalse([op for op in profile.ops if op.name in program and
                        program[op.name].opcode in profiling.CONTROL_FLOW])
      self.assertEqual(profile.unattributed_ms_per_step, 0.0)


if __name__ == '__main__':
  absltest.main()
