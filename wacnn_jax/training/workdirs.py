"""The run's workdir: checked before any work, and locked while a run trains.

- `check_usable(workdir)` refuses an existing workdir that is a file or read-only,
  creating nothing; `prepare(workdir)` creates the workdir, or checks the existing
  one, before anything slow happens.
- `check_exists(workdir)`: the workdir of a finished run, for the tools that read one
  (evaluate); a missing one is refused before anything is written.
- `lock(workdir)` holds an exclusive `fcntl.flock` on `workdir/.lock` while a
  run trains, so that a second run in the same workdir is refused (naming the
  process and host that hold it) instead of interleaving metrics and
  checkpoints. The operating system releases the lock when the process ends,
  however it ends (kill -9 included), so a stale `.lock` file never blocks.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import tempfile
from typing import Iterator

LOCK_FILE = ".lock"


class WorkdirError(RuntimeError):
  """The workdir cannot be used: not a directory, not writable, or in use by another run."""


def check_usable(workdir: str) -> None:
  """WorkdirError when an existing `workdir` is a file or cannot be written; creates nothing
  (a workdir that does not exist yet passes: `prepare` makes it)."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise WorkdirError(f"--workdir {workdir} is a file, not a directory; use another --workdir.")
  if os.path.isdir(workdir):
    _check_writable(workdir)


def _check_writable(workdir: str) -> None:
  try:
    with tempfile.TemporaryFile(dir=workdir):
      pass
  except OSError as e:
    raise WorkdirError(
        f"cannot write to --workdir {workdir} ({e.strerror or e}); use a writable "
        "--workdir.") from e


def prepare(workdir: str) -> None:
  """Creates `workdir` if needed; WorkdirError when it is not a writable directory."""
  check_usable(workdir)
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise WorkdirError(
        f"cannot write to --workdir {workdir} ({e.strerror or e}); use a writable "
        "--workdir.") from e
  _check_writable(workdir)


def check_exists(workdir: str) -> None:
  """WorkdirError unless `workdir` is an existing directory (nothing is created)."""
  if not os.path.isdir(workdir):
    raise WorkdirError(
        f"--workdir {workdir} {'is a file' if os.path.exists(workdir) else 'does not exist'}; "
        "give the folder of a training run (the --workdir it was trained with).")


@contextlib.contextmanager
def lock(workdir: str) -> Iterator[None]:
  """Holds the exclusive lock on `workdir` (which must exist) for the `with` block.

  Raises WorkdirError naming the holder ("pid P on host H") when another
  process holds it.
  """
  path = os.path.join(workdir, LOCK_FILE)
  try:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as e:
    raise WorkdirError(f"cannot create the lock file {path} ({e.strerror or e}).") from e
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 256, 0).decode(errors="replace").strip() or "another process"
      raise WorkdirError(
          f"--workdir {workdir} is in use by another run ({holder}); wait for it to "
          "end, or use another --workdir.") from None
    try:
      os.ftruncate(fd, 0)
      os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode(), 0)
    except OSError as e:  # a full disk
      raise WorkdirError(f"cannot write the lock file {path} ({e.strerror or e}); free some "
                         "space or use another --workdir.") from e
    yield
  finally:
    os.close(fd)  # releases the lock
