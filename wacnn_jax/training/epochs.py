"""An epoch on the devices: compiled train and eval calls, fed by the data's feed.

`EpochRunner.train_epoch` runs an epoch of pmapped `steps.train_steps`
dispatches (with the memory pipeline a whole epoch per dispatch on GPU/TPU,
one step on CPU; see `parallel.Topology.loops_in_xla` and `feeds`) and
returns its metrics as an `EpochTrain`; `EpochRunner.evaluate` runs the test
split through `steps.eval_batches`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable

from absl import logging
import jax
import numpy as np

from wacnn_jax import models
from wacnn_jax.data.dataset import Dataset
from wacnn_jax.training import epoch_checkpoints
from wacnn_jax.training import feeds
from wacnn_jax.training import parallel
from wacnn_jax.training import status
from wacnn_jax.training import steps


# Images with a side of at least this many pixels get the hint that a CIFAR backbone is slow
# for them (`EpochRunner.log_start`).
LARGE_IMAGE_PIXELS = 128


class DivergenceError(RuntimeError):
  """Training diverged; nothing of the epoch in which it happened was evaluated or saved."""


@dataclasses.dataclass(frozen=True)
class EpochTrain:
  """One epoch's training metrics, on the host: per step (R, S) and per replica (R,)."""

  losses: np.ndarray  # (R, S) mean loss of each step
  learning_rates: np.ndarray  # (S,)
  diverged: np.ndarray  # (R, S) bool
  loss: np.ndarray  # (R,) mean over the epoch
  accuracy: np.ndarray  # (R,)
  images: np.ndarray  # (R,) images trained on
  seconds: float  # training time, without compilation (of this process's part of the epoch)
  compile_seconds: float
  images_per_sec: float = 0.0  # per replica, over `seconds`
  step_metrics: dict | None = None  # each (R, S): loss_sum, correct, count, learning_rate, ...

  def raise_if_diverged(self, epoch: int, seeds: list[int], checkpoint_epoch: int | None,
                        checkpoint_directory: str) -> None:
    """Raises DivergenceError if a step of (0-based) `epoch` diverged in any replica."""
    if not self.diverged.any():
      return
    index, replicas = first_divergence(self.diverged)
    raise DivergenceError(divergence_message(
        epoch, self.losses.shape[1], index, self.losses[replicas[0]], self.learning_rates,
        checkpoint_epoch, checkpoint_directory, replicas=replicas, seeds=seeds))


