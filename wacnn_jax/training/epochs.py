"""An epoch on the devices: the data placed once, compiled train and eval calls.

`EpochRunner.train_epoch` runs an epoch of pmapped `steps.train_steps`
dispatches (a whole epoch per dispatch on GPU/TPU, one step on CPU; see
`parallel.Topology.loops_in_xla`) and returns its metrics as an `EpochTrain`;
`EpochRunner.evaluate` runs the test split through `steps.eval_batches`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable

from absl import logging
from flax import jax_utils
import jax
import numpy as np

from wacnn_jax import models
from wacnn_jax.data.dataset import Dataset
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
  seconds: float  # training time, without compilation
  compile_seconds: float

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
  """A run's data on the devices and its compiled train and eval functions.

  `to_devices(state)` puts the datasets (once) and a host state (R, ...) on
  the devices; `train_epoch` and `evaluate` take the replicated state.
  `seeds` are the replicas' seeds (their data orders).
  """

  def __init__(self, config, dataset: Dataset, topology: parallel.Topology,
               learning_rate_fn: Callable, steps_per_epoch: int, seeds: list[int]):
    self.config, self.dataset, self.topology = config, dataset, topology
    self.steps_per_epoch, self.seeds = steps_per_epoch, seeds
    self.per_device_batch = topology.per_device_batch(config.batch_size)
    # Steps per dispatch: the whole epoch as one XLA loop, or one step on CPU.
    self.chunk = config.steps_per_dispatch or (
        steps_per_epoch if topology.loops_in_xla else 1)
    self._p_train = steps.make_train_fn(config, dataset.preprocessing, learning_rate_fn,
                                        topology)
    self._p_eval = steps.make_eval_fn(config, dataset.num_classes,
                                      dataset.preprocessing.normalization, topology)
    self._compiled = {}  # chunk length -> compiled train function
    self._compile_seconds = 0.0
    self._train_data = self._test_data = None

  def to_devices(self, state: steps.TrainState) -> steps.TrainState:
    """Puts the datasets (once) and `state` (host, (R, ...)) on the devices."""
    if self._train_data is None:
      self._train_data = jax_utils.replicate(
          (self.dataset.train.images, self.dataset.train.labels), devices=self.topology.devices)
      self._test_data = parallel.shard_eval_data(self.dataset.test, self.topology,
                                                 self.config.eval_batch_size)
    return parallel.replicate_state(state, self.topology)

  def _train(self, state, indices):
    """One dispatch of `indices.shape[2]` steps, compiling (timed) a new chunk length first.

    Compiled with `steps.compiler_options()`. With several processes pmap's
    AOT executables take global shapes, so there the first call compiles
    (with XLA's default options), and its time counts as compile time.
    """
    num_steps = indices.shape[2]
    if num_steps not in self._compiled:
      start = time.perf_counter()
      if self.topology.process_count > 1:
        outputs = self._p_train(state, *self._train_data, indices)  # compiles, then dispatches
        self._compiled[num_steps] = self._p_train
        self._compile_seconds += time.perf_counter() - start
        return outputs
      self._compiled[num_steps] = self._p_train.lower(
          state, *self._train_data, indices).compile(compiler_options=steps.compiler_options())
      self._compile_seconds += time.perf_counter() - start
    return self._compiled[num_steps](state, *self._train_data, indices)

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

  def train_epoch(self, state, epoch: int, show_progress: bool):
    """Trains (0-based) `epoch`: returns the replicated state and an `EpochTrain`.

    Dispatches of `chunk` steps, one kept in flight while the host waits for
    the previous one (the progress, `status.StepProgress`, follows the device).
    """
    start, compile_before = time.perf_counter(), self._compile_seconds
    indices = np.stack([  # (local_devices, R, steps, per_device_batch)
        parallel.epoch_indices(len(self.dataset.train), epoch, seed, self.steps_per_epoch,
                               self.topology, self.per_device_batch)
        for seed in self.seeds], axis=1)
    chunks = []
    with status.StepProgress(self.steps_per_epoch, f"epoch {epoch + 1}/{self.config.num_epochs}",
                             show_progress) as bar:
      for begin in range(0, self.steps_per_epoch, self.chunk):
        state, chunk_metrics = self._train(state, indices[:, :, begin:begin + self.chunk])
        if chunks:
          jax.block_until_ready(chunks[-1])
          bar.update(chunks[-1]["count"].shape[2])
        chunks.append(chunk_metrics)
      # Device 0's copy (they are equal): each metric (R, steps).
      step_metrics = jax.tree.map(
          lambda *parts: np.concatenate(parts, axis=1),
          *jax.device_get([jax.tree.map(lambda x: x[0], m) for m in chunks]))
      bar.update(chunks[-1]["count"].shape[2])
    compile_seconds = self._compile_seconds - compile_before
    images = step_metrics["count"].sum(axis=1)
    return state, EpochTrain(
        losses=step_metrics["loss_sum"] / step_metrics["count"],
        learning_rates=step_metrics["learning_rate"][0],
        diverged=step_metrics["diverged"],
        loss=step_metrics["loss_sum"].sum(axis=1) / images,
        accuracy=step_metrics["correct"].sum(axis=1) / images,
        images=images,
        seconds=time.perf_counter() - start - compile_seconds,
        compile_seconds=compile_seconds)

  def evaluate(self, state) -> list[dict]:
    """The test split's summary per replica (`steps.summarize_eval`)."""
    return steps.summarize_eval(parallel.unreplicate(self._p_eval(state, self._test_data)))


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
