"""Tests for examples/common/machine.py."""

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


if __name__ == '__main__':
  absltest.main()
