"""How a command ends when something goes wrong: one line on the console, the rest in error.log.

- `describe(error)`: the one line an error is shown as (without "error: ").
- `LibraryReports`: while a command runs, what libraries report on their own
  goes to a list instead of the console: errors Orbax's background threads
  log with tracebacks (a checkpoint save on a full disk logs four), an
  exception raised in a thread (TensorBoard's writer), and the exceptions
  Python can only print ("Exception ignored in ..."). `write_error_log` puts
  them in `<workdir>/error.log` before the command's own traceback.
- `exit_on_signals(what)`: SIGINT (Ctrl-C) and SIGTERM end the command at once
  with one `error:` line and exit status 130 / 143 (128 + the signal number,
  as a shell reports a process the signal killed).
- `report_user_errors(workdir, action)` (train, evaluate) and `print_error(action)`
  (the other tools): a problem with the user's input (USER_ERRORS) is one
  `error:` line and exit status 1, and so is any other error of train and
  evaluate (with its traceback in error.log).
"""

from __future__ import annotations

import contextlib
import errno
import logging as python_logging
import os
import signal
import sys
import threading
import traceback
from typing import Callable, Iterator

from absl import logging
import jax

from wacnn_jax.data.dataset import DatasetError
from wacnn_jax.pretrained.weights import WeightsError
from wacnn_jax.training import checkpointing
from wacnn_jax.training import epochs
from wacnn_jax.training import workdirs

# Exit statuses of a command stopped by these signals.
SIGNAL_EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}

# Python files whose error records are library reports (`LibraryReports`).
LIBRARY_PATHS = tuple(f"{os.sep}{name}{os.sep}" for name in
                      ("orbax", "tensorstore", "asyncio", "etils"))

# Errors that describe a problem with the user's input or machine (a full disk):
# shown as their message.
USER_ERRORS = (ValueError, OSError, DatasetError,
               checkpointing.CheckpointError, workdirs.WorkdirError,
               epochs.DivergenceError, WeightsError)

# Errors of a full or read-only file system, where the fix is the same.
_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def describe(error: BaseException, expected: bool = True) -> str:
  """`error` in one line (without "error: ").

  An OSError: its reason and file, with what to do about a full disk. An
  `expected` error (the message is written for the user): its message.
  Anything else: its type and the first line of its message.
  """
  if isinstance(error, OSError) and error.strerror:
    # A cleanup that failed again the same way (a full disk) hides the first failure.
    chain = [error]
    while (isinstance(chain[-1].__context__, OSError)
           and chain[-1].__context__.errno == error.errno):
      chain.append(chain[-1].__context__)
    where = next((e.filename for e in reversed(chain) if e.filename), None) or next(
        (w for w in map(_innermost_function, reversed(chain)) if w), "while in wacnn_jax")
    hint = (": free some space (or fix the file system) and start the same command again"
            if error.errno in _DISK_ERRNOS else "")
    return f"{error.strerror} ({where}){hint}."
  text = str(error).strip().split("\n", 1)[0][:1000]
  return text if expected else f"unexpected {type(error).__name__}: {text}"


def _innermost_function(error: BaseException) -> str | None:
  """Where in wacnn_jax `error` was raised, e.g. "while in metrics.write_epoch"; None if not."""
  where = None
  for frame, _ in traceback.walk_tb(error.__traceback__):
    module = frame.f_globals.get("__name__", "")
    if module.startswith("wacnn_jax."):
      where = f"while in {module.removeprefix('wacnn_jax.')}.{frame.f_code.co_name}"
  return where


class LibraryReports:
  """Collects library reports while installed (`with LibraryReports() as reports:`).

  `texts` holds each report, its traceback included. `keep_hooks(error_log)`
  leaves the exception hooks in place after the block, appending to
  `error_log`: libraries report again at interpreter exit (TensorBoard's
  writer flushes once more in an atexit callback).
  """

  def __init__(self):
    self.texts: list[str] = []
    self._error_log: str | None = None
    self._keep = False
    self._handler = logging.get_absl_handler()
    self._filter = _LibraryErrorFilter(self.texts)
    self._hooks = (sys.unraisablehook, threading.excepthook)

  def __enter__(self) -> "LibraryReports":
    self._handler.addFilter(self._filter)
    self._hooks = (sys.unraisablehook, threading.excepthook)
    sys.unraisablehook = self._unraisable
    threading.excepthook = self._thread_exception
    return self

  def __exit__(self, *exc_info) -> None:
    self._handler.removeFilter(self._filter)
    if not self._keep:
      sys.unraisablehook, threading.excepthook = self._hooks

  def keep_hooks(self, error_log: str | None) -> None:
    self._keep, self._error_log = True, error_log

  def _add(self, text: str) -> None:
    self.texts.append(text)
    if self._error_log:  # after the command: straight to its error.log
      with contextlib.suppress(OSError), open(self._error_log, "a") as f:
        f.write(text)

  def _unraisable(self, unraisable) -> None:
    self._add(f"{unraisable.err_msg or 'Exception ignored in'}: {unraisable.object!r}\n"
              + "".join(traceback.format_exception(unraisable.exc_type, unraisable.exc_value,
                                                   unraisable.exc_traceback)))

  def _thread_exception(self, args) -> None:
    name = args.thread.name if args.thread else "a thread"
    self._add(f"Exception in thread {name}:\n" + "".join(traceback.format_exception(
        args.exc_type, args.exc_value, args.exc_traceback)))


