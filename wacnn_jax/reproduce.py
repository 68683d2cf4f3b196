"""Reproduce the paper's comparison: a grid of (arch, attention, seed) runs, with error bars.

    python -m wacnn_jax reproduce --table cifar10 --archs resnet18,mobilenetv2,vgg16_bn \
        --attentions none,wa --seeds 4 --data DATA \
        [--seeds_per_run N] [--budget SECONDS] [--results results] [--set num_epochs=2 ...]

Every run is `run_train.py` with `configs/default.py` (the reference recipe),
`model.arch`, `model.attention`, `data.dataset` = `--table` and `seed`, in
`RESULTS/<table>/<arch>-<attention>/seed<k>/`. With `--seeds_per_run` N > 1
a run trains N consecutive seeds at once as `num_seeds` = N replicas (one
program, each replica exactly the run of its own seed), in
`.../seeds<k>-<k+N-1>/`: measured, this is slower than N separate runs on a
CPU and on an H200 (`docs/benchmarks.md`, "Seeds in one program"). A seed
counts as done wherever it was trained: a run trains the missing seeds of its
group only, so invocations with different `--seeds_per_run` share results.

`--attentions` lists attention specs, e.g.
`none,wa,se(reduction=8),wa(wavelet='db2')` (see `wacnn_jax.attention`);
each is checked and written in its canonical form, without quotes and spaces
in folder names. `--data` is an image folder or
archive (read without TensorFlow) or `tfds` (tensorflow-datasets downloads
and prepares `--table`, e.g. cifar100). `--set key=value` adds
`--config.key=value` to every run (for short runs).

Work is spent in pieces: a run whose seeds are all complete is skipped, a
partial one resumes from its latest checkpoint, and with `--budget` the command starts no
run it cannot give `--min_run_seconds`, stops the run in progress at the
deadline (it continues from its last checkpoint next time, on this machine or
another one given the same `RESULTS` folder) and exits 0. Checkpoints of
finished runs are deleted unless they are under `--keep_checkpoints_mb`
(partial runs keep theirs, to continue).

`RESULTS/<table>/README.md` is rewritten after every run: per cell the best
and final test top-1 (mean ± sample std over the finished seeds), parameters,
FLOPs, epochs, training wall time per seed (a run's time divided by the seeds
it trained) and device; per architecture WA minus the baseline with a 95 %
Welch t-interval, beside the paper's reported delta.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from typing import Sequence

import numpy as np
from scipy import stats


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_TRAIN = os.path.join(REPO_ROOT, "run_train.py")
DEFAULT_CONFIG = os.path.join(REPO_ROOT, "configs", "default.py")

# Top-1 gains of WA over the same backbone without attention that the paper
# reports, in percentage points ("-" where it reports none for that table).
PAPER_DELTA = {("cifar10", "mobilenetv2"): 1.26, ("cifar100", "mobilenetv2"): 1.54}


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

  @property
  def complete(self) -> bool:
    return self.num_epochs is not None and self.epochs >= self.num_epochs


def read_run(workdir: str) -> list[SeedRun]:
  """One SeedRun per replica, from metrics.jsonl, config.json, model_summary.json and
  reproduce.json of a workdir; [] before the run has written its config."""

  def load(name, default):
    path = os.path.join(workdir, name)
    if not os.path.exists(path):
      return default
    with open(path) as f:
      if name.endswith(".jsonl"):
        return [json.loads(line) for line in f if line.strip()]
      return json.load(f)

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
        devices=tuple(sorted({i["device"] for i in invocations}))))
  return runs


def run_folder(seeds: range) -> str:
  """The folder of a run training `seeds`: "seed3", or "seeds4-7" for four at once."""
  return f"seed{seeds.start}" if len(seeds) == 1 else f"seeds{seeds.start}-{seeds[-1]}"


def read_cell(cell_dir: str) -> dict[int, SeedRun]:
  """{seed: SeedRun} over every run folder of a cell; where a seed was trained in two
  folders, a complete one wins, then the one with more epochs."""
  found = {}
  names = sorted(os.listdir(cell_dir)) if os.path.isdir(cell_dir) else []
  for name in names:
    if not re.fullmatch(r"seed\d+|seeds\d+-\d+", name):
      continue
    for run in read_run(os.path.join(cell_dir, name)):
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


def _device_name() -> str:
  # Imported here: the runs are child processes, and the rest of this module
  # (tables, statistics) works without JAX.
  import jax  # pylint: disable=g-import-not-at-top
  device = jax.devices()[0]
  return f"{device.device_kind} x{jax.local_device_count()}"


def train_one(command: list[str], workdir: str, seconds: float | None, device: str,
              env: dict[str, str] | None = None) -> str:
  """Runs one training until it ends or `seconds` pass; returns 'finished' / 'stopped' / 'failed'.

  Its output is appended to `workdir`/train.log and the invocation to
  `workdir`/reproduce.json; `env` adds to this process's environment.
  """
  os.makedirs(workdir, exist_ok=True)
  start = time.time()
  with open(os.path.join(workdir, "train.log"), "a") as log:
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                               env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    try:
      returncode = process.wait(timeout=seconds)
      outcome = "finished" if returncode == 0 else "failed"
    except subprocess.TimeoutExpired:
      process.send_signal(signal.SIGTERM)
      try:
        process.wait(timeout=30)
      except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
      outcome = "stopped"
  path = os.path.join(workdir, "reproduce.json")
  invocations = []
  if os.path.exists(path):
    with open(path) as f:
      invocations = json.load(f)
  invocations.append({"device": device, "outcome": outcome, "wall_seconds": time.time() - start,
                      "date": time.strftime("%Y-%m-%d %H:%M:%S")})
  with open(path + ".tmp", "w") as f:
    json.dump(invocations, f, indent=1)
  os.replace(path + ".tmp", path)
  return outcome


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


def results_markdown(table: str, cells: Sequence[Cell], runs: dict, seeds: int) -> str:
  """README.md of RESULTS/<table>: the per-cell table and the WA-minus-baseline deltas."""
  lines = [f"# {table}: reproduction of the paper's comparison", "",
           "Written by `python -m wacnn_jax reproduce`; top-1 test accuracy in percent, "
           "mean ± sample standard deviation over the finished seeds. *best*: the best "
           "epoch of each run (as the reference reports it); *final*: the last epoch.", "",
           "| arch | attention | seeds finished | epochs | best top-1 | final top-1 | "
           "parameters | MFLOPs/image | train time per seed | device |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for cell in cells:
    cell_runs = runs[cell]
    done = [r for r in cell_runs if r.complete]
    first = next((r for r in cell_runs if r.params), None)
    # The finished seeds' epoch counts, then each unfinished seed's progress.
    epochs = ["/".join(map(str, sorted({r.epochs for r in done})))] if done else []
    epochs += [f"seed {r.seed} at {r.epochs}" for r in cell_runs if not r.complete]
    devices = sorted({d for r in cell_runs for d in r.devices})
    lines.append(
        f"| {cell.arch} | {cell.attention} | {len(done)}/{seeds} | "
        f"{'; '.join(epochs) or '-'} | {_mean_std([r.best for r in done])} | "
        f"{_mean_std([r.final for r in done])} | "
        f"{f'{first.params:,}' if first else '-'} | "
        f"{f'{first.flops / 1e6:.1f}' if first and first.flops else '-'} | "
        f"{f'{np.mean([r.train_seconds for r in done]) / 60:.1f} min' if done else '-'} | "
        f"{', '.join(devices) or '-'} |")
  lines += ["", "## WA minus the baseline (best top-1, percentage points)", "",
            "| arch | WA - none | 95 % interval (Welch) | seeds (WA, none) | paper |",
            "|---|---|---|---|---|"]
  for arch in dict.fromkeys(c.arch for c in cells):
    wa = [r.best for r in runs.get(Cell(arch, "wa"), []) if r.complete]
    base = [r.best for r in runs.get(Cell(arch, "none"), []) if r.complete]
    if not wa or not base:
      continue
    diff, low, high = welch_interval(wa, base)
    interval = "-" if low is None else f"[{100 * low:+.2f}, {100 * high:+.2f}]"
    paper = PAPER_DELTA.get((table, arch))
    lines.append(f"| {arch} | {100 * diff:+.2f} | {interval} | {len(wa)}, {len(base)} | "
                 f"{f'{paper:+.2f}' if paper is not None else '-'} |")
  return "\n".join(lines) + "\n"


def write_results(results: str, table: str, cells, seeds: int) -> dict:
  """Rewrites RESULTS/<table>/README.md; returns {cell: [SeedRun of seeds 0..seeds-1 found]}."""
  runs = {}
  for cell in cells:
    found = read_cell(os.path.join(results, table, cell.name))
    runs[cell] = [found[k] for k in range(seeds) if k in found]
  with open(os.path.join(results, table, "README.md"), "w") as f:
    f.write(results_markdown(table, cells, runs, seeds))
  return runs


# ---------------------------------------------------------------------------
# The command.
# ---------------------------------------------------------------------------


def reproduce(table: str, archs: Sequence[str], attentions: Sequence[str], seeds: int,
              data: str, results: str = "results", budget: float | None = None,
              overrides: Sequence[str] = (), min_run_seconds: float = 60.0,
              keep_checkpoints_mb: float = 5.0, seeds_per_run: int = 1) -> dict:
  """Runs what is missing of the grid within `budget` seconds; returns {cell: [SeedRun]}."""
  deadline = None if budget is None else time.time() + budget
  cells = [Cell(a, t) for a in archs for t in attentions]
  os.makedirs(os.path.join(results, table), exist_ok=True)
  runs = write_results(results, table, cells, seeds)
  device = _device_name()
  # Seed-major order: every cell gets its first seeds before any gets the next ones.
  for group in range(0, seeds, seeds_per_run):
    for cell in cells:
      complete = {r.seed for r in runs[cell] if r.complete}
      missing = [k for k in range(group, min(group + seeds_per_run, seeds))
                 if k not in complete]
      if not missing:
        continue
      run_seeds = range(missing[0], missing[-1] + 1)
      label = (f"{cell.name} seed {run_seeds.start}" if len(run_seeds) == 1 else
               f"{cell.name} seeds {run_seeds.start}-{run_seeds[-1]}")
      workdir = os.path.join(results, table, cell.name, run_folder(run_seeds))
      left = None if deadline is None else deadline - time.time()
      if left is not None and left < min_run_seconds:
        print(f"budget: {max(left, 0):.0f} s left, less than --min_run_seconds; stopping "
              f"before {label}", flush=True)
        return runs
      print(f"{label} ...", flush=True)
      outcome = train_one(run_command(cell, run_seeds, table, data, workdir, overrides),
                          workdir, left, device)
      trained = read_run(workdir)
      print(f"{label}: {outcome}, {trained[0].epochs if trained else 0} epochs", flush=True)
      if outcome == "failed":
        raise RuntimeError(f"the run in {workdir} failed; see {workdir}/train.log")
      if trained and all(r.complete for r in trained):
        prune_checkpoints(workdir, keep_checkpoints_mb)
      runs = write_results(results, table, cells, seeds)
      if outcome == "stopped":
        return runs
  return runs


def run_grid(table: str, archs: Sequence[str], attentions: Sequence[str], seeds: int,
             data: str, results: str, budget: float | None, overrides: Sequence[str],
             min_run_seconds: float, keep_checkpoints_mb: float, seeds_per_run: int) -> int:
  """`python -m wacnn_jax reproduce`: `reproduce` and where its table is; the exit code."""
  try:
    reproduce(table, archs, attentions, seeds, data, results, budget, overrides,
              min_run_seconds, keep_checkpoints_mb, seeds_per_run)
  except RuntimeError as e:
    sys.stderr.write(f"error: {e}\n")
    return 1
  print(f"results: {os.path.join(results, table, 'README.md')}")
  return 0
