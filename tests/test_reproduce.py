"""`python -m wacnn_jax reproduce`: the grid runs end to end at tiny sizes, in pieces, and its statistics."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from tests.helpers import REPO_ROOT
from wacnn_jax import attention
from wacnn_jax import reproduce

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


def test_grid_in_pieces_then_complete_then_skipped(tmp_path, tiny_folder, subprocess_env):
  results = str(tmp_path / "results")
  common = ["--archs", "resnet18", "--attentions", "none,wa", "--seeds", "2", "--data",
            tiny_folder, "--results", results] + [a for o in TINY for a in ("--set", o)]
  # 1. A budget too short for a whole run: the first run is stopped at the deadline.
  first = _cli(subprocess_env, *common, "--budget", "2", "--min_run_seconds", "1")
  assert first.returncode == 0, first.stderr[-2000:]
  assert [i["outcome"] for i in _invocations(results, "resnet18-none", 0)] == ["stopped"]
  assert not os.path.exists(os.path.join(results, "cifar10", "resnet18-wa"))
  # 2. No budget: everything missing runs, the stopped run included.
  second = _cli(subprocess_env, *common)
  assert second.returncode == 0, second.stderr[-2000:]
  readme = open(os.path.join(results, "cifar10", "README.md")).read()
  assert "| resnet18 | none | 2/2 | 1 |" in readme and "| resnet18 | wa | 2/2 | 1 |" in readme
  delta_rows = [l for l in readme.splitlines() if l.startswith("| resnet18 | ") and "[" in l]
  assert len(delta_rows) == 1 and "| 2, 2 |" in delta_rows[0]
  assert [i["outcome"] for i in _invocations(results, "resnet18-none", 0)] == [
      "stopped", "finished"]
  # Tiny finished runs keep their (small) checkpoints; metrics and summaries are there.
  run, = reproduce.read_run(os.path.join(results, "cifar10", "resnet18-wa", "seed1"))
  assert run.seed == 1 and run.complete and run.flops > 0
  assert run.params == 272_474 - 7 * (64 + 1)  # resnet18-WA with 3 classes instead of 10
  # 3. Nothing left to do: no run starts.
  third = _cli(subprocess_env, *common, "--budget", "0")
  assert third.returncode == 0
  for cell in ("resnet18-none", "resnet18-wa"):
    for seed in (0, 1):
      assert _invocations(results, cell, seed)[-1]["outcome"] == "finished"
  assert len(_invocations(results, "resnet18-wa", 1)) == 1


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
  runs = reproduce.read_run(os.path.join(cell, "seeds0-1"))
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
  found = reproduce.read_cell(cell)
  assert sorted(found) == [0, 1, 2] and found[2].workdir.endswith("seed2")


def test_budget_too_small_starts_nothing(tmp_path, tiny_folder, subprocess_env):
  result = _cli(subprocess_env, "--archs", "resnet18", "--attentions", "wa", "--seeds", "1",
                "--data", tiny_folder, "--results", str(tmp_path), "--budget", "0")
  assert result.returncode == 0
  assert "stopping before resnet18-wa seed 0" in result.stdout
  assert not os.path.exists(tmp_path / "cifar10" / "resnet18-wa" / "seed0")


def test_missing_data_is_one_line(subprocess_env):
  result = _cli(subprocess_env, "--data", "/nonexistent/folder")
  assert result.returncode == 2 and "does not exist" in result.stderr
  assert "Traceback" not in result.stderr


def test_welch_interval_matches_scipy():
  rng = np.random.default_rng(0)
  a, b = rng.normal(0.90, 0.01, 5), rng.normal(0.88, 0.02, 4)
  diff, low, high = reproduce.welch_interval(a, b)
  want = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
  np.testing.assert_allclose([diff, low, high], [a.mean() - b.mean(), want.low, want.high],
                             rtol=1e-10)
  assert reproduce.welch_interval([0.9], b)[1:] == (None, None)


def test_attentions_are_specs_checked_before_any_run(subprocess_env, tmp_path):
  assert attention.split_top_level("none, wa,wa(wavelet='db2', stages='all')") == [
      "none", "wa", "wa(wavelet='db2', stages='all')"]
  assert reproduce.Cell("resnet18", "wa(wavelet='db2', stages='all')").name == (
      "resnet18-wa(wavelet=db2,stages=all)")
  result = _cli(subprocess_env, "--attentions", "none,se(kernel_size=3)", "--data",
                str(tmp_path), "--results", str(tmp_path / "results"))
  assert result.returncode == 2 and "Traceback" not in result.stderr
  assert "--attentions: se has no option 'kernel_size'" in result.stderr
  assert not os.path.exists(tmp_path / "results")


def test_results_table_shows_finished_and_partial_seeds_apart():
  def run(seed, epochs, best):
    return reproduce.SeedRun(workdir=f"seed{seed}", seed=seed, epochs=epochs, num_epochs=160,
                             best=best, final=best, train_seconds=180.0, params=10,
                             flops=2e6, devices=("gpu",))
  none, wa = reproduce.Cell("resnet18", "none"), reproduce.Cell("resnet18", "wa")
  runs = {none: [run(0, 160, 0.88), run(1, 55, 0.77)], wa: [run(0, 160, 0.89)]}
  table = reproduce.results_markdown("cifar10", [none, wa], runs, seeds=4)
  assert "| resnet18 | none | 1/4 | 160; seed 1 at 55 | 88.00 |" in table
  assert "| resnet18 | wa | 1/4 | 160 | 89.00 |" in table
  # The delta uses finished seeds only: 89 - 88, no interval from one seed each.
  assert "| resnet18 | +1.00 | - | 1, 1 |" in table
