"""Where a run stands, restored from its newest checkpoint or started afresh.

    state, progress = restore_or_initialize(initial_state, checkpoints, num_replicas)
    progress.epoch            # epochs done; the run trains epoch + 1 .. num_epochs
    progress.epoch_start      # of epoch + 1, restored from a checkpoint inside it
    progress.add_test_accuracy(accuracies)   # whether the epoch is the best so far

Determinism: the epoch permutation comes from (replica seed, epoch) and every
random key from `fold_in(state.rng, state.step)`, so a run resumed from a
checkpoint ends with the same parameters as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from absl import logging
import jax
import numpy as np

from wacnn_jax.training import checkpointing
from wacnn_jax.training import epoch_checkpoints
from wacnn_jax.training import steps


@dataclasses.dataclass
class Progress:
  """Where a run stands after `epoch` epochs (restored from a checkpoint's meta)."""

  epoch: int
  best_accuracy: np.ndarray  # (R,) each replica's best test accuracy
  best_mean: float = 0.0  # the best test accuracy averaged over the replicas
  checkpoint_epoch: int | None = None  # the epoch of the newest checkpoint
  checkpoint_records: list[dict] | None = None  # the last epoch's metrics.jsonl records
  last_test_accuracy: np.ndarray | None = None  # (R,) the last epoch's
  epoch_start: epoch_checkpoints.EpochStart = dataclasses.field(
      default_factory=epoch_checkpoints.EpochStart)

  def take_epoch_start(self) -> epoch_checkpoints.EpochStart:
    """Where the next epoch starts: its restored part once, then from its beginning."""
    start, self.epoch_start = self.epoch_start, epoch_checkpoints.EpochStart()
    return start

  def add_test_accuracy(self, test_accuracy: np.ndarray) -> bool:
    """Takes an epoch's test accuracies (R,); whether their mean is the best so far."""
    self.last_test_accuracy = test_accuracy
    self.best_accuracy = np.maximum(self.best_accuracy, test_accuracy)
    mean = float(test_accuracy.mean())
    is_best = mean >= self.best_mean
    self.best_mean = max(self.best_mean, mean)
    return is_best

  def checkpoint_due(self, epoch: int, config, is_best: bool) -> bool:
    """Whether (1-based) `epoch` is saved: the last one, every `checkpoint_every_epochs`,
    and each new best."""
    return (epoch == config.num_epochs or epoch % config.checkpoint_every_epochs == 0
            or is_best)

  def checkpoint_meta(self, epoch: int, test_accuracy: np.ndarray, records: list[dict]) -> dict:
    """The meta saved with the checkpoint of (1-based) `epoch`, with its metrics `records`."""
    return {"epoch": epoch, "test_accuracy": float(test_accuracy.mean()),
            "best_test_accuracy": self.best_mean,
            "replica_test_accuracy": test_accuracy.tolist(),
            "replica_best_test_accuracy": self.best_accuracy.tolist(),
            "records": records}


def restore_or_initialize(initial_state: Callable[[], steps.TrainState],
                          checkpoints: checkpointing.Checkpointer, num_replicas: int,
                          feed=None):
  """The newest readable checkpoint's (host state, Progress), or the initial ones; the
  stream position it saved checked by `feed` (`feeds`)."""
  restored = checkpoints.restore_latest(jax.eval_shape(initial_state))
  if restored is None:
    return initial_state(), Progress(0, np.zeros(num_replicas),
                                     last_test_accuracy=np.zeros(num_replicas))
  latest, state, meta = restored
  progress = Progress(meta["epoch"], np.asarray(meta["replica_best_test_accuracy"]),
                      meta["best_test_accuracy"], checkpoint_epoch=meta["epoch"],
                      checkpoint_records=meta.get("records"),
                      last_test_accuracy=np.asarray(meta["replica_test_accuracy"]),
                      epoch_start=epoch_checkpoints.EpochStart.from_meta(meta))
  position = checkpoints.restore_position(latest)
  if feed is not None and position is not None:
    feed.check_position(position, int(np.asarray(state.step).reshape(-1)[0]))
  inside = (f", step {progress.epoch_start.steps} of epoch {progress.epoch + 1}"
            if progress.epoch_start.steps else "")
  logging.info("Resumed from %s/%d: epoch %d%s, best test accuracy %s",
               checkpoints.directory, latest, progress.epoch, inside,
               " ".join(f"{a:.4f}" for a in progress.best_accuracy))
  return state, progress


def log_nothing_to_train(progress: Progress, num_epochs: int, checkpoint_directory: str) -> None:
  """The warning of a run whose checkpoint has already reached `num_epochs`."""
  logging.warning("Nothing to train: %s", f"num_epochs={num_epochs}."
                  if progress.checkpoint_epoch is None else
                  f"the checkpoint in {checkpoint_directory} is at epoch {progress.epoch} "
                  f"and num_epochs={num_epochs}; raise --config.num_epochs to train on.")
