"""An evaluation that diverges is named in the log and in metrics.jsonl (`test_diverged`)."""

import logging
import math

import numpy as np

from wacnn_jax.training import epochs
from wacnn_jax.training import metrics
from wacnn_jax.training import resume


class _Runner:
  steps_per_epoch, seeds = 4, [0, 1]


def _records(test_losses):
  train = epochs.EpochTrain(
      losses=np.ones((2, 4)), learning_rates=np.full(4, 0.1), diverged=np.zeros((2, 4), bool),
      loss=np.ones(2), accuracy=np.full(2, 0.5), images=np.full(2, 32), seconds=1.0,
      compile_seconds=0.0)
  tests = [{"loss": loss, "accuracy": 0.1, "top5_accuracy": 0.5, "count": 12}
           for loss in test_losses]
  progress = resume.Progress(1, np.zeros(2))
  return metrics.epoch_records(0, _Runner(), train, tests, progress, 2.0)


def test_a_diverged_evaluation_is_recorded_and_named(caplog):
  records = _records([959664640491.0, math.nan])
  assert [r["test_diverged"] for r in records] == [True, True]
  caplog.set_level(logging.INFO)
  metrics.log_records(records, num_epochs=3)
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warnings) == 2
  assert "the test loss 9.597e+11 is not finite or above 10000: the evaluation diverged" in (
      warnings[0])


def test_a_sound_evaluation_is_not_flagged(caplog):
  records = _records([2.1, 9999.0])
  assert [r["test_diverged"] for r in records] == [False, False]
  caplog.set_level(logging.INFO)
  metrics.log_records(records, num_epochs=3)
  assert not [r for r in caplog.records if r.levelno == logging.WARNING]
