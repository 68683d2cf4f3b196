"""Where a run's log lines go and how they look: a terminal, a log file, a notebook.

    log_output.use_console(verbose=False)   # the commands: short lines on stderr
    log_output.show_in_notebook()           # train_and_evaluate: lines in the notebook cell
    log_output.progress_bar(total=..., ...) # tqdm: a widget in a notebook, a text bar elsewhere

Everything the package says goes through absl logging. On the console a line
is short by default, the time and the message (`16:49:11 epoch   3/160 ...`;
warnings and errors say so: `16:49:11 warning: ...`); `--verbose` gives
absl's full header (level, date, time, thread, file and line), which is what
the runs of `reproduce` write to their `train.log`. The INFO records of
chatty libraries (Orbax's ~40 lines per checkpoint save, JAX's backend
probing, tfds's folder names) are left out of the console; their warnings
and errors stay.

In a Jupyter kernel (and so on Colab) absl's handler is not installed and
the root logger's level (WARNING) drops INFO records: `train_and_evaluate`
calls `show_in_notebook`, which routes absl's records (the package's, and
those of the libraries that log through absl) to the cell that is running
(the kernel's `sys.stdout` when the record is emitted, so each line lands in
its own cell), short, at INFO.
"""

from __future__ import annotations

import importlib.util
import logging as python_logging
import os
import sys
import time

from absl import logging
import tqdm

# INFO records of these libraries are dropped from the console; their warnings and errors stay.
QUIET_LIBRARY_PATHS = (f"{os.sep}orbax{os.sep}", f"{os.sep}jax{os.sep}_src{os.sep}xla_bridge.py")
# INFO records that start so, from any library: tfds names the folder of a dataset
# it is about to read, which does not exist when the dataset is not prepared yet.
QUIET_LIBRARY_MESSAGES = ("Constructing tf.data.Dataset",)
LEVEL_WORDS = {python_logging.WARNING: "warning: ", python_logging.ERROR: "error: ",
               python_logging.CRITICAL: "error: "}


class LibraryInfoFilter(python_logging.Filter):
  """Drops records below WARNING logged from `QUIET_LIBRARY_PATHS` or starting with
  `QUIET_LIBRARY_MESSAGES`."""

  def filter(self, record: python_logging.LogRecord) -> bool:
    return record.levelno >= python_logging.WARNING or not (
        any(part in record.pathname for part in QUIET_LIBRARY_PATHS)
        or record.getMessage().startswith(QUIET_LIBRARY_MESSAGES))


class ShortFormatter(python_logging.Formatter):
  """'16:49:11 message' ('16:49:11 warning: message' for warnings); a traceback after it."""

  def format(self, record: python_logging.LogRecord) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
    level = LEVEL_WORDS.get(record.levelno, "")
    text = f"{stamp} {level}{record.getMessage()}"
    if record.exc_info:
      text += "\n" + self.formatException(record.exc_info)
    return text


def use_console(verbose: bool = False) -> None:
  """absl's handler on stderr at INFO, short lines (absl's full header if `verbose`), the
  libraries' INFO records left out."""
  logging.use_absl_handler()
  logging.set_verbosity(logging.INFO)
  handler = logging.get_absl_handler()
  handler.setFormatter(logging.PythonFormatter() if verbose else ShortFormatter())
  if not any(isinstance(f, LibraryInfoFilter) for f in handler.filters):
    handler.addFilter(LibraryInfoFilter())


def in_notebook() -> bool:
  """Whether this process is a Jupyter kernel (Jupyter, JupyterLab, Colab, VS Code)."""
  if "ipykernel" not in sys.modules:
    return False
  try:
    from IPython import get_ipython  # pylint: disable=g-import-not-at-top
  except ImportError:
    return False
  shell = get_ipython()
  return shell is not None and hasattr(shell, "kernel")


class CellHandler(python_logging.Handler):
  """Writes records to the `sys.stdout` of the moment: the output of the running cell."""

  def emit(self, record: python_logging.LogRecord) -> None:
    try:
      sys.stdout.write(self.format(record) + "\n")
      sys.stdout.flush()
    except Exception:  # pylint: disable=broad-except
      self.handleError(record)


def show_in_notebook() -> bool:
  """In a Jupyter kernel: routes absl's records, INFO and up, short, to the running cell's
  output (and only there: not also to whatever the root logger's handlers print). Returns
  whether it did (False elsewhere, or when already routed)."""
  absl_logger = logging.get_absl_logger()
  if not in_notebook() or any(isinstance(h, CellHandler) for h in absl_logger.handlers):
    return False
  handler = CellHandler()
  handler.setFormatter(ShortFormatter())
  handler.addFilter(LibraryInfoFilter())
  absl_logger.addHandler(handler)
  absl_logger.propagate = False
  logging.set_verbosity(logging.INFO)
  return True


def progress_bar(**kwargs) -> tqdm.tqdm:
  """`tqdm.tqdm(**kwargs)` on stderr; in a notebook with ipywidgets, tqdm's notebook widget
  (without them, the text bar, which notebooks redraw in place too)."""
  if in_notebook() and importlib.util.find_spec("ipywidgets") is not None:
    from tqdm import notebook  # pylint: disable=g-import-not-at-top
    return notebook.tqdm(**kwargs)
  return tqdm.tqdm(**kwargs)
