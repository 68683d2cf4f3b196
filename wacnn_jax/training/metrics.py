"""What a run reports each epoch: metrics.jsonl, TensorBoard and the console.

One record per epoch and replica (`epoch_records`), written by `MetricsLog`
and shown by `log_records`.
"""

from __future__ import annotations

import json
import math
import os

from absl import logging
import numpy as np

from wacnn_jax.files import atomic
from wacnn_jax.files import records
from wacnn_jax.training import status
from wacnn_jax.training import steps
from wacnn_jax.training import tensorboard_events


class MetricsLog:
  """metrics.jsonl plus TensorBoard event files, one row per epoch and replica.

  metrics.jsonl holds one JSON object per epoch and replica, the replicas of
  an epoch in order: {"epoch", "replica": k, "seed": seed + k, ...}, with the
  fields of a single-seed run with seed `seed + k` (`images_per_sec` is the
  replica's own: the rows of an epoch sum to the program's throughput).
  TensorBoard: one event folder per replica, `tensorboard/replica<k>`.
  """

  def __init__(self, workdir: str, enabled: bool, num_replicas: int):
    self.enabled = enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tensorboard = []
    if enabled:
      self._tensorboard = [
          tensorboard_events.ScalarWriter(os.path.join(workdir, "tensorboard", f"replica{k}"))
          for k in range(num_replicas)]

  def truncate_after(self, epoch: int, epoch_records: list[dict] | None = None) -> None:
    """Keeps the records of epochs up to `epoch` (later ones are from a run that stopped
    before saving them), in one atomic rewrite.

    A torn last line (the process was killed while appending it) is dropped;
    `epoch_records`, the records of `epoch` itself as its checkpoint saved
    them, replace the file's when it does not hold all of them.
    """
    if not self.enabled or not (os.path.exists(self.path) or epoch_records):
      return
    kept = [r for r in self.records() if r["epoch"] <= epoch]
    if epoch_records and sum(r["epoch"] == epoch for r in kept) < len(epoch_records):
      logging.warning("%s lacked records of epoch %d; written back from its checkpoint.",
                      self.path, epoch)
      kept = [r for r in kept if r["epoch"] < epoch] + epoch_records
    atomic.write_atomically(self.path, "".join(json.dumps(r) + "\n" for r in kept))

  def records(self) -> list[dict]:
    """The records written so far (none on processes other than 0), a torn last line left
    out (`records.read_json_lines`)."""
    if not self.enabled:
      return []
    return records.read_json_lines(self.path)

  def write_epoch(self, records: list[dict]) -> None:
    """Appends one epoch's records, `records[k]` of replica k, in one write."""
    if not self.enabled:
      return
    with open(self.path, "a") as f:
      f.write("".join(json.dumps(record) + "\n" for record in records))
    for writer, record in zip(self._tensorboard, records):
      for key, value in record.items():
        if key not in ("epoch", "replica", "seed") and isinstance(value, (int, float)):
          writer.add_scalar(f"epoch/{key}", value, record["epoch"])
      writer.flush()

  def write_steps(self, first_step: int, losses, learning_rates, every: int) -> None:
    """TensorBoard train scalars every `every` steps: `losses` (R, S), `learning_rates` (S,)."""
    if not self.enabled or every <= 0:
      return
    for writer, replica_losses in zip(self._tensorboard, losses):
      for i, (loss, lr) in enumerate(zip(replica_losses, learning_rates)):
        step = first_step + i + 1
        if step % every == 0:
          writer.add_scalar("train/loss", float(loss), step)
          writer.add_scalar("train/learning_rate", float(lr), step)

  def best_epoch(self) -> int | None:
    """The epoch whose test accuracy (mean over the replicas) is the best, the latest of
    equals (as the best checkpoint is chosen); None without records."""
    by_epoch: dict[int, list[float]] = {}
    for record in self.records():
      by_epoch.setdefault(record["epoch"], []).append(record["test_accuracy"])
    if not by_epoch:
      return None
    return max(by_epoch, key=lambda e: (float(np.mean(by_epoch[e])), e))

  def close(self) -> None:
    for writer in self._tensorboard:
      writer.close()

  def __enter__(self) -> "MetricsLog":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def log_records(records: list[dict], num_epochs: int, eta_seconds: float | None = None) -> None:
  """One console (absl) line per record of an epoch (see `MetricsLog`), the last one with
  the run's expected time left (`status.RunClock`); a warning for a diverged evaluation."""
  for k, record in enumerate(records):
    if record.get("test_diverged"):
      logging.warning(
          "epoch %d, seed %d: the test loss %.4g is not finite or above %g: the evaluation "
          "diverged (test_diverged in metrics.jsonl). The model's BatchNorm statistics or "
          "weights have blown up: lower optimizer.learning_rate, or check the data.",
          record["epoch"], record["seed"], record["test_loss"], steps.DIVERGED_LOSS)
    eta = (f"  ETA {status.duration(eta_seconds)}"
           if eta_seconds is not None and k == len(records) - 1 and record["epoch"] < num_epochs
           else "")
    logging.info(
        "epoch %3d/%d  seed %d  lr %.4g  train loss %.4f acc %.4f  test loss %.4f acc "
        "%.4f  best %.4f  %.0f img/s  %.1fs%s%s", record["epoch"], num_epochs,
        record["seed"], record["learning_rate"], record["train_loss"],
        record["train_accuracy"], record["test_loss"], record["test_accuracy"],
        record["best_test_accuracy"], record["images_per_sec"], record["epoch_seconds"],
        f" (compile {record['compile_seconds']:.1f}s)" if record["compile_seconds"] else "", eta)


def epoch_records(epoch: int, runner, train, tests: list[dict], progress, epoch_seconds: float,
                  startup_seconds: float = 0.0) -> list[dict]:
  """metrics.jsonl's records of (0-based) `epoch`, one per replica (see `MetricsLog`).

  `runner`: the run's `epochs.EpochRunner`; `train`: the epoch's
  `epochs.EpochTrain`; `tests`: each replica's test summary; `progress`: the
  run's `resume.Progress` after the epoch.

  `compile_seconds` and `startup_seconds` (the process's start to its first
  epoch: imports, data, model, restore) are those of the first epoch a process
  trains, 0 for the others.
  """
  return [{
      "epoch": epoch + 1,
      "replica": k,
      "seed": seed,
      "step": (epoch + 1) * runner.steps_per_epoch,
      "learning_rate": float(train.learning_rates[0]),
      "train_loss": float(train.loss[k]),
      "train_accuracy": float(train.accuracy[k]),
      "test_loss": test["loss"],
      "test_accuracy": test["accuracy"],
      "test_top5_accuracy": test["top5_accuracy"],
      "best_test_accuracy": float(progress.best_accuracy[k]),
      "test_examples": test["count"],
      "test_diverged": not math.isfinite(test["loss"]) or test["loss"] > steps.DIVERGED_LOSS,
      "images_per_sec": float(train.images_per_sec),
      "compile_seconds": train.compile_seconds,
      "startup_seconds": startup_seconds,
      "epoch_seconds": epoch_seconds,
  } for k, (seed, test) in enumerate(zip(runner.seeds, tests))]
