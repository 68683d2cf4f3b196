"""`python -m wacnn_jax reproduce`: the grid runs end to end at tiny sizes, in pieces, several at
once and stopped by signals; its order, settings check, tables and statistics."""

import fcntl
import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from scipy import stats

from benchmarks import reproduce_rates
from tests.helpers import REPO_ROOT
from wacnn_jax import cli
from wacnn_jax.nn import attention_spec
from wacnn_jax.tools import grid_runs
from wacnn_jax.tools import reproduce
from wacnn_jax.tools import results_tables
from wacnn_jax.tools import run_pool




TINY = ["num_epochs=1", "batch_size=32", "eval_batch_size=16", "data.max_train_examples=64",
        "data.max_test_examples=16", "schedule.boundaries=(1,)"]


@pytest.fixture(scope="module")
def tiny_folder(random_image_folder):
  return random_image_folder(24, 6)


def _cli(env, *args, timeout=600):
  return subprocess.run([sys.executable, "-m", "wacnn_jax", "reproduce", *args], cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=timeout, env=env)


def _invocations(results, cell, seed):
  with open(os.path.join(results, "cifar10", cell, f"seed{seed}", "reproduce.json")) as f:
    return json.load(f)


def _grid_args(tiny_folder, results, seeds=2):
  return (["--archs", "resnet18", "--attentions", "none,wa", "--seeds", str(seeds), "--data",
           tiny_folder, "--results", results] + [a for o in TINY for a in ("--set", o)])


@pytest.fixture(scope="module")
def grid_in_pieces(tmp_path_factory, tiny_folder, subprocess_env):
  """resnet18 none/wa x 2 seeds, one run at a time: first with a budget that stops the first
  run, then to the end. Returns (results folder, first output, second output)."""
  results = str(tmp_path_factory.mktemp("sequential") / "results")
  common = _grid_args(tiny_folder, results)
  first = _cli(subprocess_env, *common, "--budget", "2", "--min_run_seconds", "1")
  second = _cli(subprocess_env, *common)
  return results, first, second


def test_grid_in_pieces_then_complete_then_skipped(grid_in_pieces, tiny_folder, subprocess_env):
  results, first, second = grid_in_pieces
  common = _grid_args(tiny_folder, results)
  # 1. A budget too short for a whole run: the first run is stopped at the deadline.
  assert first.returncode == 0, first.stderr[-2000:]
  assert _invocations(results, "resnet18-none", 0)[0]["outcome"] == "stopped"
  assert "resnet18-wa seed 0 ..." not in first.stdout
  # 2. No budget: everything missing runs, the stopped run included, seed k of both cells
  # before seed k + 1 of either.
  assert second.returncode == 0, second.stderr[-2000:]
  assert re.findall(r"^(\S+ seed \d) \.\.\.$", second.stdout, re.M) == [
      "resnet18-none seed 0", "resnet18-wa seed 0", "resnet18-none seed 1", "resnet18-wa seed 1"]
  readme = open(os.path.join(results, "cifar10", "README.md")).read()
  assert readme.startswith("# cifar10 at batch size 32:")
  assert "| resnet18 | none | 2/2 | 1 |" in readme and "| resnet18 | wa | 2/2 | 1 |" in readme
  delta_rows = [l for l in readme.splitlines() if l.startswith("| resnet18 | ") and "[" in l]
  assert len(delta_rows) == 1 and "| 2, 2 |" in delta_rows[0]
  assert [i["outcome"] for i in _invocations(results, "resnet18-none", 0)] == [
      "stopped", "finished"]
  invocation = _invocations(results, "resnet18-wa", 1)[0]
  assert (invocation["epochs_before"], invocation["epochs_after"]) == (0, 1)
  assert (invocation["concurrent"], invocation["xla_flags"]) == (1, "")
  # Tiny finished runs keep their (small) checkpoints; metrics and summaries are there.
  run, = grid_runs.read_run(os.path.join(results, "cifar10", "resnet18-wa", "seed1"))
  assert run.seed == 1 and run.complete and run.flops > 0
  assert run.params == 272_474 - 7 * (64 + 1)  # resnet18-WA with 3 classes instead of 10
  # Every run's start-up, from the first record of its invocation.
  startup = reproduce_rates.startup_table(
      reproduce_rates.invocation_rates(os.path.join(results, "cifar10"))).splitlines()
  assert len(startup) == 3 and startup[2].startswith("| resnet18 | "), startup
  invocations, started, compiled, total = [c.strip() for c in startup[2].split("|")[3:7]]
  assert invocations == "4" and 0 < float(started.split()[0]) < float(total)
  assert float(total) == pytest.approx(float(started.split()[0]) + float(compiled.split()[0]),
                                       abs=0.11)
  # 3. Nothing left to do: no run starts.
  third = _cli(subprocess_env, *common, "--budget", "0")
  assert third.returncode == 0
  for cell in ("resnet18-none", "resnet18-wa"):
    for seed in (0, 1):
      assert _invocations(results, cell, seed)[-1]["outcome"] == "finished"
  assert len(_invocations(results, "resnet18-wa", 1)) == 1


