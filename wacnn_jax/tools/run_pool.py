"""Training runs as child processes: several at once, stopped cleanly at a deadline or on a signal.

`RunPool(slots)` runs up to `slots` commands at the same time, each in its
own process group with its output appended to `<workdir>/train.log`:

- **The accelerator and the host are split between them.** With more than
  one slot, every child gets `XLA_PYTHON_CLIENT_MEM_FRACTION` = 0.9 / slots
  of the GPU memory (whether it preallocates or, with
  `XLA_PYTHON_CLIENT_PREALLOCATE=false`, grows into it), and after
  `split_cores()` (for runs that compute on an accelerator) the child of
  slot k runs on the k-th of `slots` equal shares of this process's CPU
  cores (`os.sched_setaffinity`; XLA:CPU and the JPEG decoding size their
  thread pools by the cores they may use). Runs that compute on the CPU
  share all cores instead: XLA:CPU splits a computation by its thread
  count, so on fewer cores a run computes other roundings (measured: train
  loss 1.4806280 on 2 cores, 1.4806186 on 1), while sharing keeps every
  run bit for bit what it is alone. One slot leaves the environment and the
  cores as they are.
- **Stopping is always the same.** `stop_all` sends SIGTERM to every child's
  process group, waits up to `STOP_SECONDS` for them to end (a training run
  resumes from its last checkpoint however it ended), then kills what is
  left, so no child outlives the pool.
- **Signals.** Inside `stop_on_signals(pool)`, SIGINT, SIGTERM and SIGHUP
  only mark the pool as interrupted; `wait` raises `Interrupted` at its next
  poll. The children never see the terminal's Ctrl-C or hang-up themselves
  (their own session); the caller stops them with `stop_all` and records them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import time
from typing import Iterator, Sequence

POLL_SECONDS = 0.2
STOP_SECONDS = 30.0
# The share of the GPU memory that all children of a pool take together.
GPU_MEMORY_SHARE = 0.9


class Interrupted(Exception):
  """A signal arrived (`stop_on_signals`): `signum` is the signal; `stopped`, the runs it stopped."""

  def __init__(self, signum: int):
    super().__init__(signal.Signals(signum).name)
    self.signum = signum
    self.stopped: list[str] = []


@dataclasses.dataclass(frozen=True)
class Job:
  """One training run to start: what it is called, where it writes, its command line."""

  label: str
  workdir: str
  command: tuple[str, ...]


@dataclasses.dataclass
class Ended:
  """A child that ended: 'finished' (exit 0), 'stopped' (by `stop_all`) or 'failed'."""

  job: Job
  outcome: str
  returncode: int
  wall_seconds: float
  alone_seconds: float  # of wall_seconds, how long no other child of the pool ran


@dataclasses.dataclass
class _Child:
  job: Job
  slot: int
  process: subprocess.Popen
  log: object
  start: float
  alone_seconds: float = 0.0
  stopping: bool = False


def core_shares(cores: Sequence[int], slots: int) -> list[tuple[int, ...]]:
  """`cores` split into `slots` contiguous shares as equal as can be; [] when there are fewer cores."""
  cores = sorted(cores)
  if slots <= 1 or len(cores) < slots:
    return []
  bounds = [round(k * len(cores) / slots) for k in range(slots + 1)]
  return [tuple(cores[bounds[k]:bounds[k + 1]]) for k in range(slots)]


def child_environment(base: dict[str, str], slots: int, xla_flags: str = "") -> dict[str, str]:
  """The environment of every child: `base`, unbuffered output, `xla_flags` added to
  XLA_FLAGS, and with several slots each child's share of the GPU memory."""
  env = dict(base, PYTHONUNBUFFERED="1")
  if xla_flags:
    env["XLA_FLAGS"] = f"{base.get('XLA_FLAGS', '')} {xla_flags}".strip()
  if slots > 1:
    env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{GPU_MEMORY_SHARE / slots:.3f}"
  return env


