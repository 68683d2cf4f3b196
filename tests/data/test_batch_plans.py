"""The stream pipeline's plan (wacnn_jax.data.batch_plans): which images each process reads.

Checked by counting, against numpy: per-host shards that partition the
dataset, every image once per epoch and replica, new orders per epoch and
seed, the same batches whatever asks for them, and evaluation batches that
cover the test split once across processes and devices.
"""

import numpy as np
import pytest

from wacnn_jax.data import batch_plans


def epoch_reads(plan, replica, epoch):
  return np.concatenate([plan.records(replica, epoch * plan.steps_per_epoch + s)
                         for s in range(plan.steps_per_epoch)])


@pytest.mark.parametrize("processes", [1, 2, 3])
def test_processes_read_the_dataset_once_per_epoch(processes):
  n, batch = 96, 8  # global batch 8 * processes, 96 divisible by it
  steps = n // (batch * processes)
  plans = [batch_plans.TrainPlan(n, (0, 5), batch, steps, p, processes)
           for p in range(processes)]
  for replica in (0, 1):
    for epoch in (0, 1):
      reads = np.concatenate([epoch_reads(plan, replica, epoch) for plan in plans])
      np.testing.assert_array_equal(np.sort(reads), np.arange(n))
  # Each process reads only its shard, every epoch.
  shards = [set(plan.shard.tolist()) for plan in plans]
  for plan, shard in zip(plans, shards):
    assert set(epoch_reads(plan, 0, 3).tolist()) == shard
  assert sum(map(len, shards)) == n


def test_orders_differ_by_epoch_and_seed_and_repeat_exactly():
  plan = batch_plans.TrainPlan(100, (0, 1), 10, 10)
  first = epoch_reads(plan, 0, 0)
  assert not np.array_equal(first, epoch_reads(plan, 0, 1))
  assert not np.array_equal(first, epoch_reads(plan, 1, 0))
  again = batch_plans.TrainPlan(100, (0, 1), 10, 10)
  np.testing.assert_array_equal(epoch_reads(again, 0, 0), first)  # a fresh plan: the same
  np.testing.assert_array_equal(plan.rng(0, 7).random(4), again.rng(0, 7).random(4))
  assert not np.array_equal(plan.rng(0, 7).random(4), plan.rng(0, 8).random(4))
  assert not np.array_equal(plan.rng(0, 7).random(4), plan.rng(1, 7).random(4))


def test_the_rest_of_a_shard_is_dropped_and_too_many_steps_are_refused():
  plan = batch_plans.TrainPlan(103, (0,), 10, 5, 0, 2)  # shards of 51; 50 read per epoch
  reads = epoch_reads(plan, 0, 0)
  assert len(set(reads.tolist())) == 50 and set(reads.tolist()) <= set(plan.shard.tolist())
  with pytest.raises(ValueError, match="6 steps of 10 images need more than the 51 images"):
    batch_plans.TrainPlan(103, (0,), 10, 6, 0, 2)


@pytest.mark.parametrize("n, per_device, devices, processes",
                         [(10, 3, 1, 1), (10, 3, 2, 2), (100, 8, 2, 1), (7, 50, 4, 2)])
def test_eval_layout_covers_the_split_once(n, per_device, devices, processes):
  layouts = [batch_plans.eval_layout(n, per_device, devices, p, processes)
             for p in range(processes)]
  batches = {indices.shape[1] for indices, _ in layouts}
  assert len(batches) == 1  # every process runs the same number of batches
  for indices, mask in layouts:
    assert indices.shape == mask.shape == (devices, batches.pop() if not batches else
                                           indices.shape[1], per_device)
    batches.add(indices.shape[1])
  real = np.concatenate([indices[mask] for indices, mask in layouts])
  np.testing.assert_array_equal(np.sort(real), np.arange(n))
