"""Where a compiled program's time goes: its ops' times in a profiler trace.

`profile_ops(run, num_steps, hlo_text)` traces `run()` with `jax.profiler` and
adds up the time of each op of the compiled program (XLA's instruction names,
e.g. ``sort.11`` or ``loop_scatter_fusion``, with the JAX ops each computes,
from the HLO's metadata). On an accelerator the times are the device's own:
kernels on its streams, each tagged by XLA with its op and module. XLA's GPU
command buffers (CUDA graphs) must be off, or the trace holds one event per
command buffer instead of its kernels: on an H200 with JAX 0.11.2 a sparse
step showed as a single `command_buffer_1`. Call `turn_off_command_buffers()`
before JAX starts its backend; a trace of command buffers is an error.
On a CPU they are the host threads' op events, where control flow
(``while``, ``conditional``, ``call``) is left out: its events span the ops
inside it, which are counted themselves (on a device, an event named by a
loop is its own work, e.g. copying its condition to the host). Device time
that names no op of the program (argument transfers, other programs' kernels)
is kept apart, as unattributed. Times are busy time summed over streams and
devices, not wall time.
"""

import collections
import glob
import os
import re
import tempfile
from typing import Any, Callable, Iterable, NamedTuple, Optional

import jax

# XLA's flag that lists what runs as command buffers; empty: nothing does.
COMMAND_BUFFERS_OFF = '--xla_gpu_enable_command_buffer='
# Opcodes whose host events span the ops they run, which have events of their
# own.
CONTROL_FLOW = ('while', 'conditional', 'call')
# Device-plane lines that hold the ops: TPUs' and derived GPU timelines' "XLA
# Ops"; otherwise GPUs' stream lines ("Stream #13(Compute)"). Other device
# lines (XLA Modules, Steps, ...) span several ops.
_OPS_LINE = 'XLA Ops'
_STREAM_LINE = 'Stream'

_INSTRUCTION = re.compile(
    r'^\s*(?:ROOT )?%(\S+) = (.*?) ([a-z][a-z0-9-]*)\((.*)$', re.MULTILINE)
_LAYOUT = re.compile(r'\{[^{}]*\}')
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_MODULE = re.compile(r'^HloModule ([^\s,]+)', re.MULTILINE)


class Instruction(NamedTuple):
  opcode: str  # e.g. 'fusion', 'sort', 'while'.
  what: str  # The JAX op it computes (its metadata's op_name), or ''.
  # What it returns, without layouts, e.g. 'f32[768,128,101]': tells apart
  # ops that compute the same JAX op on different operands.
  result: str = ''


class OpTime(NamedTuple):
  name: str  # The instruction.
  ms_per_step: float
  what: str


class Profile(NamedTuple):
  ms_per_step: float  # The program's ops together.
  ops: list[OpTime]  # The costliest first.
  unattributed_ms_per_step: float  # Device time of no op of the program.
  source: str  # The planes the times came from, e.g. '/device:GPU:0'.


class Program(NamedTuple):
  """A compiled program as its HLO text names it."""
  module: str  # The HloModule's name, e.g. 'jit_step'; '' if not found.
  instructions: dict[str, Instruction]


class OpSeconds(NamedTuple):
  ops: dict[str, float]  # Seconds per op of the program.
  unattributed: float  # Seconds of device events that name no op of it.
  source: str


def parse_program(hlo_text: str) -> Program:
  """The module's name and each instruction: its opcode, what it computes."""
  module = _MODULE.search(hlo_text)
  found = {}
  for match in _INSTRUCTION.finditer(hlo_text):
    op_name = _OP_NAME.search(match.group(4))
    what = op_name.group(1).split('/body/')[-1] if op_name else ''
    # `fasgd_optax`'s sparse apply lowers to a one-branch conditional.
    found[match.group(1)] = Instruction(
        match.group(3),
        what.replace('cond/branch_0_fun/', 'fasgd_optax sparse update: '),
        _LAYOUT.sub('', match.group(2)))
  return Program(module.group(1) if module else '', found)


def _op_lines(plane) -> list[Any]:
  """The lines of a device plane whose events are ops (see _OPS_LINE)."""
  lines = list(plane.lines)
  for chosen in ([line for line in lines if line.name == _OPS_LINE],
                 [line for line in lines
                  if line.name.startswith(_STREAM_LINE)]):
    if chosen:
      return chosen
  return lines


def _op_of(event, line_name: str, module: str) -> Optional[str]:
  """The op of `module` that `event` times, or None."""
  stats = dict(event.stats)
  op = stats.get('hlo_op')
  if op is None and line_name == _OPS_LINE:
    op = event.name  # An "XLA Ops" line names its events by their op.
  if op is None or (module and stats.get('hlo_module', module) != module):
    return None
  # Kernels may carry a nested annotation, 'outer::inner': the op is last.
  return str(op).split('::')[-1]


