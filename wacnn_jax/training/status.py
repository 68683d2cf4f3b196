"""What a run says while it works: progress within an epoch, the ETA, the end.

    with StepProgress(steps, "epoch 3/160", enabled=True) as bar:
      bar.update(n)                         # a tqdm bar on a terminal, else a log line a minute
    clock = RunClock(first_epoch=0, num_epochs=160)
    clock.startup_seconds                   # process start -> here (process_seconds)
    clock.add_epoch(seconds, compile_seconds); clock.eta_seconds()
    log_summary(...)                        # "finished epoch 160/160 (...): best test top-1 ..."

Everything goes through absl logging (stderr; a notebook's cell output,
`log_output`), so that it reaches a log file when the output is redirected;
only the tqdm bar, which redraws a line, is kept to a terminal or a
notebook. Times are formatted by `duration`.
"""

from __future__ import annotations

import os
import sys
import time

from absl import logging

from wacnn_jax.training import log_output
# Seconds between progress lines within an epoch when the output is not a terminal.
LOG_INTERVAL_SECONDS = 60.0
# When this module was imported: where the process's start time cannot be read.
_IMPORTED_AT = time.monotonic()


def duration(seconds: float) -> str:
  """'42 s', '3 min 5 s', '2 h 10 min', '1 d 3 h': two units at most."""
  seconds = max(0.0, float(seconds))
  if seconds < 60:
    return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
  minutes, seconds = divmod(round(seconds), 60)
  if minutes < 60:
    return f"{minutes} min {seconds} s" if seconds else f"{minutes} min"
  hours, minutes = divmod(minutes, 60)
  if hours < 24:
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"
  days, hours = divmod(hours, 24)
  return f"{days} d {hours} h" if hours else f"{days} d"


class StepProgress:
  """Progress through `total` steps: a tqdm bar on an interactive stderr or in a notebook
  (`log_output.progress_bar`), otherwise one log
  line every `interval` seconds ('epoch 3/160: step 120 of 390, 1.9 steps/s, ~2 min 22 s
  left'). Disabled (`enabled=False`: processes other than 0) it says nothing.
  """

  def __init__(self, total: int, description: str, enabled: bool,
               interval: float = LOG_INTERVAL_SECONDS, interactive: bool | None = None,
               initial: int = 0):
    """`initial`: steps already done (an epoch resumed from a checkpoint inside it)."""
    self.total, self.description, self.interval = total, description, interval
    if interactive is None:
      interactive = sys.stderr.isatty() or log_output.in_notebook()
    self._bar = log_output.progress_bar(total=total, desc=description, unit="step", leave=False,
                          initial=initial, disable=not (enabled and interactive))
    self._log = enabled and not interactive
    self.initial = self.done = initial
    self._start = self._last_line = time.perf_counter()

  def update(self, steps: int) -> None:
    self._bar.update(steps)
    self.done += steps
    now = time.perf_counter()
    if self._log and now - self._last_line >= self.interval and self.done < self.total:
      self._last_line = now
      rate = (self.done - self.initial) / max(now - self._start, 1e-9)
      logging.info("%s: step %d of %d, %.2f steps/s, ~%s left", self.description, self.done,
                   self.total, rate, duration((self.total - self.done) / rate))

  def close(self) -> None:
    self._bar.close()

  def __enter__(self) -> "StepProgress":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def process_seconds() -> float:
  """Seconds since this process started: the interpreter's start, imports included.

  On Linux from the kernel's record of the process (/proc/self/stat's start
  time against /proc/uptime, both since boot, 10 ms ticks); elsewhere, or if
  those cannot be read, since wacnn_jax was imported (less than the truth by
  the interpreter's start and the imports before it).
  """
  try:
    with open("/proc/self/stat") as f:
      stat = f.read()
    with open("/proc/uptime") as f:
      uptime = float(f.read().split()[0])
    # Fields after the command name (which may hold spaces): state is field 3, starttime 22.
    start_ticks = int(stat[stat.rindex(")") + 2:].split()[19])
    seconds = uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    if seconds >= 0:
      return seconds
  except (OSError, ValueError, IndexError):
    pass
  return time.monotonic() - _IMPORTED_AT


class RunClock:
  """The run's expected time left: the epochs still to train at the mean time of those trained
  in this process (without their compile time).

  `first_epoch`: the epochs done before this process started (a resume).
  `startup_seconds`: the process's age when the clock was made, before the
  first epoch (imports, data, model, restore; `process_seconds`).
  """

  def __init__(self, first_epoch: int, num_epochs: int):
    self.first_epoch, self.num_epochs = first_epoch, num_epochs
    self.startup_seconds = process_seconds()
    self.start = self._epoch_start = time.perf_counter()
    self.epochs = 0
    self.steady_seconds = 0.0

  def start_epoch(self) -> None:
    self._epoch_start = time.perf_counter()

  def end_epoch(self, compile_seconds: float = 0.0) -> tuple[float, float]:
    """Ends the epoch `start_epoch` began: (its seconds, the start-up seconds to record
    with it: `startup_seconds` for the first epoch of this process, 0 after)."""
    seconds = time.perf_counter() - self._epoch_start
    startup = 0.0 if self.epochs else self.startup_seconds
    self.add_epoch(seconds, compile_seconds)
    return seconds, startup

  def add_epoch(self, seconds: float, compile_seconds: float = 0.0) -> None:
    self.epochs += 1
    self.steady_seconds += max(0.0, seconds - compile_seconds)

  def eta_seconds(self) -> float | None:
    """Seconds until `num_epochs`; None before the first epoch."""
    if not self.epochs:
      return None
    left = self.num_epochs - self.first_epoch - self.epochs
    return left * self.steady_seconds / self.epochs

  def elapsed(self) -> float:
    return time.perf_counter() - self.start


def log_summary(epoch: int, num_epochs: int, epochs_trained: int, seconds: float, best: float,
                best_epoch: int | None, final: float, checkpoint_directory: str,
                replicas: int = 1) -> None:
  """The run's last lines: where it stopped, what it reached, what it wrote where.

  `epoch`: the last epoch (1-based); `epochs_trained` of them in `seconds` by
  this process; `best` / `final`: test top-1 (means over `replicas`). The
  workdir is the checkpoint directory's parent.
  """
  logging.info(
      "finished epoch %d/%d (%d trained in %s): best test top-1 %.4f%s, final %.4f%s; "
      "checkpoints in %s", epoch, num_epochs, epochs_trained, duration(seconds), best,
      f" (epoch {best_epoch})" if best_epoch else "", final,
      f" (means over {replicas} replicas)" if replicas > 1 else "", checkpoint_directory)
  logging.info("wrote in %s: checkpoints/, metrics.jsonl, tensorboard/, config.json, "
               "dataset.json, model_summary.txt", os.path.dirname(checkpoint_directory))
