"""The command line: `python -m wacnn_jax COMMAND [--flag=value ...]`.

    python -m wacnn_jax train --config configs/default.py --workdir W [--config.a.b=v ...]
    python -m wacnn_jax evaluate --workdir W [--config F] [--eval.noise=True ...]
    python -m wacnn_jax report W1 W2 ... [--out DIR]
    python -m wacnn_jax visualize --workdir W [--baseline W0] [--out PNG]
    python -m wacnn_jax reproduce --data D [--table cifar10] [--budget S ...]

`run_train.py --config ... --workdir ...` is `train`. Every command takes
absl `--flag=value` flags (`COMMAND --help` lists them with their defaults);
a bad command line or config value is one `error:` line on stderr and exit
status 2, before anything is written; a problem with the user's input found
later (USER_ERRORS) is one `error:` line and exit status 1. A `--config
configs/...` that is not in the current folder is taken from the installed
`configs` package.
"""

from __future__ import annotations

import logging as python_logging
import os
import runpy
import dataclasses
import sys
import traceback
from typing import Callable, NoReturn

from absl import flags
from absl import logging
import jax
import ml_collections
from ml_collections import config_flags

from wacnn_jax import attention
from wacnn_jax import checkpointing
from wacnn_jax import epochs
from wacnn_jax import evaluate
from wacnn_jax import input_pipeline
from wacnn_jax import report
from wacnn_jax import reproduce
from wacnn_jax import restore
from wacnn_jax import train
from wacnn_jax import visualize
from wacnn_jax import workdirs

