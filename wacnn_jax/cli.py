"""The command line: `python -m wacnn_jax COMMAND [--flag=value ...]`, dispatched to its tool.

    python -m wacnn_jax train --config configs/default.py --workdir W [--config.a.b=v ...]
    python -m wacnn_jax evaluate --workdir W [--config F] [--eval.noise=True ...]
    python -m wacnn_jax evaluate --pretrained NAME_OR_PATH [--image_folder F] [--eval.noise=True]
    python -m wacnn_jax report W1 W2 ... [--out DIR]
    python -m wacnn_jax visualize --workdir W [--baseline W0] [--out PNG]
    python -m wacnn_jax visualize --pretrained NAME [--baseline_pretrained NAME0] [--out PNG]
    python -m wacnn_jax reproduce --data D [--table cifar10] [--budget S ...]
    python -m wacnn_jax export --workdir W --out DIR [--which final|best | --step N]
    python -m wacnn_jax predict --pretrained NAME_OR_PATH IMAGE ... [--top_k 5]
    python -m wacnn_jax cache [--clear | --older_than DAYS]

`run_train.py --config ... --workdir ...` is `train`. Each command is the
module `wacnn_jax.tools.<command>`, which owns its flags and what it runs
(its `COMMAND`); only the command that runs is imported, so that a training
process starts without the tools' plotting and statistics libraries. How a
command parses its flags and ends is `tools.command_line` and
`tools.failures`: a bad command line is one `error:` line and exit status 2,
a problem found later one line and status 1; SIGINT and SIGTERM stop every
command but `reproduce` (which stops its runs itself) with one line and exit
status 130 / 143.
"""

from __future__ import annotations

import importlib
import sys

from wacnn_jax.tools import command_line

# Each command's one line of help; its flags and run are in wacnn_jax.tools.<command>.
COMMANDS = {
    "train": "Train (and evaluate every epoch) a config in a workdir; resumes.",
    "evaluate": "Evaluate a checkpoint of a workdir, or trained weights, optionally under noise.",
    "report": "Compare training runs: a markdown table and training curves.",
    "visualize": "Attention maps of a WA run's checkpoint (or trained weights) next to a "
                 "baseline.",
    "reproduce": "Train the paper's comparison grid and write its results tables.",
    "export": "Write a run's trained weights (no optimiser state) for wacnn_jax.pretrained.load.",
    "predict": "The top classes of image files by trained weights (a shipped name or a path).",
    "cache": "List the dataset and compilation caches (source, size, last use); clear them.",
}


def command(name: str) -> command_line.Command:
  """The `COMMAND` of `wacnn_jax.tools.<name>` (imported now, and only it)."""
  return importlib.import_module(f"wacnn_jax.tools.{name}").COMMAND


def usage() -> str:
  lines = ["usage: python -m wacnn_jax COMMAND [--flag=value ...]   (COMMAND --help: its flags)",
           "", "commands:"]
  lines += [f"  {name:<10} {summary}" for name, summary in COMMANDS.items()]
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  """Runs `argv` = [program, COMMAND, flags...]; returns the exit code."""
  argv = sys.argv if argv is None else argv
  if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
    print(usage())
    return 0 if len(argv) >= 2 else 2
  if argv[1] not in COMMANDS:
    command_line.exit_with_usage_error(f"unknown command {argv[1]!r}.\n{usage()}")
  return command_line.run(argv[1], COMMANDS[argv[1]], command(argv[1]), argv)