class RunPool:
  """Up to `slots` child processes at once (see the module docstring)."""

  def __init__(self, slots: int, env: dict[str, str], cwd: str):
    self.slots = slots
    self.env = env
    self.cwd = cwd
    self.cores: list[tuple[int, ...]] = []  # per slot, after split_cores()
    self.signals: list[int] = []  # signals received inside `stop_on_signals`
    self._children: list[_Child] = []
    self._last_poll = time.monotonic()

  def split_cores(self) -> None:
    """From now on, each slot's child runs on its own share of this process's CPU cores."""
    self.cores = core_shares(os.sched_getaffinity(0), self.slots)

  @property
  def running(self) -> list[Job]:
    return [c.job for c in self._children]

  @property
  def has_free_slot(self) -> bool:
    return len(self._children) < self.slots

  def start(self, job: Job) -> None:
    """Starts `job` in a free slot, in its own process group; output to `<workdir>/train.log`."""
    slot = min(set(range(self.slots)) - {c.slot for c in self._children})
    self._account()
    os.makedirs(job.workdir, exist_ok=True)
    log = open(os.path.join(job.workdir, "train.log"), "a")  # pylint: disable=consider-using-with
    process = subprocess.Popen(job.command, stdout=log, stderr=subprocess.STDOUT, cwd=self.cwd,
                               env=self.env, start_new_session=True)
    if self.cores:
      # Right after the exec, before the interpreter has started a thread: every
      # thread the child starts inherits it.
      with contextlib.suppress(OSError):
        os.sched_setaffinity(process.pid, self.cores[slot])
    self._children.append(_Child(job, slot, process, log, time.monotonic()))

  def _account(self) -> None:
    now = time.monotonic()
    if len(self._children) == 1:
      self._children[0].alone_seconds += now - self._last_poll
    self._last_poll = now

  def _collect(self) -> list[Ended]:
    """The children that have ended since the last call (removed from the pool)."""
    self._account()
    ended = []
    for child in list(self._children):
      returncode = child.process.poll()
      if returncode is None:
        continue
      child.log.close()
      self._children.remove(child)
      outcome = ("finished" if returncode == 0 else "stopped" if child.stopping else "failed")
      ended.append(Ended(child.job, outcome, returncode, time.monotonic() - child.start,
                         child.alone_seconds))
    return ended

  def wait(self, deadline: float | None) -> list[Ended]:
    """Waits until a child ends (returns those that ended) or `deadline` (time.time())
    passes (stops all and returns them); raises `Interrupted` on a signal."""
    while True:
      if self.signals:
        raise Interrupted(self.signals[0])
      ended = self._collect()
      if ended:
        return ended
      if deadline is not None and time.time() >= deadline:
        return self.stop_all()
      time.sleep(POLL_SECONDS)

  def stop_all(self) -> list[Ended]:
    """SIGTERM to every child's process group, up to STOP_SECONDS to end, then SIGKILL.

    A further signal received while waiting kills the rest at once. Returns
    every child, in the order they were started (those that finished meanwhile
    as 'finished').
    """
    signals_before, order = len(self.signals), [c.job for c in self._children]
    for child in self._children:
      child.stopping = True
      with contextlib.suppress(ProcessLookupError):
        os.killpg(child.process.pid, signal.SIGTERM)
    ended = []
    give_up = time.monotonic() + STOP_SECONDS
    while self._children:
      ended += self._collect()
      if not self._children:
        break
      if time.monotonic() >= give_up or len(self.signals) > signals_before:
        for child in self._children:
          with contextlib.suppress(ProcessLookupError):
            os.killpg(child.process.pid, signal.SIGKILL)
        for child in self._children:
          child.process.wait()
      else:
        time.sleep(POLL_SECONDS)
    return sorted(ended, key=lambda e: order.index(e.job))


@contextlib.contextmanager
def stop_on_signals(pool: RunPool) -> Iterator[None]:
  """Inside the block, SIGINT, SIGTERM and SIGHUP (a closed terminal; unless ignored, as under
  nohup) append to `pool.signals`; the previous handlers after it."""

  def note(signum, frame):
    del frame
    pool.signals.append(signum)

  handled = [signal.SIGINT, signal.SIGTERM]
  if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
    handled.append(signal.SIGHUP)
  previous = {s: signal.signal(s, note) for s in handled}
  try:
    yield
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
