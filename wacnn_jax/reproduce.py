"""Reproduce the paper's comparison: a grid of (arch, attention, seed) runs, with error bars.

    python -m wacnn_jax reproduce --data DATA [--budget SECONDS]
        [--table cifar10] [--archs mobilenetv2,resnet18,vgg16_bn] [--attentions none,wa]
        [--seeds 4] [--concurrent N] [--xla_flags=...] [--results results] [--set key=value ...]

Every run is `run_train.py` with `configs/default.py` (the reference recipe)
and the reference's published settings (`REFERENCE_SETTINGS`: its
`train.sh` trains every model with `--batch_size 256`), then `model.arch`,
`model.attention`, `data.dataset` = `--table`, `seed`, and the `--set
key=value` overrides, in `RESULTS/<table>/<arch>-<attention>/seed<k>/`. With
`--seeds_per_run` N > 1 a run trains N consecutive seeds at once as
`num_seeds` = N replicas (one program, each replica exactly the run of its
own seed), in `.../seeds<k>-<k+N-1>/`: measured, this is slower than N
separate runs on a CPU and on an H200 (`docs/benchmarks.md`, "Seeds in one
program"). A seed counts as done wherever it was trained: a run trains the
missing seeds of its group only, so invocations with different
`--seeds_per_run` share results. A run folder whose `config.json` differs
from the grid's settings in anything that changes the result (another
batch size, number of epochs, ...; `SETTINGS_IGNORED` lists what may differ)
is refused, naming it, before anything trains: a table never mixes settings.

Order: architecture by architecture as `--archs` lists them (the paper's
headline model, mobilenetv2, first); within one, seed k of every attention
before seed k + 1 of any, so that whatever has finished is a set of matched
pairs. `--concurrent N` trains N runs of that order at the same time, as
separate processes that share the machine (`run_pool`: GPU memory and CPU
cores split N ways); each is the run it would be alone (on a CPU bit for bit).

`--attentions` lists attention specs, e.g.
`none,wa,se(reduction=8),wa(wavelet='db2')` (see `wacnn_jax.attention`);
each is checked and written in its canonical form, without quotes and spaces
in folder names. `--data` is an image folder or
archive (read without TensorFlow) or `tfds` (tensorflow-datasets downloads
and prepares `--table`, e.g. cifar100). `--xla_flags` is added to the
children's `XLA_FLAGS` (a lever to measure, e.g. XLA's command buffers).

Work is spent in pieces: a run whose seeds are all complete is skipped, a
partial one resumes from its latest checkpoint, and with `--budget` the
command starts no run it cannot give `--min_run_seconds`, stops the runs in
progress at the deadline (they continue from their last checkpoint next
time, on this machine or another one given the same `RESULTS` folder) and
exits 0. SIGINT (Ctrl-C), SIGTERM and SIGHUP stop the runs in progress the
same way and end the command with one line and exit status 128 + the signal
(130 / 143 / 129). Checkpoints of finished
runs are deleted unless they are under `--keep_checkpoints_mb` (partial runs
keep theirs, to continue). Each invocation of a run is appended to its
`reproduce.json` (device, outcome, wall time, epochs before and after, runs
at once, XLA flags): `benchmarks/reproduce_rates.py` turns these and the
epochs' rates into the speed of `--concurrent` and `--xla_flags`.

`RESULTS/<table>/README.md` is rewritten after every run: per cell the best
and final test top-1 (mean ± sample std over the finished seeds), parameters,
FLOPs, epochs, training wall time per seed (a run's time divided by the seeds
it trained) and device; per architecture WA minus the baseline with a 95 %
Welch t-interval, beside the paper's reported delta. The README.md beside
`RESULTS` (the repository's, for `results/`) gets the same numbers in short
between the lines `<!-- reproduce TABLE begin -->` and `<!-- reproduce TABLE
end -->`, where it has them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import sys
import time
from typing import Sequence

import numpy as np
from scipy import stats

from wacnn_jax import record_files
from wacnn_jax import report
from wacnn_jax import run_pool
from wacnn_jax import workdirs


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_TRAIN = os.path.join(REPO_ROOT, "run_train.py")
DEFAULT_CONFIG = os.path.join(REPO_ROOT, "configs", "default.py")

# Top-1 gains of WA over the same backbone without attention that the paper
# reports, in percentage points ("-" where it reports none for that table).
PAPER_DELTA = {("cifar10", "mobilenetv2"): 1.26, ("cifar100", "mobilenetv2"): 1.54}

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
COMMAND_BUFFERS_WITH_LOOPS = "--xla_gpu_enable_command_buffer=+WHILE,+CONDITIONAL"


@dataclasses.dataclass(frozen=True)
class Cell:
  """One (arch, attention) configuration of the grid."""

  arch: str
  attention: str  # a canonical attention spec string

  @property
  def name(self) -> str:
    """The cell's folder name, e.g. "resnet18-wa(wavelet=db2,stages=all)"."""
    spec = self.attention.replace("'", "").replace('"', "").replace(" ", "")
    return f"{self.arch}-{spec}"


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
      return record_files.read_json_lines(path)
    return record_files.read_json(path, default=default)

  config = load("config.json", None)
  if config is None:
    return []
  records = load("metrics.jsonl", [])
  summary = load("model_summary.json", {})
  invocations = load("reproduce.json", [])
  replicas = config.get("num_seeds", 1)
  runs = []
  for k in range(replicas):
    rows = [r for r in records if r.get("replica", 0) == k]
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


