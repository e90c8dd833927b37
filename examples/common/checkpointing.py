"""Per-epoch checkpoints with Orbax, for exact resume of an interrupted run.

A checkpoint holds the training state (any pytree: parameters, optimizer
state with its row counts, ...) and a JSON record (the epoch, the metrics so
far, the run's config). The examples derive each epoch's data order from
(seed, epoch), so the epoch number is all the iterator position there is, and a
run restarted with the same flags continues bit for bit where it stopped.

The state is stored as its list of leaves; its structure comes from the code
that restores it (a freshly initialised state), so optimizer NamedTuples and
`optax.MaskedNode`s need no special handling, and a checkpoint whose leaves do
not fit the current state is refused with a clear error.
"""

import json
import os
from collections.abc import Mapping
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

_TMP_MARKER = '.orbax-checkpoint-tmp'


class CheckpointError(RuntimeError):
  """A checkpoint cannot be used: partial, corrupt, or from another run."""


def _leaves_dict(state: Any) -> dict[str, Any]:
  return {f'{i:05d}': leaf for i, leaf in enumerate(jax.tree.leaves(state))}


class EpochCheckpointer:
  """Saves the training state every epoch and restores the latest one.

  Args:
    directory: where checkpoints go (created if missing).
    config: the run's settings (JSON-serialisable). A checkpoint written under
      a different config is refused, so a changed flag never silently mixes
      two runs in one workdir.
    max_to_keep: how many epochs' checkpoints to keep.
  """

  def __init__(
      self, directory: str, config: Mapping[str, Any], max_to_keep: int = 2
  ):
    self.directory = os.path.abspath(directory)
    self.config = json.loads(json.dumps(dict(config)))
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=True,
            enable_async_checkpointing=False,
        ),
    )

  def latest_epoch(self) -> Optional[int]:
    """The last saved epoch, or None when there is none.

    Raises:
      CheckpointError: when a partial (unfinished) checkpoint lies in the
        directory: resuming from an older epoch without saying so would hide
        the problem.
    """
    partial = sorted(
        name for name in os.listdir(self.directory) if _TMP_MARKER in name
    )
    if partial:
      raise CheckpointError(
          f'Partial checkpoint {os.path.join(self.directory, partial[0])} '
          '(a save that never finished, e.g. the run was killed while '
          'saving). Delete it to resume from the last complete epoch '
          f'({self._manager.latest_step()}), or use a new --workdir.'
      )
    return self._manager.latest_step()

  def save(self, epoch: int, state: Any, record: Mapping[str, Any]) -> None:
    """Saves `state` and the JSON `record` as epoch `epoch`."""
    record = dict(record, epoch=epoch, config=self.config)
    self._manager.save(
        epoch,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(_leaves_dict(state)),
            record=ocp.args.JsonSave(record),
        ),
    )
    self._manager.wait_until_finished()

  def restore_latest(
      self, like_state: Any
  ) -> Optional[tuple[int, Any, dict[str, Any]]]:
    """Restores the latest epoch into the structure of `like_state`.

    Args:
      like_state: a state with the structure, shapes and dtypes to restore
        into (e.g. the freshly initialised one).

    Returns:
      (epoch, state, record), or None when there is no checkpoint.

    Raises:
      CheckpointError: for a partial or corrupt checkpoint, one written under a
        different config, or one whose arrays do not fit `like_state`.
    """
    epoch = self.latest_epoch()
    if epoch is None:
      return None
    step_dir = os.path.join(self.directory, str(epoch))
    like_leaves = _leaves_dict(like_state)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like_leaves)
    try:
      restored = self._manager.restore(
          epoch,
          args=ocp.args.Composite(
              state=ocp.args.StandardRestore(abstract),
              record=ocp.args.JsonRestore(),
          ),
      )
    except Exception as error:  # Orbax raises many types for bad files.
      raise CheckpointError(
          f'Checkpoint {step_dir} is corrupt or incomplete and cannot be '
          f'restored ({type(error).__name__}: {error}). Delete it to resume '
          'from an earlier epoch, or use a new --workdir.'
      ) from error
    record = restored['record']
    if record is None or 'config' not in record or 'epoch' not in record:
      raise CheckpointError(
          f'Checkpoint {step_dir} has no readable record (epoch, config).'
      )
    if record['config'] != self.config:
      changed = sorted(
          key
          for key in set(record['config']) | set(self.config)
          if record['config'].get(key) != self.config.get(key)
      )
      details = ', '.join(
          f'{key}: {record["config"].get(key)!r} -> {self.config.get(key)!r}'
          for key in changed
      )
      raise CheckpointError(
          f'Checkpoints in {self.directory} come from a run with other '
          f'settings ({details}). Use the same flags to resume, or a new '
          '--workdir.'
      )
    leaves = restored['state']
    if set(leaves) != set(like_leaves):
      raise CheckpointError(
          f'Checkpoint {step_dir} holds {len(leaves)} arrays, the current '
          f'state {len(like_leaves)}: it was written by different code.'
      )
    for key, like in like_leaves.items():
      if np.shape(leaves[key]) != np.shape(like):
        raise CheckpointError(
            f'Checkpoint {step_dir}: array {key} has shape '
            f'{np.shape(leaves[key])}, the current state {np.shape(like)}.'
        )
    state = jax.tree.unflatten(
        jax.tree.structure(like_state), [leaves[key] for key in sorted(leaves)]
    )
    return int(record['epoch']), state, record

  def close(self) -> None:
    self._manager.close()
