"""Tests for examples/common/machine.py."""

import os
import socket
from unittest import mock

from absl.testing import absltest
import jax

from examples.common import machine

_HOST = {'cpu': 'AMD EPYC 9454', 'cpu_count': 16, 'system': 'Linux'}


class DescribeMachineTest(absltest.TestCase):

  def test_names_the_accelerator_before_the_cpu(self):
    info = dict(_HOST, platform='gpu', device_kind='NVIDIA H200',
                device_count=1)
    self.assertEqual(
        machine.describe_machine(info),
        '1× NVIDIA H200 (gpu) with a 16-core CPU (AMD EPYC 9454), Linux')

  def test_cpu_backend_names_only_the_cpu(self):
    # Fake host devices (conftest.py asks for 8) are not accelerators.
    info = dict(_HOST, platform='cpu', device_kind='cpu', device_count=8)
    self.assertEqual(machine.describe_machine(info),
                     '16-core CPU (AMD EPYC 9454), Linux')

  def test_this_machine(self):
    info = machine.machine_info()
    device = jax.devices()[0]
    self.assertEqual(info['platform'], device.platform)
    self.assertEqual(info['device_kind'], device.device_kind)
    self.assertTrue(info['cpu'])
    description = machine.describe_machine()
    self.assertIn(f'{info["cpu_count"]}-core CPU ({info["cpu"]})',
                  description)
    accelerator = f'{info["device_count"]}× {device.device_kind}'
    self.assertEqual(description.startswith(accelerator),
                     device.platform != 'cpu')


class ProcessScopeTest(absltest.TestCase):

  def test_host_then_namespace(self):
    scope = machine.process_scope()
    host = socket.gethostname().replace('.', '_')
    self.assertEqual(scope, machine.process_scope())
    self.assertNotIn('.', scope)
    if not os.path.exists('/proc/self/ns/pid'):
      self.assertEqual(scope, host)
      return
    self.assertRegex(scope, f'^{host}~[0-9a-f]{{8}}$')
    # Another PID namespace (a container sharing this host's name) is
    # another scope.
    real_stat = os.stat

    def stat_in_another_namespace(path, *args, **kwargs):
      result = real_stat(path, *args, **kwargs)
      if path == '/proc/self/ns/pid':
        return mock.Mock(st_ino=result.st_ino + 1)
      return result

    with mock.patch.object(os, 'stat', stat_in_another_namespace):
      self.assertNotEqual(machine.process_scope(), scope)
      self.assertTrue(machine.process_scope().startswith(f'{host}~'))


if __name__ == '__main__':
  absltest.main()