class EpochRunner:
  """A run's compiled train and eval functions, fed by its data's `feeds` feed.

  `to_devices(state)` puts the data (once, where the feed keeps it there) and
  a host state (R, ...) on the devices; `train_epoch` and `evaluate` take the
  replicated state. `seeds` are the replicas' seeds (their data orders).
  """

  def __init__(self, config, dataset: Dataset, topology: parallel.Topology,
               learning_rate_fn: Callable, steps_per_epoch: int, seeds: list[int]):
    self.config, self.dataset, self.topology = config, dataset, topology
    self.steps_per_epoch, self.seeds = steps_per_epoch, seeds
    self.feed = feeds.create(config, dataset, topology, seeds, steps_per_epoch)
    # Steps per dispatch: the feed's default (a whole epoch as one XLA loop where the data is
    # on the devices and loops run fast; one step on CPU) unless the config sets it.
    self.chunk = config.steps_per_dispatch or self.feed.default_chunk
    self._p_train = steps.make_train_fn(config, dataset.preprocessing, learning_rate_fn,
                                        topology)
    self._p_eval = steps.make_eval_fn(config, dataset.num_classes,
                                      dataset.preprocessing.normalization, topology)
    self._compiled = {}  # chunk length -> compiled train function
    self._compile_seconds = 0.0

  def close(self) -> None:
    """Stops what runs beside the devices (the stream's worker processes)."""
    self.feed.close()

  def to_devices(self, state: steps.TrainState) -> steps.TrainState:
    """Puts the feed's data (once) and `state` (host, (R, ...)) on the devices."""
    self.feed.to_devices()
    return parallel.replicate_state(state, self.topology)

  def _train(self, state, images, labels):
    """One dispatch of `images.shape[2]` steps, compiling (timed) a new chunk length first.

    Compiled with `steps.compiler_options()`. With several processes pmap's
    AOT executables take global shapes, so there the first call compiles
    (with XLA's default options), and its time counts as compile time.
    """
    num_steps = images.shape[2]
    if num_steps not in self._compiled:
      start = time.perf_counter()
      if self.topology.process_count > 1:
        outputs = self._p_train(state, images, labels)  # compiles, then dispatches
        self._compiled[num_steps] = self._p_train
        self._compile_seconds += time.perf_counter() - start
        return outputs
      self._compiled[num_steps] = self._p_train.lower(state, images, labels).compile(
          compiler_options=steps.compiler_options())
      self._compile_seconds += time.perf_counter() - start
    return self._compiled[num_steps](state, images, labels)

  def log_start(self, first_epoch: int) -> None:
    """The line that says what trains: arch, data, steps, devices, seeds and epochs; and a
    hint when a CIFAR backbone gets large images."""
    arch = self.config.model.arch
    logging.info("Training %s on %s: %d examples, %d steps/epoch, %d devices, seeds %s, "
                 "epochs %d..%d", arch, self.dataset.name,
                 len(self.dataset.train), self.steps_per_epoch,
                 self.topology.global_device_count, self.seeds, first_epoch + 1,
                 self.config.num_epochs)
    hint = large_image_hint(arch, self.dataset.image_shape)
    if hint:
      logging.warning("%s", hint)

  def train_epoch(self, state, epoch: int, show_progress: bool,
                  start: epoch_checkpoints.EpochStart = epoch_checkpoints.EpochStart(),
                  save: Callable | None = None):
    """Trains (0-based) `epoch`: returns the replicated state and an `EpochTrain`.

    Dispatches of `chunk` steps, one kept in flight while the host waits for
    the previous one (the progress, `status.StepProgress`, follows the device).
    `start`: the steps already done (from a checkpoint inside the epoch) and
    their metrics. `save(state, steps_done, metrics)`, if given, is called
    after each of the epoch's `epoch_checkpoints.save_points` unless a step
    so far diverged, with the metrics (R, steps_done) of the epoch so far.
    """
    start_time = time.perf_counter()
    compile_before = self._compile_seconds + self.feed.compile_seconds
    save_after = (epoch_checkpoints.save_points(epoch, self.steps_per_epoch,
                                                self.config.checkpoint_every_steps)
                  if save is not None else set())
    done = [start.metrics] if start.steps else []  # host metrics (R, steps) of earlier parts
    chunks = []  # device metrics of this process's dispatches
    timed_images = 0
    with status.StepProgress(self.steps_per_epoch, f"epoch {epoch + 1}/{self.config.num_epochs}",
                             show_progress, initial=start.steps) as bar:
      for begin, count in epoch_checkpoints.dispatches(start.steps, self.steps_per_epoch,
                                                      self.chunk, save_after):
        state, chunk_metrics = self._train(
            state, *self.feed.train_chunk(state, epoch, begin, count))
        if chunks:
          jax.block_until_ready(chunks[-1])
          bar.update(chunks[-1]["count"].shape[2])
        chunks.append(chunk_metrics)
        if begin + count in save_after:
          done.append(_fetch(chunks))
          timed_images += int(done[-1]["count"].sum()) // len(self.seeds)
          bar.update(chunks[-1]["count"].shape[2])
          chunks = []
          so_far = _concatenate(done)
          if not so_far["diverged"].any():
            save(state, begin + count, so_far)
      if chunks:
        done.append(_fetch(chunks))
        timed_images += int(done[-1]["count"].sum()) // len(self.seeds)
        bar.update(chunks[-1]["count"].shape[2])
    step_metrics = _concatenate(done)
    compile_seconds = self._compile_seconds + self.feed.compile_seconds - compile_before
    images = step_metrics["count"].sum(axis=1)
    seconds = time.perf_counter() - start_time - compile_seconds
    return state, EpochTrain(
        losses=step_metrics["loss_sum"] / step_metrics["count"],
        learning_rates=step_metrics["learning_rate"][0],
        diverged=step_metrics["diverged"],
        loss=step_metrics["loss_sum"].sum(axis=1) / images,
        accuracy=step_metrics["correct"].sum(axis=1) / images,
        images=images,
        seconds=seconds,
        compile_seconds=compile_seconds,
        images_per_sec=timed_images / max(seconds, 1e-9),
        step_metrics=step_metrics)

  def evaluate(self, state) -> list[dict]:
    """The test split's summary per replica (`steps.summarize_eval`)."""
    totals = None
    for data in self.feed.eval_data():
      part = self._p_eval(state, data)
      totals = part if totals is None else jax.tree.map(lambda a, b: a + b, totals, part)
    return steps.summarize_eval(parallel.unreplicate(totals))


