"""What every command of `python -m wacnn_jax` shares: flags parsed, --help, one line per mistake.

    COMMAND = command_line.Command(define=define_flags, run=run_command, details="...")
    command_line.run("train", "Train ...", COMMAND, argv)   # what `cli` does with it

Every command takes absl `--flag=value` flags (`COMMAND --help` lists them
with their defaults as values); a bad command line or config value is one
`error:` line on stderr and exit status 2, before anything is written
(`exit_with_usage_error`). A `--config configs/...` that is not in the
current folder is taken from the installed `configs` package.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import runpy
import sys
from typing import Callable, Mapping, NoReturn

from absl import flags
import ml_collections

from wacnn_jax.files import records
from wacnn_jax.tools import failures
from wacnn_jax.training import config_checks
from wacnn_jax.training import log_output



def _config_path(argv) -> str | None:
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return None

def exit_with_usage_error(message: str) -> NoReturn:
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
      exit_with_usage_error(f"--config {path}: no such file.")
  for arg in argv[1:]:
    key = arg[len("--config."):].split("=", 1)[0] if arg.startswith("--config.") else ""
    if key.split(".")[0] in MOVED_TO_EVALUATE:
      exit_with_usage_error(
          f"--config.{key} is not an experiment setting: evaluate a checkpoint with "
          "`python -m wacnn_jax evaluate --workdir W [--eval.step=N] [--eval.noise=True]`.")
  # ml_collections loads a config file as the module "config_config" with
  # SourceFileLoader.load_module, which runs a new file inside an earlier parse's
  # module (its get_config() included): every parse starts from a fresh one.
  sys.modules.pop("config_config", None)
  try:
    remaining = flag_values(argv)
  except flags.Error as e:  # a bad value, an unknown or a missing flag
    exit_with_usage_error(_without_traceback(str(e)))
  except Exception as e:  # pylint: disable=broad-except
    message = (str(e).strip("'\"").replace("\\n", " ").replace('\\"', '"')
               .replace("\\'", "'"))
    valid = ""
    if path and os.path.exists(path):
      try:
        namespace = runpy.run_path(path)
        if "get_config" not in namespace:
          exit_with_usage_error(f"--config {path} defines no get_config(); a config file is "
                                 "Python, like configs/default.py.")
        config = namespace["get_config"]()
      except Exception as load_error:  # pylint: disable=broad-except
        exit_with_usage_error(f"--config {path} does not load ({type(load_error).__name__}: "
                               f"{load_error}).")
      if not isinstance(config, ml_collections.ConfigDict):
        exit_with_usage_error(f"--config {path}: get_config() returned "
                               f"{type(config).__name__}, not an ml_collections.ConfigDict "
                               "(build it on configs/default.py's get_config()).")
      valid = "\nValid keys: " + ", ".join(sorted(records.flat_keys(config.to_dict())))
    exit_with_usage_error(f"bad config override ({type(e).__name__}: {message}).{valid}")
  if len(remaining) > 1 and not positional:
    exit_with_usage_error(f"unexpected arguments {remaining[1:]}; every option is a --flag.")
  return remaining[1:]

@dataclasses.dataclass(frozen=True)
class Command:
  """A subcommand: its flags (`define(flag_values, argv)`) and what it runs (`run(flag_values, args)`).

  `argv` is the command line to be parsed: config flags define their
  `--config.x=y` override flags from it. Each command module of
  `wacnn_jax.tools` defines one as `COMMAND`; `cli` names them.
  """

  define: Callable[[flags.FlagValues, list[str]], None]
  run: Callable[[flags.FlagValues, list[str]], int]
  positional: str = ""  # what positional arguments are, if it takes any
  choice: str = ""  # flags of which one is needed, for the usage line: "(--a=A | --b=B)"
  # What the line of a SIGINT / SIGTERM says after "stopped by SIGTERM: "
  # (`failures.exit_on_signals`); None: the command handles signals itself.
  on_signal: str | None = "stopped."
  details: str = ""  # printed by --help after the flags: syntax, presets, an example
  # What --help says of the fields of a ConfigDict flag: {"eval.step": "the checkpoint's ..."}.
  field_help: Mapping[str, str] = dataclasses.field(default_factory=dict)

def check_config(config: ml_collections.ConfigDict) -> None:
  """A bad config value (`config_checks.validate_config`) is a usage error: one `error:` line,
  status 2, no error.log."""
  try:
    config_checks.validate_config(config)
  except ValueError as e:
    exit_with_usage_error(str(e))

def one_model(fv: flags.FlagValues, workdir_flag: str, weights_flag: str,
               required: bool = True) -> None:
  """A usage error unless one of the two flags is given (or, not `required`, at most one)."""
  given = [name for name in (workdir_flag, weights_flag) if fv[name].value]
  if len(given) > 1:
    exit_with_usage_error(f"give --{workdir_flag} or --{weights_flag}, not both.")
  if required and not given:
    exit_with_usage_error(f"give --{workdir_flag} (a training run) or --{weights_flag} "
                           "(trained weights).")

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


def _flag_lines(fv: flags.FlagValues, field_help: Mapping[str, str]) -> list[tuple[str, str]]:
  """(flag as written, what it is) for every flag of a command, required ones first."""
  rows = []
  for name in fv:
    flag = fv[name]
    if isinstance(flag.default, ml_collections.ConfigDict):  # --eval: one row per option
      rows += [(f"--{name}.{key}={_command_line_value(flag.default[key])}",
                field_help.get(f"{name}.{key}", "")) for key in flag.default]
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


def command_help(summary: str, command: Command, fv: flags.FlagValues, program: str,
                 argv: list[str]) -> str:
  """`COMMAND --help`: usage, the flags with their defaults as values, the command's details,
  and with `--config FILE` the fields of that config."""
  rows = _flag_lines(fv, command.field_help)
  required = [flag for flag, what in rows if what.startswith("(required)")]
  words = ["usage:", program, *required, command.choice, "[--flag=value ...]", command.positional]
  lines = [" ".join(word for word in words if word), "",
           summary, "", "flags:"]
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
      for key, value in records.flat_keys(config.to_dict()).items():
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

def run(name: str, summary: str, command: Command, argv: list[str]) -> int:
  """Runs `command` (named `name`, described by `summary`) on `argv` = [program, name, flags...].

  `--help` prints the command's help; otherwise its flags are parsed (a bad
  command line is one `error:` line and status 2), absl logging goes to the
  console (`log_output.use_console`: short lines, absl's header with
  `--verbose`; the libraries' INFO lines left out), and SIGINT / SIGTERM end
  it with one line (`failures.exit_on_signals`) unless it handles them itself.
  """
  argv = resolve_config_path(argv)
  fv = flags.FlagValues()
  command.define(fv, argv)
  flags.DEFINE_boolean("verbose", False, "Log lines with absl's full header (level, date, "
                       "thread, file:line), not the time alone.", flag_values=fv)
  program = ("python -m wacnn_jax" if argv[0].endswith("__main__.py")
             else os.path.basename(argv[0]))
  if name != "train" or program != "run_train.py":
    program = f"{program} {name}"
  if "--helpfull" in argv[2:] or "--help" in argv[2:] or "-h" in argv[2:]:
    print(command_help(summary, command, fv, program, argv))
    return 0
  args = parse_flags(fv, [program] + argv[2:], positional=bool(command.positional))
  if not flags.FLAGS.is_parsed():  # absl logging reads its own flags' defaults
    flags.FLAGS([program])
  for flag in ("workdir", "baseline"):  # the shell does not expand ~ in --workdir=~/runs
    if flag in fv and fv[flag].value is not None:
      if not fv[flag].value.strip():
        exit_with_usage_error(f"--{flag} is empty (an unset shell variable?); give a folder.")
      fv[flag].value = os.path.expanduser(fv[flag].value)
  log_output.use_console(fv.verbose)
  with (failures.exit_on_signals(command.on_signal) if command.on_signal
        else contextlib.nullcontext()):
    return command.run(fv, args)