# Errors that describe a problem with the user's input: shown as one message.
USER_ERRORS = (ValueError, FileNotFoundError, input_pipeline.DatasetError,
               checkpointing.CheckpointError, workdirs.WorkdirError,
               epochs.DivergenceError)


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
        config = runpy.run_path(path)["get_config"]()
      except Exception as load_error:  # pylint: disable=broad-except
        _exit_with_usage_error(f"--config {path} does not load ({type(load_error).__name__}: "
                               f"{load_error}).")
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

  A user error (USER_ERRORS) is one `error:` line on stderr, exit code 1, and
  its traceback in `workdir/error.log` where the workdir can take it.
  A failing process of a multi-process run reports its error and ends at
  once (`leave_process_group`); its `error.log` is `error.<process>.log` on
  processes other than 0.
  """
  try:
    action()
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


def _print_error(action: Callable[[], int]) -> int:
  """Runs a post-training tool; a user error is one `error:` line and exit code 1."""
  try:
    return action()
  except USER_ERRORS as e:
    sys.stderr.write(f"error: {e}\n")
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
  flags.DEFINE_string("workdir", None, "Workdir of a training run.", flag_values=fv,
                      required=True)
  config_flags.DEFINE_config_file(
      "config", None, "Config file with get_config() (default: the run's config.json).",
      flag_values=fv, lock_config=True, sys_argv=argv)
  config_flags.DEFINE_config_dict(
      "eval", evaluate.default_options(),
      "Evaluation options, set as --eval.NAME=VALUE (evaluate.OPTIONS).",
      flag_values=fv, lock_config=True, sys_argv=argv)


def _run_evaluate(fv: flags.FlagValues, args: list[str]) -> int:
  del args
  if fv.config is not None:
    _check_config(fv.config)
  try:
    evaluate.noise_sweep(fv.eval)
  except ValueError as e:
    _exit_with_usage_error(str(e))

  def run():
    config = fv.config if fv.config is not None else restore.load_config(fv.workdir)
    evaluate.evaluate_checkpoint(config, fv.workdir, fv.eval)

  return report_user_errors(fv.workdir, run)


def _define_report(fv: flags.FlagValues, argv: list[str]) -> None:
  del argv
  flags.DEFINE_string("out", "report", "Output folder.", flag_values=fv)


def _run_report(fv: flags.FlagValues, args: list[str]) -> int:
  if not args:
    _exit_with_usage_error("report: name one or more training workdirs.")
  return _print_error(lambda: report.print_report(args, fv.out))


def _define_visualize(fv: flags.FlagValues, argv: list[str]) -> None:
  del argv
  flags.DEFINE_string("workdir", None, "Workdir of a training run with WA.", flag_values=fv,
                      required=True)
  flags.DEFINE_string("baseline", None, "Workdir of the same network without WA.",
                      flag_values=fv)
  flags.DEFINE_integer("images", 4, "How many test images (one per class).", flag_values=fv)
  flags.DEFINE_string("image_folder", None, "Overrides data.image_folder of the runs.",
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
  del args
  return _print_error(lambda: visualize.save_attention_maps(
      fv.workdir, baseline=fv.baseline, images=fv.images, image_folder=fv.image_folder,
      replica=fv.replica, baseline_replica=fv.baseline_replica, out=fv.out, dpi=fv.dpi))


def _define_reproduce(fv: flags.FlagValues, argv: list[str]) -> None:
  del argv
  flags.DEFINE_string("data", None, "An image folder or .tar.gz of one, or 'tfds' to use "
                      "tensorflow-datasets.", flag_values=fv, required=True)
  flags.DEFINE_enum("table", "cifar10", ("cifar10", "cifar100"), "The dataset.",
                    flag_values=fv)
  flags.DEFINE_list("archs", ["resnet18", "mobilenetv2", "vgg16_bn"], "Backbones.",
                    flag_values=fv)
  flags.DEFINE_string("attentions", "none,wa",
                      "Comma-separated attention specs, e.g. none,wa,se(reduction=8).",
                      flag_values=fv)
  flags.DEFINE_integer("seeds", 4, "Seeds per cell.", lower_bound=1, flag_values=fv)
  flags.DEFINE_integer("seeds_per_run", 1, "Seeds trained at once in one run, as num_seeds "
                       "replicas (measured slower than separate runs, CPU and GPU).",
                       lower_bound=1, flag_values=fv)
  flags.DEFINE_string("results", "results", "Results folder.", flag_values=fv)
  flags.DEFINE_float("budget", None, "Wall-clock seconds.", flag_values=fv)
  flags.DEFINE_float("min_run_seconds", 60.0,
                     "Start no run with less than this left of the budget.", flag_values=fv)
  flags.DEFINE_float("keep_checkpoints_mb", 5.0,
                     "Keep a finished run's checkpoints when they total less.", flag_values=fv)
  flags.DEFINE_multi_string("set", [], "KEY=VALUE config override for every run (repeatable).",
                            flag_values=fv)


def _run_reproduce(fv: flags.FlagValues, args: list[str]) -> int:
  del args
  if fv.data != "tfds" and not os.path.exists(fv.data):
    _exit_with_usage_error(f"--data {fv.data!r} does not exist; give an image folder, an "
                           "archive of one, or 'tfds'.")
  try:
    attentions = [str(attention.AttentionSpec.parse(spec))
                  for spec in attention.split_top_level(fv.attentions)]
  except ValueError as e:
    _exit_with_usage_error(f"--attentions: {e}")
  return _print_error(lambda: reproduce.run_grid(
      fv.table, fv.archs, attentions, fv.seeds, fv.data, fv.results, fv.budget, fv.set,
      fv.min_run_seconds, fv.keep_checkpoints_mb, fv.seeds_per_run))


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
                     _define_train, _run_train, details=TRAIN_DETAILS),
    "evaluate": Command("Evaluate a checkpoint of a workdir, optionally under noise.",
                        _define_evaluate, _run_evaluate),
    "report": Command("Compare training runs: a markdown table and training curves.",
                      _define_report, _run_report, positional="WORKDIR ..."),
    "visualize": Command("Attention maps of a WA run's checkpoint next to a baseline run.",
                         _define_visualize, _run_visualize),
    "reproduce": Command("Train the paper's comparison grid and write its results tables.",
                         _define_reproduce, _run_reproduce),
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
  required = " ".join(flag for flag, what in rows if what.startswith("(required)"))
  lines = [f"usage: {program} {required} [--flag=value ...] {command.positional}".rstrip(), "",
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
  logging.use_absl_handler()
  logging.set_verbosity(logging.INFO)
  quiet_library_logs()
  return command.run(fv, args)


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
