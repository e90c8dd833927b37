"""Where a compiled program's time goes: its ops' times in a profiler trace.

`profile_ops(run, num_steps, hlo_text)` traces `run()` with `jax.profiler` and
adds up the time of each op of the compiled program (XLA's instruction names,
e.g. ``sort.11`` or ``loop_scatter_fusion``, with the JAX ops each computes,
from the HLO's metadata). On an accelerator the times are the device's own
(kernels on its streams); on a CPU, the host threads' op events. Control flow
(``while``, ``conditional``, ``call``) is left out: the ops inside it are
counted themselves.
"""

import collections
import glob
import os
import re
import tempfile
from typing import Any, Callable, Iterable, NamedTuple

import jax

# Opcodes whose events span the ops they run, which have events of their own.
CONTROL_FLOW = ('while', 'conditional', 'call')
# Device-plane lines that hold the ops: TPUs' and derived GPU timelines' "XLA
# Ops"; otherwise GPUs' stream lines ("Stream #13(Compute)"). Other device
# lines (XLA Modules, Steps, ...) span several ops.
_OPS_LINE = 'XLA Ops'
_STREAM_LINE = 'Stream'

_INSTRUCTION = re.compile(
    r'^\s*(?:ROOT )?%(\S+) = .*? ([a-z][a-z0-9-]*)\((.*)$', re.MULTILINE)
_OP_NAME = re.compile(r'op_name="([^"]*)"')


class Instruction(NamedTuple):
  opcode: str  # e.g. 'fusion', 'sort', 'while'.
  what: str  # The JAX op it computes (its metadata's op_name), or ''.


class OpTime(NamedTuple):
  name: str  # The instruction, or the kernel where no instruction is named.
  ms_per_step: float
  what: str


class Profile(NamedTuple):
  ms_per_step: float  # All ops together.
  ops: list[OpTime]  # The costliest first.
  source: str  # The planes the times came from, e.g. '/device:GPU:0'.


def instructions(hlo_text: str) -> dict[str, Instruction]:
  """Each instruction of the HLO text: its opcode and what it computes."""
  found = {}
  for match in _INSTRUCTION.finditer(hlo_text):
    op_name = _OP_NAME.search(match.group(3))
    what = op_name.group(1).split('/body/')[-1] if op_name else ''
    # `fasgd_optax`'s sparse apply lowers to a one-branch conditional.
    found[match.group(1)] = Instruction(match.group(2), what.replace(
        'cond/branch_0_fun/', 'fasgd_optax sparse update: '))
  return found


def _op_lines(plane) -> list[Any]:
  """The lines of a device plane whose events are ops (see _OPS_LINE)."""
  lines = list(plane.lines)
  for chosen in ([line for line in lines if line.name == _OPS_LINE],
                 [line for line in lines
                  if line.name.startswith(_STREAM_LINE)]):
    if chosen:
      return chosen
  return lines


def op_seconds(planes: Iterable[Any],
               program: dict[str, Instruction]) -> tuple[dict[str, float],
                                                          str]:
  """Seconds per op over a trace's planes, and which planes they came from.

  Args:
    planes: a `jax.profiler.ProfileData`'s planes (anything with `.name` and
      `.lines`, whose lines have `.name` and `.events`, whose events have
      `.name`, `.duration_ns` and `.stats`, (key, value) pairs).
    program: the profiled program's `instructions`.

  Device planes ('/device:...') count where they hold events, kernels named
  by their `hlo_op` stat (or by their own name where it has none); else the
  host's events that name an `hlo_op`.
  """
  planes = list(planes)
  device = [(plane, _op_lines(plane)) for plane in planes
            if plane.name.startswith('/device:')]
  device = [(plane, lines) for plane, lines in device
            if any(list(line.events) for line in lines)]
  host = [(plane, list(plane.lines)) for plane in planes
          if not plane.name.startswith('/device:')]
  chosen = device or host
  nanoseconds = collections.Counter()
  sources = []
  for plane, lines in chosen:
    before = sum(nanoseconds.values())
    for line in lines:
      for event in line.events:
        op = dict(event.stats).get('hlo_op')
        if op is None and not device:
          continue  # A host event that is not an op of the program.
        name = op if op is not None else event.name
        if name in program and program[name].opcode in CONTROL_FLOW:
          continue
        nanoseconds[name] += event.duration_ns
    if sum(nanoseconds.values()) > before:
      sources.append(plane.name)
  return ({name: value / 1e9 for name, value in nanoseconds.items()},
          ', '.join(sources) or 'no op events')


def profile_ops(run: Callable[[], Any], num_steps: int, hlo_text: str,
                top: int = 12) -> Profile:
  """Traces `run()` (`num_steps` steps, synced at its end): the costliest ops.

  Args:
    run: runs the compiled program for `num_steps` steps and waits for them.
    num_steps: the steps one `run()` takes, to give times per step.
    hlo_text: the compiled program's HLO (`compiled.as_text()`), which names
      what each op computes.
    top: how many ops to list.
  """
  program = instructions(hlo_text)
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir):
      run()
    paths = glob.glob(os.path.join(trace_dir, '**', '*.xplane.pb'),
                      recursive=True)
    if not paths:
      raise RuntimeError(f'jax.profiler wrote no trace under {trace_dir}')
    profile = jax.profiler.ProfileData.from_file(paths[0])
    seconds, source = op_seconds(profile.planes, program)
  ops = [OpTime(name, 1e3 * value / num_steps,
                program[name].what if name in program else '')
         for name, value in collections.Counter(seconds).most_common(top)]
  return Profile(1e3 * sum(seconds.values()) / num_steps, ops, source)
