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
`none,wa,se(reduction=8),wa(wavelet='db2')` (see `wacnn_jax.nn.attention_spec`);
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

import json
import os
import shutil
import sys
import time
from typing import Sequence

from absl import flags

from wacnn_jax.files import atomic
from wacnn_jax.files import records
from wacnn_jax.nn import attention_spec
from wacnn_jax.tools import command_line
from wacnn_jax.tools import export
from wacnn_jax.tools import failures
from wacnn_jax.tools import grid_runs
from wacnn_jax.tools import results_tables
from wacnn_jax.tools import run_pool
from wacnn_jax.training import compilation_cache

# XLA's command buffers (CUDA graphs) with the epoch's `while` loop and conditionals
# added to XLA's default set of captured commands, so that a whole scanned epoch can
# become one graph: a value of `--xla_flags` to measure on a GPU (off until then).
COMMAND_BUFFERS_WITH_LOOPS = "--xla_gpu_enable_command_buffer=+WHILE,+CONDITIONAL"


def _device() -> tuple[str, str]:
  """The devices the runs train on, e.g. "NVIDIA H200 x1", and their platform ("gpu", "cpu"),
  found without taking the GPU's memory from the runs (no preallocation here)."""
  # Before JAX makes its GPU client: the runs are child processes.
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  import jax  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  device = jax.devices()[0]
  return f"{device.device_kind} x{jax.local_device_count()}", device.platform


def record_invocation(workdir: str, invocation: dict) -> None:
  """Appends `invocation` to `workdir`/reproduce.json, replaced atomically."""
  path = os.path.join(workdir, "reproduce.json")
  invocations = records.read_json(path, default=[])
  atomic.write_atomically(path, json.dumps(invocations + [invocation], indent=1))


def _epochs(workdir: str) -> int:
  trained = grid_runs.read_run(workdir)
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
                          cwd=grid_runs.REPO_ROOT)
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


class RunFailed(RuntimeError):
  """A training run of the grid ended with an error (the others were stopped)."""


def pending_runs(grid: grid_runs.Grid, runs: dict, seeds_per_run: int
                 ) -> list[tuple[grid_runs.Cell, range]]:
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


def _label(cell: grid_runs.Cell, seeds: range) -> str:
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
  grid = grid_runs.Grid.of(table, archs, attentions, seeds, overrides)
  pool = run_pool.RunPool(concurrent, run_pool.child_environment(dict(os.environ), concurrent,
                                                                 xla_flags), cwd=grid_runs.REPO_ROOT)
  device = None
  epochs_before = {}  # workdir: the epochs it had when its run started

  def record(ended: run_pool.Ended) -> None:
    workdir = ended.job.workdir
    epochs = record_run(ended, device, epochs_before[workdir], concurrent, xla_flags)
    print(f"{ended.job.label}: {ended.outcome}, {epochs} epochs", flush=True)
    trained = grid_runs.read_run(workdir)
    if trained and all(r.complete for r in trained):
      if _folder_mb(os.path.join(workdir, "checkpoints")) >= keep_checkpoints_mb:
        # To be deleted: the final weights stay, in <workdir>/weights/ (not a large model's).
        export.keep_final_weights(workdir)
      prune_checkpoints(workdir, keep_checkpoints_mb)

  with run_pool.stop_on_signals(pool):
    os.makedirs(os.path.join(results, table), exist_ok=True)
    runs = results_tables.write_results(results, grid)
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
          workdir = os.path.join(results, table, cell.name, grid_runs.run_folder(run_seeds))
          if device is None:
            device, platform = _device()
            if platform != "cpu":
              pool.split_cores()
          epochs_before[workdir] = _epochs(workdir)
          print(f"{label} ...", flush=True)
          pool.start(run_pool.Job(label, workdir, tuple(
              grid_runs.run_command(cell, run_seeds, table, data, workdir, grid.overrides))))
        if not pool.running:
          return runs
        ended = pool.wait(deadline)
        for run in ended:
          record(run)
        failed = [run.job.workdir for run in ended if run.outcome == "failed"]
        if failed:
          raise RunFailed(f"the run in {failed[0]} failed; see {failed[0]}/train.log")
        runs = results_tables.write_results(results, grid)
    except BaseException as error:  # no run outlives the command
      stopped = pool.stop_all()
      for run in stopped:
        record(run)
      if isinstance(error, (RunFailed, run_pool.Interrupted)):
        results_tables.write_results(results, grid)
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


# ---------------------------------------------------------------------------
# The command.
# ---------------------------------------------------------------------------


def define_flags(fv: flags.FlagValues, argv: list[str]) -> None:
  del argv
  flags.DEFINE_string("data", None, "An image folder or .tar.gz of one, or 'tfds' to use "
                      "tensorflow-datasets.", flag_values=fv, required=True)
  flags.DEFINE_enum("table", "cifar10", ("cifar10", "cifar100"), "The dataset.",
                    flag_values=fv)
  flags.DEFINE_list("archs", list(grid_runs.DEFAULT_ARCHS),
                    "Backbones, trained in this order (the headline model first).",
                    flag_values=fv)
  flags.DEFINE_string("attentions", ",".join(grid_runs.DEFAULT_ATTENTIONS),
                      "Comma-separated attention specs, e.g. none,wa,se(reduction=8).",
                      flag_values=fv)
  flags.DEFINE_integer("seeds", grid_runs.DEFAULT_SEEDS, "Seeds per cell.", lower_bound=1,
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
                      f"--xla_flags={COMMAND_BUFFERS_WITH_LOOPS}.", flag_values=fv)


def run(fv: flags.FlagValues, args: list[str]) -> int:
  del args
  if fv.data != "tfds" and not os.path.exists(fv.data):
    command_line.exit_with_usage_error(f"--data {fv.data!r} does not exist; give an image folder, an "
                           "archive of one, or 'tfds'.")
  try:
    attentions = [str(attention_spec.AttentionSpec.parse(spec))
                  for spec in attention_spec.split_top_level(fv.attentions)]
  except ValueError as e:
    command_line.exit_with_usage_error(f"--attentions: {e}")
  # Every run gets --config.compilation_cache_dir; a --set of it comes later and wins.
  overrides = [f"compilation_cache_dir={fv.compilation_cache_dir}", *fv.set]
  try:
    grid_runs.run_config(grid_runs.run_command(grid_runs.Cell(fv.archs[0], attentions[0]),
                                               range(1), fv.table, "tfds", "", overrides))
  except ValueError as e:
    command_line.exit_with_usage_error(f"--set {e}")
  return failures.print_error(lambda: run_grid(
      fv.table, fv.archs, attentions, fv.seeds, fv.data, fv.results, fv.budget, overrides,
      fv.min_run_seconds, fv.keep_checkpoints_mb, fv.seeds_per_run, fv.concurrent,
      fv.xla_flags))


COMMAND = command_line.Command(define_flags, run, on_signal=None)
