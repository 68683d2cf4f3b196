"""Training on two processes (jax.distributed) against training on one.

Two processes on this machine, each with 2 CPU devices (localhost
coordinator, gloo CPU collectives), run `run_train.py` with the smoke model on
18 training images, one step of 16 per epoch: epoch 1, then a restart that
resumes from its checkpoint for epochs 2-3, then `python -m wacnn_jax evaluate`.
One process with 4 CPU devices trains the same config for 3 epochs straight.

Global device k holds the same replica, batch slice and augmentation keys on
both sides, so both compute the same function in float32; what differs is
the order in which sums over devices are added up (gloo across processes,
XLA's in-process all-reduce in the reference), so results are equal up to
rounding, not bit for bit. How far rounding carries depends on the data:
BatchNorm gradients are sums over devices that nearly cancel. On these images
(generator seed 4) the runs agree to ~1e-6; on other seeds (0, 2, 3) we
measured up to 3e-3 over all parameter updates after 3 steps, and one process
in float32 against float64 differs by as much, so such data would measure
rounding, not the multi-process path. The test requires:

- evaluation of one checkpoint (the two-process run's last) on 2 processes
  and on 1: counts, accuracies and confusion matrix exactly, loss to rtol 1e-5;
- per-epoch metrics: epoch, step, learning rate, test examples and
  accuracies exactly; train and test loss to rtol 3e-4 (measured <= 1.2e-6 on
  one 2-core machine, 8.4e-5 on another);
- parameters and BatchNorm statistics after every epoch, as updates from the
  initial values: ||update_2 - update_1|| / ||update_1|| at most 3e-2 for
  every array and 3e-3 over all of them (measured <= 2.4e-4 and <= 9.4e-6
  on one 2-core machine, 6.3e-3 and 2.7e-4 on the same machine under load).
  Processes that do not combine their gradients, each training on its half
  of every batch, give ~1 here.

and that process 0 alone writes metrics.jsonl, TensorBoard events,
config.json and eval.json. A second test streams (data.pipeline='stream') on
two processes: in an epoch, the images their devices receive are the
training set, each once, each process its own shard; then they train. A third
makes one process fail and checks that the other ends too, within seconds. Every launch has a deadline; on
failure or timeout all its processes are killed and their output is shown.
"""

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
from PIL import Image
import pytest

from configs import cifar
from tests import helpers
from tests.helpers import REPO_ROOT
from wacnn_jax.data import image_folders
from wacnn_jax.training import parallel
from wacnn_jax.training import restore


TRAIN_PER_CLASS, TEST_PER_CLASS = 6, 4
SETTINGS = {
    "batch_size": 16,  # 4 per device; 18 training images: one step per epoch
    "eval_batch_size": 8,  # 12 test images: 2 batches of 8, 4 of them padding
}
LAUNCH_SECONDS = 240


def class_folder(root: str) -> str:
  """Three classes of smooth colour patterns plus noise, as PNG files.

  Seed 4 gives a well-conditioned first few steps (see the module docstring).
  """
  rng = np.random.default_rng(4)
  yy, xx = np.mgrid[0:32, 0:32] / 31.0
  patterns = (np.stack([xx, 1 - xx, yy], -1), np.stack([yy, xx * yy, 1 - yy], -1),
              np.stack([1 - xx * yy, xx, xx * (1 - yy)], -1))
  for split, n in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
    for pattern, label in zip(patterns, ("ant", "bee", "cat")):
      os.makedirs(os.path.join(root, split, label))
      for i in range(n):
        pixels = 255 * (0.7 * pattern + 0.3 * rng.random((32, 32, 3)))
        Image.fromarray(pixels.astype(np.uint8)).save(
            os.path.join(root, split, label, f"{i:03d}.png"))
  return root


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def environment(devices: int, cache_dir: str) -> dict:
  """`devices` CPU devices, gloo collectives, a shared compilation cache, no proxies."""
  env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
  env.update({
      "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
      "JAX_PLATFORMS": "cpu",
      "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
      "JAX_COMPILATION_CACHE_DIR": cache_dir,
      "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
      "PYTHONPATH": REPO_ROOT,
  })
  return env


def overrides(settings: dict) -> list:
  return [f"--config.{key}={value}" for key, value in settings.items()]


