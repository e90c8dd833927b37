"""Names the machine a result was measured on: its accelerator, if any, and CPU.

Reports print this beside their numbers. A GPU machine has a CPU too, and a
report that named only the CPU ("16-core CPU") would pass GPU timings off as
CPU ones, so the default backend's device comes first whenever it is not the
CPU::

  from examples.common import machine
  machine.describe_machine()
  # '1× NVIDIA H200 (gpu) with a 16-core CPU (AMD EPYC 9454), Linux'
  # '2-core CPU (AMD EPYC 7B13), Linux'
"""

import hashlib
import os
import platform
import socket
from collections.abc import Mapping
from typing import Any, Optional

import jax


def cpuinfo_field(*names: str) -> Optional[str]:
  """The first /proc/cpuinfo line's value for any of `names`; None if none."""
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith(names):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return None


def cpu_name() -> str:
  """The CPU's model name from /proc/cpuinfo, else what `platform` knows."""
  return (cpuinfo_field('model name') or platform.processor() or
          platform.machine())


def process_scope() -> str:
  """Where a process id names one process: this host and PID namespace.

  Code that tells a dead writer's leftovers from a live one's by process id
  (`files`, `locking`) may only judge processes of its own scope. The host
  name alone is not enough: containers can share one without sharing a PID
  namespace (a pod's containers). So the scope is the host name and a short
  hash of the PID namespace's inode, where Linux has one; elsewhere the host
  name alone. The kernel's boot is left out: a lock left by a run that a
  crash or reboot killed must stay in scope, so that the process-id and
  start-time check finds it dead and takes it over.

  Returns:
    E.g. 'worker-3~5f0c2a91'; no dots (file names split on them).
  """
  host = socket.gethostname().replace('.', '_')
  try:
    namespace = os.stat('/proc/self/ns/pid').st_ino
  except OSError:
    return host
  return f'{host}~{hashlib.sha256(str(namespace).encode()).hexdigest()[:8]}'


def machine_info() -> dict[str, Any]:
  """The machine as JSON-ready fields; `describe_machine` words them.

  Returns:
    platform: the default backend's platform ('cpu', 'gpu', 'tpu').
    device_kind: its first device's kind (e.g. 'NVIDIA H200', 'cpu').
    device_count: its devices (on a CPU, as many as XLA was asked to fake).
    cpu, cpu_count, system: the host's CPU model, cores and OS.
  """
  device = jax.devices()[0]
  return {
      'platform': device.platform,
      'device_kind': device.device_kind,
      'device_count': jax.device_count(),
      'cpu': cpu_name(),
      'cpu_count': os.cpu_count(),
      'system': platform.system(),
  }


def describe_machine(info: Optional[Mapping[str, Any]] = None) -> str:
  """One line naming the accelerator (if the default backend has one) and CPU.

  Args:
    info: `machine_info()` of the machine to describe; default this one.

  Returns:
    E.g. '1× NVIDIA H200 (gpu) with a 16-core CPU (AMD EPYC 9454), Linux', or
    '2-core CPU (AMD EPYC 7B13), Linux' where JAX runs on the CPU.
  """
  info = machine_info() if info is None else info
  host = f'{info["cpu_count"]}-core CPU ({info["cpu"]}), {info["system"]}'
  if info['platform'] == 'cpu':
    return host
  return (f'{info["device_count"]}× {info["device_kind"]} '
          f'({info["platform"]}) with a {host}')
