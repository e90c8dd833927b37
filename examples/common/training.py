"""The epoch loop every example shares: train, evaluate, checkpoint, resume.

The example supplies the pieces that depend on its model and data:

- `train_epoch(state, epoch) -> (state, step_losses)`: one pass over the
  training data, in an order fixed by (seed, epoch);
- `evaluate(state) -> {split: {metric: value}}`, e.g.
  ``{'validation': {'auc': .., 'log_loss': ..}, 'test': {...}}``.

The loop keeps a history (one JSON-serialisable record per epoch), saves a
checkpoint after each epoch, and, when started on a workdir that holds one,
resumes after the last saved epoch: since each epoch depends only on the state
and the epoch number, a run killed and restarted ends with exactly the state of
an uninterrupted one.
"""

import contextlib
import gc
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Optional

from absl import logging
import numpy as np

from examples.common import checkpointing
from examples.common import progress


class Diverged(FloatingPointError):
  """A run's loss went non-finite, or far off and stayed there.

  Attributes:
    step: the step at which it was seen.
    loss: that loss.
  """

  def __init__(self, message: str, step: int, loss: float):
    super().__init__(message)
    self.step = step
    self.loss = loss


class CollectorActivity:
  """Python's garbage collections seen inside `frozen_heap`."""

  def __init__(self):
    self.collections = 0
    self.full_collections = 0  # Of the oldest generation, the slow kind.
    self.seconds = 0.0
    self._started = None

  def _record(self, phase: str, info: dict[str, int]) -> None:
    if phase == 'start':
      self._started = time.perf_counter()
    elif self._started is not None:
      self.collections += 1
      self.full_collections += info['generation'] == 2
      self.seconds += time.perf_counter() - self._started
      self._started = None

  def as_dict(self) -> dict[str, float]:
    return {'collections': self.collections,
            'full_collections': self.full_collections,
            'seconds': self.seconds}


@contextlib.contextmanager
def frozen_heap() -> Iterator[CollectorActivity]:
  """Keeps Python's full garbage collections off the objects alive now.

  A full collection walks every container object the process holds: with
  Word2Vec's corpus and vocabulary loaded, 0.1-0.2 s on this project's
  2-core CPU (timed ad hoc, 2026-11-27). Tracing a step allocates enough to
  set one off, and where one lands is up to the allocation counts: inside a
  timed run it adds that much to the run. Inside this context, what was
  alive on entry (collected first, so no garbage is kept) is left out of
  collections (`gc.freeze`); on exit it is handed back (`gc.unfreeze`).
  Objects made inside are collected as usual. Where the process has frozen
  objects already (an enclosing `frozen_heap`, or the caller's own
  `gc.freeze`), nothing is collected, frozen or handed back: `gc.unfreeze`
  would hand back theirs too.

  Yields:
    The collections made inside the context, counted as they happen.
  """
  owner = gc.get_freeze_count() == 0
  if owner:
    gc.collect()
    gc.freeze()
  activity = CollectorActivity()
  gc.callbacks.append(activity._record)  # pylint: disable=protected-access
  try:
    yield activity
  finally:
    gc.callbacks.remove(activity._record)  # pylint: disable=protected-access
    if owner:
      gc.unfreeze()


TrainEpochFn = Callable[[Any, int], tuple[Any, Sequence[float]]]
EvaluateFn = Callable[[Any], Mapping[str, Mapping[str, float]]]
EpochEndFn = Callable[[int, Any, list[dict[str, Any]]], None]


def run_epochs(
    state: Any,
    *,
    num_epochs: int,
    train_epoch: TrainEpochFn,
    evaluate: EvaluateFn,
    checkpointer: Optional[checkpointing.EpochCheckpointer] = None,
    on_epoch_end: Optional[EpochEndFn] = None,
    show_progress: Optional[bool] = None,
    desc: str = 'epochs',
) -> tuple[Any, list[dict[str, Any]]]:
  """Trains for `num_epochs` epochs, resuming from `checkpointer` if it has one.

  Args:
    state: the initial training state (also the structure to restore into).
    num_epochs: total number of epochs of the run (not "epochs left").
    train_epoch: see the module docstring.
    evaluate: see the module docstring.
    checkpointer: saves after each epoch and restores on start; None trains
      from scratch without saving.
    on_epoch_end: called as ``on_epoch_end(epoch, state, history)`` after each
      epoch's checkpoint is saved (e.g. for logging).
    show_progress: progress bar over epochs (None: when on a terminal).
    desc: the progress bar's label.

  Returns:
    (final state, history): history holds one record per epoch with keys
    'epoch', 'train_loss' (the epoch's mean), 'step_losses', 'seconds' and
    one key per split returned by `evaluate`.
  """
  if num_epochs < 1:
    raise ValueError(f'num_epochs must be >= 1, got {num_epochs}.')
  history: list[dict[str, Any]] = []
  first_epoch = 1
  if checkpointer is not None:
    restored = checkpointer.restore_latest(state)
    if restored is not None:
      last_epoch, state, record = restored
      history = list(record['history'])
      first_epoch = last_epoch + 1
      if last_epoch >= num_epochs:
        logging.info('%s: finished before (all %d %ss are checkpointed); '
                     'reporting its saved results.', desc, num_epochs,
                     getattr(checkpointer, 'unit', 'epoch'))
  bar = progress.progress_bar(
      range(first_epoch, num_epochs + 1),
      desc=desc,
      total=num_epochs - first_epoch + 1,
      enabled=show_progress,
  )
  for epoch in bar:
    start = time.perf_counter()
    state, step_losses = train_epoch(state, epoch)
    step_losses = [float(loss) for loss in np.asarray(step_losses)]
    evaluation = evaluate(state)
    record = {
        'epoch': epoch,
        'train_loss': float(np.mean(step_losses)),
        'step_losses': step_losses,
        'seconds': time.perf_counter() - start,
        **{split: dict(values) for split, values in evaluation.items()},
    }
    history.append(record)
    bar.set_postfix(train_loss=f'{record["train_loss"]:.4f}')
    if checkpointer is not None:
      checkpointer.save(epoch, state, {'history': history})
    if on_epoch_end is not None:
      on_epoch_end(epoch, state, history)
  return state, history


def best_epoch(
    history: Sequence[Mapping[str, Any]],
    split: str = 'validation',
    metric: str = 'auc',
    higher_is_better: bool = True,
) -> Mapping[str, Any]:
  """The record of the epoch with the best `split` `metric` (earliest on ties).

  NaN values (e.g. a diverged run) never win; if every epoch is NaN the first
  record is returned.
  """
  if not history:
    raise ValueError('best_epoch: the history is empty.')
  values = np.array([record[split][metric] for record in history], dtype=float)
  if np.all(np.isnan(values)):
    return history[0]
  sign = 1.0 if higher_is_better else -1.0
  return history[int(np.nanargmax(sign * values))]