def launch(commands, env, log_dir: str, name: str, deadline: float = LAUNCH_SECONDS,
           expect_success: bool = True) -> list:
  """Runs `commands` at once, each in its own session; returns [(exit code, output)].

  Waits at most `deadline` seconds in all. On a timeout, or (with
  `expect_success`) when one exits non-zero, every process still running is
  killed with its process group and the test fails with all outputs.
  """
  procs, logs = [], []
  for i, command in enumerate(commands):
    log = open(os.path.join(log_dir, f"{name}.{i}.log"), "w+")
    logs.append(log)
    procs.append(subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True))
  end = time.monotonic() + deadline
  problem = None
  try:
    while any(p.poll() is None for p in procs):
      if time.monotonic() > end:
        problem = f"{name}: still running after {deadline} s"
        break
      if expect_success and any(p.poll() not in (None, 0) for p in procs):
        problem = f"{name}: a process failed"
        break
      time.sleep(0.2)
  finally:
    for p in procs:
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
  results = []
  for p, log in zip(procs, logs):
    log.seek(0)
    results.append((p.returncode, log.read()))
    log.close()
  if expect_success and problem is None and any(code for code, _ in results):
    problem = f"{name}: a process failed"
  if problem:
    pytest.fail(problem + "".join(
        f"\n--- process {i} (exit {code}) ---\n{output[-3000:]}"
        for i, (code, output) in enumerate(results)))
  return results


def two_process_commands(workdir: str, settings: dict, distributed: dict | None = None,
                         command: str = "train"):
  """Command lines of processes 0 and 1 (`distributed`: more such settings).

  train: `run_train.py`; evaluate: `python -m wacnn_jax evaluate` of checkpoint 3.
  """
  port = free_port()
  program = (["run_train.py"] if command == "train"
             else ["-m", "wacnn_jax", command, "--eval.step=3"])
  return [[sys.executable, *program, "--config", "configs/cifar.py:smoke",
           "--workdir", workdir, *overrides(settings),
           *overrides({"distributed": True, "coordinator_address": f"127.0.0.1:{port}",
                       "num_processes": 2, "process_id": i, **(distributed or {})})]
          for i in range(2)]


REFERENCE = textwrap.dedent(r"""
    import json, sys
    import jax, numpy as np
    from configs import cifar
    from wacnn_jax.data import pipeline
    from wacnn_jax.tools import evaluate
    from wacnn_jax.training import optim
    from wacnn_jax.training import parallel
    from wacnn_jax.training import restore
    from wacnn_jax.training import states
    from wacnn_jax.training import train

    assert len(jax.local_devices()) == 4
    settings, reference_dir, evaluated_dir, start_file = sys.argv[1:]
    config = cifar.get_config("smoke")
    for key, value in json.loads(settings).items():
      *parents, leaf = key.split(".")
      target = config
      for parent in parents:
        target = target[parent]
      target[leaf] = value
    train.train_and_evaluate(config, reference_dir)
    dataset = pipeline.load(config.data)
    start = states.create_train_state(
        config, states.create_model(config, dataset.num_classes), dataset.image_shape,
        optim.create_learning_rate_fn(config, 1), jax.random.PRNGKey(config.seed))
    np.savez(start_file, **{part + jax.tree_util.keystr(path): np.asarray(leaf)
                            for part in ("params", "batch_stats")
                            for path, leaf in jax.tree_util.tree_leaves_with_path(
                                getattr(start, part))})
    options = evaluate.default_options()
    options.step = 3
    evaluate.evaluate_checkpoint(config, evaluated_dir, options, verbose=False)
""")


def flat_arrays(variables: dict) -> dict:
  """{params, batch_stats} of one replica as flat arrays keyed by path."""
  return {part + jax.tree_util.keystr(path): np.asarray(leaf)
          for part in ("params", "batch_stats")
          for path, leaf in jax.tree_util.tree_leaves_with_path(variables[part])}


def update_differences(start: dict, variables, reference_variables) -> tuple[float, float]:
  """||update - reference update|| / ||reference update||: worst array, and all together.

  Updates are changes from `start` (flat arrays) of params and BatchNorm statistics.
  """
  arrays, reference_arrays = flat_arrays(variables), flat_arrays(reference_variables)
  assert arrays.keys() == reference_arrays.keys() == start.keys()
  worst, differences, sizes = 0.0, [], []
  for key, initial in start.items():
    difference = np.linalg.norm(arrays[key] - reference_arrays[key])
    size = np.linalg.norm(reference_arrays[key] - initial)
    worst = max(worst, difference / size)
    differences.append(difference)
    sizes.append(size)
  return worst, float(np.linalg.norm(differences) / np.linalg.norm(sizes))