@pytest.mark.slow  # 35 s; replicas by default: tests/training/test_seeds.py
def test_seeds_per_run_trains_replicas_and_shares_seeds(tmp_path, tiny_folder, subprocess_env):
  results = str(tmp_path / "results")
  common = ["--archs", "resnet18", "--attentions", "wa", "--data", tiny_folder, "--results",
            results] + [a for o in TINY for a in ("--set", o)]
  # Seeds 0 and 1 in one run of two replicas.
  first = _cli(subprocess_env, *common, "--seeds", "2", "--seeds_per_run", "2")
  assert first.returncode == 0, first.stderr[-2000:]
  assert "resnet18-wa seeds 0-1 ..." in first.stdout
  cell = os.path.join(results, "cifar10", "resnet18-wa")
  assert sorted(os.listdir(cell)) == ["seeds0-1"]
  with open(os.path.join(cell, "seeds0-1", "config.json")) as f:
    config = json.load(f)
  assert (config["seed"], config["num_seeds"]) == (0, 2)
  runs = grid_runs.read_run(os.path.join(cell, "seeds0-1"))
  assert [(r.seed, r.complete) for r in runs] == [(0, True), (1, True)]
  with open(os.path.join(cell, "seeds0-1", "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  assert [(r["replica"], r["seed"]) for r in rows] == [(0, 0), (1, 1)]
  assert rows[0]["train_loss"] != rows[1]["train_loss"]  # two models, not one twice
  # A third seed, one per run: seeds 0 and 1 are done, only seed 2 trains.
  second = _cli(subprocess_env, *common, "--seeds", "3", "--seeds_per_run", "1")
  assert second.returncode == 0, second.stderr[-2000:]
  assert "resnet18-wa seed 2 ..." in second.stdout and "seed 0" not in second.stdout
  assert sorted(os.listdir(cell)) == ["seed2", "seeds0-1"]
  readme = open(os.path.join(results, "cifar10", "README.md")).read()
  assert "| resnet18 | wa | 3/3 | 1 |" in readme
  found = grid_runs.read_cell(cell)
  assert sorted(found) == [0, 1, 2] and found[2].workdir.endswith("seed2")


def _main(*args):
  """`python -m wacnn_jax reproduce ARGS` in this process: its exit status."""
  try:
    return cli.main(["wacnn_jax", "reproduce", *args])
  except SystemExit as e:
    return e.code


def test_budget_too_small_starts_nothing(tmp_path, tiny_folder, capsys):
  assert _main("--archs", "resnet18", "--attentions", "wa", "--seeds", "1", "--data",
               tiny_folder, "--results", str(tmp_path), "--budget", "0") == 0
  assert "stopping before resnet18-wa seed 0" in capsys.readouterr().out
  assert not os.path.exists(tmp_path / "cifar10" / "resnet18-wa" / "seed0")


def test_missing_data_and_unknown_settings_are_one_line(tmp_path, tiny_folder, capsys):
  assert _main("--data", "/nonexistent/folder") == 2
  assert "does not exist" in capsys.readouterr().err
  assert _main("--data", tiny_folder, "--results", str(tmp_path), "--set", "batch_sise=64") == 2
  assert capsys.readouterr().err == (
      "error: --set batch_sise=64: configs/default.py has no field 'batch_sise'\n")
  assert not os.listdir(tmp_path)


def test_welch_interval_matches_scipy():
  rng = np.random.default_rng(0)
  a, b = rng.normal(0.90, 0.01, 5), rng.normal(0.88, 0.02, 4)
  diff, low, high = results_tables.welch_interval(a, b)
  want = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
  np.testing.assert_allclose([diff, low, high], [a.mean() - b.mean(), want.low, want.high],
                             rtol=1e-10)
  assert results_tables.welch_interval([0.9], b)[1:] == (None, None)


def test_attentions_are_specs_checked_before_any_run(tmp_path, capsys):
  assert attention_spec.split_top_level("none, wa,wa(wavelet='db2', stages='all')") == [
      "none", "wa", "wa(wavelet='db2', stages='all')"]
  assert grid_runs.Cell("resnet18", "wa(wavelet='db2', stages='all')").name == (
      "resnet18-wa(wavelet=db2,stages=all)")
  assert _main("--attentions", "none,se(kernel_size=3)", "--data", str(tmp_path),
               "--results", str(tmp_path / "results")) == 2
  assert "--attentions: se has no option 'kernel_size'" in capsys.readouterr().err
  assert not os.path.exists(tmp_path / "results")


def test_results_table_shows_finished_and_partial_seeds_apart():
  def run(seed, epochs, best):
    return grid_runs.SeedRun(workdir=f"seed{seed}", seed=seed, epochs=epochs, num_epochs=160,
                             best=best, final=best, train_seconds=180.0, params=10,
                             flops=2e6, devices=("gpu",))
  grid = grid_runs.Grid.of("cifar10", ["resnet18"], ["none", "wa"], seeds=4)
  none, wa = grid.cells
  runs = {none: [run(0, 160, 0.88), run(1, 55, 0.77)], wa: [run(0, 160, 0.89)]}
  table = results_tables.results_markdown(grid, runs)
  assert table.startswith("# cifar10 at batch size 256:")
  assert "| resnet18 | none | 1/4 | 160; seed 1 at 55 | 88.00 |" in table
  assert "| resnet18 | wa | 1/4 | 160 | 89.00 |" in table
  # The delta uses finished seeds only: 89 - 88, no interval from one seed each.
  assert "| resnet18 | +1.00 | - | 1, 1 |" in table


def test_pending_runs_go_architecture_by_architecture_in_matched_pairs():
  grid = grid_runs.Grid.of("cifar10", ["mobilenetv2", "resnet18"], ["none", "wa"], seeds=3)
  mnone, mwa, rnone, rwa = grid.cells

  def done(seed):
    return grid_runs.SeedRun(workdir="", seed=seed, epochs=160, num_epochs=160, best=0.9,
                             final=0.9, train_seconds=1.0, params=1, flops=1.0, devices=())

  runs = {mnone: [done(0)], mwa: [], rnone: [], rwa: [done(0), done(1)]}
  assert [(c.name, s.start, s.stop) for c, s in reproduce.pending_runs(grid, runs, 1)] == [
      ("mobilenetv2-wa", 0, 1),
      ("mobilenetv2-none", 1, 2), ("mobilenetv2-wa", 1, 2),
      ("mobilenetv2-none", 2, 3), ("mobilenetv2-wa", 2, 3),
      ("resnet18-none", 0, 1), ("resnet18-none", 1, 2),
      ("resnet18-none", 2, 3), ("resnet18-wa", 2, 3)]
  assert [(c.name, s.start, s.stop) for c, s in reproduce.pending_runs(grid, runs, 2)][:3] == [
      ("mobilenetv2-none", 1, 2), ("mobilenetv2-wa", 0, 2), ("mobilenetv2-none", 2, 3)]
  assert grid_runs.DEFAULT_ARCHS[0] == "mobilenetv2"


def test_committed_tables_are_what_the_code_writes():
  """results/cifar10 (the published settings) and results/batch128/cifar10 (the earlier runs),
  and the summary at the top of README.md, as `reproduce` writes them from results/."""
  results = os.path.join(REPO_ROOT, "results")
  grid = grid_runs.Grid.of("cifar10", grid_runs.DEFAULT_ARCHS, grid_runs.DEFAULT_ATTENTIONS,
                           grid_runs.DEFAULT_SEEDS)
  runs = grid_runs.read_grid(results, grid)
  with open(os.path.join(results, "cifar10", "README.md")) as f:
    assert f.read() == results_tables.results_markdown(grid, runs)
  with open(os.path.join(REPO_ROOT, "README.md")) as f:
    readme = f.read()
  assert results_tables.with_summary(readme, "cifar10", results_tables.summary_markdown(
      grid, runs, "results/cifar10/README.md")) == readme
  batch128 = grid_runs.Grid.of("cifar10", ["resnet18"], grid_runs.DEFAULT_ATTENTIONS,
                               grid_runs.DEFAULT_SEEDS, ["batch_size=128"])
  old_runs = grid_runs.read_grid(os.path.join(results, "batch128"), batch128)
  assert [len(old_runs[c]) for c in batch128.cells] == [2, 1]
  with open(os.path.join(results, "batch128", "cifar10", "README.md")) as f:
    assert f.read() == results_tables.results_markdown(batch128, old_runs)
  # The batch-128 runs are not runs of the published settings.
  with pytest.raises(grid_runs.GridError, match=r"batch_size 128 \(the grid: 256\)"):
    grid_runs.read_grid(os.path.join(results, "batch128"), grid_runs.Grid.of(
        "cifar10", ["resnet18"], ["none"], 4))


def test_a_run_with_other_settings_is_refused_before_anything_trains(grid_in_pieces,
                                                                      tiny_folder, capsys):
  results, _, _ = grid_in_pieces
  before = {c: len(_invocations(results, c, 0)) for c in ("resnet18-none", "resnet18-wa")}
  assert _main(*_grid_args(tiny_folder, results), "--set", "batch_size=16") == 1
  err = capsys.readouterr().err
  assert err.startswith("error: ") and err.count("\n") == 1
  assert "resnet18-none/seed0 was trained with other settings than this grid: " in err
  assert "batch_size 32 (the grid: 16)" in err
  assert {c: len(_invocations(results, c, 0)) for c in before} == before


def test_child_environment_splits_the_machine_only_for_several_runs():
  base = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2", "PATH": "/bin"}
  alone = run_pool.child_environment(base, 1)
  assert alone == dict(base, PYTHONUNBUFFERED="1")
  two = run_pool.child_environment(base, 2, reproduce.COMMAND_BUFFERS_WITH_LOOPS)
  assert two["XLA_FLAGS"] == ("--xla_force_host_platform_device_count=2 "
                              "--xla_gpu_enable_command_buffer=+WHILE,+CONDITIONAL")
  assert two["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.450"
  assert run_pool.core_shares(range(16), 2) == [tuple(range(8)), tuple(range(8, 16))]
  assert run_pool.core_shares(range(5), 2) == [(0, 1), (2, 3, 4)]
  assert run_pool.core_shares(range(2), 3) == [] and run_pool.core_shares(range(8), 1) == []


def test_command_buffer_flag_adds_loops_to_xlas_default_set(tmp_path):
  """The value of `--xla_flags` that the docs give, as the installed XLA reads it (the dumped
  debug options of a compiled program): XLA's default command types plus WHILE and CONDITIONAL."""
  subprocess.run([sys.executable, "-c", "import jax; jax.jit(lambda x: x + 1)(1.0)"],
                 env=dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=(
                     f"{reproduce.COMMAND_BUFFERS_WITH_LOOPS} --xla_dump_to={tmp_path}")),
                 check=True, capture_output=True, timeout=300)
  options, = glob.glob(str(tmp_path / "*jit__lambda*.debug_options"))
  with open(options) as f:
    command_types = set(re.findall(r"^xla_gpu_enable_command_buffer: (\w+)$", f.read(), re.M))
  assert {"WHILE", "CONDITIONAL", "FUSION", "CUBLAS", "CUBLASLT", "CUSTOM_CALL",
          "CUDNN"} <= command_types


def _trained(results, cell):
  """metrics.jsonl's records of seed 0 without the timings."""
  with open(os.path.join(results, "cifar10", cell, "seed0", "metrics.jsonl")) as f:
    return [{k: v for k, v in json.loads(line).items()
             if k not in ("images_per_sec", "compile_seconds", "startup_seconds", "epoch_seconds")}
            for line in f]


def _lock_holder(workdir):
  """`<workdir>/.lock`'s text: the training process that holds (or last held) it."""
  path = os.path.join(workdir, ".lock")
  if not os.path.exists(path):
    return ""
  with open(path) as f:
    return f.read()


def _no_run_holds(workdir):
  """True when no process holds the workdir's training lock and its last holder is gone.

  A run stopped before `workdirs.lock` wrote its "pid P on host H" line (still
  starting, or between taking the lock and writing it) leaves no lock file or an
  empty one: nobody holds it then, and no holder was recorded.
  """
  with open(os.path.join(workdir, ".lock"), "a+") as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      return False
    f.seek(0)
    holder = f.read().split()
  if not holder:
    return True
  pid = int(holder[1])
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return True
  return False


def _interrupt_when_both_runs_hold_their_workdirs(args, env, workdirs, signum):
  """Starts `reproduce ARGS`; once both runs hold their workdirs anew, sends `signum` to it.
  Returns (exit status, stderr)."""
  before = [_lock_holder(w) for w in workdirs]
  process = subprocess.Popen([sys.executable, "-m", "wacnn_jax", "reproduce", *args],
                             cwd=REPO_ROOT, env=env, text=True, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
  start = time.time()
  while not all(_lock_holder(w) not in ("", old) for w, old in zip(workdirs, before)):
    assert process.poll() is None, process.communicate()
    assert time.time() - start < 300
    time.sleep(0.1)
  process.send_signal(signum)
  _, err = process.communicate(timeout=120)
  return process.returncode, err


@pytest.mark.slow  # 35 s; concurrent runs by default: test_a_failing_run_stops_the_runs_beside_it
def test_concurrent_runs_stopped_by_signals_then_continued_equal_runs_one_at_a_time(
    grid_in_pieces, tiny_folder, subprocess_env, tmp_path):
  """Two runs at once: SIGTERM and then Ctrl-C (SIGINT) stop both (one line, 143 / 130, no
  run left holding its workdir, recorded as stopped); the next invocation trains both to the
  end, at once, exactly as the grid test trained them one after the other."""
  sequential, _, _ = grid_in_pieces
  results = str(tmp_path / "results")
  args = _grid_args(tiny_folder, results, seeds=1) + ["--concurrent", "2"]
  cells = ("resnet18-none", "resnet18-wa")
  workdirs = [os.path.join(results, "cifar10", cell, "seed0") for cell in cells]
  returncode, err = _interrupt_when_both_runs_hold_their_workdirs(
      args, subprocess_env, workdirs, signal.SIGTERM)
  assert (returncode, err) == (143, (
      "interrupted by SIGTERM: stopped resnet18-none seed 0, resnet18-wa seed 0, to continue "
      "from the last checkpoint at the next invocation.\n"))
  for workdir in workdirs:
    assert _no_run_holds(workdir)
  returncode, err = _interrupt_when_both_runs_hold_their_workdirs(
      args, subprocess_env, workdirs, signal.SIGINT)
  assert returncode == 130 and err.startswith("interrupted by SIGINT: stopped "), err
  assert err.count("\n") == 1
  for workdir in workdirs:
    assert _no_run_holds(workdir)
  result = _cli(subprocess_env, *args)
  assert result.returncode == 0, result.stderr[-2000:]
  lines = result.stdout.splitlines()
  started = [i for i, line in enumerate(lines) if line.endswith(" ...")]
  ended = [i for i, line in enumerate(lines) if ": finished, 1 epochs" in line]
  assert len(started) == len(ended) == 2 and max(started) < min(ended)  # both ran at once
  for cell in cells:
    invocations = _invocations(results, cell, 0)
    assert [i["outcome"] for i in invocations] == ["stopped", "stopped", "finished"]
    assert {i["concurrent"] for i in invocations} == {2}
    assert invocations[-1]["alone_seconds"] < invocations[-1]["wall_seconds"] / 2
    # Exactly (every float) the records of the same run trained alone: on the CPU the
    # children share all cores, so XLA:CPU splits each computation as it does alone.
    assert _trained(results, cell) == _trained(sequential, cell)
  # The rates table sets the two at once against the runs one at a time.
  table = reproduce_rates.rates_table(
      reproduce_rates.invocation_rates(os.path.join(sequential, "cifar10"))
      + reproduce_rates.invocation_rates(os.path.join(results, "cifar10")))
  rows = {line.split(" | ")[2]: line for line in table.splitlines()[2:]}
  assert sorted(rows) == ["1", "2"] and rows["1"].endswith("| 1.00x |")
  assert re.search(r"\| 2 \| - \| 2 \| 2 \| [\d,]+ \| [\d,]+ \| \d+\.\d\dx \|$", rows["2"])


def test_a_failing_run_stops_the_runs_beside_it(tiny_folder, subprocess_env, tmp_path):
  """resnet18-wa's workdir is held by another process, so its run fails at once: the command
  stops resnet18-none, which trains beside it, records both and ends with one error line."""
  results = str(tmp_path / "results")
  held = os.path.join(results, "cifar10", "resnet18-wa", "seed0")
  os.makedirs(held)
  with open(os.path.join(held, ".lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    lock.write(f"pid {os.getpid()} on host test\n")
    lock.flush()
    result = _cli(subprocess_env, *_grid_args(tiny_folder, results, seeds=1), "--concurrent", "2")
  assert result.returncode == 1
  assert result.stderr == (f"error: the run in {held} failed; see {held}/train.log\n")
  assert [i["outcome"] for i in _invocations(results, "resnet18-wa", 0)] == ["failed"]
  assert [i["outcome"] for i in _invocations(results, "resnet18-none", 0)] == ["stopped"]
  assert _no_run_holds(os.path.join(results, "cifar10", "resnet18-none", "seed0"))
