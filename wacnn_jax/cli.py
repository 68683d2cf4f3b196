"""The command line: `python -m wacnn_jax COMMAND [--flag=value ...]`.

    python -m wacnn_jax train --config configs/default.py --workdir W [--config.a.b=v ...]
    python -m wacnn_jax evaluate --workdir W [--config F] [--eval.noise=True ...]
    python -m wacnn_jax evaluate --pretrained NAME_OR_PATH [--image_folder F] [--eval.noise=True]
    python -m wacnn_jax report W1 W2 ... [--out DIR]
    python -m wacnn_jax visualize --workdir W [--baseline W0] [--out PNG]
    python -m wacnn_jax visualize --pretrained NAME [--baseline_pretrained NAME0] [--out PNG]
    python -m wacnn_jax reproduce --data D [--table cifar10] [--budget S ...]
    python -m wacnn_jax export --workdir W --out DIR [--which final|best | --step N]

`run_train.py --config ... --workdir ...` is `train`. Every command takes
absl `--flag=value` flags (`COMMAND --help` lists them with their defaults);
a bad command line or config value is one `error:` line on stderr and exit
status 2, before anything is written; a problem with the user's input found
later (USER_ERRORS) is one `error:` line and exit status 1, and so is any
other error of `train` and `evaluate` (with its traceback in error.log,
`failures`). SIGINT and SIGTERM stop every command but `reproduce` (which
stops its runs itself) with one line and exit status 130 / 143. A `--config
configs/...` that is not in the current folder is taken from the installed
`configs` package.

The modules of the post-training tools (evaluate, report, visualize,
reproduce, export: plotting and statistics libraries) are imported by the command
that runs them, so that every training process, `reproduce`'s runs among
them, starts without them.
"""

from __future__ import annotations

import contextlib
import logging as python_logging
import os
import runpy
import dataclasses
import sys
from typing import Callable, NoReturn

from absl import flags
from absl import logging
import jax
import ml_collections
from ml_collections import config_flags

from wacnn_jax import attention
from wacnn_jax import checkpointing
from wacnn_jax import compilation_cache
from wacnn_jax import epochs
from wacnn_jax import failures
from wacnn_jax import input_pipeline
from wacnn_jax import pretrained
from wacnn_jax import restore
from wacnn_jax import train
from wacnn_jax import workdirs

# Errors that describe a problem with the user's input or machine (a full disk):
# shown as their message.
USER_ERRORS = (ValueError, OSError, input_pipeline.DatasetError,
               checkpointing.CheckpointError, workdirs.WorkdirError,
               epochs.DivergenceError, pretrained.WeightsError)


# INFO records of these libraries (Orbax's ~40 lines per checkpoint save, JAX's
# backend probing) are dropped from the console; their warnings and errors stay.
QUIET_LIBRARY_PATHS = (f"{os.sep}orbax{os.sep}", f"{os.sep}jax{os.sep}_src{os.sep}xla_bridge.py")
# INFO records that start so, from any library: tfds names the folder of a dataset
# it is about to read, which does not exist when the dataset is not prepared yet.
QUIET_LIBRARY_MESSAGES = ("Constructing tf.data.Dataset",)


class LibraryInfoFilter(python_logging.Filter):
  """Drops records below WARNING logged from `QUIET_LIBRARY_PATHS` or starting with
  `QUIET_LIBRARY_MESSAGES`."""

  def filter(self, record: python_logging.LogRecord) -> bool:
    return record.levelno >= python_logging.WARNING or not (
        any(part in record.pathname for part in QUIET_LIBRARY_PATHS)
        or record.getMessage().startswith(QUIET_LIBRARY_MESSAGES))


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


# Experiment-config fields that became `evaluate` flags.
MOVED_TO_EVALUATE = ("mode", "checkpoint_step", "eval")


def _without_traceback(message: str) -> str:
  """A flag error on one line; an embedded traceback (a config file that raised) -> its last line.

  E.g. "flag --config=c.py: Error whilst parsing config file: ValueError: ...".
  """
  if "Traceback (most recent call last):" in message:
    head, _, trace = message.partition("Traceback (most recent call last):")
    message = f"{head} {trace.strip().splitlines()[-1]}"
  return " ".join(message.split())