def test_global_batch_must_divide_by_every_hosts_devices():
  cpu = jax.devices()[0]
  topology = parallel.Topology(devices=(cpu, cpu), process_index=1, process_count=2)
  assert topology.per_device_batch(16) == 4
  with pytest.raises(ValueError, match=r"does not divide by the 4 devices \(2 host\(s\) x 2\)"
                     r".*batch_size=8"):
    topology.per_device_batch(10)


@pytest.fixture(scope="module")
def compilation_cache(tmp_path_factory):
  """A JAX compilation cache shared by this module's launches."""
  return str(tmp_path_factory.mktemp("compilation_cache"))


@pytest.mark.slow  # 70 s; test_a_failing_process_stops_the_other runs two processes by default
def test_two_processes_train_resume_and_evaluate_like_one(tmp_path, compilation_cache):
  folder = class_folder(str(tmp_path / "images"))
  settings = {**SETTINGS, "data.image_folder": folder}
  multi, reference = str(tmp_path / "two_processes"), str(tmp_path / "one_process")
  logs = str(tmp_path)
  env = environment(2, compilation_cache)

  # Epoch 1; a restart resumes from its checkpoint for epochs 2-3; evaluation.
  launch(two_process_commands(multi, {**settings, "num_epochs": 1}), env, logs, "epoch1")
  assert os.listdir(os.path.join(multi, "checkpoints")) == ["1"]
  resumed = launch(two_process_commands(multi, {**settings, "num_epochs": 3}), env, logs,
                   "epochs2_3")
  assert all("epochs 2..3" in output for _, output in resumed)
  launch(two_process_commands(multi, {**settings, "num_epochs": 3}, command="evaluate"),
         env, logs, "evaluate")

  # The reference trains straight through and evaluates a copy of the two-process run.
  evaluated = str(tmp_path / "two_processes_evaluated_by_one")
  shutil.copytree(multi, evaluated)
  os.remove(os.path.join(evaluated, "eval.json"))
  start_file = str(tmp_path / "start.npz")
  launch([[sys.executable, "-c", REFERENCE, json.dumps({**settings, "num_epochs": 3}),
           reference, evaluated, start_file]],
         environment(4, compilation_cache), logs, "reference")

  # Process 0 alone wrote the run's files (one TensorBoard writer per training launch).
  assert sorted(os.listdir(multi)) == [
      ".lock", "checkpoints", "config.json", "confusion.png", "dataset.json", "eval.json",
      "metrics.jsonl", "model_summary.json", "model_summary.txt", "tensorboard"]
  assert len(os.listdir(os.path.join(multi, "tensorboard", "replica0"))) == 2

  # Evaluation of one checkpoint on 2 processes and on 1.
  with open(os.path.join(multi, "eval.json")) as f:
    two = json.load(f)
  with open(os.path.join(evaluated, "eval.json")) as f:
    one = json.load(f)
  assert two["step"] == one["step"] == 3
  assert two["count"] == one["count"] == 3 * TEST_PER_CLASS
  for key in ("confusion", "accuracy", "top5_accuracy", "per_class_accuracy"):
    assert two[key] == one[key], key
  np.testing.assert_allclose(two["loss"], one["loss"], rtol=1e-5)

  # Per-epoch metrics.
  def records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      return [json.loads(line) for line in f]

  two_records, one_records = records(multi), records(reference)
  assert [r["epoch"] for r in two_records] == [r["epoch"] for r in one_records] == [1, 2, 3]
  for a, b in zip(two_records, one_records):
    for key in ("step", "learning_rate", "test_examples", "train_accuracy", "test_accuracy",
                "test_top5_accuracy"):
      assert a[key] == b[key], (a["epoch"], key)
    for key in ("train_loss", "test_loss"):
      np.testing.assert_allclose(a[key], b[key], rtol=3e-4, err_msg=f"epoch {a['epoch']} {key}")

  # Parameters and BatchNorm statistics after every epoch.
  config = cifar.get_config("smoke")
  config.data.image_folder = folder
  start = dict(np.load(start_file))
  dataset = None
  for step in (1, 2, 3):
    one_state = restore.restore_checkpoint(config, reference, step=step, dataset=dataset)
    dataset = one_state.dataset
    two_state = restore.restore_checkpoint(config, multi, step=step, dataset=dataset)
    assert two_state.step == one_state.step == step
    worst, overall = update_differences(start, two_state.variables, one_state.variables)
    assert worst <= 3e-2 and overall <= 3e-3, (step, worst, overall)


