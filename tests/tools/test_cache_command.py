"""`python -m wacnn_jax cache`: the dataset and compilation caches listed, aged out, cleared."""

import os
import subprocess
import sys
import time

from tests import helpers
from tests.data.test_cache import data_config
from wacnn_jax import cli
from wacnn_jax.data import cache_folder
from wacnn_jax.data import pipeline

COMPILE = """
import sys
from wacnn_jax.training import compilation_cache
compilation_cache.enable(sys.argv[1])
import jax
jax.jit(lambda x: x * 3.25 + 1.0)(2.0).block_until_ready()
"""


def filled_caches(tmp_path):
  """A dataset cache of two real image folders and a compilation cache of real programs."""
  data_dir, programs_dir = tmp_path / "datasets", tmp_path / "xla"
  sources = [helpers.write_cifar_subset(helpers.CIFAR10_MINI, str(tmp_path / name), counts)
             for name, counts in (("small", {"train": 3, "test": 2}),
                                  ("larger", {"train": 5, "test": 2}))]
  for source in sources:
    pipeline.load(data_config(source, data_dir))
  subprocess.run([sys.executable, "-c", COMPILE, str(programs_dir)], check=True,
                 cwd=helpers.REPO_ROOT, capture_output=True, timeout=300)
  return str(data_dir), str(programs_dir), sources


def cache_command(capsys, data_dir, programs_dir, *flags) -> str:
  assert cli.main(["wacnn_jax/__main__.py", "cache", f"--cache_dir={data_dir}",
                   f"--compilation_cache_dir={programs_dir}", *flags]) == 0
  return capsys.readouterr().out


def test_lists_ages_out_and_clears(tmp_path, capsys):
  data_dir, programs_dir, (small, larger) = filled_caches(tmp_path)
  programs = [n for n in os.listdir(programs_dir) if n.endswith("-cache")]
  assert programs
  listing = cache_command(capsys, data_dir, programs_dir)
  assert f"dataset cache {data_dir}: 2 entries" in listing
  for source in (small, larger):
    (line,) = [l for l in listing.splitlines() if l.endswith(source)]
    assert "MB  last used 20" in line and "decoded images: " in line
  assert f"compiled programs {programs_dir}: {len(programs)}, " in listing

  # small was last used 3 days ago: --older_than=2 removes it (and no program, used now).
  (small_entry,) = [e for e in cache_folder.entries(data_dir) if e.sources == (small,)]
  three_days_ago = time.time() - 3 * 86400
  os.utime(small_entry.path, (three_days_ago, three_days_ago))
  out = cache_command(capsys, data_dir, programs_dir, "--older_than=2")
  assert out.startswith("removed 1 dataset cache entries")
  assert "and 0 compiled programs" in out and "last used more than 2 days ago" in out
  assert [e.sources for e in cache_folder.entries(data_dir)] == [(larger,)]
  assert not os.path.exists(small_entry.path) and not any(
      os.path.exists(index) for index in small_entry.indexes)

  out = cache_command(capsys, data_dir, programs_dir, "--clear")
  assert out.startswith("removed 1 dataset cache entries")
  assert f"and {len(programs)} compiled programs" in out
  assert f"dataset cache {data_dir}: empty" in out and f"compiled programs {programs_dir}: empty" in out
  assert os.listdir(data_dir) == [] and os.listdir(programs_dir) == []


def test_folders_that_do_not_exist_are_empty_and_not_created(tmp_path, capsys):
  out = cache_command(capsys, tmp_path / "no_data", tmp_path / "no_xla", "--clear")
  assert "dataset cache" in out and "empty" in out
  assert os.listdir(tmp_path) == []