def parse_flags(flag_values: flags.FlagValues, argv: list[str],
                positional: bool = False) -> list[str]:
  """Parses `argv` into `flag_values`; returns the positional arguments.

  A bad command line exits with one `error:` line on stderr and status 2; a
  bad `--config.x=y` also lists the valid keys. Positional arguments are an
  error unless `positional`.
  """
  path = _config_path(argv)
  if path is not None:
    path = path.split(":", 1)[0]  # configs/cifar.py:dataset=cifar100 -> its file
    if not os.path.isfile(path):
      _exit_with_usage_error(f"--config {path}: no such file.")
  for arg in argv[1:]:
    key = arg[len("--config."):].split("=", 1)[0] if arg.startswith("--config.") else ""
    if key.split(".")[0] in MOVED_TO_EVALUATE:
      _exit_with_usage_error(
          f"--config.{key} is not an experiment setting: evaluate a checkpoint with "
          "`python -m wacnn_jax evaluate --workdir W [--eval.step=N] [--eval.noise=True]`.")
  # ml_collections loads a config file as the module "config_config" with
  # SourceFileLoader.load_module, which runs a new file inside an earlier parse's
  # module (its get_config() included): every parse starts from a fresh one.
  sys.modules.pop("config_config", None)
  try:
    remaining = flag_values(argv)
  except flags.Error as e:  # a bad value, an unknown or a missing flag
    _exit_with_usage_error(_without_traceback(str(e)))
  except Exception as e:  # pylint: disable=broad-except
    message = (str(e).strip("'\"").replace("\\n", " ").replace('\\"', '"')
               .replace("\\'", "'"))
    valid = ""
    if path and os.path.exists(path):
      try:
        namespace = runpy.run_path(path)
        if "get_config" not in namespace:
          _exit_with_usage_error(f"--config {path} defines no get_config(); a config file is "
                                 "Python, like configs/default.py.")
        config = namespace["get_config"]()
      except Exception as load_error:  # pylint: disable=broad-except
        _exit_with_usage_error(f"--config {path} does not load ({type(load_error).__name__}: "
                               f"{load_error}).")
      if not isinstance(config, ml_collections.ConfigDict):
        _exit_with_usage_error(f"--config {path}: get_config() returned "
                               f"{type(config).__name__}, not an ml_collections.ConfigDict "
                               "(build it on configs/default.py's get_config()).")
      valid = "\nValid keys: " + ", ".join(flatten_keys(config))
    _exit_with_usage_error(f"bad config override ({type(e).__name__}: {message}).{valid}")
  if len(remaining) > 1 and not positional:
    _exit_with_usage_error(f"unexpected arguments {remaining[1:]}; every option is a --flag.")
  return remaining[1:]


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
  what the libraries reported on their own meanwhile (`failures.LibraryReports`,
  kept off the console; written to error.log too when the action succeeds).
  A failing process of a multi-process run reports its error and ends at
  once (`leave_process_group`); its `error.log` is `error.<process>.log` on
  processes other than 0.
  """
  with failures.LibraryReports() as reports:
    try:
      action()
    except Exception as e:  # pylint: disable=broad-except
      index = jax.process_index() if jax.distributed.is_initialized() else 0
      log_path = failures.error_log_path(workdir, index)
      note = ("" if isinstance(e, workdirs.WorkdirError)
              else failures.write_error_log(log_path, e, reports.texts))
      reports.keep_hooks(log_path if note.startswith("(traceback") else None)
      sys.stderr.write(f"error: {failures.describe(e, isinstance(e, USER_ERRORS))}"
                       f"{' ' + note if note else ''}\n")
      if in_process_group():
        leave_process_group(1)
      return 1
  if reports.texts:
    note = failures.write_error_log(failures.error_log_path(workdir), None, reports.texts)
    logging.warning("The libraries reported %d error(s) of their own %s.", len(reports.texts),
                    note)
  return 0


def _print_error(action: Callable[[], int]) -> int:
  """Runs a post-training tool; a user error is one `error:` line and exit code 1."""
  try:
    return action()
  except USER_ERRORS as e:
    sys.stderr.write(f"error: {failures.describe(e)}\n")
    return 1


@dataclasses.dataclass(frozen=True)
class Command:
  """A subcommand: its flags (`define(flag_values, argv)`) and what it runs (`run(flag_values, args)`).

  `argv` is the command line to be parsed: config flags define their
  `--config.x=y` override flags from it.
  """

  help: str
  define: Callable[[flags.FlagValues, list[str]], None]
  run: Callable[[flags.FlagValues, list[str]], int]
  positional: str = ""  # what positional arguments are, if it takes any
  choice: str = ""  # flags of which one is needed, for the usage line: "(--a=A | --b=B)"
  # What the line of a SIGINT / SIGTERM says after "stopped by SIGTERM: "
  # (`failures.exit_on_signals`); None: the command handles signals itself.
  on_signal: str | None = "stopped."
  details: str = ""  # printed by --help after the flags: syntax, presets, an example


def _define_train(fv: flags.FlagValues, argv: list[str]) -> None:
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and summaries.",
                      flag_values=fv, required=True)
  config_flags.DEFINE_config_file("config", None, "The experiment: a config file (see below).",
                                  flag_values=fv, lock_config=True, sys_argv=argv)
  flags.mark_flag_as_required("config", flag_values=fv)


def _check_config(config: ml_collections.ConfigDict) -> None:
  """A bad config value (`train.validate_config`) is a usage error: one `error:` line,
  status 2, no error.log."""
  try:
    train.validate_config(config)
  except ValueError as e:
    _exit_with_usage_error(str(e))


def _run_train(fv: flags.FlagValues, args: list[str]) -> int:
  del args
  _check_config(fv.config)
  return report_user_errors(fv.workdir, lambda: train.train_and_evaluate(fv.config, fv.workdir))


def _define_evaluate(fv: flags.FlagValues, argv: list[str]) -> None:
  from wacnn_jax import evaluate  # pylint: disable=import-outside-toplevel
  flags.DEFINE_string("workdir", None, "Workdir of a training run.", flag_values=fv)
  flags.DEFINE_string("pretrained", None, "Instead of --workdir: trained weights, a shipped "
                      "model's name or the path of exported ones (wacnn_jax.pretrained.load); "
                      "evaluated on the test split of their dataset, nothing is written.",
                      flag_values=fv)
  flags.DEFINE_string("image_folder", None, "Overrides data.image_folder: the test images, an "
                      "image folder or archive (with --pretrained, default: tensorflow-datasets).",
                      flag_values=fv)
  config_flags.DEFINE_config_file(
      "config", None, "Config file with get_config() (default: the run's config.json).",
      flag_values=fv, lock_config=True, sys_argv=argv)
  config_flags.DEFINE_config_dict(
      "eval", evaluate.default_options(),
      "Evaluation options, set as --eval.NAME=VALUE (evaluate.OPTIONS).",
      flag_values=fv, lock_config=True, sys_argv=argv)


def _one_model(fv: flags.FlagValues, workdir_flag: str, weights_flag: str,
               required: bool = True) -> None:
  """A usage error unless one of the two flags is given (or, not `required`, at most one)."""
  given = [name for name in (workdir_flag, weights_flag) if fv[name].value]
  if len(given) > 1:
    _exit_with_usage_error(f"give --{workdir_flag} or --{weights_flag}, not both.")
  if required and not given:
    _exit_with_usage_error(f"give --{workdir_flag} (a training run) or --{weights_flag} "
                           "(trained weights).")


def _run_evaluate(fv: flags.FlagValues, args: list[str]) -> int:
  from wacnn_jax import evaluate  # pylint: disable=import-outside-toplevel
  del args
  _one_model(fv, "workdir", "pretrained")
  try:
    evaluate.noise_sweep(fv.eval)
  except ValueError as e:
    _exit_with_usage_error(str(e))
  if fv.pretrained:
    if fv.config is not None:
      _exit_with_usage_error("--config describes a training run; with --pretrained the model "
                             "comes from the weights (give the test images with --image_folder).")

    def run_pretrained() -> int:
      evaluate.evaluate_pretrained(fv.pretrained, fv.eval, image_folder=fv.image_folder)
      return 0

    return _print_error(run_pretrained)
  if fv.config is not None:
    _check_config(fv.config)

  def run():
    config = fv.config if fv.config is not None else restore.load_config(fv.workdir)
    if fv.image_folder:
      config.data.image_folder = fv.image_folder
    evaluate.evaluate_checkpoint(config, fv.workdir, fv.eval)

  return report_user_errors(fv.workdir, run)


def _define_report(fv: flags.FlagValues, argv: list[str]) -> None:
  del argv
  flags.DEFINE_string("out", "report", "Output folder.", flag_values=fv)


def _run_report(fv: flags.FlagValues, args: list[str]) -> int:
  from wacnn_jax import report  # pylint: disable=import-outside-toplevel
  if not args:
    _exit_with_usage_error("report: name one or more training workdirs.")
  return _print_error(lambda: report.print_report(args, fv.out))


def _define_visualize(fv: flags.FlagValues, argv: list[str]) -> None:
  del argv
  flags.DEFINE_string("workdir", None, "Workdir of a training run with WA.", flag_values=fv)
  flags.DEFINE_string("pretrained", None, "Instead of --workdir: trained WA weights, a shipped "
                      "model's name or the path of exported ones.", flag_values=fv)
  flags.DEFINE_string("baseline", None, "Workdir of the same network without WA.",
                      flag_values=fv)
  flags.DEFINE_string("baseline_pretrained", None, "Instead of --baseline: trained weights of "
                      "the same network without WA.", flag_values=fv)
  flags.DEFINE_integer("images", 4, "How many test images (one per class).", flag_values=fv)
  flags.DEFINE_string("image_folder", None, "Overrides data.image_folder of the runs (with "
                      "--pretrained, default: the weights' dataset from tensorflow-datasets).",
                      flag_values=fv)
  flags.DEFINE_integer("replica", 0, "Which replica of a run trained with num_seeds > 1: "
                       "K is the one of seed seed + K.", flag_values=fv)
  flags.DEFINE_integer("baseline_replica", 0, "Which replica of the --baseline run.",
                       flag_values=fv)
  flags.DEFINE_string("out", "attention_maps.png",
                      "Output PNG; with several WA blocks, _wa<k> is added per block.",
                      flag_values=fv)
  flags.DEFINE_integer("dpi", 100, "Figure resolution.", flag_values=fv)


def _run_visualize(fv: flags.FlagValues, args: list[str]) -> int:
  from wacnn_jax import visualize  # pylint: disable=import-outside-toplevel
  del args
  _one_model(fv, "workdir", "pretrained")
  _one_model(fv, "baseline", "baseline_pretrained", required=False)
  for replica_flag, weights_flag in (("replica", "pretrained"),
                                     ("baseline_replica", "baseline_pretrained")):
    if fv[replica_flag].value and fv[weights_flag].value:
      _exit_with_usage_error(f"--{replica_flag} picks a replica of a workdir; --{weights_flag} "
                             "is one model.")
  return _print_error(lambda: visualize.save_attention_maps(
      fv.workdir, pretrained_weights=fv.pretrained, baseline=fv.baseline,
      baseline_pretrained=fv.baseline_pretrained, images=fv.images,
      image_folder=fv.image_folder, replica=fv.replica, baseline_replica=fv.baseline_replica,
      out=fv.out, dpi=fv.dpi))


def _define_reproduce(fv: flags.FlagValues, argv: list[str]) -> None:
  from wacnn_jax import reproduce  # pylint: disable=import-outside-toplevel
  del argv
  flags.DEFINE_string("data", None, "An image folder or .tar.gz of one, or 'tfds' to use "
                      "tensorflow-datasets.", flag_values=fv, required=True)
  flags.DEFINE_enum("table", "cifar10", ("cifar10", "cifar100"), "The dataset.",
                    flag_values=fv)
  flags.DEFINE_list("archs", list(reproduce.DEFAULT_ARCHS),
                    "Backbones, trained in this order (the headline model first).",
                    flag_values=fv)
  flags.DEFINE_string("attentions", ",".join(reproduce.DEFAULT_ATTENTIONS),
                      "Comma-separated attention specs, e.g. none,wa,se(reduction=8).",
                      flag_values=fv)
  flags.DEFINE_integer("seeds", reproduce.DEFAULT_SEEDS, "Seeds per cell.", lower_bound=1,
                       flag_values=fv)
  flags.DEFINE_integer("seeds_per_run", 1, "Seeds trained at once in one run, as num_seeds "
                       "replicas (measured slower than separate runs, CPU and GPU).",
                       lower_bound=1, flag_values=fv)
  flags.DEFINE_string("results", "results", "Results folder.", flag_values=fv)
  flags.DEFINE_float("budget", None, "Wall-clock seconds.", flag_values=fv)
  flags.DEFINE_float("min_run_seconds", 60.0,
                     "Start no run with less than this left of the budget.", flag_values=fv)
  flags.DEFINE_float("keep_checkpoints_mb", 5.0,
                     "Keep a finished run's checkpoints when they total less.", flag_values=fv)
  flags.DEFINE_multi_string("set", [], "KEY=VALUE config override for every run (repeatable), "
                            "after the reference's batch_size=256.", flag_values=fv)
  flags.DEFINE_string("compilation_cache_dir", compilation_cache.default_dir(),
                      "Every run's compilation_cache_dir: compiled programs kept here are "
                      "reused by the next runs; '' = off.", flag_values=fv)
  flags.DEFINE_integer("concurrent", 1, "Runs trained at the same time, as separate processes "
                       "sharing the machine's GPU memory and CPU cores.", lower_bound=1,
                       flag_values=fv)
  flags.DEFINE_string("xla_flags", "", "Added to the runs' XLA_FLAGS, e.g. XLA's command "
                      "buffers with the epoch loop: "
                      f"--xla_flags={reproduce.COMMAND_BUFFERS_WITH_LOOPS}.", flag_values=fv)


def _run_reproduce(fv: flags.FlagValues, args: list[str]) -> int:
  from wacnn_jax import reproduce  # pylint: disable=import-outside-toplevel
  del args
  if fv.data != "tfds" and not os.path.exists(fv.data):
    _exit_with_usage_error(f"--data {fv.data!r} does not exist; give an image folder, an "
                           "archive of one, or 'tfds'.")
  try:
    attentions = [str(attention.AttentionSpec.parse(spec))
                  for spec in attention.split_top_level(fv.attentions)]
  except ValueError as e:
    _exit_with_usage_error(f"--attentions: {e}")
  # Every run gets --config.compilation_cache_dir; a --set of it comes later and wins.
  overrides = [f"compilation_cache_dir={fv.compilation_cache_dir}", *fv.set]
  try:
    reproduce.run_config(reproduce.run_command(reproduce.Cell(fv.archs[0], attentions[0]),
                                               range(1), fv.table, "tfds", "", overrides))
  except ValueError as e:
    _exit_with_usage_error(f"--set {e}")
  return _print_error(lambda: reproduce.run_grid(
      fv.table, fv.archs, attentions, fv.seeds, fv.data, fv.results, fv.budget, overrides,
      fv.min_run_seconds, fv.keep_checkpoints_mb, fv.seeds_per_run, fv.concurrent,
      fv.xla_flags))


def _define_export(fv: flags.FlagValues, argv: list[str]) -> None:
  from wacnn_jax.pretrained import export  # pylint: disable=import-outside-toplevel
  del argv
  flags.DEFINE_string("workdir", None, "Workdir of a training run.", flag_values=fv,
                      required=True)
  flags.DEFINE_string("out", None, "Folder to write <name>.msgpack and <name>.json to.",
                      flag_values=fv, required=True)
  flags.DEFINE_enum("which", "final", export.WHICH, "final: the last epoch of the finished "
                    "run; best: the checkpoint with the best test top-1 (evaluate's default).",
                    flag_values=fv)
  flags.DEFINE_integer("step", None, "Instead of --which: the checkpoint of this train step "
                       "(any, also of an unfinished run).", flag_values=fv)
  flags.DEFINE_string("name", None, "File name (default: <arch>-<attention>, e.g. resnet18-wa; "
                      "-seed<k> is added per replica of a num_seeds > 1 run).", flag_values=fv)
  flags.DEFINE_bool("overwrite", False, "Replace a model of the same name in --out.",
                    flag_values=fv)


def _run_export(fv: flags.FlagValues, args: list[str]) -> int:
  from wacnn_jax.pretrained import export  # pylint: disable=import-outside-toplevel
  del args
  if fv.step is not None and fv["which"].present:
    _exit_with_usage_error("give --which or --step, not both.")

  def run() -> int:
    for path in export.export(fv.workdir, fv.out, which=fv.which, step=fv.step, name=fv.name,
                              overwrite=fv.overwrite):
      record = pretrained.weights.read_record(path)
      print(f"wrote {path} and its {os.path.basename(pretrained.weights.weights_path(path))}: "
            f"{record.arch} + {record.attention}, seed {record.seed}, epoch {record.epoch} of "
            f"{record.num_epochs} ({record.checkpoint}), test top-1 {record.test_top1:.4f}, "
            f"{record.params:,} parameters")
    return 0

  return _print_error(run)


TRAIN_DETAILS = """\
--config is a file with get_config(), and settings for it after ':':
  configs/default.py                               the reference recipe: resnet18 + WA on CIFAR-10,
                                                   160 epochs (tfds; or set data.image_folder)
  configs/cifar.py:smoke                           a tiny CPU run: 512 / 256 images, 2 epochs
  configs/cifar.py:dataset=cifar100,arch=vgg16_bn  any paper experiment (keys: dataset, arch,
                                                   attention; e.g. attention=se)
