"""The command line behind `run_train.py`: flag parsing with readable errors, and dispatch."""

from __future__ import annotations

import logging as python_logging
import os
import runpy
import sys
import traceback
from typing import NoReturn

from absl import flags
from absl import logging
import jax
import ml_collections

from wacnn_jax import checkpointing
from wacnn_jax import input_pipeline
from wacnn_jax import train
from wacnn_jax import workdirs

MODES = ("train", "evaluate")
# Errors that describe a problem with the user's input: shown as one message.
USER_ERRORS = (ValueError, FileNotFoundError, input_pipeline.DatasetError,
               checkpointing.CheckpointError, workdirs.WorkdirError,
               train.DivergenceError)


# INFO records of these libraries (Orbax's ~40 lines per checkpoint save, JAX's
# backend probing) are dropped from the console; their warnings and errors stay.
QUIET_LIBRARY_PATHS = (f"{os.sep}orbax{os.sep}", f"{os.sep}jax{os.sep}_src{os.sep}xla_bridge.py")


class LibraryInfoFilter(python_logging.Filter):
  """Drops records below WARNING logged from `QUIET_LIBRARY_PATHS`."""

  def filter(self, record: python_logging.LogRecord) -> bool:
    return record.levelno >= python_logging.WARNING or not any(
        part in record.pathname for part in QUIET_LIBRARY_PATHS)


def quiet_library_logs() -> None:
  """Keeps the console to wacnn_jax's own progress lines (absl handler filter)."""
  handler = logging.get_absl_handler()
  if not any(isinstance(f, LibraryInfoFilter) for f in handler.filters):
    handler.addFilter(LibraryInfoFilter())


def flatten_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  keys = []
  for key, value in sorted(config.items()):
    if isinstance(value, ml_collections.ConfigDict):
      keys += flatten_keys(value, f"{prefix}{key}.")
    else:
      keys.append(f"{prefix}{key}")
  return keys


def _config_path(argv) -> str | None:
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _exit_with_usage_error(message: str) -> NoReturn:
  sys.stderr.write(f"error: {message}\n")
  sys.exit(2)


def parse_flags(argv):
  """`app.run` flags parser: a bad command line is one `error:` line on stderr and exit status 2.

  (absl prints nothing itself for a custom parser's errors.) A bad
  `--config.x=y` also lists the valid keys.
  """
  path = _config_path(argv)
  if path is not None and not os.path.isfile(path):
    _exit_with_usage_error(f"--config {path}: no such file.")
  try:
    remaining = flags.FLAGS(argv)
  except flags.Error as e:  # a bad value, an unknown or a missing flag
    _exit_with_usage_error(" ".join(str(e).split()))
  except Exception as e:  # pylint: disable=broad-except
    message = str(e).strip("'\"").replace("\\n", " ").replace('\\"', '"')
    valid = ""
    if path and os.path.exists(path):
      try:
        config = runpy.run_path(path)["get_config"]()
        valid = "\nValid keys: " + ", ".join(flatten_keys(config))
      except Exception:  # pylint: disable=broad-except
        pass
    _exit_with_usage_error(f"bad config override ({type(e).__name__}: {message}).{valid}")
  if len(remaining) > 1:
    _exit_with_usage_error(f"unexpected arguments {remaining[1:]}; every option is a --flag.")
  return remaining


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


def run(config: ml_collections.ConfigDict, workdir: str) -> int:
  """Runs `config.mode` in `workdir`; returns the process exit code.

  A user error (USER_ERRORS) is one `error:` line on stderr, exit code 1, and
  its traceback in `workdir/error.log` where the workdir can take it.
  A failing process of a multi-process run reports its error and ends at
  once (`leave_process_group`); its `error.log` is `error.<process>.log` on
  processes other than 0.
  """
  try:
    if config.mode == "train":
      train.train_and_evaluate(config, workdir)
    elif config.mode == "evaluate":
      from wacnn_jax import evaluate  # pylint: disable=g-import-not-at-top
      evaluate.evaluate_checkpoint(config, workdir)
    else:
      raise ValueError(f"unknown mode {config.mode!r}; use one of {MODES}.")
  except USER_ERRORS as e:
    note = _write_error_log(e, workdir)
    sys.stderr.write(f"error: {e}{' ' + note if note else ''}\n")
    if in_process_group():
      leave_process_group(1)
    return 1
  except BaseException:  # pylint: disable=broad-except
    if in_process_group():
      traceback.print_exc()
      leave_process_group(1)
    raise
  return 0


def _write_error_log(error: BaseException, workdir: str) -> str:
  """Writes `error`'s traceback to `workdir/error.log`; returns a note on where it went.

  Not for a WorkdirError (the workdir is unusable, or another run's), and
  never raises: the error being reported may be that the workdir cannot be written.
  """
  if isinstance(error, workdirs.WorkdirError):
    return ""
  index = jax.process_index() if jax.distributed.is_initialized() else 0
  log_path = os.path.join(workdir, f"error.{index}.log" if index else "error.log")
  try:
    os.makedirs(workdir, exist_ok=True)
    with open(log_path, "w") as f:
      traceback.print_exception(error, file=f)
  except OSError as e:
    return f"(no error.log: {e.strerror or e})"
  return f"(traceback in {log_path})"


def main(app, main_fn) -> int:
  """`app.run(main_fn)` with `parse_flags`."""
  app.run(main_fn, flags_parser=parse_flags)
  return 0
