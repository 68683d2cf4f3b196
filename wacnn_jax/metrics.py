"""What a run reports: metrics.jsonl, TensorBoard, the console and the model summary.

One record per epoch and replica (`epoch_records`), written by `MetricsLog`;
`model_summary` counts parameters and FLOPs and tabulates the layers.
"""

from __future__ import annotations

import functools
import json
import os
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from wacnn_jax import record_files
from wacnn_jax import status
from wacnn_jax import tensorboard_events
from wacnn_jax import workdirs


def model_summary(model, variables, image_shape) -> dict:
  """Parameter count, FLOPs per image and the layer table.

  FLOPs: XLA's cost analysis of the unoptimised HLO of the eval forward pass,
  lowered for the host CPU on every machine (GPU backends either give no
  analysis before compilation or, after it, do not count cuDNN's
  convolutions).
  """
  params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables["params"]))
  x = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
  host = jax.local_devices(backend="cpu")[0]
  lowered = jax.jit(functools.partial(model.apply, train=False)).lower(
      *jax.device_put((variables, x), host))
  cost = lowered.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  flops = float((cost or {}).get("flops", float("nan")))
  table = model.tabulate(
      {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(0)}, x,
      train=False, console_kwargs={"width": 200, "force_terminal": False})
  return {"params": params, "flops_per_image": flops, "table": table}



def write_model_summary(workdir: str, summary: dict, description: str) -> None:
  """workdir/model_summary.txt (`description`, counts and the layer table) and .json (counts)."""
  with open(os.path.join(workdir, "model_summary.txt"), "w") as f:
    f.write(f"{description}\n"
            f"parameters: {summary['params']:,}\n"
            f"FLOPs per image (XLA cost analysis, eval forward): "
            f"{summary['flops_per_image']:,.0f}\n\n{summary['table']}\n")
  with open(os.path.join(workdir, "model_summary.json"), "w") as f:
    json.dump({k: summary[k] for k in ("params", "flops_per_image")}, f)


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
    workdirs.write_atomically(self.path, "".join(json.dumps(r) + "\n" for r in kept))

  def records(self) -> list[dict]:
    """The records written so far (none on processes other than 0), a torn last line left
    out (`record_files.read_json_lines`)."""
    if not self.enabled:
      return []
    return record_files.read_json_lines(self.path)

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
  the run's expected time left (`status.RunClock`)."""
  for k, record in enumerate(records):
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