def _fetch(chunks: list) -> dict:
  """Device 0's copy of the dispatches' metrics (they are equal), on the host: each (R, steps)."""
  return _concatenate(jax.device_get([jax.tree.map(lambda x: x[0], m) for m in chunks]))


def _concatenate(parts: list[dict]) -> dict:
  """Per-step metrics (R, steps) of consecutive parts, joined along the steps."""
  return jax.tree.map(lambda *arrays: np.concatenate(arrays, axis=1), *parts)


def large_image_hint(arch: str, image_shape) -> str | None:
  """The hint for a CIFAR backbone given images of LARGE_IMAGE_PIXELS or more a side."""
  side = min(image_shape[:2])
  if models.registry.backbone(arch).layout != "cifar" or side < LARGE_IMAGE_PIXELS:
    return None
  imagenet = [name for name in models.registry.arch_names()
              if models.registry.backbone(name).layout == "imagenet"]
  return (f"{arch} is a CIFAR backbone: it keeps {side}x{side} images at full resolution "
          f"through its first stage, about {(side / 32) ** 2:.0f}x its compute at 32x32; "
          f"the ImageNet layouts ({', '.join(imagenet)}) downsample by 4 in their stem.")


def first_divergence(diverged: np.ndarray) -> tuple[int, list[int]]:
  """The first step (0-based) at which any replica diverged, and the replicas that did then.

  `diverged` is bool (R, steps) with at least one True.
  """
  index = int(np.argmax(diverged.any(axis=0)))
  return index, np.flatnonzero(diverged[:, index]).tolist()


def divergence_message(epoch: int, steps_per_epoch: int, index: int, losses,
                       learning_rates, checkpoint_epoch: int | None,
                       checkpoint_directory: str, *, replicas: list[int],
                       seeds: list[int]) -> str:
  """What `DivergenceError` says: step `index` (0-based) of `epoch` (0-based) diverged.

  `replicas` are the ones that diverged at that step (0-based; the first one's
  `losses` are reported) of the run's replicas, whose seeds are `seeds`.
  `losses` and `learning_rates` are the epoch's per-step values.
  """
  loss = float(losses[index])
  if not math.isfinite(loss):
    what = f"train loss {loss}"
  elif loss > steps.DIVERGED_LOSS:
    what = f"train loss {loss:.3g}, above {steps.DIVERGED_LOSS:g}"
  else:
    what = f"train loss {loss:.4g}, but the parameters became infinite or NaN"
  saved = (f"the checkpoints up to epoch {checkpoint_epoch} in {checkpoint_directory} "
           "are from before it" if checkpoint_epoch is not None else
           "no checkpoint had been written")
  which = ", ".join(f"replica {k} (seed {seeds[k]})" for k in replicas)
  return (f"training diverged at step {epoch * steps_per_epoch + index + 1} (epoch "
          f"{epoch + 1}, step {index + 1} of {steps_per_epoch}) in {which} of "
          f"{len(seeds)}: {what}. The run stopped "
          f"before evaluating or saving epoch {epoch + 1}; {saved}. Lower "
          f"optimizer.learning_rate (step {index + 1} used {float(learning_rates[index]):g}) "
          "or check the data.")