def _flatten(config: dict, prefix: str = "") -> dict:
  """{"a": {"b": 1}} -> {"a.b": 1}."""
  flat = {}
  for key, value in config.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def settings_differences(config: dict, expected: dict) -> list[str]:
  """The settings of a run's config.json that differ from the grid's `expected` config, as
  "batch_size 128 (the grid: 256)"; keys that only one of them has are not compared
  (fields added to the config since the run), nor `SETTINGS_IGNORED`."""
  run, grid = _flatten(config), _flatten(expected)
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
  fields = {f"--config.{key}" for key in _flatten(json.loads(
      _default_config().to_json_best_effort()))}
  for arg in argv[1:]:
    if arg.split("=", 1)[0] not in fields:
      raise ValueError(f"{arg[len('--config.'):]}: configs/default.py has no field "
                       f"{arg[len('--config.'):].split('=', 1)[0]!r}")
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, flag_values=flag_values,
                                  lock_config=True, sys_argv=argv)
  sys.modules.pop("config_config", None)  # a fresh config module (see cli.parse_flags)
  try:
    flag_values(argv)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(" ".join(str(e).split()).replace("flag --config.", "", 1)) from e
  return json.loads(flag_values.config.to_json_best_effort())


def _default_config():
  import runpy  # pylint: disable=g-import-not-at-top
  return runpy.run_path(DEFAULT_CONFIG)["get_config"]()


def _device() -> tuple[str, str]:
  """The devices the runs train on, e.g. "NVIDIA H200 x1", and their platform ("gpu", "cpu"),
  found without taking the GPU's memory from the runs (no preallocation here)."""
  # Imported here: the runs are child processes, and the rest of this module
  # (tables, statistics) works without JAX.
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  import jax  # pylint: disable=g-import-not-at-top
  device = jax.devices()[0]
  return f"{device.device_kind} x{jax.local_device_count()}", device.platform


def record_invocation(workdir: str, invocation: dict) -> None:
  """Appends `invocation` to `workdir`/reproduce.json, replaced atomically."""
  path = os.path.join(workdir, "reproduce.json")
  invocations = record_files.read_json(path, default=[])
  workdirs.write_atomically(path, json.dumps(invocations + [invocation], indent=1))


def _epochs(workdir: str) -> int:
  trained = read_run(workdir)
  return trained[0].epochs if trained else 0


def record_run(ended: run_pool.Ended, device: str, epochs_before: int, concurrent: int,
               xla_flags: str) -> int:
  """Records a run that ended in its reproduce.json; returns the epochs it has now."""
  epochs = _epochs(ended.job.workdir)
  record_invocation(ended.job.workdir, {
      "device": device, "outcome": ended.outcome, "wall_seconds": ended.wall_seconds,
      "date": time.strftime("%Y-%m-%d %H:%M:%S"), "epochs_before": epochs_before,
      "epochs_after": epochs, "concurrent": concurrent, "alone_seconds": ended.alone_seconds,
      "xla_flags": xla_flags})
  return epochs


def train_one(command: list[str], workdir: str, seconds: float | None, device: str,
              env: dict[str, str] | None = None) -> str:
  """Runs one training until it ends or `seconds` pass; returns 'finished' / 'stopped' / 'failed'.

  Its output is appended to `workdir`/train.log and the invocation to
  `workdir`/reproduce.json; `env` adds to this process's environment. (A
  single run outside a grid, e.g. the benchmark suite's full run.)
  """
  pool = run_pool.RunPool(1, run_pool.child_environment({**os.environ, **(env or {})}, 1),
                          cwd=REPO_ROOT)
  epochs_before = _epochs(workdir)
  pool.start(run_pool.Job(workdir, workdir, tuple(command)))
  try:
    ended, = pool.wait(None if seconds is None else time.time() + seconds)
  except BaseException:
    pool.stop_all()
    raise
  record_run(ended, device, epochs_before, 1, "")
  return ended.outcome


