"""Orbax checkpoints that survive a kill at any moment, for exact resume.

A checkpoint holds the training state (any pytree: parameters, optimizer state
with its row counts, ...) and a JSON record (the step or epoch, the metrics so
far, the run's config). The examples derive their data order from (seed, step)
or (seed, epoch), so the step is all the iterator position there is, and a run
restarted with the same flags continues bit for bit where it stopped.

What a restart finds, and what it does:

- **Nothing, or only unfinished saves.** Orbax writes each checkpoint under a
  temporary name and renames it when complete, so a save cut short is never
  taken for a checkpoint. Such leftovers are deleted (Orbax's
  `cleanup_tmp_directories`), and the run says so in its one resume line.
- **Another live run on the directory.** Refused: the directory is locked
  (`examples.common.locking`); a killed run's lock goes with its process.
- **A checkpoint of other settings.** Refused, naming the changed settings.
- **A corrupt checkpoint** (a truncated or edited file). The record keeps a
  checksum of every array's values and of itself; restoring recomputes them,
  so a damaged checkpoint is refused with a message naming it and the array.
  With `Options(fallback=True)` (`--checkpoint_fallback`) it is moved aside
  (`corrupt-<step>-<time>`) and the run resumes from the one before.

The state is stored as its list of leaves; its structure, and where each array
lives (devices and sharding), come from the state the caller restores into (a
freshly initialised one), so optimizer NamedTuples need no special handling,
row-sharded tables come back row-sharded, and a checkpoint whose arrays do not
fit is refused. In a multi-process JAX run every process calls the same
methods with its part of the same global arrays; process 0 takes the lock and
writes the record, and all processes restore and check the same checkpoint.

Two APIs: `Checkpointer` (by step, for training loops: `save` every
`save_interval_steps`) and `EpochCheckpointer` (after every epoch, used by
`examples.common.training.run_epochs`).
"""

import dataclasses
import hashlib
import json
import logging as std_logging
import os
import sys
import time
from collections.abc import Mapping
from typing import Any, NamedTuple, Optional

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

from examples.common import fingerprints
from examples.common import locking

_TMP_MARKER = '.orbax-checkpoint-tmp'
_FORMAT = 1


class CheckpointError(RuntimeError):
  """A checkpoint cannot be used: corrupt, from another run, or locked."""


class CheckpointLockedError(CheckpointError, locking.DirectoryLockedError):
  """Another live run is using the checkpoint directory."""


class _CorruptCheckpoint(Exception):
  """A checkpoint's files do not give back what was saved."""


def _quiet_abandoned_reads() -> None:
  """Keeps a failed restore's other reads from printing tracebacks.

  When Orbax's restore raises on the first array it cannot read, its other
  reads are still in flight. They fail too (the same damage) or find their
  event loop closed, after or while the run says what is wrong, and Python
  and asyncio print each: up to hundreds of lines of TensorStore specs
  around the one line that matters. Installed before a restore (the first
  reports come before it raises), this drops those reports only: asyncio's
  never-retrieved futures of Orbax's array reads, Orbax's unfinished
  coroutines, and callbacks that found the event loop closed.
  """
  if getattr(sys.unraisablehook, 'quiets_orbax_reads', False):
    return
  std_logging.getLogger('asyncio').addFilter(_AbandonedReadFilter())
  unraisablehook = sys.unraisablehook

  def quiet_unraisable(info):
    code = getattr(info.object, 'cr_code', None)
    if code is not None and 'orbax' in code.co_filename:
      return  # An unfinished read.
    if (info.exc_type is RuntimeError
        and str(info.exc_value) == 'Event loop is closed'):
      return  # A read's callback, from TensorStore's threads.
    unraisablehook(info)

  quiet_unraisable.quiets_orbax_reads = True
  sys.unraisablehook = quiet_unraisable


