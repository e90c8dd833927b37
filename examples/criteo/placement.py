"""Where the state and the batch live on a device mesh.

A mesh (`make_mesh`) has axes ('data',) or ('data', 'model'). The stacked
embedding table and every optimizer array with one entry per table row
(CF-SGD's counts, row-wise Adagrad's accumulators, Adam's moments on the dense
path) are sharded by rows over all mesh axes; the batch is sharded over
'data'; the other parameters are replicated. In a multi-process run each
process provides its devices' rows of every global batch (`local_rows`),
which it reads from its own data shards (`local_shards`).
"""

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Optional

import jax
import numpy as np

# The stacked table's rows are padded to a multiple of this (and of the
# device count), so that runs on 1 to 1024 devices (powers of two) build the
# same table and can resume each other's checkpoints.
ROW_MULTIPLE = 1024
DATA_AXIS = 'data'
MODEL_AXIS = 'model'


def make_mesh(shape: Sequence[int],
              devices: Optional[Sequence[jax.Device]] = None
              ) -> jax.sharding.Mesh:
  """A mesh of `devices` (default: all) with axes ('data',) or ('data', 'model')."""
  shape = tuple(int(size) for size in shape)
  if len(shape) not in (1, 2) or min(shape) < 1:
    raise ValueError(f'mesh shape {shape}: expected one or two positive sizes '
                     '(data,) or (data, model).')
  devices = list(jax.devices() if devices is None else devices)
  if math.prod(shape) != len(devices):
    raise ValueError(f'mesh shape {shape} needs {math.prod(shape)} devices; '
                     f'{len(devices)} are given.')
  names = (DATA_AXIS, MODEL_AXIS)[:len(shape)]
  return jax.sharding.Mesh(np.array(devices).reshape(shape), names)


def padded_rows(table_rows: Sequence[int], num_devices: int) -> int:
  """Rows of the stacked table: Σ table_rows, padded (see ROW_MULTIPLE)."""
  multiple = math.lcm(ROW_MULTIPLE, num_devices)
  return -(-sum(table_rows) // multiple) * multiple


class Layout(NamedTuple):
  """Where things live on the mesh."""
  mesh: jax.sharding.Mesh
  num_rows: int  # rows of the stacked table (padded)

  def sharding(self, *spec) -> jax.sharding.NamedSharding:
    return jax.sharding.NamedSharding(self.mesh,
                                      jax.sharding.PartitionSpec(*spec))

  @property
  def rows(self) -> jax.sharding.NamedSharding:
    """Row-sharded over all mesh axes."""
    return self.sharding(self.mesh.axis_names)

  @property
  def batch(self) -> jax.sharding.NamedSharding:
    return self.sharding(DATA_AXIS)

  @property
  def replicated(self) -> jax.sharding.NamedSharding:
    return self.sharding()

  def of_leaf(self, leaf: Any) -> jax.sharding.NamedSharding:
    """Row-sharded for arrays with a table row's axis first; else replicated."""
    if getattr(leaf, 'ndim', 0) >= 1 and leaf.shape[0] == self.num_rows:
      return self.rows
    return self.replicated

  def local_rows(self, batch_size: int) -> tuple[int, int]:
    """[start, stop) of a global batch that this process provides."""
    index_map = self.batch.addressable_devices_indices_map((batch_size,))
    starts = sorted({index[0].start or 0 for index in index_map.values()})
    stops = sorted({index[0].stop or batch_size
                    for index in index_map.values()})
    start, stop = starts[0], stops[-1]
    size = batch_size // self.mesh.shape[DATA_AXIS]
    if (stop - start) != size * len(starts):
      raise ValueError(
          'This process\'s devices hold non-contiguous parts of the batch; '
          'order the mesh\'s devices by process.')
    return start, stop

  def local_shards(self, batch_size: int, data_shards: int) -> list[int]:
    """The data shards this process reads (see `Config.data_shards`)."""
    start, stop = self.local_rows(batch_size)
    shard_size = batch_size // data_shards
    if start % shard_size or stop % shard_size:
      raise ValueError(
          f'data_shards {data_shards} does not split the batch at this '
          f'process\'s rows [{start}, {stop}); use a multiple of the number of '
          f'processes ({jax.process_count()}).')
    return list(range(start // shard_size, stop // shard_size))

  def global_batch(self, arrays: Mapping[str, np.ndarray],
                   batch_size: int) -> dict[str, Any]:
    """This process's rows of a batch as global arrays on the mesh."""
    return {
        name: jax.make_array_from_process_local_data(
            self.batch, value, (batch_size,) + value.shape[1:])
        for name, value in arrays.items()
    }