STREAM_SCRIPT = textwrap.dedent(r"""
    import hashlib, json, sys
    import numpy as np
    from configs import cifar
    from wacnn_jax.data import pipeline
    from wacnn_jax.training import parallel, stream_feed, train

    folder, port, process, workdir, out = sys.argv[1:]
    config = cifar.get_config("smoke")
    config.data.image_folder = folder
    config.data.pipeline, config.data.workers, config.data.augment = "stream", 1, False
    config.batch_size, config.eval_batch_size, config.num_epochs = 8, 8, 1
    config.distributed, config.num_processes = True, 2
    config.coordinator_address, config.process_id = f"127.0.0.1:{port}", int(process)
    parallel.initialize_distributed(config)
    dataset = pipeline.load(config.data)
    topology = parallel.Topology.current()
    steps = len(dataset.train) // config.batch_size
    feed = stream_feed.StreamFeed(config, dataset, topology, [0, 1], steps)
    reads = {"0": [], "1": []}
    for step in range(steps):  # epoch 1, as the devices receive it
      images, labels = feed.train_chunk(None, 0, step, 1)
      for shard in images.addressable_shards:  # (1, R, 1, b, H, W, C)
        for replica, batch in enumerate(np.asarray(shard.data)[0, :, 0]):
          reads[str(replica)] += [hashlib.sha256(image.tobytes()).hexdigest() for image in batch]
    feed.close()
    config.data.augment, config.num_seeds = True, 1
    train.train_and_evaluate(config, workdir)
    with open(out, "w") as f:
      json.dump(reads, f)
""")


def test_two_processes_stream_their_own_shards(tmp_path, compilation_cache):
  """Each of 2 processes (2 devices each) streams its shard: in an epoch, what the devices
  receive is the training set, every image once, for each replica; then they train."""
  folder = helpers.write_cifar_subset(helpers.CIFAR10_MINI, str(tmp_path / "images"),
                                      {"train": 4, "test": 2})  # 40 = 5 steps of 8
  port = free_port()
  outputs = [str(tmp_path / f"reads{i}.json") for i in range(2)]
  launch([[sys.executable, "-c", STREAM_SCRIPT, folder, str(port), str(i),
           str(tmp_path / "run"), outputs[i]] for i in range(2)],
         environment(2, compilation_cache), str(tmp_path), "stream")
  reads = []
  for path in outputs:
    with open(path) as f:
      reads.append(json.load(f))
  expected = sorted(hashlib.sha256(image.tobytes()).hexdigest()
                    for image in image_folders.read_image_folder(folder).train.images)
  for replica in ("0", "1"):
    assert len(reads[0][replica]) == len(reads[1][replica]) == 20
    assert not set(reads[0][replica]) & set(reads[1][replica])  # their own shards
    assert sorted(reads[0][replica] + reads[1][replica]) == expected
  assert reads[0]["0"] != reads[0]["1"]  # each replica its own order
  with open(tmp_path / "run" / "metrics.jsonl") as f:
    assert [json.loads(line)["epoch"] for line in f] == [1]
  assert json.load(open(tmp_path / "run" / "dataset.json"))["pipeline"] == "stream"


def test_a_failing_process_stops_the_other(tmp_path, compilation_cache):
  """Process 0 fails writing metrics.jsonl (a directory here) after epoch 1.

  Process 0 reports the error and leaves at once, without JAX's shutdown
  barrier; JAX then stops process 1, which would otherwise wait in its next
  collective for process 0 while process 0 waits for it (5 minutes, JAX's
  shutdown timeout).
  """
  folder = class_folder(str(tmp_path / "images"))
  workdir = tmp_path / "run"
  os.makedirs(workdir / "metrics.jsonl")
  commands = two_process_commands(str(workdir), {**SETTINGS, "data.image_folder": folder},
                                  {"heartbeat_timeout": 10})
  (code0, output0), (code1, output1) = launch(
      commands, environment(2, compilation_cache), str(tmp_path), "failure",
      deadline=90, expect_success=False)
  assert code0 == 1 and "metrics.jsonl (Is a directory)" in output0, output0[-3000:]
  assert code1 != 0 and "another task died" in output1, output1[-3000:]
