"""What each train dispatch and evaluation gets: the batches of the memory or the stream pipeline.

    feed = feeds.create(config, dataset, topology, seeds, steps_per_epoch)
    feed.to_devices()
    images, labels = feed.train_chunk(state, epoch, begin, count)   # (devices, R, S, b, ...)
    for data in feed.eval_data(): ...                               # parallel.EvalData chunks
    feed.position()   # what a checkpoint saves of the feed (None: nothing)
    feed.close()

Both feeds give the compiled train step (`steps.train_steps`) the same
arguments: augmented uint8 images (local_devices, R, S, b, H, W, C) and
labels (local_devices, R, S, b) on the devices, R replicas (seeds), S steps,
b images per device. The epoch loop (`epochs.EpochRunner`) does not know which
feed it has.

- `MemoryFeed` (`data.pipeline` "memory": the dataset in host memory): the
  training set is put on every local device once, and each dispatch's batches
  are gathered and augmented there (`steps.gather_batches`), from indices of
  one permutation per (replica seed, epoch) (`parallel.epoch_indices`); the
  padded test split is sharded over the devices once.
- `StreamFeed` (`data.pipeline` "stream"), in `stream_feed`: batches read,
  decoded and augmented by worker processes (`data.stream_loaders`), put on
  the devices as they come; a checkpoint saves its position.
"""

from __future__ import annotations

import time

from flax import jax_utils
import jax
import numpy as np

from wacnn_jax.data.dataset import Dataset
from wacnn_jax.training import parallel
from wacnn_jax.training import steps


class MemoryFeed:
  """The memory pipeline: the splits on every device, batches gathered and augmented there."""

  def __init__(self, config, dataset: Dataset, topology: parallel.Topology, seeds: list[int],
               steps_per_epoch: int):
    self.dataset, self.topology, self.seeds = dataset, topology, seeds
    self.steps_per_epoch = steps_per_epoch
    self.eval_batch_size = config.eval_batch_size
    self.per_device_batch = topology.per_device_batch(config.batch_size)
    self._gather = steps.make_gather_fn(dataset.preprocessing, topology)
    self._train_data = self._test_data = None
    self._indices = (None, None)  # (epoch, its indices)
    self.compile_seconds = 0.0  # of the gather function (each chunk length once)
    self._compiled = set()

  @property
  def default_chunk(self) -> int:
    """Steps per dispatch by default: the whole epoch as one XLA loop, or one step on CPU."""
    return self.steps_per_epoch if self.topology.loops_in_xla else 1

  def to_devices(self) -> None:
    """Puts the training set on every local device and shards the padded test split (once)."""
    if self._train_data is None:
      self._train_data = jax_utils.replicate(
          (self.dataset.train.images, self.dataset.train.labels), devices=self.topology.devices)
      self._test_data = parallel.shard_eval_data(self.dataset.test, self.topology,
                                                 self.eval_batch_size)

  def _epoch_indices(self, epoch: int) -> np.ndarray:
    """(local_devices, R, steps, per_device_batch): each replica's permutation of (0-based)
    `epoch`."""
    if self._indices[0] != epoch:
      self._indices = (epoch, np.stack([
          parallel.epoch_indices(len(self.dataset.train), epoch, seed, self.steps_per_epoch,
                                 self.topology, self.per_device_batch)
          for seed in self.seeds], axis=1))
    return self._indices[1]

  def train_chunk(self, state, epoch: int, begin: int, count: int):
    """Steps begin .. begin + count - 1 of `epoch`: (images, labels) on the devices, augmented
    with the keys of `state`'s steps (`state` replicated, at step `begin` of the epoch)."""
    indices = self._epoch_indices(epoch)[:, :, begin:begin + count]
    if count not in self._compiled:
      start = time.perf_counter()
      jax.block_until_ready(self._gather(state.rng, state.step, *self._train_data, indices))
      self._compiled.add(count)
      self.compile_seconds += time.perf_counter() - start
    return self._gather(state.rng, state.step, *self._train_data, indices)

  def eval_data(self):
    """The test split's EvalData, in one piece."""
    yield self._test_data

  def position(self) -> None:
    """What a checkpoint saves of the feed: nothing (an epoch's batches follow from its seed)."""
    return None

  def check_position(self, position, step: int) -> None:
    del position, step

  def close(self) -> None:
    """(Nothing runs beside the devices.)"""


def create(config, dataset: Dataset, topology: parallel.Topology, seeds: list[int],
           steps_per_epoch: int):
  """The feed of `dataset`'s pipeline (held in memory, or streamed)."""
  if not dataset.streamed:
    return MemoryFeed(config, dataset, topology, seeds, steps_per_epoch)
  from wacnn_jax.training import stream_feed  # pylint: disable=import-outside-toplevel
  return stream_feed.StreamFeed(config, dataset, topology, seeds, steps_per_epoch)
