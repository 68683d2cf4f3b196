"""Training on the stream pipeline (data.pipeline='stream'): resumable to the batch, one-line errors.

Real runs of `run_train.py` on the committed mini CIFAR-10 archive (smoke
config: 512 training images, 8 steps of 64 per epoch), with one Grain worker
process and a checkpoint every 3 steps, so that checkpoints fall inside
epochs:

- a run killed (SIGKILL, its whole process group) right after a checkpoint
  inside an epoch resumes at that step and ends with parameters, optimizer
  state and BatchNorm statistics equal, bit for bit, to an uninterrupted
  run's, and with the same metrics;
- the memory pipeline resumes inside an epoch alike (in-process: a crash at
  a checkpoint's save);
- an image that cannot be decoded ends the run with one line naming it,
  after the checkpoints before it;
- a worker process that dies is one DatasetError, not a hang, and workers
  end with their trainer, even one killed with SIGKILL;
- a checkpoint of the memory pipeline is not resumed by a streamed run.
"""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from tests import helpers
from tests.training import test_reliability as reliability
from wacnn_jax.data.dataset import DatasetError
from wacnn_jax.data import stream_loaders
from wacnn_jax.training import checkpointing
from wacnn_jax.training import restore
from wacnn_jax.training import train

STREAM = ("--config.data.pipeline=stream", "--config.data.workers=1",
          "--config.checkpoint_every_steps=3")

KILL_GROUP_AT_SAVE = r"""
import os, runpy, signal, sys
from wacnn_jax.training import checkpointing
kill_at, saves = int(sys.argv.pop(1)), []
save = checkpointing.Checkpointer.save
def save_and_die(self, *args, **kwargs):
    save(self, *args, **kwargs)
    saves.append(args[0])
    if len(saves) == kill_at:  # the process and its stream workers
        os.killpg(os.getpgid(0), signal.SIGKILL)
checkpointing.Checkpointer.save = save_and_die
sys.argv = ["run_train.py"] + sys.argv[1:]
runpy.run_path("run_train.py", run_name="__main__")
"""


def command(workdir, cache_dir, *extra, script=None):
  prefix = [sys.executable, "-c", *script] if script else [sys.executable, "run_train.py"]
  return prefix + ["--config", "configs/cifar.py:smoke", "--workdir", str(workdir),
                   f"--config.data.image_folder={helpers.CIFAR10_MINI}",
                   f"--config.data.cache_dir={cache_dir}", *STREAM, *extra]


def run(env, *args, **kwargs):
  return subprocess.run(command(*args, **kwargs), cwd=helpers.REPO_ROOT, env=env,
                        capture_output=True, text=True, timeout=600, start_new_session=True)


def final_arrays(workdir, cache_dir):
  config = helpers.smoke_run_config(helpers.CIFAR10_MINI, **{
      "data.pipeline": "stream", "data.cache_dir": str(cache_dir)})
  restored = restore.restore_checkpoint(config, str(workdir), step=16)
  return jax.tree.leaves((restored.state.params, restored.state.batch_stats,
                          restored.state.opt_state, restored.state.rng, restored.state.step))


def metric_records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [{k: v for k, v in json.loads(line).items() if "seconds" not in k and "per_sec" not in k}
            for line in f]


