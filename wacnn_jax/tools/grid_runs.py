"""The reproduction's grid: its cells (arch x attention), their run folders, what each run trains.

    grid = Grid.of("cifar10", ["mobilenetv2"], ["none", "wa"], seeds=4)
    runs = read_grid("results", grid)          # {cell: [SeedRun of each seed found]}
    run_command(cell, range(1), "cifar10", data, workdir, grid.overrides)

Every run is `run_train.py` with `configs/default.py` (the reference recipe)
and the reference's published settings (`REFERENCE_SETTINGS`), then the
cell's arch and attention, the table's dataset, the seeds and the overrides;
`read_cell` refuses a run folder trained with other settings
(`settings_differences`; `SETTINGS_IGNORED` lists what may differ).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from typing import Sequence

from wacnn_jax.files import records
from wacnn_jax.tools import report
from wacnn_jax.tools import run_names

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUN_TRAIN = os.path.join(REPO_ROOT, "run_train.py")
DEFAULT_CONFIG = os.path.join(REPO_ROOT, "configs", "default.py")

# The grid of the paper's table, the headline model (MobileNetV2) first.
DEFAULT_ARCHS = ("mobilenetv2", "resnet18", "vgg16_bn")
DEFAULT_ATTENTIONS = ("none", "wa")
DEFAULT_SEEDS = 4
# What the reference's published commands (`train.sh`) set beyond cifar_main.py's
# defaults, which configs/default.py follows: e.g. the headline model's
# `python cifar_main.py --dataset cifar10 --batch_size 256 --block_type ivrd
# --arch mobilenetv2 --attention_type wad --attention_param haar`.
REFERENCE_SETTINGS = ("batch_size=256",)
# Config keys in which runs of one table may differ: those that do not change
# the result (`report.IGNORED_KEYS`, the cache folders among them), and where the data is,
# which differs between machines that continue one grid.
SETTINGS_IGNORED = report.IGNORED_KEYS + ("data.image_folder",)
# XLA's command buffers (CUDA graphs) with the epoch's `while` loop and conditionals
# added to XLA's default set of captured commands, so that a whole scanned epoch can
# become one graph: a value of `--xla_flags` to measure on a GPU (off until then).


@dataclasses.dataclass(frozen=True)
class Cell:
  """One (arch, attention) configuration of the grid."""

  arch: str
  attention: str  # a canonical attention spec string

  @property
  def name(self) -> str:
    """The cell's folder name, e.g. "resnet18-wa(wavelet=db2,stages=all)"."""
    return run_names.model_name(self.arch, self.attention)


@dataclasses.dataclass(frozen=True)
class Grid:
  """What one invocation trains: a table (the dataset), its cells, the seeds of each cell,
  and the overrides of configs/default.py that every run shares."""

  table: str
  cells: tuple[Cell, ...]
  seeds: int
  overrides: tuple[str, ...] = REFERENCE_SETTINGS  # "key=value", a later one of a key wins

  @classmethod
  def of(cls, table: str, archs: Sequence[str], attentions: Sequence[str], seeds: int,
         overrides: Sequence[str] = ()) -> "Grid":
    """The grid of `archs` x `attentions`, arch-major, with REFERENCE_SETTINGS then `overrides`."""
    return cls(table, tuple(Cell(a, t) for a in archs for t in attentions), seeds,
               REFERENCE_SETTINGS + tuple(overrides))

  @property
  def settings(self) -> dict[str, str]:
    """The overrides as {key: value}, but for SETTINGS_IGNORED (e.g. where the caches are)."""
    return {key: value for key, value in (o.split("=", 1) for o in self.overrides)
            if key not in SETTINGS_IGNORED}

  @property
  def title(self) -> str:
    return f"{self.table} at batch size {self.settings['batch_size']}"

  def expected_config(self, cell: Cell) -> dict:
    """The config every run of `cell` trains with (its seed aside)."""
    return run_config(run_command(cell, range(1), self.table, "tfds", "", self.overrides))


@dataclasses.dataclass
class SeedRun:
  """One seed of a finished or partial run: a replica of the run's workdir."""

  workdir: str
  seed: int
  epochs: int
  num_epochs: int | None
  best: float | None
  final: float | None
  train_seconds: float  # the seed's share: the run's train time / its number of seeds
  params: int | None
  flops: float | None
  devices: tuple
  # The run's config.json, this replica's metrics.jsonl records, reproduce.json's invocations.
  config: dict = dataclasses.field(default_factory=dict, repr=False)
  records: list = dataclasses.field(default_factory=list, repr=False)
  invocations: list = dataclasses.field(default_factory=list, repr=False)

  @property
  def complete(self) -> bool:
    return self.num_epochs is not None and self.epochs >= self.num_epochs