class _AbandonedReadFilter(std_logging.Filter):
  """Drops asyncio's reports of Orbax array reads no one waited for."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    message = record.getMessage()
    return not ('never retrieved' in message
                and 'while reading array index' in message)


@dataclasses.dataclass(frozen=True)
class Options:
  """How a run checkpoints; none of it changes the run's results.

  Attributes:
    save_interval_steps: `Checkpointer.save` writes every this many steps and
      returns at once in between (`force=True` writes anyway, e.g. the last
      step). `EpochCheckpointer` saves every epoch.
    max_to_keep: checkpoints kept (the newest); at least 2, so that a
      fallback has one to fall back to.
    async_save: write in the background (Orbax's async checkpointing):
      `save` returns once the arrays are copied to host memory, and training
      goes on while they are written. A kill during the write leaves an
      unfinished save, discarded on restart like any other.
    fallback: when the latest checkpoint is corrupt, move it aside and resume
      from the one before; otherwise refuse to start.
  """

  save_interval_steps: int = 1
  max_to_keep: int = 2
  async_save: bool = False
  fallback: bool = False

  def __post_init__(self):
    if self.save_interval_steps < 1:
      raise ValueError(
          f'save_interval_steps must be >= 1, got {self.save_interval_steps}.')
    if self.max_to_keep < 2:
      raise ValueError(f'max_to_keep must be >= 2, got {self.max_to_keep}.')


class Restored(NamedTuple):
  """What `Checkpointer.restore` found."""

  step: int
  state: Any
  record: dict[str, Any]


def _leaves_dict(leaves: list[Any]) -> dict[str, Any]:
  return {f'{i:05d}': leaf for i, leaf in enumerate(leaves)}


class Checkpointer:
  """Saves the training state every few steps; restores the latest good one.

  Example (a step-based loop; every process of a multi-process run does the
  same)::

    checkpointer = Checkpointer(workdir, config, Options(save_interval_steps=500))
    restored = checkpointer.restore(state)  # None: start from scratch
    first = 1 if restored is None else restored.step + 1
    if restored is not None:
      state = restored.state                # in `state`'s shardings
    for step in range(first, num_steps + 1):
      state, metrics = train_step(state, batch(step))
      checkpointer.save(step, state, {'loss': float(metrics['loss'])},
                        force=step == num_steps)
    checkpointer.close()

  Args:
    directory: where checkpoints go (created if missing); locked for the life
      of the checkpointer, so close it (or use it as a context manager).
    config: the run's settings (JSON-serialisable). A checkpoint written under
      a different config is refused, so a changed flag never silently mixes
      two runs in one directory. Put only settings that change results here.
    options: `Options` (interval, async saves, fallback, ...).
    unit: what a step is called in messages ('step', 'epoch', ...).

  Raises:
    CheckpointLockedError: another live run uses `directory`.
  """

  def __init__(
      self,
      directory: str,
      config: Mapping[str, Any],
      options: Optional[Options] = None,
      *,
      unit: str = 'step',
  ):
    self.directory = os.path.abspath(directory)
    self.config = json.loads(json.dumps(dict(config)))
    self.options = options or Options()
    self.unit = unit
    try:
      self._lock = locking.DirectoryLock(
          self.directory, what='Checkpoint directory',
          hint='or use another --workdir')
    except locking.DirectoryLockedError as error:
      raise CheckpointLockedError(str(error)) from None
    try:
      # Listed before Orbax deletes them, for the resume message. Only now,
      # with the lock held, is no other run writing here.
      self._unfinished = sorted(
          name for name in os.listdir(self.directory) if _TMP_MARKER in name)
      self._manager = ocp.CheckpointManager(
          self.directory,
          options=ocp.CheckpointManagerOptions(
              max_to_keep=self.options.max_to_keep,
              create=True,
              cleanup_tmp_directories=True,
              enable_async_checkpointing=self.options.async_save,
          ),
      )
    except BaseException:
      self._lock.release()
      raise

  def latest_step(self) -> Optional[int]:
    """The newest checkpoint's step (not yet checked), or None."""
    return self._manager.latest_step()

  def should_save(self, step: int) -> bool:
    """Whether `save(step, ...)` would write (without `force`)."""
    latest = self._manager.latest_step()
    return (step % self.options.save_interval_steps == 0 and
            (latest is None or step > latest))

  def save(
      self,
      step: int,
      state: Any,
      record: Optional[Mapping[str, Any]] = None,
      *,
      force: bool = False,
  ) -> bool:
    """Saves `state` and the JSON `record` as `step`, if it is time to.

    Args:
      step: the number of steps (or epochs) done; what `restore` returns.
      state: the training state (a pytree of arrays).
      record: JSON-serialisable data to keep with it (metrics, history).
      force: save even between intervals (not over an existing checkpoint).

    Returns:
      Whether a save was started (with `async_save`, it may still be running;
      `wait_until_finished` or `close` waits for it).
    """
    latest = self._manager.latest_step()
    if latest is not None and step <= latest:
      return False
    if not (force or step % self.options.save_interval_steps == 0):
      return False
    leaves_with_paths, _ = jax.tree_util.tree_flatten_with_path(state)
    leaves = [leaf for _, leaf in leaves_with_paths]
    try:
      record = json.loads(json.dumps(dict(record or {}), allow_nan=True))
    except (TypeError, ValueError) as error:
      raise TypeError(
          f'The checkpoint record of {self.unit} {step} is not JSON data: '
          f'{error}') from None
    record.update(step=step, config=self.config)
    record['checkpoint'] = {
        'format': _FORMAT,
        'leaves': [
            {'path': jax.tree_util.keystr(path), 'shape': list(np.shape(leaf)),
             'dtype': str(_dtype(leaf)), 'fingerprint': fingerprint}
            for (path, leaf), fingerprint in zip(
                leaves_with_paths, fingerprints.fingerprints(leaves))
        ],
    }
    record['checkpoint']['record_sha256'] = _record_sha256(record)
    self._manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(_leaves_dict(leaves)),
            record=ocp.args.JsonSave(record),
        ),
        force=True,
    )
    return True

  def restore(self, like_state: Any) -> Optional[Restored]:
    """Restores the newest good checkpoint into the form of `like_state`.

    Logs one line saying where the run resumes and what was discarded
    (unfinished saves; with `fallback`, corrupt checkpoints moved aside).

    Args:
      like_state: a state with the structure, shapes, dtypes and shardings to
        restore into (e.g. the freshly initialised one). Its `jax.Array`
        leaves give the shardings of the restored arrays.

    Returns:
      Restored(step, state, record), or None when there is no checkpoint.

    Raises:
      CheckpointError: the newest checkpoint is corrupt (without `fallback`),
        was written under a different config, or does not fit `like_state`.
    """
    notes = []
    if self._unfinished:
      notes.append('discarded unfinished save' +
                   ('s ' if len(self._unfinished) > 1 else ' ') +
                   ', '.join(self._unfinished))
    restored = None
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        restored = self._restore_step(step, like_state)
        break
      except _CorruptCheckpoint as error:
        step_dir = self._step_dir(step)
        if not self.options.fallback:
          raise CheckpointError(
              f'Checkpoint {step_dir} is corrupt: {error}. Rerun with '
              f'--checkpoint_fallback to move it aside and resume from the '
              f'{self.unit} before it, or use a new --workdir.') from None
        moved = self._move_aside(step)
        notes.append(f'{self.unit} {step} was corrupt ({error}), moved to '
                     f'{moved}')
    if jax.process_index() == 0:
      where = (f'from {self.unit} {restored.step}' if restored is not None
               else 'from scratch (no complete checkpoint)')
      if restored is not None or notes:
        logging.info('Resuming %s %s%s', self.directory, where,
                     ''.join(f'; {note}' for note in notes))
    return restored

  def _step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def _move_aside(self, step: int) -> str:
    """Renames a corrupt checkpoint so that Orbax no longer sees it."""
    moved = os.path.join(
        self.directory,
        f'corrupt-{step}-{time.strftime("%Y%m%d-%H%M%S")}-{os.getpid()}')
    if jax.process_index() == 0:
      os.rename(self._step_dir(step), moved)
    ocp.multihost.sync_global_processes(f'checkpointing:move_aside:{step}')
    self._manager.reload()
    return moved

  def check_config(self) -> None:
    """Raises the CheckpointError `restore` would for another run's settings.

    Reads only the newest checkpoint's record, so a run can refuse before it
    writes data or builds a model. A corrupt record passes: `restore` says
    what is wrong with it (and, with `fallback`, goes back past it).
    """
    record = self.latest_record()
    if record is not None and record.get('config') != self.config:
      raise CheckpointError(self._config_mismatch(record.get('config') or {}))

  def latest_record(self) -> Optional[dict[str, Any]]:
    """The newest checkpoint's record, or None: no checkpoint, or a corrupt
    record (`restore` says what is wrong with it). Reads no array."""
    step = self._manager.latest_step()
    if step is None:
      return None
    try:
      return self._read_record(step)
    except _CorruptCheckpoint:
      return None

  def _read_record(self, step: int) -> dict[str, Any]:
    """One checkpoint's record, its checksum checked."""
    step_dir = self._step_dir(step)
    try:
      record = self._manager.restore(
          step, args=ocp.args.Composite(record=ocp.args.JsonRestore()))['record']
    except Exception as error:  # Orbax raises many types for bad files.
      raise _CorruptCheckpoint(
          f'its record cannot be read ({_brief(error)})') from error
    if not isinstance(record, dict) or not isinstance(
        record.get('checkpoint'), dict):
      if isinstance(record, dict) and 'config' in record:
        raise CheckpointError(
            f'Checkpoint {step_dir} was written by an older version of this '
            'code, without checksums. Use a new --workdir.')
      raise _CorruptCheckpoint('its record has no checksums')
    saved = dict(record['checkpoint'])
    if saved.pop('record_sha256', None) != _record_sha256(
        dict(record, checkpoint=saved)):
      raise _CorruptCheckpoint('its record does not match its checksum')
    return record

  def _restore_step(
      self, step: int, like_state: Any
  ) -> Restored:
    """Restores and checks one checkpoint."""
    step_dir = self._step_dir(step)
    record = self._read_record(step)
    if record.get('config') != self.config:
      raise CheckpointError(self._config_mismatch(record.get('config') or {}))
    like_with_paths, treedef = jax.tree_util.tree_flatten_with_path(like_state)
    like_leaves = [leaf for _, leaf in like_with_paths]
    saved_leaves = record['checkpoint']['leaves']
    if len(saved_leaves) != len(like_leaves):
      raise CheckpointError(
          f'Checkpoint {step_dir} holds {len(saved_leaves)} arrays, the '
          f'current state {len(like_leaves)}: it was written by different '
          'code. Use a new --workdir.')
    for (path, like), saved_leaf in zip(like_with_paths, saved_leaves):
      shape, dtype = list(np.shape(like)), str(_dtype(like))
      if [saved_leaf['shape'], saved_leaf['dtype']] != [shape, dtype]:
        raise CheckpointError(
            f'Checkpoint {step_dir}: array {saved_leaf["path"]} is '
            f'{saved_leaf["dtype"]}{saved_leaf["shape"]}, the current state\'s '
            f'{jax.tree_util.keystr(path)} {dtype}{shape}: it was written by '
            'different code. Use a new --workdir.')
    _quiet_abandoned_reads()
    try:
      leaves = self._manager.restore(
          step,
          args=ocp.args.Composite(
              state=ocp.args.StandardRestore(
                  _leaves_dict([_abstract(leaf) for leaf in like_leaves])),
          ),
      )['state']
    except Exception as error:  # Orbax raises many types for bad files.
      raise _CorruptCheckpoint(
          f'its arrays cannot be read ({_brief(error)})') from error
    leaves = [leaves[key] for key in sorted(leaves)]
    leaves = [
        np.asarray(leaf) if not isinstance(like, jax.Array) else leaf
        for leaf, like in zip(leaves, like_leaves)
    ]
    for saved_leaf, fingerprint in zip(saved_leaves,
                                       fingerprints.fingerprints(leaves)):
      if fingerprint != saved_leaf['fingerprint']:
        raise _CorruptCheckpoint(
            f'array {saved_leaf["path"]} does not match its checksum')
    return Restored(step, jax.tree.unflatten(treedef, leaves), record)

  def _config_mismatch(self, saved: Mapping[str, Any]) -> str:
    changed = sorted(
        key for key in set(saved) | set(self.config)
        if saved.get(key) != self.config.get(key)
    )
    details = ', '.join(
        f'{key}: {saved.get(key)!r} -> {self.config.get(key)!r}'
        for key in changed
    )
    return (
        f'Checkpoints in {self.directory} come from a run with other '
        f'settings ({details}). Use the same flags to resume, or a new '
        '--workdir.'
    )

  def wait_until_finished(self) -> None:
    """Waits for a background save to be complete on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Finishes any background save, then releases the directory."""
    try:
      self._manager.close()
    finally:
      self._lock.release()

  def __enter__(self) -> 'Checkpointer':
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