class _LibraryErrorFilter(python_logging.Filter):
  """Takes error records logged from LIBRARY_PATHS off the console, into `texts`."""

  def __init__(self, texts: list[str]):
    super().__init__()
    self._texts = texts
    self._formatter = python_logging.Formatter(
        "%(levelname)s %(asctime)s %(pathname)s:%(lineno)d] %(message)s")

  def filter(self, record: python_logging.LogRecord) -> bool:
    if record.levelno >= python_logging.ERROR and any(
        path in record.pathname for path in LIBRARY_PATHS):
      self._texts.append(self._formatter.format(record) + "\n")
      return False
    return True


def error_log_path(workdir: str, process_index: int = 0) -> str:
  """`<workdir>/error.log`; `error.<process>.log` on processes other than 0."""
  return os.path.join(workdir, f"error.{process_index}.log" if process_index else "error.log")


def write_error_log(path: str, error: BaseException | None, reports: list[str]) -> str:
  """Writes the library `reports` and `error`'s traceback to `path`; returns a note on where.

  Never raises: the error being reported may be that the workdir cannot be written.
  A folder that does not exist is not created for it (a mistyped --workdir leaves nothing
  behind): nothing is written, and the note is ''.
  """
  folder = os.path.dirname(path) or "."
  if not os.path.isdir(folder):
    return ""
  try:
    with open(path, "w") as f:
      for text in reports:
        f.write(f"{text}\n")
      if error is not None:
        if reports:
          f.write("The error that ended the command:\n")
        traceback.print_exception(error, file=f)
  except OSError as e:
    return f"(no error.log: {e.strerror or e})"
  return f"(traceback in {path})"


@contextlib.contextmanager
def exit_on_signals(what: str) -> Iterator[None]:
  """Within the block, SIGINT and SIGTERM end the process at once: one line, status 130 / 143.

  The line is "error: stopped by SIGTERM: <what>". The process ends from a
  thread that the signal wakes (`signal.set_wakeup_fd`), so it ends as
  promptly while the main thread waits inside XLA (compiling, or for the
  device), where Python runs its signal handlers only afterwards. Nothing is
  cleaned up, as under kill -9: a checkpoint that Orbax is still writing stays
  a temporary folder that restores never see, and training resumes from the
  newest whole checkpoint, exactly. Outside the main thread, does nothing.
  """
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  stopping = threading.Lock()

  def stop(signum: int) -> None:
    if stopping.acquire(blocking=False):  # the first signal prints and exits
      name = signal.Signals(signum).name
      ctrl_c = " (Ctrl-C)" if signum == signal.SIGINT else ""
      os.write(2, f"error: stopped by {name}{ctrl_c}: {what}\n".encode())
      os._exit(SIGNAL_EXIT_CODES[signum])  # pylint: disable=protected-access

  read_fd, write_fd = os.pipe()
  os.set_blocking(write_fd, False)

  def watch() -> None:
    while data := os.read(read_fd, 64):  # b"" once the block ends (write_fd closed)
      for signum in data:
        if signum in SIGNAL_EXIT_CODES:
          stop(signum)

  previous = {s: signal.signal(s, lambda signum, frame: stop(signum))
              for s in SIGNAL_EXIT_CODES}
  previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
  watcher = threading.Thread(target=watch, name="signal watcher", daemon=True)
  watcher.start()
  try:
    yield
  finally:
    signal.set_wakeup_fd(previous_fd)
    for signum, handler in previous.items():
      signal.signal(signum, handler)
    os.close(write_fd)
    watcher.join()
    os.close(read_fd)


def in_process_group() -> bool:
  """Whether this process is one of several (`config.distributed`)."""
  return jax.distributed.is_initialized() and jax.process_count() > 1


def leave_process_group(exit_code: int) -> None:
  """Ends this process of a multi-process run at once.

  A normal exit would wait in JAX's shutdown barrier (up to 5 minutes) for the
  other processes, which themselves wait for this one in their next
  collective. Leaving without that barrier makes JAX stop the others within
  `config.heartbeat_timeout` seconds ("another task died").
  """
  logging.flush()
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(exit_code)  # pylint: disable=protected-access


def report_user_errors(workdir: str, action: Callable[[], object]) -> int:
  """Runs `action()` (training or evaluation in `workdir`); returns the exit code.

  An error is one `error:` line on stderr and exit code 1: a user error
  (USER_ERRORS) shows its message, anything else its type ("unexpected ...").
  Its traceback goes to `workdir/error.log` where the workdir can take it
  (not for a WorkdirError: the workdir is unusable, or another run's), after
  what the libraries reported on their own meanwhile (`LibraryReports`,
  kept off the console; written to error.log too when the action succeeds).
  A failing process of a multi-process run reports its error and ends at
  once (`leave_process_group`); its `error.log` is `error.<process>.log` on
  processes other than 0.
  """
  with LibraryReports() as reports:
    try:
      action()
    except Exception as e:  # pylint: disable=broad-except
      index = jax.process_index() if jax.distributed.is_initialized() else 0
      log_path = error_log_path(workdir, index)
      note = ("" if isinstance(e, workdirs.WorkdirError)
              else write_error_log(log_path, e, reports.texts))
      reports.keep_hooks(log_path if note.startswith("(traceback") else None)
      sys.stderr.write(f"error: {describe(e, isinstance(e, USER_ERRORS))}"
                       f"{' ' + note if note else ''}\n")
      if in_process_group():
        leave_process_group(1)
      return 1
  if reports.texts:
    note = write_error_log(error_log_path(workdir), None, reports.texts)
    logging.warning("The libraries reported %d error(s) of their own %s.", len(reports.texts),
                    note)
  return 0


def print_error(action: Callable[[], int]) -> int:
  """Runs a post-training tool; a user error is one `error:` line and exit code 1."""
  try:
    return action()
  except USER_ERRORS as e:
    sys.stderr.write(f"error: {describe(e)}\n")
    return 1
