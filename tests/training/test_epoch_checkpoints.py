"""Checkpoints inside an epoch (wacnn_jax.training.epoch_checkpoints): where they fall, how an
epoch is cut into dispatches around them, and their meta read back."""

import numpy as np

from wacnn_jax.training import epoch_checkpoints
from wacnn_jax.training import resume


def test_save_points_fall_on_global_multiples_strictly_inside_epochs():
  assert epoch_checkpoints.save_points(0, 8, 3) == {3, 6}
  assert epoch_checkpoints.save_points(1, 8, 3) == {1, 4, 7}  # global steps 9, 12, 15
  assert epoch_checkpoints.save_points(0, 8, 4) == {4}  # not 8: the epoch's end saves anyway
  assert epoch_checkpoints.save_points(2, 8, 0) == set()


def test_dispatches_cover_the_epoch_once_and_end_at_save_points():
  for first, chunk, save_after in [(0, 1, set()), (0, 8, {3, 6}), (3, 5, {3, 6}),
                                   (2, 100, {1, 4, 7}), (7, 2, set())]:
    ranges = list(epoch_checkpoints.dispatches(first, 8, chunk, save_after))
    steps = [s for begin, count in ranges for s in range(begin, begin + count)]
    assert steps == list(range(first, 8))
    ends = {begin + count for begin, count in ranges}
    assert {k for k in save_after if k > first} <= ends
    assert all(count <= chunk for _, count in ranges)


def test_meta_inside_an_epoch_reads_back():
  progress = resume.Progress(2, np.array([0.5, 0.6]), 0.55,
                             last_test_accuracy=np.array([0.4, 0.5]))
  metrics = {"loss_sum": np.ones((2, 3), np.float32), "correct": np.ones((2, 3), np.int32),
             "count": np.full((2, 3), 64, np.int32), "learning_rate": np.full((2, 3), 0.1, np.float32),
             "diverged": np.zeros((2, 3), bool)}
  meta = epoch_checkpoints.within_epoch_meta(progress, 2, 3, metrics)
  assert meta["epoch"] == 2 and meta["epoch_step"] == 3
  assert meta["test_accuracy"] == 0.45 and meta["replica_best_test_accuracy"] == [0.5, 0.6]
  start = epoch_checkpoints.EpochStart.from_meta(meta)
  assert start.steps == 3
  for name, array in metrics.items():
    np.testing.assert_array_equal(start.metrics[name], array)
    assert start.metrics[name].dtype == epoch_checkpoints.METRIC_DTYPES[name]
  assert epoch_checkpoints.EpochStart.from_meta({"epoch": 2}).steps == 0
