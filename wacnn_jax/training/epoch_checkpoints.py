"""Checkpoints inside an epoch (`checkpoint_every_steps`), and an epoch resumed from one.

    start = EpochStart.from_meta(meta)          # steps of the epoch done, and their metrics
    save_after = save_points(epoch, steps_per_epoch, config.checkpoint_every_steps)
    meta = within_epoch_meta(progress, epoch, steps_done, metrics)

A long epoch (a streamed dataset of a million images) stopped anywhere loses
at most `checkpoint_every_steps` steps: a checkpoint after the dispatch that
ends at each global step divisible by it (strictly inside an epoch; the
epoch's end has its own) holds the state, the stream's position
(`stream_feed.StreamPosition`) and the per-step metrics of the epoch so far,
so that the resumed epoch trains its remaining steps on exactly the batches
an uninterrupted run would, and reports the whole epoch's metrics. Such a
checkpoint carries the last epoch's test accuracies, marked by `epoch_step`
in its meta; it never counts as the best one.
"""

from __future__ import annotations

import dataclasses

import numpy as np

# The per-step train metrics (R, steps) a checkpoint inside an epoch keeps, and their types.
METRIC_DTYPES = {"loss_sum": np.float32, "correct": np.int32, "count": np.int32,
                 "learning_rate": np.float32, "diverged": np.bool_}


@dataclasses.dataclass(frozen=True)
class EpochStart:
  """Where an epoch starts: after `steps` of its steps, whose per-step metrics, each
  (R, steps), are `metrics` (empty for an epoch from its beginning)."""

  steps: int = 0
  metrics: dict = dataclasses.field(default_factory=dict)

  @classmethod
  def from_meta(cls, meta: dict) -> "EpochStart":
    if not meta.get("epoch_step"):
      return cls()
    return cls(int(meta["epoch_step"]), {
        name: np.asarray(meta["epoch_metrics"][name], dtype)
        for name, dtype in METRIC_DTYPES.items()})


def save_points(epoch: int, steps_per_epoch: int, every: int) -> set[int]:
  """The step counts k (0 < k < steps_per_epoch) of (0-based) `epoch` after which a checkpoint
  is saved: those where the global step epoch * steps_per_epoch + k is divisible by `every`."""
  if not every:
    return set()
  first = epoch * steps_per_epoch
  return {k for k in range(1, steps_per_epoch) if (first + k) % every == 0}


def dispatches(first: int, steps_per_epoch: int, chunk: int, save_after: set[int]):
  """(begin, count) of an epoch's dispatches from step `first`: `chunk` steps each, cut at
  the epoch's end and after each step count in `save_after`."""
  begin = first
  while begin < steps_per_epoch:
    end = min(begin + chunk, steps_per_epoch,
              min((k for k in save_after if k > begin), default=steps_per_epoch))
    yield begin, end - begin
    begin = end


def within_epoch_meta(progress, epoch: int, steps_done: int, metrics: dict) -> dict:
  """The meta of a checkpoint after `steps_done` steps of (0-based) `epoch`: the last epoch's
  accuracies (`progress`), `epoch_step` and the epoch's metrics so far."""
  accuracies = progress.last_test_accuracy
  return {"epoch": epoch, "epoch_step": steps_done,
          "epoch_metrics": {name: np.asarray(metrics[name]).tolist() for name in METRIC_DTYPES},
          "test_accuracy": float(np.mean(accuracies)), "best_test_accuracy": progress.best_mean,
          "replica_test_accuracy": list(map(float, accuracies)),
          "replica_best_test_accuracy": progress.best_accuracy.tolist(),
          "records": progress.checkpoint_records}
