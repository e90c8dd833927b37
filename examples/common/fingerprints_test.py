"""Checksums of array values: the same wherever the values live."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from examples.common import fingerprints


def _values(dtype):
  values = np.arange(-12, 12).reshape(4, 6) * 0.75
  if dtype == np.bool_:
    return values > 0
  return values.astype(dtype)


class FingerprintsTest(parameterized.TestCase):

  @parameterized.parameters(np.float32, np.int32, np.int8, np.uint16,
                            jnp.bfloat16, np.bool_, np.complex64)
  def test_host_and_device_arrays_of_the_same_values_agree(self, dtype):
    values = _values(dtype)
    on_host, on_device = fingerprints.fingerprints(
        [values, jnp.asarray(values)])
    self.assertEqual(on_host, on_device)
    self.assertLen(on_host, 2)  # Two uint32 lanes.

  def test_one_changed_element_changes_both_lanes(self):
    values = _values(np.float32)
    edited = values.copy()
    edited[2, 3] = np.nextafter(edited[2, 3], np.float32(np.inf))
    moved = values.reshape(6, 4)  # The same words at other positions' shape.
    swapped = values.copy()
    swapped[0, :2] = swapped[0, 1::-1]  # Two elements trade places.
    before, after, reshaped, reordered = fingerprints.fingerprints(
        [values, edited, moved, swapped])
    for lane in range(2):
      self.assertNotEqual(before[lane], after[lane])
      self.assertNotEqual(before[lane], reordered[lane])
    # The flat positions are what count: a reshape keeps them.
    self.assertEqual(before, reshaped)

  def test_a_sharded_array_agrees_with_the_whole_one(self):
    devices = jax.devices('cpu')[:2]
    if len(devices) < 2:
      self.skipTest('needs 2 CPU devices: set XLA_FLAGS='
                    '--xla_force_host_platform_device_count=2 before JAX '
                    'starts, as conftest.py does')
    mesh = jax.sharding.Mesh(np.array(devices), ('rows',))
    values = jnp.asarray(_values(np.float32))
    sharded = jax.device_put(values, jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec('rows')))
    whole = jax.device_put(values, devices[0])
    self.assertEqual(*fingerprints.fingerprints([sharded, whole]))


class HostSha256Test(absltest.TestCase):

  def test_same_data_same_digest_any_change_another(self):
    ids = np.arange(12, dtype=np.int32)
    digest = fingerprints.host_sha256([ids, ids[:3]], 'vocab')
    self.assertEqual(fingerprints.host_sha256([ids.copy(), ids[:3]], 'vocab'),
                     digest)
    edited = ids.copy()
    edited[5] = 6
    for other in ([edited, ids[:3]], [ids.astype(np.int64), ids[:3]],
                  [ids.reshape(3, 4), ids[:3]], [ids[:3], ids]):
      self.assertNotEqual(fingerprints.host_sha256(other, 'vocab'), digest)
    self.assertNotEqual(fingerprints.host_sha256([ids, ids[:3]], 'vocab2'),
                        digest)


if __name__ == '__main__':
  absltest.main()