def turn_off_command_buffers() -> None:
  """Makes XLA run GPU programs kernel by kernel, for a trace that shows them.

  Adds `COMMAND_BUFFERS_OFF` to XLA_FLAGS unless they set the flag already.
  XLA reads XLA_FLAGS when JAX starts a backend: call this before anything
  runs on JAX. Steps then launch each kernel themselves, so their wall time
  may grow a little; per-op times are the kernels' own.
  """
  xla_flags = os.environ.get('XLA_FLAGS', '')
  if 'xla_gpu_enable_command_buffer' not in xla_flags:
    os.environ['XLA_FLAGS'] = f'{xla_flags} {COMMAND_BUFFERS_OFF}'.strip()


def op_seconds(planes: Iterable[Any], program: Program, *,
               on_device: bool) -> OpSeconds:
  """Seconds per op of `program` over a trace's planes.

  Args:
    planes: a `jax.profiler.ProfileData`'s planes (anything with `.name` and
      `.lines`, whose lines have `.name` and `.events`, whose events have
      `.name`, `.duration_ns` and `.stats`, (key, value) pairs).
    program: the profiled program (`parse_program`).
    on_device: whether it ran on an accelerator, whose planes
      ('/device:...') must then hold its events; else the host's events that
      name an op count.

  Raises:
    RuntimeError: `on_device` and no device plane holds an event (e.g. the
      GPU tracer, CUPTI, is missing): host-side times would mislead; or no
      device event names an op of the program.
  """
  planes = list(planes)
  if on_device:
    chosen = [(plane, _op_lines(plane)) for plane in planes
              if plane.name.startswith('/device:')]
    chosen = [(plane, lines) for plane, lines in chosen
              if any(list(line.events) for line in lines)]
    if not chosen:
      raise RuntimeError(
          'The profiler recorded no device events (planes: '
          f'{", ".join(plane.name for plane in planes) or "none"}); on a GPU '
          'it needs CUPTI (the CUDA plugin\'s nvidia-cuda-cupti package).')
  else:
    chosen = [(plane, list(plane.lines)) for plane in planes
              if not plane.name.startswith('/device:')]
  nanoseconds = collections.Counter()
  unattributed = 0.0
  sources = []
  for plane, lines in chosen:
    before = sum(nanoseconds.values()) + unattributed
    for line in lines:
      for event in line.events:
        op = _op_of(event, line.name, program.module)
        if op is None:
          if on_device:
            unattributed += event.duration_ns
          continue  # On a host: an event that is not an op of the program.
        instruction = program.instructions.get(op)
        if (not on_device and instruction is not None and
            instruction.opcode in CONTROL_FLOW):
          continue
        nanoseconds[op] += event.duration_ns
    if sum(nanoseconds.values()) + unattributed > before:
      sources.append(plane.name)
  if on_device and any(op.startswith('command_buffer') for op in nanoseconds):
    raise RuntimeError(
        'The trace shows XLA command buffers, not their kernels: call '
        'profiling.turn_off_command_buffers() before JAX starts (XLA_FLAGS='
        f'{COMMAND_BUFFERS_OFF}).')
  if on_device and not nanoseconds:
    raise RuntimeError(
        f'No device event names an op of {program.module or "the program"} '
        f'({unattributed / 1e6:.3f} ms of device events name other ops or '
        'none).')
  return OpSeconds({op: value / 1e9 for op, value in nanoseconds.items()},
                   unattributed / 1e9, ', '.join(sources) or 'no op events')


def profile_ops(run: Callable[[], Any], num_steps: int, hlo_text: str,
                top: int = 12, on_device: Optional[bool] = None) -> Profile:
  """Traces `run()` (`num_steps` steps, synced at its end): the costliest ops.

  Args:
    run: runs the compiled program for `num_steps` steps and waits for them.
    num_steps: the steps one `run()` takes, to give times per step.
    hlo_text: the compiled program's HLO (`compiled.as_text()`), which names
      what each op computes.
    top: how many ops to list.
    on_device: whether the program runs on an accelerator; default: whether
      JAX's default backend is not the CPU.
  """
  if on_device is None:
    on_device = jax.default_backend() != 'cpu'
  program = parse_program(hlo_text)
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir):
      run()
    paths = glob.glob(os.path.join(trace_dir, '**', '*.xplane.pb'),
                      recursive=True)
    if not paths:
      raise RuntimeError(f'jax.profiler wrote no trace under {trace_dir}')
    profile = jax.profiler.ProfileData.from_file(paths[0])
    seconds = op_seconds(profile.planes, program, on_device=on_device)
  def what(name):
    instruction = program.instructions.get(name)
    if instruction is None:
      return ''
    return ' -> '.join(filter(None, (instruction.what, instruction.result)))

  ops = [OpTime(name, 1e3 * value / num_steps, what(name))
         for name, value in collections.Counter(seconds.ops).most_common(top)]
  return Profile(1e3 * sum(seconds.ops.values()) / num_steps, ops,
                 1e3 * seconds.unattributed / num_steps, seconds.source)
