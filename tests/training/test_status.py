"""What a run says while it works (wacnn_jax/status.py): progress lines, the ETA, the summary."""

import logging
import subprocess
import sys
import time

import pytest

from tests.helpers import REPO_ROOT
from wacnn_jax.training import status


@pytest.mark.parametrize("seconds, text", [
    (4.26, "4.3 s"), (42, "42 s"), (185, "3 min 5 s"), (7200, "2 h"), (7800, "2 h 10 min"),
    (97200, "1 d 3 h")])
def test_duration(seconds, text):
  assert status.duration(seconds) == text


def test_progress_goes_to_the_log_when_not_a_terminal(caplog):
  caplog.set_level(logging.INFO)
  with status.StepProgress(10, "epoch 3/160", enabled=True, interval=0.0,
                           interactive=False) as progress:
    for _ in range(10):
      progress.update(1)
  lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch 3/160")]
  assert len(lines) == 9  # every update but the last (the epoch line follows)
  assert lines[0].startswith("epoch 3/160: step 1 of 10, ") and lines[0].endswith(" left")


def test_progress_is_quiet_on_a_terminal_or_when_disabled(caplog):
  caplog.set_level(logging.INFO)
  for interactive, enabled in ((True, True), (False, False)):
    with status.StepProgress(5, "epoch 1/2", enabled=enabled, interval=0.0,
                             interactive=interactive) as progress:
      progress.update(5)
  assert not [r for r in caplog.records if "step" in r.getMessage()]


def test_run_clock_extrapolates_the_steady_epochs():
  clock = status.RunClock(first_epoch=10, num_epochs=20)
  assert clock.eta_seconds() is None
  clock.add_epoch(30.0, compile_seconds=20.0)  # 10 s without compilation
  clock.add_epoch(12.0)
  assert clock.eta_seconds() == pytest.approx(8 * 11.0)


# A fresh interpreter that sleeps, then reports its age (status.process_seconds) and how long
# the sleep took by its own clock.
AGE_PROGRAM = """
import time
start = time.monotonic()
time.sleep(0.5)
from wacnn_jax.training import status
print(status.process_seconds(), time.monotonic() - start)
"""


def test_process_seconds_counts_from_the_process_start_imports_included():
  parent_start = time.monotonic()
  out = subprocess.run([sys.executable, "-c", AGE_PROGRAM], capture_output=True, text=True,
                       check=True, cwd=REPO_ROOT).stdout
  parent_seconds = time.monotonic() - parent_start
  age, slept = map(float, out.split())
  # At least what the child measured itself (a 10 ms tick of rounding allowed), at most
  # the parent's time around the whole child.
  assert slept - 0.02 <= age <= parent_seconds + 0.02
  if sys.platform.startswith("linux"):  # the kernel's record includes the interpreter's start
    assert age > slept


def test_run_clock_records_the_process_age():
  before = status.process_seconds()
  clock = status.RunClock(first_epoch=0, num_epochs=1)
  assert before <= clock.startup_seconds <= status.process_seconds()
