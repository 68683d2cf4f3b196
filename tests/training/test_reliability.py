"""What a run does when things go wrong: resume, locks, kills, signals, a full disk,
damaged checkpoints, bad input.

Most tests run `run_train.py` in a subprocess, as a user would, on the tiny
`synthetic_folder` (18 training images, batch 6: 3 steps per epoch) and check
the exit status, the one `error:` line on stderr and the workdir's files. The
subprocesses share a persistent XLA compilation cache, so that only the first
compiles the model. Signals are sent to the real process; a full disk is a
small tmpfs (skipped where none can be mounted).
"""

import asyncio
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time

import jax
import numpy as np
from PIL import Image
import pytest

from tests.helpers import REPO_ROOT
from tests.helpers import smoke_run_config
from wacnn_jax import cli
from wacnn_jax.training import checkpointing
from wacnn_jax.training import config_checks
from wacnn_jax.training import metrics
from wacnn_jax.training import restore
from wacnn_jax.training import run_identity
from wacnn_jax.training import train
from wacnn_jax.training import workdirs






# `python -c KILL_AT_SAVE N <run_train.py arguments>` runs run_train.py but
# SIGKILLs the process right after its N-th checkpoint save has been handed to
# Orbax, whose writing goes on in the background: that checkpoint never finishes.
KILL_AT_SAVE = r"""
import os, runpy, signal, sys
from wacnn_jax.training import checkpointing
kill_at, saves = int(sys.argv.pop(1)), []
save = checkpointing.Checkpointer.save
def save_and_die(self, step, state, meta, position=None):
    save(self, step, state, meta, position)
    saves.append(step)
    if len(saves) == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
checkpointing.Checkpointer.save = save_and_die
sys.argv = ["run_train.py"] + sys.argv[1:]
runpy.run_path("run_train.py", run_name="__main__")
"""

NOISE = ("Traceback", "Event loop is closed", "Exception ignored", "tensorstore_spec")


def cli_command(workdir, folder, *overrides, script=None, command="train"):
  """The command line of `python -m wacnn_jax COMMAND` (train: run_train.py).

  `script` is (python code, its first argument) instead of run_train.py.
  """
  if command != "train":
    prefix = [sys.executable, "-m", "wacnn_jax", command]
  else:
    prefix = [sys.executable, "-c", *script] if script else [sys.executable, "run_train.py"]
  return prefix + ["--config", "configs/cifar.py:smoke", "--workdir", str(workdir),
                   f"--config.data.image_folder={folder}", "--config.batch_size=6",
                   "--config.eval_batch_size=6", *overrides]


def run_cli(subprocess_env, workdir, folder, *overrides, script=None, command="train",
            timeout=300):
  return subprocess.run(cli_command(workdir, folder, *overrides, script=script,
                                    command=command),
                        cwd=REPO_ROOT, env=subprocess_env, capture_output=True,
                        text=True, timeout=timeout)


def error_lines(result):
  return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def assert_one_error_line(result, *fragments, returncode=1):
  assert result.returncode == returncode, result.stderr[-3000:]
  lines = error_lines(result)
  assert len(lines) == 1, result.stderr[-3000:]
  for fragment in fragments:
    assert fragment in lines[0], lines[0]
  for noise in NOISE:
    assert noise not in result.stderr, result.stderr[-3000:]
  return lines[0]