def _folder_mb(path: str) -> float:
  return sum(os.path.getsize(os.path.join(root, name))
             for root, _, names in os.walk(path) for name in names) / 2**20


def prune_checkpoints(workdir: str, keep_mb: float) -> None:
  """Deletes a finished run's checkpoints unless they total under `keep_mb`."""
  folder = os.path.join(workdir, "checkpoints")
  if os.path.isdir(folder) and _folder_mb(folder) >= keep_mb:
    shutil.rmtree(folder)


# ---------------------------------------------------------------------------
# The results table.
# ---------------------------------------------------------------------------


def _mean_std(values: Sequence[float]) -> str:
  if not values:
    return "-"
  if len(values) == 1:
    return f"{100 * values[0]:.2f}"
  return f"{100 * np.mean(values):.2f} ± {100 * np.std(values, ddof=1):.2f}"


def welch_interval(a: Sequence[float], b: Sequence[float], level: float = 0.95):
  """(mean(a) - mean(b), low, high): Welch's t-interval for the difference of means.

  None for the bounds when either sample has fewer than 2 values.
  """
  a, b = np.asarray(a, float), np.asarray(b, float)
  diff = a.mean() - b.mean()
  if len(a) < 2 or len(b) < 2:
    return diff, None, None
  va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
  se = math.sqrt(va + vb)
  if se == 0:
    return diff, diff, diff
  dof = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
  half = stats.t.ppf(0.5 + level / 2, dof) * se
  return diff, diff - half, diff + half


def _cell_columns(cell: Cell, cell_runs: Sequence[SeedRun], seeds: int) -> str:
  return f"| {cell.arch} | {cell.attention} | {sum(r.complete for r in cell_runs)}/{seeds} |"


def _delta_table(grid: Grid, runs: dict) -> list[str]:
  """Per architecture, WA minus the baseline (best top-1) with its Welch interval."""
  lines = ["| arch | WA - none | 95 % interval (Welch) | seeds (WA, none) | paper |",
           "|---|---|---|---|---|"]
  for arch in dict.fromkeys(c.arch for c in grid.cells):
    wa = [r.best for r in runs.get(Cell(arch, "wa"), []) if r.complete]
    base = [r.best for r in runs.get(Cell(arch, "none"), []) if r.complete]
    paper = PAPER_DELTA.get((grid.table, arch))
    paper = f"{paper:+.2f}" if paper is not None else "-"
    if not wa or not base:
      lines.append(f"| {arch} | - | - | {len(wa)}, {len(base)} | {paper} |")
      continue
    diff, low, high = welch_interval(wa, base)
    interval = "-" if low is None else f"[{100 * low:+.2f}, {100 * high:+.2f}]"
    lines.append(f"| {arch} | {100 * diff:+.2f} | {interval} | {len(wa)}, {len(base)} | "
                 f"{paper} |")
  return lines