Every field of it is set as --config.FIELD=VALUE (an unknown field is refused, listing the valid
ones), e.g. --config.num_epochs=30 --config.model.attention="se(reduction=8)"
--config.data.image_folder=cifar-10-python.tar.gz (an official CIFAR archive, an image folder
<root>/{train,test}/<class>/*.jpg or a .tar.gz of one). `--config FILE --help` lists FILE's
fields. A run started again with the same --workdir resumes.

example (a smoke run on the committed CIFAR-10 sample, a minute on a CPU):
  python -m wacnn_jax train --config configs/cifar.py:smoke --workdir runs/wa \\
      --config.data.image_folder=tests/data/cifar10-mini.tar.gz"""

COMMANDS = {
    "train": Command("Train (and evaluate every epoch) a config in a workdir; resumes.",
                     _define_train, _run_train, details=TRAIN_DETAILS,
                     on_signal="training stopped. The same command resumes it from its "
                     "newest checkpoint (the epochs after it are trained again)."),
    "evaluate": Command("Evaluate a checkpoint of a workdir, or trained weights, optionally "
                        "under noise.", _define_evaluate, _run_evaluate,
                        choice="(--workdir=WORKDIR | --pretrained=PRETRAINED)",
                        on_signal="evaluation stopped (eval.json is written when it ends)."),
    "report": Command("Compare training runs: a markdown table and training curves.",
                      _define_report, _run_report, positional="WORKDIR ..."),
    "visualize": Command("Attention maps of a WA run's checkpoint (or trained weights) next "
                         "to a baseline.", _define_visualize, _run_visualize,
                         choice="(--workdir=WORKDIR | --pretrained=PRETRAINED)"),
    "reproduce": Command("Train the paper's comparison grid and write its results tables.",
                         _define_reproduce, _run_reproduce, on_signal=None),
    "export": Command("Write a run's trained weights (no optimiser state) for "
                      "wacnn_jax.pretrained.load.", _define_export, _run_export),
}


def usage() -> str:
  lines = ["usage: python -m wacnn_jax COMMAND [--flag=value ...]   (COMMAND --help: its flags)",
           "", "commands:"]
  lines += [f"  {name:<10} {command.help}" for name, command in COMMANDS.items()]
  return "\n".join(lines)


def _command_line_value(value) -> str:
  """A default as it is written on the command line: (0.0, 0.1), True, -1, wa."""
  if isinstance(value, (tuple, list)):
    items = ", ".join(_command_line_value(v) for v in value)
    return f"({items},)" if len(value) == 1 else f"({items})"
  return str(value) if isinstance(value, str) else repr(value)


def _is_required(flag) -> bool:
  return any("must have a value other than None" in getattr(v, "message", "")
             for v in flag.validators)


def _load_config(spec: str) -> ml_collections.ConfigDict:
  """The config of `--config FILE[:SETTINGS]` (get_config(SETTINGS) or get_config())."""
  path, _, settings = spec.partition(":")
  get_config = runpy.run_path(path)["get_config"]
  return get_config(settings) if settings else get_config()


def _flag_lines(fv: flags.FlagValues) -> list[tuple[str, str]]:
  """(flag as written, what it is) for every flag of a command, required ones first."""
  rows = []
  for name in fv:
    flag = fv[name]
    if isinstance(flag.default, ml_collections.ConfigDict):  # --eval: one row per option
      from wacnn_jax import evaluate  # pylint: disable=import-outside-toplevel
      descriptions = evaluate.OPTIONS if name == "eval" else {}
      keys = [k for k in descriptions if k in flag.default] + [
          k for k in flag.default if k not in descriptions]
      rows += [(f"--{name}.{key}={_command_line_value(flag.default[key])}",
                descriptions.get(key, (None, ""))[1]) for key in keys]
    elif name == "config":  # a config file flag
      rows.append((f"--{name} FILE[:SETTINGS]", flag.help))
    elif flag.default is None:
      rows.append((f"--{name}={name.upper()}", flag.help))
    else:
      rows.append((f"--{name}={_command_line_value(flag.value if flag.present else flag.default)}",
                   flag.help))
    if _is_required(flag):
      rows[-1] = (rows[-1][0], f"(required) {rows[-1][1]}")
  return sorted(rows, key=lambda row: not row[1].startswith("(required)"))


def command_help(name: str, command: Command, fv: flags.FlagValues, program: str,
                 argv: list[str]) -> str:
  """`COMMAND --help`: usage, the flags with their defaults as values, the command's details,
  and with `--config FILE` the fields of that config."""
  rows = _flag_lines(fv)
  required = [flag for flag, what in rows if what.startswith("(required)")]
  words = ["usage:", program, *required, command.choice, "[--flag=value ...]", command.positional]
  lines = [" ".join(word for word in words if word), "",
           command.help, "", "flags:"]
  width = min(42, max(len(flag) for flag, _ in rows) + 2)
  for flag, what in rows:
    lines.append(f"  {flag:<{width}} {what}" if len(flag) < width else f"  {flag}\n"
                 f"  {'':<{width}} {what}")
  if command.details:
    lines += ["", command.details]
  spec = _config_path(argv)
  if spec is not None and os.path.isfile(spec.split(":", 1)[0]):
    try:
      config = _load_config(spec)
    except Exception as e:  # pylint: disable=broad-except
      lines += ["", f"(--config {spec} does not load: {type(e).__name__}: {e})"]
    else:
      lines += ["", f"fields of {spec}, each settable as --config.FIELD=VALUE:"]
      for key in flatten_keys(config):
        value = config
        for part in key.split("."):
          value = value[part]
        lines.append(f"  --config.{key}={_command_line_value(value)}")
  return "\n".join(lines)


def resolve_config_path(argv: list[str]) -> list[str]:
  """`argv` with a `--config configs/...` that is not in the current folder taken from the
  installed `configs` package, so that the presets work from any folder."""
  spec = _config_path(argv)
  if spec is None or os.path.exists(spec.split(":", 1)[0]):
    return argv
  path, colon, settings = spec.partition(":")
  parts = os.path.normpath(path).split(os.sep)
  if parts[0] != "configs" or len(parts) < 2:
    return argv
  try:
    import configs  # pylint: disable=g-import-not-at-top
  except ImportError:
    return argv
  installed = os.path.join(os.path.dirname(os.path.abspath(configs.__file__)), *parts[1:])
  if not os.path.isfile(installed):
    return argv
  resolved = installed + colon + settings
  return [f"--config={resolved}" if arg == f"--config={spec}" else
          resolved if arg == spec and i > 0 and argv[i - 1] == "--config" else arg
          for i, arg in enumerate(argv)]


def main(argv: list[str] | None = None) -> int:
  """Runs `argv` = [program, COMMAND, flags...]; returns the exit code."""
  argv = sys.argv if argv is None else argv
  if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
    print(usage())
    return 0 if len(argv) >= 2 else 2
  if argv[1] not in COMMANDS:
    _exit_with_usage_error(f"unknown command {argv[1]!r}.\n{usage()}")
  command = COMMANDS[argv[1]]
  argv = resolve_config_path(argv)
  fv = flags.FlagValues()
  command.define(fv, argv)
  program = ("python -m wacnn_jax" if argv[0].endswith("__main__.py")
             else os.path.basename(argv[0]))
  if argv[1] != "train" or program != "run_train.py":
    program = f"{program} {argv[1]}"
  if "--helpfull" in argv[2:] or "--help" in argv[2:] or "-h" in argv[2:]:
    print(command_help(argv[1], command, fv, program, argv))
    return 0
  args = parse_flags(fv, [program] + argv[2:], positional=bool(command.positional))
  if not flags.FLAGS.is_parsed():  # absl logging reads its own flags' defaults
    flags.FLAGS([program])
  for name in ("workdir", "baseline"):  # the shell does not expand ~ in --workdir=~/runs
    if name in fv and fv[name].value is not None:
      if not fv[name].value.strip():
        _exit_with_usage_error(f"--{name} is empty (an unset shell variable?); give a folder.")
      fv[name].value = os.path.expanduser(fv[name].value)
  logging.use_absl_handler()
  logging.set_verbosity(logging.INFO)
  quiet_library_logs()
  with (failures.exit_on_signals(command.on_signal) if command.on_signal
        else contextlib.nullcontext()):
    return command.run(fv, args)