def epochs(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  return [json.loads(line)["epoch"] for line in open(path)]


def checkpoint_steps(workdir):
  with checkpointing.Checkpointer(str(workdir), create=False) as checkpoints:
    return sorted(checkpoints.all_steps())


def final_leaves(workdir, folder):
  """Every array of the latest checkpoint's state, as numpy arrays."""
  config = smoke_run_config(folder, batch_size=6, eval_batch_size=6)
  restored = restore.restore_checkpoint(config, str(workdir), step=checkpoint_steps(workdir)[-1])
  return [np.asarray(x) for x in jax.tree.leaves(
      (restored.state.step, restored.state.params, restored.state.batch_stats,
       restored.state.opt_state, restored.state.rng))]


@pytest.fixture(scope="module")
def finished_run(subprocess_env, synthetic_folder, tmp_path_factory):
  """An uninterrupted 2-epoch run (checkpoints 3 and 6); tests copy it before writing."""
  workdir = tmp_path_factory.mktemp("finished") / "run"
  result = run_cli(subprocess_env, workdir, synthetic_folder)
  assert result.returncode == 0, result.stderr[-3000:]
  assert epochs(workdir) == [1, 2] and checkpoint_steps(workdir) == [3, 6]
  return str(workdir)


@pytest.fixture
def run_copy(finished_run, tmp_path):
  copy = str(tmp_path / "run")
  shutil.copytree(finished_run, copy)
  return copy


# ---------------------------------------------------------------------------
# Resume.
# ---------------------------------------------------------------------------


def test_resume_with_another_batch_size_is_refused_and_a_resume_saves_on(
    run_copy, synthetic_folder, subprocess_env):
  result = run_cli(subprocess_env, run_copy, synthetic_folder, "--config.batch_size=9",
                   "--config.num_epochs=3")
  assert_one_error_line(result, "batch_size: checkpoint has 6, config has 9")
  assert os.path.exists(os.path.join(run_copy, "error.log"))
  assert epochs(run_copy) == [1, 2] and checkpoint_steps(run_copy) == [3, 6]

  result = run_cli(subprocess_env, run_copy, synthetic_folder, "--config.num_epochs=3")
  assert result.returncode == 0, result.stderr[-3000:]
  assert epochs(run_copy) == [1, 2, 3] and checkpoint_steps(run_copy) == [3, 6, 9]

  result = run_cli(subprocess_env, run_copy, synthetic_folder, "--config.num_epochs=3")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Nothing to train" in result.stderr and "epoch 3" in result.stderr
  assert epochs(run_copy) == [1, 2, 3] and checkpoint_steps(run_copy) == [3, 6, 9]


@pytest.mark.parametrize("override, field", [
    ({"data.max_train_examples": 12}, "training examples (data.max_train_examples)"),
    ({"num_epochs": 3, "batch_size": 3}, "batch_size"),
    ({"seed": 7}, "seed"),
    ({"optimizer.momentum": 0.5, "data.augment": False}, "data.augment"),
    ("renamed classes", "class_names"),
    ("one test image changed", "test data sha256"),
])
def test_resume_with_other_settings_or_data_is_refused(override, field, run_copy,
                                                      synthetic_folder, tmp_path):
  folder = synthetic_folder
  if isinstance(override, str):
    folder = str(tmp_path / "other")
    shutil.copytree(synthetic_folder, folder)
    if override == "renamed classes":  # ant, bee, cat -> ant, bee, cow: still 3 classes
      for split in ("train", "test"):
        os.rename(os.path.join(folder, split, "cat"), os.path.join(folder, split, "cow"))
    else:  # the same files but one, whose pixels differ by one level
      path = os.path.join(folder, "test", "cat", "001.png")
      pixels = np.asarray(Image.open(path)).copy()
      pixels[0, 0, 0] ^= 1
      Image.fromarray(pixels).save(path)
    override = {}
  config = smoke_run_config(folder, **{"batch_size": 6, "eval_batch_size": 6, **override})
  with pytest.raises(checkpointing.CheckpointError, match=re.escape(f"{field}: checkpoint has")):
    train.train_and_evaluate(config, run_copy)


def test_resume_takes_the_same_data_elsewhere_and_the_resumable_settings(
    run_copy, synthetic_folder, tmp_path, caplog):
  """The data may move (a renamed folder, an archive of it) and RESUMABLE_FIELDS change."""
  archive = str(tmp_path / "moved.tar.gz")
  with tarfile.open(archive, "w:gz") as tar:
    tar.add(synthetic_folder, arcname="moved")
  assert "optimizer.learning_rate" in run_identity.RESUMABLE_FIELDS
  config = smoke_run_config(archive, batch_size=6, eval_batch_size=3, checkpoint_every_epochs=2,
                            log_every_steps=1, keep_checkpoints=5, steps_per_dispatch=2,
                            **{"optimizer.learning_rate": 0.05})
  caplog.set_level(logging.INFO)
  train.train_and_evaluate(config, run_copy)  # num_epochs 2: restores, nothing to train
  assert "Resumed from" in caplog.text and "Nothing to train" in caplog.text
  assert "records no" not in caplog.text


def test_a_checkpoint_without_the_new_identity_resumes(run_copy, synthetic_folder, caplog):
  """Checkpoints of earlier versions record the model, classes and batch only: compared."""
  for step in checkpoint_steps(run_copy):
    path = os.path.join(run_copy, "checkpoints", str(step), "meta", "metadata")
    meta = json.load(open(path))
    meta.pop("records")
    old = ("model.arch", "model.attention", "model.block", "num_seeds", "num_classes",
           "class_names", "image_shape", "batch_size",
           "training examples (data.max_train_examples)")
    meta["identity"] = {k: v for k, v in meta["identity"].items() if k in old}
    meta["identity"]["dataset"] = "random_images0"
    with open(path, "w") as f:
      json.dump(meta, f)
  caplog.set_level(logging.INFO)
  config = smoke_run_config(synthetic_folder, batch_size=6, eval_batch_size=6)
  train.train_and_evaluate(config, run_copy)
  assert "Resumed from" in caplog.text
  unrecorded = re.search(r"Checkpoint 6 records no (.*) \(an older version wrote it\): these "
                         r"are not compared", caplog.text).group(1).split(", ")
  assert {"seed", "optimizer.momentum", "train data sha256", "test data sha256"} <= set(unrecorded)
  assert "model.arch" not in unrecorded
  config.model.arch = "resnet34"  # what it records is compared
  with pytest.raises(checkpointing.CheckpointError, match="model.arch: checkpoint has 'resnet18'"):
    train.train_and_evaluate(config, run_copy)


def test_a_torn_metrics_line_is_written_back_on_resume(run_copy, synthetic_folder, caplog):
  """A crash while appending epoch 2's line: a resume writes it back from checkpoint 6."""
  path = os.path.join(run_copy, "metrics.jsonl")
  lines = open(path).read().splitlines(keepends=True)
  with open(path, "w") as f:
    f.write(lines[0] + lines[1][:40])
  train.train_and_evaluate(smoke_run_config(synthetic_folder, batch_size=6, eval_batch_size=6),
                           run_copy)
  assert open(path).read() == "".join(lines)
  assert "dropped its last line, which was cut short" in caplog.text
  assert "lacked records of epoch 2; written back from its checkpoint" in caplog.text


def test_checkpoint_save_that_orbax_declines_is_an_error(tmp_path):
  state = {"w": np.zeros(3, np.float32)}
  with checkpointing.Checkpointer(str(tmp_path)) as checkpoints:
    checkpoints.save(6, state, {"test_accuracy": 0.5, "epoch": 2})
    with pytest.raises(checkpointing.CheckpointError, match="checkpoint 4 was not saved"):
      checkpoints.save(4, state, {"test_accuracy": 0.5, "epoch": 3})


# ---------------------------------------------------------------------------
# Locks.
# ---------------------------------------------------------------------------


def test_a_second_run_in_a_locked_workdir_is_refused(tmp_path, synthetic_folder, subprocess_env):
  workdir = str(tmp_path / "run")
  os.makedirs(workdir)
  with workdirs.lock(workdir):
    result = run_cli(subprocess_env, workdir, synthetic_folder)
  assert_one_error_line(result, f"pid {os.getpid()} on host {socket.gethostname()}")
  assert not os.path.exists(os.path.join(workdir, "metrics.jsonl"))
  assert not os.path.exists(os.path.join(workdir, "checkpoints"))

  # The lock file stays behind with this process's pid, but the lock itself
  # went with the `with` block: the next run is not blocked by it.
  result = run_cli(subprocess_env, workdir, synthetic_folder, "--config.num_epochs=0")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Nothing to train: num_epochs=0" in result.stderr
  with workdirs.lock(workdir):  # released when that run ended
    pass


def test_lock_is_exclusive_within_a_process_too(tmp_path):
  with workdirs.lock(str(tmp_path)):
    with pytest.raises(workdirs.WorkdirError, match=f"pid {os.getpid()}"):
      with workdirs.lock(str(tmp_path)):
        pass


# ---------------------------------------------------------------------------
# kill -9.
# ---------------------------------------------------------------------------


def test_kill_9_during_checkpoints_resumes_bit_identically(tmp_path, synthetic_folder,
                                                          subprocess_env, finished_run):
  workdir = str(tmp_path / "run")
  killed = run_cli(subprocess_env, workdir, synthetic_folder, script=(KILL_AT_SAVE, "1"))
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  assert epochs(workdir) == [1]  # written before the checkpoint
  assert checkpoint_steps(workdir) == []  # which never finished

  # Starts from scratch (epoch 1 is not appended twice), then dies while saving epoch 2.
  killed = run_cli(subprocess_env, workdir, synthetic_folder, script=(KILL_AT_SAVE, "2"))
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  assert epochs(workdir) == [1, 2] and checkpoint_steps(workdir) == [3]

  result = run_cli(subprocess_env, workdir, synthetic_folder)  # resumes from epoch 1
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Resumed from" in result.stderr
  assert epochs(workdir) == [1, 2]
  assert checkpoint_steps(workdir) == [3, 6]
  for a, b in zip(final_leaves(finished_run, synthetic_folder),
                  final_leaves(workdir, synthetic_folder), strict=True):
    assert np.array_equal(a, b)


@pytest.mark.slow
def test_kill_9_anywhere_resumes_bit_identically(tmp_path, synthetic_folder, subprocess_env):
  """A 6-epoch run killed at its first save and twice from outside ends bit-identical."""
  straight = str(tmp_path / "straight")
  result = run_cli(subprocess_env, straight, synthetic_folder, "--config.num_epochs=6")
  assert result.returncode == 0, result.stderr[-3000:]

  workdir = str(tmp_path / "killed")
  killed = run_cli(subprocess_env, workdir, synthetic_folder, "--config.num_epochs=6",
                   script=(KILL_AT_SAVE, "1"))
  assert killed.returncode == -signal.SIGKILL
  for kill_after_epochs in (2, 4):
    process = subprocess.Popen(
        cli_command(workdir, synthetic_folder, "--config.num_epochs=6"), cwd=REPO_ROOT,
        env=subprocess_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while len(epochs(workdir)) < kill_after_epochs and process.poll() is None:
      assert time.monotonic() < deadline
      time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL  # killed, not finished
  result = run_cli(subprocess_env, workdir, synthetic_folder, "--config.num_epochs=6")
  assert result.returncode == 0, result.stderr[-3000:]
  assert epochs(workdir) == [1, 2, 3, 4, 5, 6]
  for a, b in zip(final_leaves(straight, synthetic_folder),
                  final_leaves(workdir, synthetic_folder), strict=True):
    assert np.array_equal(a, b)


def test_truncating_metrics_replaces_the_file_in_one_step(tmp_path, monkeypatch):
  log = metrics.MetricsLog(str(tmp_path), enabled=False, num_replicas=1)
  lines = [json.dumps({"epoch": e, "train_loss": 1.0}) + "\n" for e in (1, 2, 3)]
  with open(log.path, "w") as f:
    f.write("".join(lines) + '{"epoch": 4, "train_lo')  # torn by a kill
  log.enabled = True

  def killed(*args):
    raise KeyboardInterrupt  # the process dies before the new file takes the old one's place

  monkeypatch.setattr(os, "replace", killed)
  with pytest.raises(KeyboardInterrupt):
    log.truncate_after(1)
  assert open(log.path).read().startswith("".join(lines))
  assert os.listdir(tmp_path) == ["metrics.jsonl"]  # no temporary file left
  monkeypatch.undo()
  log.truncate_after(2)
  assert open(log.path).read() == "".join(lines[:2])


# ---------------------------------------------------------------------------
# Signals.
# ---------------------------------------------------------------------------


def stop_when(command, marker, signum, subprocess_env):
  """Runs `command`, sends `signum` once a line of its stderr holds `marker`; (status, stderr)."""
  process = subprocess.Popen(command, cwd=REPO_ROOT, env=subprocess_env, text=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  seen = []
  for line in process.stderr:
    seen.append(line)
    if marker in line:
      process.send_signal(signum)
      break
  rest = process.communicate(timeout=120)[1]
  return process.returncode, "".join(seen) + rest


def test_ctrl_c_stops_training_with_one_line_and_it_resumes_exactly(
    tmp_path, synthetic_folder, subprocess_env, finished_run):
  workdir = str(tmp_path / "run")
  status, stderr = stop_when(cli_command(workdir, synthetic_folder, "--config.num_epochs=3"),
                             "epoch   1/", signal.SIGINT, subprocess_env)
  result = subprocess.CompletedProcess([], status, "", stderr)
  assert_one_error_line(result, "stopped by SIGINT (Ctrl-C): training stopped. The same "
                        "command resumes it", returncode=130)
  assert "KeyboardInterrupt" not in stderr

  result = run_cli(subprocess_env, workdir, synthetic_folder)
  assert result.returncode == 0, result.stderr[-3000:]
  assert epochs(workdir) == [1, 2] and checkpoint_steps(workdir) == [3, 6]
  for a, b in zip(final_leaves(finished_run, synthetic_folder),
                  final_leaves(workdir, synthetic_folder), strict=True):
    assert np.array_equal(a, b)


def test_sigterm_stops_evaluation_with_one_line(run_copy, synthetic_folder, subprocess_env):
  status, stderr = stop_when(cli_command(run_copy, synthetic_folder, command="evaluate"),
                             "dataset ", signal.SIGTERM, subprocess_env)
  assert_one_error_line(subprocess.CompletedProcess([], status, "", stderr),
                        "stopped by SIGTERM: evaluation stopped",
                        returncode=143)


# ---------------------------------------------------------------------------
# A full disk.
# ---------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
  """A 6 MiB tmpfs (a real file system that fills up); skips where it cannot be mounted."""
  path = tmp_path / "disk"
  path.mkdir()
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(path)],
                    capture_output=True).returncode != 0:
    pytest.skip("cannot mount a tmpfs here (needs root in a system that allows it)")
  yield path
  subprocess.run(["umount", "-l", str(path)], check=True)


def fill(disk, leave_kib: int) -> str:
  """Fills `disk` up to `leave_kib` KiB with a file; returns its path."""
  free = shutil.disk_usage(disk).free
  path = os.path.join(disk, "filler")
  with open(path, "wb") as f:
    f.write(b"\0" * max(0, free - leave_kib * 1024))
  return path


@pytest.mark.parametrize("leave_kib, message", [
    (40, "No space left on device ("),  # before the first checkpoint: config.json, metrics
    (2600, "saving checkpoint 6 in"),  # checkpoint 3 fits (2.2 MiB), 6 does not
])
def test_a_full_disk_is_one_line(leave_kib, message, small_disk, synthetic_folder,
                                 subprocess_env):
  fill(small_disk, leave_kib)
  workdir = str(small_disk / "run")
  result = run_cli(subprocess_env, workdir, synthetic_folder)
  line = assert_one_error_line(result, message)
  assert "free some space" in line or "free the space" in line
  if leave_kib > 1000:
    assert "(No space left on device)" in line and "resume from checkpoint 3" in line
    assert checkpoint_steps(workdir) == [3]
    assert "RESOURCE_EXHAUSTED" in open(os.path.join(workdir, "error.log")).read()


@pytest.mark.slow
def test_a_run_stopped_by_a_full_disk_resumes_exactly(small_disk, synthetic_folder,
                                                      subprocess_env, finished_run):
  filler = fill(small_disk, 2600)
  workdir = str(small_disk / "run")
  assert run_cli(subprocess_env, workdir, synthetic_folder).returncode == 1
  os.remove(filler)
  result = run_cli(subprocess_env, workdir, synthetic_folder)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Resumed from" in result.stderr and epochs(workdir) == [1, 2]
  for a, b in zip(final_leaves(finished_run, synthetic_folder),
                  final_leaves(workdir, synthetic_folder), strict=True):
    assert np.array_equal(a, b)


# ---------------------------------------------------------------------------
# Bad input.
# ---------------------------------------------------------------------------


def test_corrupt_images_are_named(tmp_path, synthetic_folder, subprocess_env):
  folder = str(tmp_path / "images")
  shutil.copytree(synthetic_folder, folder)
  good = open(os.path.join(folder, "train", "ant", "000.jpg"), "rb").read()
  with open(os.path.join(folder, "train", "ant", "empty.jpg"), "wb"):
    pass
  with open(os.path.join(folder, "train", "bee", "random.jpg"), "wb") as f:
    f.write(np.random.default_rng(0).bytes(500))
  with open(os.path.join(folder, "test", "cat", "truncated.jpg"), "wb") as f:
    f.write(good[:len(good) // 2])
  result = run_cli(subprocess_env, tmp_path / "run", folder)
  assert_one_error_line(result, f"cannot decode {os.path.join('train', 'ant', 'empty.jpg')}",
                        "empty file", "and 2 more bad file")


def test_divergence_stops_at_its_step_before_evaluating_or_saving(tmp_path, synthetic_folder,
                                                                  subprocess_env):
  workdir = tmp_path / "run"
  result = run_cli(subprocess_env, workdir, synthetic_folder, "--config.optimizer.learning_rate=1e6")
  line = assert_one_error_line(result, "training diverged at step 2 (epoch 1, step 2 of 3)",
                               "no checkpoint had been written", "optimizer.learning_rate")
  assert "before evaluating or saving epoch 1" in line
  assert "epoch   1/" not in result.stderr  # no epoch summary: no evaluation
  assert os.path.exists(workdir / "error.log")
  assert epochs(workdir) == [] and checkpoint_steps(workdir) == []


@pytest.mark.parametrize("field, value", [
    ("batch_size", 0), ("eval_batch_size", -1), ("num_epochs", -1),
    ("checkpoint_every_epochs", 0), ("keep_checkpoints", 0), ("seed", -1),
    ("data.max_train_examples", -5), ("optimizer.learning_rate", float("nan")),
    ("optimizer.momentum", -0.5), ("schedule.boundaries", (10, -1)),
])
def test_numeric_config_fields_are_checked(field, value):
  config = smoke_run_config("unused", **{field: value})
  with pytest.raises(ValueError, match=f"^{field}=.* is out of range"):
    config_checks.validate_config(config)


def test_config_is_checked_and_workdir_prepared_before_any_data(tmp_path, subprocess_env):
  """One line each; the missing image folder is never reached."""
  missing = str(tmp_path / "no-such-folder")
  result = run_cli(subprocess_env, tmp_path / "a", missing, "--config.checkpoint_every_epochs=0")
  assert_one_error_line(result, "checkpoint_every_epochs=0 is out of range", returncode=2)
  assert not os.path.exists(tmp_path / "a")  # a bad config value: nothing written

  a_file = tmp_path / "a_file"
  a_file.write_text("")
  result = run_cli(subprocess_env, a_file, missing)
  assert_one_error_line(result, "is a file, not a directory")
  result = run_cli(subprocess_env, a_file, missing, command="evaluate")
  assert_one_error_line(result, f"--workdir {a_file} is a file; give the folder of a training run")


@pytest.mark.parametrize("content, message", [
    ("x = 1\n", "defines no get_config()"),
    ("def get_config():\n  return {'seed': 0}\n", "the config is a dict, not an ml_collections"),
    ("import ml_collections\ndef get_config():\n  c = ml_collections.ConfigDict()\n"
     "  c.seed = 0\n  return c\n", "the config has no field num_seeds"),
])
def test_a_config_file_without_a_whole_config_is_one_line(content, message, tmp_path, capsys):
  """A config that is not a whole config is a usage error: status 2, one line."""
  path = tmp_path / "my_config.py"
  path.write_text(content)
  argv = ["run_train.py", "train", "--config", str(path), "--workdir", str(tmp_path / "run")]
  with pytest.raises(SystemExit) as exit_info:
    cli.main(argv)
  assert exit_info.value.code == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines


def test_workdir_arguments_are_what_the_user_meant(tmp_path, monkeypatch, capsys):
  argv = ["run_train.py", "train", "--config", os.path.join(REPO_ROOT, "configs", "cifar.py:smoke")]
  with pytest.raises(SystemExit) as exit_info:  # --workdir=$UNSET
    cli.main(argv + ["--workdir="])
  assert exit_info.value.code == 2
  assert capsys.readouterr().err.startswith("error: --workdir is empty")
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  monkeypatch.chdir(tmp_path)
  # A shell leaves ~ after = alone; the command expands it (evaluate: the same code, no data).
  assert cli.main(["wacnn_jax", "evaluate", "--workdir=~/runs/a"]) == 1
  assert f"error: --workdir {tmp_path}/home/runs/a does not exist" in capsys.readouterr().err
  assert not os.path.exists(tmp_path / "~")


@pytest.fixture
def read_only_dir(tmp_path):
  """A directory this process cannot write to (chmod; for root, the immutable attribute)."""
  path = tmp_path / "read_only"
  path.mkdir()
  path.chmod(0o555)
  immutable = False
  if os.access(path, os.W_OK):  # root: permissions do not apply
    immutable = subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0
    if not immutable:
      pytest.skip("cannot make a directory read-only for this user")
  yield path
  if immutable:
    subprocess.run(["chattr", "-i", str(path)], check=True)
  path.chmod(0o755)


def test_read_only_workdir_is_one_line(read_only_dir, tmp_path, subprocess_env):
  result = run_cli(subprocess_env, read_only_dir, tmp_path / "no-such-folder")
  assert_one_error_line(result, "cannot write to --workdir")


def test_evaluation_that_cannot_be_written_is_printed_first(run_copy, synthetic_folder,
                                                            subprocess_env):
  os.makedirs(os.path.join(run_copy, "confusion.png"))  # nothing can be written there
  result = run_cli(subprocess_env, run_copy, synthetic_folder, command="evaluate")
  assert_one_error_line(result, "cannot write the evaluation files", "printed above")
  assert "top-1 accuracy" in result.stdout and "per-class accuracy" in result.stdout


# ---------------------------------------------------------------------------
# Damaged checkpoints.
# ---------------------------------------------------------------------------


def test_damaged_latest_checkpoint_falls_back_to_the_one_before(run_copy, synthetic_folder,
                                                               subprocess_env):
  os.remove(os.path.join(run_copy, "checkpoints", "6", "state", "manifest.ocdbt"))
  result = run_cli(subprocess_env, run_copy, synthetic_folder, "--config.num_epochs=3")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "checkpoint 6 in" in result.stderr and "falling back to checkpoint 3" in result.stderr
  for noise in NOISE:
    assert noise not in result.stderr, result.stderr[-3000:]
  assert os.path.isdir(os.path.join(run_copy, "checkpoints_damaged", "6"))
  assert epochs(run_copy) == [1, 2, 3] and checkpoint_steps(run_copy) == [3, 6, 9]


def test_damaged_checkpoint_in_evaluate_mode_is_one_line(run_copy, synthetic_folder,
                                                         subprocess_env):
  data = os.path.join(run_copy, "checkpoints", "6", "state", "ocdbt.process_0", "d")
  largest = max((os.path.join(data, f) for f in os.listdir(data)), key=os.path.getsize)
  with open(largest, "r+b") as f:
    f.write(np.random.default_rng(0).bytes(4096))
  result = run_cli(subprocess_env, run_copy, synthetic_folder, "--eval.step=6",
                   command="evaluate")
  assert_one_error_line(result, "checkpoint 6 in", "is damaged", "there are [3, 6]")


def test_only_a_closed_event_loop_report_is_dropped_after_a_restore(monkeypatch, capsys):
  """The excepthook part of the restore-aftermath filter (TensorStore prints with PyErr_Print)."""
  monkeypatch.setattr(sys, "excepthook", sys.__excepthook__)
  monkeypatch.setattr(sys, "unraisablehook", sys.__unraisablehook__)
  checkpointing._drop_restore_aftermath()  # pylint: disable=protected-access
  loop = asyncio.new_event_loop()
  loop.close()
  try:
    loop.call_soon_threadsafe(print)
  except RuntimeError as e:
    sys.excepthook(type(e), e, e.__traceback__)
  assert capsys.readouterr().err == ""
  try:
    raise RuntimeError("Event loop is closed")  # not asyncio's: reported
  except RuntimeError as e:
    sys.excepthook(type(e), e, e.__traceback__)
  assert "RuntimeError: Event loop is closed" in capsys.readouterr().err


def test_restore_latest_sets_every_damaged_checkpoint_aside(run_copy):
  for step in (3, 6):
    os.remove(os.path.join(run_copy, "checkpoints", str(step), "state", "manifest.ocdbt"))
  with checkpointing.Checkpointer(run_copy) as checkpoints:
    assert checkpoints.restore_latest({"step": jax.ShapeDtypeStruct((), np.int32)}) is None
    assert checkpoints.all_steps() == []
  assert sorted(os.listdir(os.path.join(run_copy, "checkpoints_damaged"))) == ["3", "6"]