def test_a_stream_run_killed_inside_an_epoch_resumes_on_the_same_batches(tmp_path,
                                                                           subprocess_env):
  cache = tmp_path / "cache"
  straight = run(subprocess_env, tmp_path / "straight", cache)
  assert straight.returncode == 0, straight.stderr[-3000:]

  workdir = tmp_path / "killed"
  # Saves: step 3 (inside epoch 1), 6, 8 (its end), ...: killed after the second.
  killed = run(subprocess_env, workdir, cache, script=(KILL_GROUP_AT_SAVE, "2"))
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  with checkpointing.Checkpointer(str(workdir), create=False) as checkpoints:
    assert checkpoints.all_steps() and max(checkpoints.all_steps()) in (3, 6)
    assert checkpoints.read_meta(3)["epoch_step"] == 3
    assert checkpoints.restore_position(3).next_step == 3
  resumed = run(subprocess_env, workdir, cache)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "step 3 of epoch 1" in resumed.stderr or "step 6 of epoch 1" in resumed.stderr

  for a, b in zip(final_arrays(tmp_path / "straight", cache), final_arrays(workdir, cache),
                  strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert metric_records(workdir) == metric_records(tmp_path / "straight")


def test_the_memory_pipeline_resumes_inside_an_epoch(tmp_path, cifar10_mini, monkeypatch):
  settings = {"checkpoint_every_steps": 3, "data.pipeline": "memory"}
  straight = helpers.train_smoke_run(cifar10_mini, tmp_path / "straight", **settings)

  save = checkpointing.Checkpointer.save
  saves = []

  def save_then_crash(self, *args, **kwargs):
    save(self, *args, **kwargs)
    saves.append(args[0])
    if len(saves) == 2:
      raise KeyboardInterrupt("stopped inside epoch 1")

  monkeypatch.setattr(checkpointing.Checkpointer, "save", save_then_crash)
  with pytest.raises(KeyboardInterrupt):
    helpers.train_smoke_run(cifar10_mini, tmp_path / "stopped", **settings)
  monkeypatch.setattr(checkpointing.Checkpointer, "save", save)
  assert saves == [3, 6]
  resumed = helpers.train_smoke_run(cifar10_mini, tmp_path / "stopped", **settings)
  for a, b in zip(jax.tree.leaves(straight.state), jax.tree.leaves(resumed.state), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert metric_records(tmp_path / "stopped") == metric_records(tmp_path / "straight")


def test_an_undecodable_image_stops_the_run_with_one_line(tmp_path, subprocess_env):
  folder = helpers.write_cifar_subset(helpers.CIFAR10_MINI, str(tmp_path / "images"),
                                      {"train": 51, "test": 26})  # 510 + 1: 7 steps of 73
  with open(os.path.join(folder, "train", "dog", "zz-broken.jpg"), "wb") as f:
    f.write(b"\xff\xd8 not the rest of a JPEG")
  result = subprocess.run(
      [sys.executable, "run_train.py", "--config", "configs/cifar.py:smoke", "--workdir",
       str(tmp_path / "run"), f"--config.data.image_folder={folder}",
       f"--config.data.cache_dir={tmp_path / 'cache'}", "--config.data.max_train_examples=0",
       "--config.batch_size=73", *STREAM], cwd=helpers.REPO_ROOT, env=subprocess_env, capture_output=True, text=True,
      timeout=600, start_new_session=True)
  reliability.assert_one_error_line(result, "cannot decode train/dog/zz-broken.jpg",
                                    "Remove or replace the file")


class DyingBatches:
  """Batches whose third kills the worker process making it."""

  def __len__(self):
    return 10

  def __getitem__(self, k):
    if k == 2:
      os.kill(os.getpid(), signal.SIGKILL)
    return {"images": np.zeros((2, 4), np.uint8)}


def test_a_worker_that_dies_is_one_error_not_a_hang():
  iterator = stream_loaders.iterate(DyingBatches(), workers=1)
  try:
    # (Batches the worker had made may die with it.)
    with pytest.raises(DatasetError, match=r"a stream worker process died \(exit code -9: "
                                           r"killed, e.g. for lack of memory\)"):
      for _ in range(len(DyingBatches())):
        assert stream_loaders.next_batch(iterator)["images"].shape == (2, 4)
  finally:
    iterator.close()


def test_a_memory_checkpoint_is_not_resumed_by_a_stream(tmp_path, cifar10_mini, smoke_wa_run):
  run = helpers.copy_run(smoke_wa_run, tmp_path / "run")
  config = helpers.smoke_run_config(cifar10_mini, num_epochs=3, **{"data.pipeline": "stream"})
  with pytest.raises(checkpointing.CheckpointError,
                     match=r"data pipeline: checkpoint has 'memory', config has 'stream'"):
    train.train_and_evaluate(config, run.workdir)


def test_the_memory_pipeline_imports_no_grain():
  """Grain is imported by streamed runs only (a GPU image without it trains in memory)."""
  code = ("import sys; import wacnn_jax.training.train, wacnn_jax.tools.train; "
          "print(sorted(m for m in sys.modules if m.split('.')[0] == 'grain'))")
  result = subprocess.run([sys.executable, "-c", code], cwd=helpers.REPO_ROOT,
                          capture_output=True, text=True, timeout=120, check=True)
  assert result.stdout.strip() == "[]"


ORPHANED_WORKERS = r"""
import os, signal, sys
import numpy as np, psutil
from wacnn_jax.data import stream_loaders

class Endless:
  def __len__(self):
    return 1000
  def __getitem__(self, k):
    return {"images": np.zeros((2, 4), np.uint8)}

if __name__ == "__main__":
  iterator = stream_loaders.iterate(Endless(), workers=2)
  stream_loaders.next_batch(iterator)
  print(" ".join(str(p.pid) for p in psutil.Process().children()
                 if "spawn_main" in " ".join(p.cmdline())), flush=True)
  os.kill(os.getpid(), signal.SIGKILL)  # no time to stop the workers
"""


def test_workers_end_with_their_trainer_however_it_ends(tmp_path):
  psutil = pytest.importorskip("psutil")
  script = tmp_path / "orphans.py"
  script.write_text(ORPHANED_WORKERS)
  result = subprocess.run([sys.executable, str(script)], cwd=helpers.REPO_ROOT,
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=helpers.REPO_ROOT))
  assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
  workers = [int(pid) for pid in result.stdout.split()]
  assert len(workers) == 2
  deadline = time.monotonic() + 10
  while any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
            for pid in workers):
    assert time.monotonic() < deadline, "the workers outlived their trainer"
    time.sleep(0.2)