def results_markdown(grid: Grid, runs: dict) -> str:
  """README.md of RESULTS/<table>: the per-cell table and the WA-minus-baseline deltas."""
  settings = ", ".join(f"`{key}={value}`" for key, value in grid.settings.items())
  lines = [f"# {grid.title}: reproduction of the paper's comparison", "",
           "Written by `python -m wacnn_jax reproduce`: every run trains `configs/default.py` "
           f"(the reference recipe) with {settings}; the reference's published commands "
           "(`train.sh`) train every model at batch size 256. Top-1 test accuracy in percent, "
           "mean ± sample standard deviation over the finished seeds. *best*: the best "
           "epoch of each run (as the reference reports it); *final*: the last epoch.", "",
           "| arch | attention | seeds finished | epochs | best top-1 | final top-1 | "
           "parameters | MFLOPs/image | train time per seed | device |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for cell in grid.cells:
    cell_runs = runs[cell]
    done = [r for r in cell_runs if r.complete]
    first = next((r for r in cell_runs if r.params), None)
    # The finished seeds' epoch counts, then each unfinished seed's progress.
    epochs = ["/".join(map(str, sorted({r.epochs for r in done})))] if done else []
    epochs += [f"seed {r.seed} at {r.epochs}" for r in cell_runs if not r.complete]
    devices = sorted({d for r in cell_runs for d in r.devices})
    lines.append(
        f"{_cell_columns(cell, cell_runs, grid.seeds)} "
        f"{'; '.join(epochs) or '-'} | {_mean_std([r.best for r in done])} | "
        f"{_mean_std([r.final for r in done])} | "
        f"{f'{first.params:,}' if first else '-'} | "
        f"{f'{first.flops / 1e6:.1f}' if first and first.flops else '-'} | "
        f"{f'{np.mean([r.train_seconds for r in done]) / 60:.1f} min' if done else '-'} | "
        f"{', '.join(devices) or '-'} |")
  lines += ["", "## WA minus the baseline (best top-1, percentage points)", ""]
  lines += _delta_table(grid, runs)
  return "\n".join(lines) + "\n"


def summary_markdown(grid: Grid, runs: dict, full_table: str) -> str:
  """The same numbers in short, for the README beside RESULTS; `full_table`: a link to
  RESULTS/<table>/README.md relative to that README."""
  lines = [f"{grid.title}, top-1 test accuracy in percent, mean ± std over the finished "
           f"seeds; the full table with epochs, parameters, FLOPs, times and devices: "
           f"[{full_table}]({full_table}).", "",
           "| arch | attention | seeds finished | best top-1 | final top-1 |",
           "|---|---|---|---|---|"]
  for cell in grid.cells:
    done = [r for r in runs[cell] if r.complete]
    lines.append(f"{_cell_columns(cell, runs[cell], grid.seeds)} "
                 f"{_mean_std([r.best for r in done])} | {_mean_std([r.final for r in done])} |")
  lines += ["", "WA minus the baseline (best top-1, percentage points; the interval needs two "
            "finished seeds in each cell):", ""]
  lines += _delta_table(grid, runs)
  return "\n".join(lines) + "\n"


def summary_markers(table: str) -> tuple[str, str]:
  return f"<!-- reproduce {table} begin -->", f"<!-- reproduce {table} end -->"


def with_summary(readme: str, table: str, summary: str) -> str | None:
  """`readme` with `summary` between the table's markers; None when it has no markers."""
  begin, end = summary_markers(table)
  if begin not in readme or end not in readme:
    return None
  head, rest = readme.split(begin, 1)
  return f"{head}{begin}\n{summary}{end}{rest.split(end, 1)[1]}"


def read_grid(results: str, grid: Grid) -> dict:
  """{cell: [SeedRun of seeds 0..seeds-1 found]}; GridError for a run folder of a cell that
  was trained with other settings than the grid's."""
  runs = {}
  for cell in grid.cells:
    found = read_cell(os.path.join(results, grid.table, cell.name), grid.expected_config(cell))
    runs[cell] = [found[k] for k in range(grid.seeds) if k in found]
  return runs


def write_results(results: str, grid: Grid) -> dict:
  """Rewrites RESULTS/<table>/README.md and the summary in the README beside RESULTS (where it
  has the table's markers); returns `read_grid`'s runs."""
  runs = read_grid(results, grid)
  table_readme = os.path.join(results, grid.table, "README.md")
  workdirs.write_atomically(table_readme, results_markdown(grid, runs))
  readme = os.path.join(os.path.dirname(os.path.abspath(results)), "README.md")
  if os.path.isfile(readme):
    with open(readme) as f:
      text = with_summary(f.read(), grid.table, summary_markdown(
          grid, runs, os.path.relpath(table_readme, os.path.dirname(readme))))
    if text is not None:
      workdirs.write_atomically(readme, text)
  return runs


# ---------------------------------------------------------------------------
# The command.
# ---------------------------------------------------------------------------


class RunFailed(RuntimeError):
  """A training run of the grid ended with an error (the others were stopped)."""


def pending_runs(grid: Grid, runs: dict, seeds_per_run: int) -> list[tuple[Cell, range]]:
  """The runs still to train, in order: architecture by architecture (as the grid lists
  them); within one, seed group k of every attention before group k + 1 of any."""
  pending = []
  for arch in dict.fromkeys(c.arch for c in grid.cells):
    for group in range(0, grid.seeds, seeds_per_run):
      for cell in (c for c in grid.cells if c.arch == arch):
        complete = {r.seed for r in runs[cell] if r.complete}
        missing = [k for k in range(group, min(group + seeds_per_run, grid.seeds))
                   if k not in complete]
        if missing:
          pending.append((cell, range(missing[0], missing[-1] + 1)))
  return pending


def _label(cell: Cell, seeds: range) -> str:
  return (f"{cell.name} seed {seeds.start}" if len(seeds) == 1 else
          f"{cell.name} seeds {seeds.start}-{seeds[-1]}")


def reproduce(table: str, archs: Sequence[str], attentions: Sequence[str], seeds: int,
              data: str, results: str = "results", budget: float | None = None,
              overrides: Sequence[str] = (), min_run_seconds: float = 60.0,
              keep_checkpoints_mb: float = 5.0, seeds_per_run: int = 1, concurrent: int = 1,
              xla_flags: str = "") -> dict:
  """Runs what is missing of the grid within `budget` seconds, `concurrent` runs at a time;
  returns {cell: [SeedRun]}. Raises run_pool.Interrupted (its runs stopped and recorded)
  on SIGINT, SIGTERM or SIGHUP."""
  deadline = None if budget is None else time.time() + budget
  grid = Grid.of(table, archs, attentions, seeds, overrides)
  pool = run_pool.RunPool(concurrent, run_pool.child_environment(dict(os.environ), concurrent,
                                                                 xla_flags), cwd=REPO_ROOT)
  device = None
  epochs_before = {}  # workdir: the epochs it had when its run started

  def record(ended: run_pool.Ended) -> None:
    workdir = ended.job.workdir
    epochs = record_run(ended, device, epochs_before[workdir], concurrent, xla_flags)
    print(f"{ended.job.label}: {ended.outcome}, {epochs} epochs", flush=True)
    trained = read_run(workdir)
    if trained and all(r.complete for r in trained):
      if _folder_mb(os.path.join(workdir, "checkpoints")) >= keep_checkpoints_mb:
        # To be deleted: the final weights stay, in <workdir>/weights/ (not a large model's).
        from wacnn_jax.pretrained import export  # pylint: disable=g-import-not-at-top
        export.keep_final_weights(workdir)
      prune_checkpoints(workdir, keep_checkpoints_mb)

  with run_pool.stop_on_signals(pool):
    os.makedirs(os.path.join(results, table), exist_ok=True)
    runs = write_results(results, grid)
    pending = pending_runs(grid, runs, seeds_per_run)
    try:
      while True:
        if pool.signals:
          raise run_pool.Interrupted(pool.signals[0])
        while pending and pool.has_free_slot:
          cell, run_seeds = pending[0]
          label = _label(cell, run_seeds)
          left = None if deadline is None else deadline - time.time()
          if left is not None and left < min_run_seconds:
            print(f"budget: {max(left, 0):.0f} s left, less than --min_run_seconds; stopping "
                  f"before {label}", flush=True)
            pending = []
            break
          pending.pop(0)
          workdir = os.path.join(results, table, cell.name, run_folder(run_seeds))
          if device is None:
            device, platform = _device()
            if platform != "cpu":
              pool.split_cores()
          epochs_before[workdir] = _epochs(workdir)
          print(f"{label} ...", flush=True)
          pool.start(run_pool.Job(label, workdir, tuple(
              run_command(cell, run_seeds, table, data, workdir, grid.overrides))))
        if not pool.running:
          return runs
        ended = pool.wait(deadline)
        for run in ended:
          record(run)
        failed = [run.job.workdir for run in ended if run.outcome == "failed"]
        if failed:
          raise RunFailed(f"the run in {failed[0]} failed; see {failed[0]}/train.log")
        runs = write_results(results, grid)
    except BaseException as error:  # no run outlives the command
      stopped = pool.stop_all()
      for run in stopped:
        record(run)
      if isinstance(error, (RunFailed, run_pool.Interrupted)):
        write_results(results, grid)
      if isinstance(error, run_pool.Interrupted):
        error.stopped = [run.job.label for run in stopped]
      raise


def run_grid(table: str, archs: Sequence[str], attentions: Sequence[str], seeds: int,
             data: str, results: str, budget: float | None, overrides: Sequence[str],
             min_run_seconds: float, keep_checkpoints_mb: float, seeds_per_run: int,
             concurrent: int = 1, xla_flags: str = "") -> int:
  """`python -m wacnn_jax reproduce`: `reproduce` and where its table is; the exit code."""
  try:
    reproduce(table, archs, attentions, seeds, data, results, budget, overrides,
              min_run_seconds, keep_checkpoints_mb, seeds_per_run, concurrent, xla_flags)
  except run_pool.Interrupted as e:
    stopped = (f"stopped {', '.join(e.stopped)}, to continue from the last checkpoint at "
               "the next invocation" if e.stopped else "no run was in progress")
    sys.stderr.write(f"interrupted by {e}: {stopped}.\n")
    return 128 + e.signum
  except RuntimeError as e:
    sys.stderr.write(f"error: {e}\n")
    return 1
  print(f"results: {os.path.join(results, table, 'README.md')}")
  return 0
