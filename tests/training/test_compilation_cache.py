"""JAX's persistent compilation cache (wacnn_jax.compilation_cache): compile once, load later.

The end-to-end check (slow: two real training processes, the first compiling
cold) is that a run with seed 1 loads every program that a run with seed 0
compiled, its train step included. The fast checks: `enable` points JAX at
the folder (and at another one later in the same process), training and
evaluation enable it before anything compiles, and `reproduce` gives every
run the per-machine folder.
"""

import json
import logging
import os
import re
import subprocess
import sys

import jax
from jax.experimental.compilation_cache import compilation_cache as jax_compilation_cache
import pytest

from tests import helpers
from wacnn_jax import cli
from wacnn_jax.data import dataset
from wacnn_jax.tools import evaluate
from wacnn_jax.tools import grid_runs
from wacnn_jax.tools import reproduce
from wacnn_jax.training import compilation_cache
from wacnn_jax.training import train







@pytest.fixture
def jax_cache_settings():
  """Restores JAX's compilation cache settings of this process after the test."""
  saved = (jax.config.jax_compilation_cache_dir,
           jax.config.jax_persistent_cache_min_compile_time_secs)
  yield
  jax.config.update("jax_compilation_cache_dir", saved[0])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", saved[1])
  jax_compilation_cache.reset_cache()


def compile_something(constant: float) -> None:
  """Compiles a program this process has not compiled before."""
  jax.jit(lambda x: x * constant + 1.0)(2.0).block_until_ready()


def entries(folder) -> list[str]:
  return sorted(n for n in os.listdir(folder) if n.endswith("-cache"))


def test_enable_keeps_every_program_in_the_folder(tmp_path, jax_cache_settings, monkeypatch):
  monkeypatch.delenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", raising=False)
  first = compilation_cache.enable(str(tmp_path / "first"))
  assert first == jax.config.jax_compilation_cache_dir == str(tmp_path / "first")
  assert jax.config.jax_persistent_cache_min_compile_time_secs == 0
  compile_something(3.25)
  assert len(entries(first)) == 1  # a program that compiles in milliseconds is kept too
  # Another folder later in the same process: JAX opens it instead.
  second = compilation_cache.enable(str(tmp_path / "second"))
  compile_something(4.25)
  assert len(entries(first)) == 1 and len(entries(second)) == 1
  # '' leaves JAX's settings alone; None (the default) is the per-machine folder.
  assert compilation_cache.enable("") is None
  assert jax.config.jax_compilation_cache_dir == second
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "default"))
  assert compilation_cache.enable(None) == str(tmp_path / "default")
  assert jax.config.jax_compilation_cache_dir == str(tmp_path / "default")


def test_an_unusable_folder_is_a_warning(tmp_path, jax_cache_settings, caplog):
  not_a_folder = tmp_path / "file"
  not_a_folder.write_text("")
  before = jax.config.jax_compilation_cache_dir
  with caplog.at_level(logging.WARNING, logger="absl"):
    assert compilation_cache.enable(str(not_a_folder / "xla")) is None
  assert "Cannot use the compilation cache" in caplog.text
  assert jax.config.jax_compilation_cache_dir == before


def test_default_dir(tmp_path, monkeypatch):
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  assert compilation_cache.default_dir() == str(tmp_path / "wacnn_jax" / "xla")
  monkeypatch.delenv("XDG_CACHE_HOME")
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert compilation_cache.default_dir() == str(tmp_path / "home" / ".cache" / "wacnn_jax" / "xla")
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax"))  # JAX's own setting wins
  assert compilation_cache.default_dir() == str(tmp_path / "jax")


def test_training_and_evaluation_enable_it_first(tmp_path, jax_cache_settings):
  """Both turn the cache on before the data is read (here: a folder that does not exist)."""
  config = helpers.smoke_run_config(str(tmp_path / "no_such_folder"))
  config.compilation_cache_dir = str(tmp_path / "train_xla")
  with pytest.raises(dataset.DatasetError):
    train.train_and_evaluate(config, str(tmp_path / "workdir"))
  assert jax.config.jax_compilation_cache_dir == str(tmp_path / "train_xla")
  config.compilation_cache_dir = str(tmp_path / "evaluate_xla")
  with pytest.raises(Exception):  # no checkpoint there
    evaluate.evaluate_checkpoint(config, str(tmp_path / "workdir"))
  assert jax.config.jax_compilation_cache_dir == str(tmp_path / "evaluate_xla")


def test_reproduce_gives_every_run_the_folder(tmp_path, monkeypatch, synthetic_folder):
  calls = []
  monkeypatch.setattr(reproduce, "run_grid", lambda *args: calls.append(args) or 0)
  arguments = ["python -m wacnn_jax", "reproduce", "--data", synthetic_folder,
               "--set", "num_epochs=1"]
  assert cli.main(arguments) == 0
  assert cli.main(arguments + [f"--compilation_cache_dir={tmp_path}"]) == 0
  assert cli.main(arguments + ["--compilation_cache_dir="]) == 0
  overrides = [call[7] for call in calls]
  assert overrides == [[f"compilation_cache_dir={compilation_cache.default_dir()}", "num_epochs=1"],
                       [f"compilation_cache_dir={tmp_path}", "num_epochs=1"],
                       ["compilation_cache_dir=", "num_epochs=1"]]
  command = grid_runs.run_command(grid_runs.Cell("resnet18", "wa"), range(0, 1), "cifar10",
                                  synthetic_folder, str(tmp_path), overrides[1])
  assert f"--config.compilation_cache_dir={tmp_path}" in command


@pytest.mark.slow
def test_a_run_with_another_seed_loads_every_compiled_program(tmp_path, cifar10_mini):
  """Seed 0 compiles and fills the cache; seed 1, a new process, compiles nothing anew."""
  cache = tmp_path / "xla"
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_PERSISTENT_CACHE")
         and k != "JAX_COMPILATION_CACHE_DIR"}
  # JAX logs each persistent cache hit and miss as a warning.
  env.update(JAX_LOG_COMPILES="1", JAX_EXPLAIN_CACHE_MISSES="1")

  def train_seed(seed):
    workdir = tmp_path / f"seed{seed}"
    result = subprocess.run(
        [sys.executable, "run_train.py", "--config", "configs/cifar.py:smoke", "--workdir",
         str(workdir), f"--config.data.image_folder={cifar10_mini}", f"--config.seed={seed}",
         "--config.num_epochs=1", "--config.data.max_train_examples=64",
         "--config.data.max_test_examples=64", f"--config.compilation_cache_dir={cache}"],
        cwd=helpers.REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(workdir / "metrics.jsonl") as f:
      return json.loads(f.readline())["compile_seconds"], result.stderr

  cold_seconds, cold_log = train_seed(0)
  written = entries(cache)
  assert "PERSISTENT COMPILATION CACHE MISS" in cold_log and len(written) > 3
  warm_seconds, warm_log = train_seed(1)
  assert "PERSISTENT COMPILATION CACHE MISS" not in warm_log  # the seed is in no program
  assert entries(cache) == written
  hits = {re.search(r"with key '([^']+)'", line).group(1) + "-cache"
          for line in warm_log.splitlines() if "Persistent compilation cache hit" in line}
  assert hits == set(written)
  # compile_seconds is the train step's alone: loaded, not compiled.
  assert warm_seconds < cold_seconds / 2, (cold_seconds, warm_seconds)