def read_run(workdir: str) -> list[SeedRun]:
  """One SeedRun per replica, from metrics.jsonl, config.json, model_summary.json and
  reproduce.json of a workdir; [] before the run has written its config."""

  def load(name, default):  # a torn last line or file: dropped or `default`, with a warning
    path = os.path.join(workdir, name)
    if name.endswith(".jsonl"):
      return records.read_json_lines(path)
    return records.read_json(path, default=default)

  config = load("config.json", None)
  if config is None:
    return []
  metrics = load("metrics.jsonl", [])
  summary = load("model_summary.json", {})
  invocations = load("reproduce.json", [])
  replicas = config.get("num_seeds", 1)
  runs = []
  for k in range(replicas):
    rows = [r for r in metrics if r.get("replica", 0) == k]
    runs.append(SeedRun(
        workdir=workdir, seed=config["seed"] + k, epochs=rows[-1]["epoch"] if rows else 0,
        num_epochs=config.get("num_epochs"),
        best=max(r["test_accuracy"] for r in rows) if rows else None,
        final=rows[-1]["test_accuracy"] if rows else None,
        train_seconds=sum(r["epoch_seconds"] - r.get("compile_seconds", 0.0)
                          for r in rows) / replicas,
        params=summary.get("params"), flops=summary.get("flops_per_image"),
        devices=tuple(sorted({i["device"] for i in invocations})), config=config,
        records=rows, invocations=invocations))
  return runs


def run_folder(seeds: range) -> str:
  """The folder of a run training `seeds`: "seed3", or "seeds4-7" for four at once."""
  return f"seed{seeds.start}" if len(seeds) == 1 else f"seeds{seeds.start}-{seeds[-1]}"


class GridError(ValueError):
  """A run folder of the table was trained with settings other than the grid's."""


def settings_differences(config: dict, expected: dict) -> list[str]:
  """The settings of a run's config.json that differ from the grid's `expected` config, as
  "batch_size 128 (the grid: 256)"; keys that only one of them has are not compared
  (fields added to the config since the run), nor `SETTINGS_IGNORED`."""
  run, grid = records.flat_keys(config), records.flat_keys(expected)
  return [f"{key} {run[key]!r} (the grid: {grid[key]!r})" for key in grid
          if key in run and run[key] != grid[key]
          and not any(key == i or key.startswith(i + ".") for i in SETTINGS_IGNORED)]


def read_cell(cell_dir: str, expected: dict | None = None) -> dict[int, SeedRun]:
  """{seed: SeedRun} over every run folder of a cell; where a seed was trained in two
  folders, a complete one wins, then the one with more epochs.

  With the grid's `expected` config, a run folder trained with other settings
  (`settings_differences`) raises GridError.
  """
  found = {}
  names = sorted(os.listdir(cell_dir)) if os.path.isdir(cell_dir) else []
  for name in names:
    if not re.fullmatch(r"seed\d+|seeds\d+-\d+", name):
      continue
    for run in read_run(os.path.join(cell_dir, name)):
      differences = [] if expected is None else settings_differences(run.config, expected)
      if differences:
        raise GridError(
            f"{run.workdir} was trained with other settings than this grid: "
            f"{', '.join(differences)}. Move it to a --results folder of its own (where "
            "the same command with --set gives its settings), or give this grid its "
            "settings with --set.")
      old = found.get(run.seed)
      if old is None or (run.complete, run.epochs) > (old.complete, old.epochs):
        found[run.seed] = run
  return found


def run_command(cell: Cell, seeds: range, table: str, data: str, workdir: str,
                overrides: Sequence[str]) -> list[str]:
  command = [sys.executable, RUN_TRAIN, "--config", DEFAULT_CONFIG, "--workdir", workdir,
             "--verbose",  # train.log keeps absl's full header: level, date, thread, file:line
             f"--config.model.arch={cell.arch}", f"--config.model.attention={cell.attention}",
             f"--config.data.dataset={table}", f"--config.seed={seeds.start}",
             f"--config.num_seeds={len(seeds)}"]
  if data != "tfds":
    command.append(f"--config.data.image_folder={os.path.abspath(data)}")
  return command + [f"--config.{o}" for o in overrides]


def run_config(command: Sequence[str]) -> dict:
  """The config a `run_command` trains with, parsed as `train` parses it (config.json's form).

  Raises ValueError for an override that is not a field of configs/default.py.
  """
  # Imported here: absl flags and ml_collections only for this.
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  argv = ["train"] + [a for a in command if a.startswith("--config.")]
  fields = {f"--config.{key}" for key in records.flat_keys(json.loads(
      _default_config().to_json_best_effort()))}
  for arg in argv[1:]:
    if arg.split("=", 1)[0] not in fields:
      raise ValueError(f"{arg[len('--config.'):]}: configs/default.py has no field "
                       f"{arg[len('--config.'):].split('=', 1)[0]!r}")
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, flag_values=flag_values,
                                  lock_config=True, sys_argv=argv)
  sys.modules.pop("config_config", None)  # a fresh config module (command_line.parse_flags)
  try:
    flag_values(argv)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(" ".join(str(e).split()).replace("flag --config.", "", 1)) from e
  return json.loads(flag_values.config.to_json_best_effort())


def _default_config():
  import runpy  # pylint: disable=g-import-not-at-top
  return runpy.run_path(DEFAULT_CONFIG)["get_config"]()


def read_grid(results: str, grid: Grid) -> dict:
  """{cell: [SeedRun of seeds 0..seeds-1 found]}; GridError for a run folder of a cell that
  was trained with other settings than the grid's."""
  runs = {}
  for cell in grid.cells:
    found = read_cell(os.path.join(results, grid.table, cell.name), grid.expected_config(cell))
    runs[cell] = [found[k] for k in range(grid.seeds) if k in found]
  return runs
