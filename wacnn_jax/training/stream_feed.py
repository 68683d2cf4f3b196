"""The stream pipeline's feed: batches from Grain worker processes, put on the devices as they come.

    feed = StreamFeed(config, dataset, topology, seeds, steps_per_epoch)
    images, labels = feed.train_chunk(state, epoch, begin, count)   # (devices, R, S, b, ...)
    feed.position()    # what a checkpoint saves: the next step, the plan (`StreamPosition`)

The batches of every step follow from the plan (`data.batch_plans.TrainPlan`:
this process's shard, a permutation per replica seed and epoch), so the feed
starts (or restarts, after a restore) its workers at whatever step the epoch
loop asks for, and a run resumed at any step reads exactly the batches an
uninterrupted one reads. A thread keeps `PREFETCH_STEPS` steps ready on the
devices while they train. Evaluation reads the test split through a
second set of workers, one batch per dispatch.
"""

from __future__ import annotations

import queue
import threading

import jax
import jax.numpy as jnp
import numpy as np

from wacnn_jax.data import batch_plans
from wacnn_jax.data.dataset import Dataset, DatasetError
from wacnn_jax.data import stream_loaders
from wacnn_jax.training import parallel
from wacnn_jax.training.stream_positions import StreamPosition

# Steps made ready on the host ahead of the devices.
PREFETCH_STEPS = 4


class _Prefetcher:
  """A thread moving the Grain iterator's batches into a bounded queue, or its error."""

  def __init__(self, iterator, steps: int, reshape):
    self._iterator, self._reshape = iterator, reshape
    self._queue = queue.Queue(maxsize=PREFETCH_STEPS)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, args=(steps,), daemon=True,
                                    name="stream prefetch")
    self._thread.start()

  def _run(self, steps: int) -> None:
    try:
      for _ in range(steps):
        batch = self._reshape(stream_loaders.next_batch(self._iterator))
        while not self._stop.is_set():
          try:
            self._queue.put(batch, timeout=0.1)
            break
          except queue.Full:
            continue
        if self._stop.is_set():
          return
    except BaseException as e:  # pylint: disable=broad-except  (re-raised by `take`)
      self._queue.put(e)

  def take(self):
    item = self._queue.get()
    if isinstance(item, BaseException):
      raise item
    return item

  def close(self) -> None:
    self._stop.set()
    while self._thread.is_alive():
      try:
        self._queue.get(timeout=0.1)
      except queue.Empty:
        pass
    self._iterator.close()


class StreamFeed:
  """The stream pipeline's feed (see `feeds`)."""

  def __init__(self, config, dataset: Dataset, topology: parallel.Topology, seeds: list[int],
               steps_per_epoch: int):
    self.dataset, self.topology, self.steps_per_epoch = dataset, topology, steps_per_epoch
    self.total_steps = config.num_epochs * steps_per_epoch
    self.workers = config.data.get("workers") or stream_loaders.default_workers()
    self.plan = batch_plans.TrainPlan(
        len(dataset.train), tuple(seeds),
        topology.per_device_batch(config.batch_size) * topology.local_device_count,
        steps_per_epoch, topology.process_index, topology.process_count)
    indices, mask = batch_plans.eval_layout(
        len(dataset.test), parallel.eval_batch_size(config.eval_batch_size, topology),
        topology.local_device_count, topology.process_index, topology.process_count)
    self._eval_batches = stream_loaders.EvalBatches(dataset.test, indices, mask)
    self._prefetcher, self._next_step = None, None
    self._eval_iterator = None
    self.compile_seconds = 0.0  # (nothing to compile on the host side)

  default_chunk = 1  # a dispatch per step: the batches arrive one by one

  def to_devices(self) -> None:
    """(Nothing is held on the devices; the workers start with the first chunk.)"""

  def _to_devices(self, batch: dict) -> tuple[jax.Array, jax.Array]:
    """(R, b_local, ...) host arrays -> (local_devices, R, 1, b, ...) on the devices: each
    device's part of a step (in the prefetch thread: the copy overlaps the devices' work)."""
    devices = self.topology.local_device_count

    def layout(array):
      replicas, local = array.shape[:2]
      array = np.asarray(array).reshape((replicas, devices, local // devices) + array.shape[2:])
      array = np.ascontiguousarray(np.moveaxis(array, 1, 0)[:, :, None])
      return parallel.put_sharded(array, self.topology.devices)

    return layout(batch["images"]), layout(batch["labels"])

  def _start(self, step: int) -> None:
    """(Re)starts the workers at (0-based, global) `step`."""
    self._stop_training_workers()
    batches = stream_loaders.TrainBatches(
        self.dataset.train, self.plan, self.dataset.preprocessing.augmentation, step,
        self.total_steps)
    # (Repeated: Grain's workers leave shared memory behind when they reach a dataset's end.)
    self._prefetcher = _Prefetcher(stream_loaders.iterate(batches, self.workers, repeat=True),
                                   self.total_steps - step, self._to_devices)
    self._next_step = step

  def train_chunk(self, state, epoch: int, begin: int, count: int):
    """Steps begin .. begin + count - 1 of `epoch`: (images, labels) on the devices."""
    del state  # (the workers augment, from the plan's generators)
    step = epoch * self.steps_per_epoch + begin
    if step != self._next_step:
      self._start(step)
    parts = [self._prefetcher.take() for _ in range(count)]
    self._next_step += count
    if count == 1:
      return parts[0]
    return tuple(jnp.concatenate(arrays, axis=2) for arrays in zip(*parts))

  def eval_data(self):
    """The test split's EvalData, one batch (over the devices) at a time."""
    if self._eval_iterator is None:  # (half the workers: evaluation is once an epoch)
      self._eval_iterator = stream_loaders.iterate(self._eval_batches,
                                                   max(1, self.workers // 2), repeat=True)
    for _ in range(len(self._eval_batches)):
      batch = stream_loaders.next_batch(self._eval_iterator)
      yield parallel.EvalData(*(
          parallel.put_sharded(np.asarray(batch[key])[:, None], self.topology.devices)
          for key in ("images", "labels", "mask")))

  def position(self) -> StreamPosition:
    """Where the stream stands (the next step the epoch loop will ask for)."""
    return StreamPosition(self._next_step or 0, repr(self.plan),
                          self.dataset.train.checksum())

  def check_position(self, position: StreamPosition, step: int) -> None:
    """DatasetError unless a restored `position` is of this plan and split, at `step`."""
    if (position.plan, position.train_checksum) != (repr(self.plan),
                                                     self.dataset.train.checksum()):
      raise DatasetError(
          "the checkpoint's stream position belongs to another plan or listing "
          f"({position.plan}) than this run's ({self.plan!r}); use a new --workdir.")
    if position.next_step != step:
      raise DatasetError(
          f"the checkpoint's stream position (step {position.next_step}) is not its state's "
          f"(step {step}): the checkpoint is inconsistent; remove it to resume from the one "
          "before.")

  def _stop_training_workers(self) -> None:
    if self._prefetcher is not None:
      self._prefetcher.close()
      self._prefetcher, self._next_step = None, None

  def close(self) -> None:
    """Stops every worker process (training's and evaluation's)."""
    self._stop_training_workers()
    if self._eval_iterator is not None:
      self._eval_iterator.close()
      self._eval_iterator = None