class EpochCheckpointer(Checkpointer):
  """Saves the training state after every epoch and restores the latest one.

  Args:
    directory: where checkpoints go (created if missing; locked until
      `close`).
    config: the run's settings (JSON-serialisable); a checkpoint written under
      a different config is refused.
    max_to_keep: how many epochs' checkpoints to keep (default: options').
    options: `Options`; its `save_interval_steps` is ignored (every epoch).
    unit: what an epoch is called in messages.
  """

  def __init__(
      self,
      directory: str,
      config: Mapping[str, Any],
      max_to_keep: Optional[int] = None,
      options: Optional[Options] = None,
      *,
      unit: str = 'epoch',
  ):
    options = options or Options()
    if max_to_keep is not None:
      options = dataclasses.replace(options, max_to_keep=max_to_keep)
    super().__init__(directory, config, options, unit=unit)

  def latest_epoch(self) -> Optional[int]:
    """The last saved epoch (not yet checked), or None."""
    return self.latest_step()

  def save(self, epoch: int, state: Any,
           record: Optional[Mapping[str, Any]] = None, *,
           force: bool = True) -> bool:
    """Saves `state` and the JSON `record` as epoch `epoch`."""
    del force  # Every epoch is saved.
    return super().save(epoch, state, dict(record or {}, epoch=epoch),
                        force=True)

  def restore_latest(
      self, like_state: Any
  ) -> Optional[tuple[int, Any, dict[str, Any]]]:
    """Restores the latest good epoch into the form of `like_state`.

    Returns:
      (epoch, state, record), or None when there is no checkpoint.

    Raises:
      CheckpointError: see `Checkpointer.restore`.
    """
    restored = self.restore(like_state)
    if restored is None:
      return None
    return restored.step, restored.state, restored.record


def _brief(error: BaseException) -> str:
  """The first line of an error and of its causes (TensorStore's are long)."""
  parts = []
  while error is not None and len(parts) < 3:
    lines = str(error).strip().splitlines() or ['']
    line = lines[0].split(' See full TensorStore details')[0]
    parts.append(f'{type(error).__name__}: {line[:300]}')
    error = error.__cause__ or error.__context__
  return '; from '.join(parts)


# --------------------------------------------------------------------------
# Helpers.


def _dtype(leaf: Any) -> np.dtype:
  return leaf.dtype if hasattr(leaf, 'dtype') else np.asarray(leaf).dtype


def _record_sha256(record: Mapping[str, Any]) -> str:
  text = json.dumps(record, sort_keys=True, allow_nan=True)
  return hashlib.sha256(text.encode()).hexdigest()


def _abstract(like: Any) -> Any:
  if isinstance(like, jax.Array):
    return jax.ShapeDtypeStruct(like.shape, like.dtype, sharding=like.sharding)
  return np.asarray(like)
