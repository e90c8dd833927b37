"""tests/cpu_devices.py: the multi-device tests' 8 CPU devices."""

from absl.testing import absltest
import jax
import jax.numpy as jnp

from tests import cpu_devices


class CpuDevicesTest(absltest.TestCase):

  def test_get_gives_cpu_devices_whatever_the_default_backend(self):
    devices = cpu_devices.get()
    self.assertLen(devices, cpu_devices.NUM_DEVICES)
    self.assertEqual({d.platform for d in devices}, {'cpu'})

  def test_get_skips_with_the_reason_when_too_few(self):
    too_many = len(jax.devices('cpu')) + 1
    with self.assertRaisesRegex(
        absltest.SkipTest,
        f'needs {too_many} CPU devices.*xla_force_host_platform_device_count'):
      cpu_devices.get(too_many)

  def test_use_makes_the_first_cpu_device_the_default(self):
    devices = cpu_devices.use(self)
    self.assertEqual(jnp.zeros(3).devices(), {devices[0]})


if __name__ == '__main__':
  absltest.main()
