"""Which images each process reads for each step: the stream pipeline's plan, a pure function.

    plan = TrainPlan(num_records=50000, seeds=(0,), batch=128, steps_per_epoch=390)
    plan.records(replica=0, step=391)    # int64 (128,): this process's images of that step
    plan.rng(replica=0, step=391)        # the NumPy Generator of that batch's augmentation
    indices, mask = eval_layout(10000, per_device=50, local_devices=1)   # (1, nb, 50) each

The batch of every (replica, step) follows from the plan alone, so a run
resumed at any step reads exactly the batches an uninterrupted one reads,
whatever the number of worker processes. Per-host shards: the records are
dealt to the `process_count` processes once, by a fixed permutation (seed 0;
the N mod process_count left over are never read); each process reads only
its shard, in a new permutation of it every epoch (from the replica's seed
and the epoch), `batch` images per step, dropping the rest of the shard. In
an epoch whose steps cover the shard (N divisible by the global batch) every
image is read once, by one process.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

SHARD_SEED = 0


@dataclasses.dataclass(frozen=True)
class TrainPlan:
  """The training batches of one process: `batch` images per step and replica (seed)."""

  num_records: int
  seeds: tuple[int, ...]
  batch: int  # images per step and replica on this process (all its devices)
  steps_per_epoch: int
  process_index: int = 0
  process_count: int = 1

  def __post_init__(self):
    if self.steps_per_epoch * self.batch > self.num_records // self.process_count:
      raise ValueError(
          f"{self.steps_per_epoch} steps of {self.batch} images need more than the "
          f"{self.num_records // self.process_count} images of a process's shard.")

  @functools.cached_property
  def shard(self) -> np.ndarray:
    """int64 (N // process_count,): the records this process reads."""
    dealt = np.random.default_rng(SHARD_SEED).permutation(self.num_records)
    dealt = dealt[:self.num_records // self.process_count * self.process_count]
    return dealt[self.process_index::self.process_count]

  @functools.lru_cache(maxsize=4)
  def _epoch_order(self, replica: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([self.seeds[replica], epoch]).permutation(len(self.shard))

  def records(self, replica: int, step: int) -> np.ndarray:
    """int64 (batch,): the records replica `replica` reads at (0-based, global) `step`."""
    epoch, position = divmod(step, self.steps_per_epoch)
    order = self._epoch_order(replica, epoch)
    return self.shard[order[position * self.batch:(position + 1) * self.batch]]

  def rng(self, replica: int, step: int) -> np.random.Generator:
    """The Generator of the augmentation of replica `replica`'s batch at `step`."""
    return np.random.default_rng([self.seeds[replica], step, self.process_index, 1])


def eval_layout(num_records: int, per_device: int, local_devices: int, process_index: int = 0,
                process_count: int = 1) -> tuple[np.ndarray, np.ndarray]:
  """This process's evaluation batches: record indices int64 and mask bool, each
  (local_devices, num_batches, per_device).

  The split is padded to whole batches of `per_device` x all devices (padding:
  index 0, mask False) so that every record is evaluated exactly once; each
  process takes its contiguous share of the padded order, each of its devices
  a contiguous part of that.
  """
  block = per_device * local_devices * process_count
  num_batches = max(1, math.ceil(num_records / block))
  total = num_batches * block
  order = np.arange(total)
  mask = order < num_records
  per_host = total // process_count
  host = slice(process_index * per_host, (process_index + 1) * per_host)
  shape = (local_devices, num_batches, per_device)
  return (np.where(mask, order, 0)[host].reshape(shape), mask[host].reshape(shape))
