"""Throughput benchmark of wacnn_jax and its PyTorch peers, measured side by side.

    python benchmarks/throughput.py [--quick] [--budget SECONDS] [--full-run DATA]
        [--profile] [--results DIR] [--docs docs/benchmarks.md]
    python benchmarks/throughput.py --render RESULTS.json [--docs docs/benchmarks.md]

Measures, in one process, in this order (each phase first checks the clock
against `--budget` and is skipped with a note rather than run past it; a phase
that fails is recorded with its error and the others go on):

1. training images/s of the real pmapped train step (gather, augmentation,
   forward, backward, SGD) and evaluation images/s: resnet18 baseline and WA,
   float32 and bfloat16, batch 128 (`--quick`: fp32, batch 32); then
   (phase `seeds`) 2, 4 and 8 replicas in one program (`num_seeds`);
2. with `--full-run DATA`: `run_train.py` on DATA (an image folder or archive)
   with the reference recipe (resnet18-WA, 160 epochs) for as long as the
   budget allows, in a fixed workdir so that the next invocation continues it;
   wall time per epoch (evaluation included, compilation apart), test
   accuracy and the projected 160-epoch wall time;
3. the PyTorch peers (faithful reference-style and tuned WA-ResNet18,
   `benchmarks/torch_peers.py`) on the same device, as ratios to wacnn_jax;
4. the DWT alone (haar): `wacnn_jax.nn.wavelets.dwt2` (its two-tap fused path),
   the general strided-conv path `dwt2_conv` and the reference's
   matrix-multiply DWT, against the bytes-moved floor at the measured bandwidth;
5. with `--profile`: a `jax.profiler` trace of the resnet18-WA train step,
   summarised as time per op class, device busy time and launch gaps;
6. levers of the train step: XLA flag variants (command buffers), each in a
   fresh process, and a single replica run unbatched against vmapped
   (`CODE_LEVERS`);
7. the rest of the table while time remains: batch 512, vgg16_bn,
   mobilenetv2, bfloat16 of those, and the two-tap vs conv DWT inside the
   train step.

Every figure is a median over timed windows after warm-up, with
`block_until_ready` (or `torch.cuda.synchronize`) before the clock stops.
The raw numbers go to `RESULTS_DIR/<device>-<date>.json` (rewritten after
every phase, so a killed run keeps what it measured) and the table is written
between the `results` markers of `--docs`. `--render` rebuilds that table
from a saved JSON, e.g. one measured on another machine.

`--quick` shrinks everything so that it runs in a few minutes on a CPU (CI
runs it as a dry run of the GPU suite, `benchmarks/gpu_suite.sh`); its
numbers are not GPU figures.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import gzip
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from unittest import mock

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp
import numpy as np

from configs import default  # pylint: disable=wrong-import-position
from wacnn_jax.data import augmentation_settings
from wacnn_jax.data.dataset import Split
from wacnn_jax.data import normalization
from wacnn_jax.data import transforms
from wacnn_jax.nn import wavelets
from wacnn_jax.tools import reproduce
from wacnn_jax.training import optim
from wacnn_jax.training import parallel
from wacnn_jax.training import states
from wacnn_jax.training import steps

REFERENCE_EPOCHS = 160
PHASES = ("train", "seeds", "peers", "dwt", "profile", "full_run", "levers", "rest")
FULL_RUN_WORKDIR = os.path.join(REPO_ROOT, "workdirs", "benchmark_full_run")


# ---------------------------------------------------------------------------
# The clock every phase checks.
# ---------------------------------------------------------------------------


class Clock:
  """Wall-clock budget of one benchmark invocation (None = unlimited)."""

  def __init__(self, budget_seconds: float | None):
    self.start = time.perf_counter()
    self.budget = budget_seconds

  def elapsed(self) -> float:
    return time.perf_counter() - self.start

  def left(self) -> float:
    return float("inf") if self.budget is None else self.budget - self.elapsed()


class Results:
  """The raw results dict, saved to JSON after every phase."""

  def __init__(self, path: str | None, info: dict, settings: dict):
    self.path = path
    self.raw = {"info": info, "settings": settings, "train": {}, "dwt": {},
                "peers": {}, "skipped": [], "errors": [], "phase_seconds": {}}

  def save(self) -> None:
    if self.path:
      with open(self.path + ".tmp", "w") as f:
        json.dump(self.raw, f, indent=2, default=str)
      os.replace(self.path + ".tmp", self.path)

  def phase(self, clock: Clock, name: str, estimate: float, fn) -> bool:
    """Runs `fn()` if `estimate` seconds are left; records a skip or an error otherwise."""
    left = clock.left()
    if left < estimate:
      note = f"skipped: {left:.0f} s of the budget left, the phase needs ~{estimate:.0f} s"
      self.raw["skipped"].append({"phase": name, "note": note})
      print(f"[{clock.elapsed():6.1f}s] {name}: {note}", flush=True)
      self.save()
      return False
    print(f"[{clock.elapsed():6.1f}s] {name} ...", flush=True)
    start = time.perf_counter()
    try:
      fn()
      ok = True
    except Exception as e:  # pylint: disable=broad-except
      traceback.print_exc()
      self.raw["errors"].append({"phase": name, "error": f"{type(e).__name__}: {e}"[:2000]})
      ok = False
    self.raw["phase_seconds"][name] = time.perf_counter() - start
    print(f"[{clock.elapsed():6.1f}s] {name}: {'done' if ok else 'FAILED'} in "
          f"{self.raw['phase_seconds'][name]:.1f} s", flush=True)
    self.save()
    return ok


# ---------------------------------------------------------------------------
# Measurements.
# ---------------------------------------------------------------------------


def median_rate(run, items: int, windows: int) -> float:
  """Median of items/s over `windows` calls of `run()` (already warmed up)."""
  rates = []
  for _ in range(windows):
    start = time.perf_counter()
    jax.block_until_ready(run())
    rates.append(items / (time.perf_counter() - start))
  return statistics.median(rates)


# Code levers, each measured against its ablation in one process, windows
# interleaved: results key -> (phase name, row label, (lever, ablation) names,
# the ablation: a context manager in which the step is traced the old way).
CODE_LEVERS = {
    # The general conv DWT even for haar (the pre-two-tap path).
    "dwt_lever": ("dwt lever (two-tap vs conv in the train step)", "two-tap vs conv DWT",
                  ("two_tap", "conv"),
                  lambda: mock.patch.object(wavelets, "dwt2", wavelets.dwt2_conv)),
    # A single replica vmapped too (the path before `steps.map_replicas`).
    "replica_lever": ("replica lever (one replica unbatched vs vmapped)",
                      "one replica unbatched vs vmapped", ("unbatched", "vmapped"),
                      lambda: mock.patch.object(steps, "map_replicas",
                                                lambda fn, *trees: jax.vmap(fn)(*trees))),
}


def interleaved_seconds(runners: dict, windows: int) -> dict:
  """{name: median seconds of runners[name]()} with the runners' windows alternating."""
  times = {name: [] for name in runners}
  for _ in range(windows):
    for name, run in runners.items():
      start = time.perf_counter()
      jax.block_until_ready(run())
      times[name].append(time.perf_counter() - start)
  return {name: statistics.median(t) for name, t in times.items()}


def train_key(arch: str, attention: str, half: bool, batch: int, replicas: int = 1) -> str:
  seeds = f" x{replicas} seeds" if replicas > 1 else ""
  return f"{arch} {attention} {'bf16' if half else 'fp32'} b{batch}{seeds}"


def train_runners(arch, attention, half, batch, num_steps, replicas=1, image_size=32):
  """Warmed-up `(run_train, run_eval, n_test, compile_seconds)` of the real train/eval functions.

  Random uint8 data of `image_size` x `image_size`, augmented as the trainer
  augments that size (`augmentation_settings.choose_augmentation`: the reference's
  pad-crop up to 32, RandomResizedCrop above). `run_train()` does `num_steps`
  steps of global batch `batch`
  (gather, augmentation, forward, backward, SGD) of each of `replicas` models
  (`num_seeds`, vmapped) in one dispatch (a `lax.scan` on GPU/TPU);
  `run_eval()` evaluates the padded test set of min(num_steps * batch, 10,000)
  images with each replica. Both return device arrays.
  """
  start = time.perf_counter()
  config = default.get_config()
  config.model.arch, config.model.attention = arch, attention
  config.half_precision = half
  config.num_seeds = replicas
  topology = parallel.Topology.current()
  per_device = topology.per_device_batch(batch)
  rng = np.random.default_rng(0)
  n = max(batch * num_steps, 2 * batch)
  shape = (image_size, image_size, 3)
  images = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
  labels = rng.integers(0, 10, (n,), dtype=np.int32)
  lr_fn = optim.create_learning_rate_fn(config, 1000)
  model = states.create_model(config, 10)
  state = parallel.replicate_state(
      states.create_train_states(config, model, shape, lr_fn), topology)
  train_images, train_labels = parallel.replicate_state((images, labels), topology)
  indices = np.stack([  # (devices, replicas, steps, per_device)
      rng.permutation(n)[:num_steps * batch].reshape(
          num_steps, topology.local_device_count, per_device).transpose(1, 0, 2)
      for _ in range(replicas)], axis=1).astype(np.int32)
  preprocessing = transforms.Preprocessing(
      shape[:2], normalization.CIFAR,
      augmentation_settings.choose_augmentation("auto", True, shape[:2]))
  gather = steps.make_gather_fn(preprocessing, topology)  # the memory feed's batches
  batches = gather(state.rng, state.step, train_images, train_labels, indices)
  p_train = steps.make_train_fn(config, preprocessing, lr_fn, topology).lower(
      state, *batches).compile(
          compiler_options=steps.compiler_options())  # as epochs.py compiles it
  holder = {"state": state}

  def run_train():
    state = holder["state"]
    holder["state"], metrics = p_train(
        state, *gather(state.rng, state.step, train_images, train_labels, indices))
    return metrics

  test = Split(images[:min(n, 10_000)], labels[:min(n, 10_000)])
  data = parallel.shard_eval_data(test, topology, batch)
  evaluate = steps.make_eval_fn(config, 10, normalization.CIFAR, topology)
  run_eval = lambda: evaluate(holder["state"], data)
  jax.block_until_ready(run_train())  # compile + warm-up
  jax.block_until_ready(run_eval())
  return run_train, run_eval, len(test), time.perf_counter() - start


def bench_train(results: Results, arch, attention, half, batch, steps, windows,
                replicas=1) -> None:
  """Train and eval images/s (medians over `windows` windows, summed over `replicas`)
  into results.raw['train']."""
  run_train, run_eval, n_test, setup = train_runners(arch, attention, half, batch, steps,
                                                     replicas)
  key = train_key(arch, attention, half, batch, replicas)
  results.raw["train"][key] = {
      "train": median_rate(run_train, steps * batch * replicas, windows),
      "eval": median_rate(run_eval, n_test * replicas, windows),
      "setup_seconds": setup}
  print(f"  {key}: {results.raw['train'][key]['train']:,.0f} train img/s, "
        f"{results.raw['train'][key]['eval']:,.0f} eval img/s (setup {setup:.1f} s)", flush=True)


def bench_code_lever(results: Results, key: str, batch, steps, windows) -> None:
  """ResNet18-WA fp32 train images/s with the code lever `key` (CODE_LEVERS) and
  without it (its ablation), windows interleaved, into results.raw[key]."""
  _, _, (lever, ablation), ablated = CODE_LEVERS[key]
  runners = {lever: train_runners("resnet18", "wa", False, batch, steps)[0]}
  with ablated():  # traced (in the warm-up call) with the ablation
    runners[ablation] = train_runners("resnet18", "wa", False, batch, steps)[0]
  seconds = interleaved_seconds(runners, windows)
  results.raw[key] = {"batch": batch, **{
      name: steps * batch / s for name, s in seconds.items()}}


def measured_bandwidth(quick: bool) -> float:
  """Bytes/s of a large elementwise copy-like pass (read + write)."""
  size = (16 if quick else 1024) * 2**20 // 4
  x = jnp.arange(size, dtype=jnp.float32)
  f = jax.jit(lambda v: v * 1.0001)
  jax.block_until_ready(f(x))
  return median_rate(lambda: f(x), 2 * size * 4, 9)


def bench_dwt(results: Results, shape, windows: int, min_bytes: int) -> None:
  """Seconds per haar DWT of one NHWC shape for each implementation, and the bytes moved.

  `dwt2` takes the fused two-tap path for haar; `dwt2_conv` is the general
  strided depthwise conv; `matrix` is the reference's matrix-multiply DWT.
  The floor is reading x once and writing the four quarter-size bands once.
  Kernel time: one call on `repeat` stacked copies of the shape (batch
  repeat * N, at least `min_bytes` of input), divided by `repeat`, so that
  launch and dispatch overheads are amortised. Call time: one call at the
  shape itself, dispatch included (what a small standalone call costs).
  """
  from benchmarks import matrix_dwt  # pylint: disable=g-import-not-at-top
  x = jax.random.normal(jax.random.PRNGKey(0), shape, jnp.float32)
  repeat = max(1, -(-min_bytes // (x.size * 4)))
  stacked = jax.random.normal(jax.random.PRNGKey(1), (shape[0] * repeat,) + shape[1:],
                              jnp.float32)
  row = {"bytes": 2 * x.size * 4, "repeat": repeat}
  for name, dwt in (("dwt2", wavelets.dwt2), ("conv", wavelets.dwt2_conv),
                    ("matrix", matrix_dwt.matrix_dwt2)):
    f = jax.jit(lambda v, dwt=dwt: dwt(v, "haar"))
    jax.block_until_ready(f(stacked))
    row[name] = 1 / median_rate(lambda f=f: f(stacked), repeat, windows)
    jax.block_until_ready(f(x))
    row[f"{name}_call"] = 1 / median_rate(lambda f=f: f(x), 1, windows)
  results.raw["dwt"]["x".join(map(str, shape))] = row


def bench_torch(results: Results, peer, batch, steps, windows) -> None:
  """Train images/s of a PyTorch peer (median over `windows` windows) into results.raw['peers']."""
  import torch  # pylint: disable=g-import-not-at-top
  from benchmarks import torch_peers  # pylint: disable=g-import-not-at-top
  device = "cuda" if torch.cuda.is_available() else "cpu"
  start = time.perf_counter()
  rate = torch_peers.time_training(
      peer, batch, device=device, steps=steps, warmup=max(2, steps // 5), repeats=windows,
      dataset_size=max(batch * steps, 2 * batch))
  results.raw["peers"][peer] = {"rate": rate, "batch": batch, "device": device,
                                "seconds": time.perf_counter() - start}


# XLA flag variants of the resnet18-WA train step, each in a fresh process
# (XLA reads its flags once). Command buffers are CUDA graphs of the step's
# kernels: with WHILE they may capture the whole scanned epoch.
XLA_FLAG_LEVERS = (
    ("default", ""),
    ("no command buffers", "--xla_gpu_enable_command_buffer="),
    ("command buffers incl. loops",
     "--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL"),
)


def bench_xla_flags(results: Results, name: str, flags: str, batch: int, steps: int,
                    windows: int, timeout: float) -> None:
  """resnet18-WA fp32 train/eval images/s in a subprocess with XLA_FLAGS += `flags`.

  The subprocess is killed after `timeout` seconds (the budget left).
  """
  env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " " + flags).strip())
  output = subprocess.run(
      [sys.executable, os.path.abspath(__file__), "--train-row",
       f"resnet18,wa,fp32,{batch},{steps},{windows}"],
      env=env, capture_output=True, text=True, timeout=max(timeout, 1), check=True).stdout
  row = json.loads(output.strip().splitlines()[-1])
  results.raw.setdefault("xla_flags", {})[name] = {"flags": flags, **row}


# ---------------------------------------------------------------------------
# Profile of the train step.
# ---------------------------------------------------------------------------

OP_CLASSES = (  # (class, substrings of kernel / XLA op names), first match wins
    ("memcpy/memset", ("memcpy", "memset", "copy-start", "copy-done")),
    ("layout transposes", ("transpose",)),
    ("convolution", ("conv", "cudnn", "xmma", "implicit_gemm", "sm90_", "sm80_", "cutlass",
                     "wgrad", "dgrad", "fprop", "ynn_fusion")),
    ("matmul", ("gemm", "dot", "matmul")),
    ("reduction", ("reduce", "reduction")),
    ("fused elementwise", ("fusion", "loop_", "input_", "elementwise")),
    ("collectives", ("all-reduce", "allreduce", "nccl")),
)


# Runtime bookkeeping events of XLA:CPU's threads (not ops).
CPU_TRACE_BOOKKEEPING = ("ThreadpoolListener", "end: ", "ThunkExecutor")


def op_class(name: str) -> str:
  lower = name.lower()
  for label, keys in OP_CLASSES:
    if any(k in lower for k in keys):
      return label
  return "other"


def _union_length(intervals) -> float:
  total, end = 0.0, -float("inf")
  for s, e in sorted(intervals):
    if e > end:
      total += e - max(s, end)
      end = e
  return total


def summarize_trace(trace_path: str, wall_seconds: float, steps: int) -> dict:
  """Time per op class, busy time and gaps per device lane of a perfetto trace.

  Lanes: the threads of device processes (`/device:*`), e.g. a GPU's CUDA
  streams and its "XLA Ops" line; on a CPU-only trace, the XLA worker
  threads of `/host:CPU`. Times in microseconds per train step.
  """
  with gzip.open(trace_path) as f:
    events = json.load(f)["traceEvents"]
  processes, threads = {}, {}
  for e in events:
    if e.get("ph") == "M" and e.get("name") == "process_name":
      processes[e["pid"]] = e["args"]["name"]
    elif e.get("ph") == "M" and e.get("name") == "thread_name":
      threads[(e["pid"], e["tid"])] = e["args"]["name"]
  device_pids = {p for p, n in processes.items() if n.startswith("/device:")}
  lanes = {}
  for e in events:
    if e.get("ph") != "X" or "dur" not in e:
      continue
    pid, tid = e["pid"], e.get("tid")
    thread = threads.get((pid, tid), str(tid))
    if device_pids:
      if pid not in device_pids:
        continue
    elif "XLA" not in thread or e["name"].startswith(CPU_TRACE_BOOKKEEPING):
      continue
    lanes.setdefault(f"{processes.get(pid, pid)} / {thread}", []).append(
        (e["name"], float(e["ts"]), float(e["dur"])))
  summary = {"trace_wall_us_per_step": wall_seconds * 1e6 / steps, "lanes": {}}
  for lane, items in sorted(lanes.items(), key=lambda kv: -sum(d for _, _, d in kv[1])):
    starts = [t for _, t, _ in items]
    span = max(t + d for _, t, d in items) - min(starts)
    busy = _union_length([(t, t + d) for _, t, d in items])
    classes, names = {}, {}
    for name, _, d in items:
      classes[op_class(name)] = classes.get(op_class(name), 0.0) + d
      names[name] = names.get(name, 0.0) + d
    top = sorted(names.items(), key=lambda kv: -kv[1])[:15]
    summary["lanes"][lane] = {
        "events": len(items),
        "busy_us_per_step": busy / steps,
        "span_us_per_step": span / steps,
        "idle_fraction_of_span": 1 - busy / span if span else 0.0,
        "us_per_step_by_class": {k: v / steps for k, v in
                                 sorted(classes.items(), key=lambda kv: -kv[1])},
        "top_ops_us_per_step": {k[:120]: v / steps for k, v in top},
    }
    if len(summary["lanes"]) >= 6:
      break
  return summary


def profile_train_step(results: Results, half: bool, batch: int, steps: int,
                       results_dir: str | None, arch: str = "resnet18",
                       attention: str = "wa") -> dict:
  """Traces 3 dispatches of the `arch`-`attention` train step and summarises the trace
  into results.raw['profile'] (and returns the summary)."""
  run_train, _, _, _ = train_runners(arch, attention, half, batch, steps)
  trace_dir = os.path.join(results_dir or "/tmp", "profile_trace")
  shutil.rmtree(trace_dir, ignore_errors=True)
  dispatches = 3
  options = jax.profiler.ProfileOptions()
  options.python_tracer_level = 0  # Python function events would crowd out the device's
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True, profiler_options=options):
    start = time.perf_counter()
    for _ in range(dispatches):
      jax.block_until_ready(run_train())
    wall = time.perf_counter() - start
  traces = glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True)
  summary = summarize_trace(traces[0], wall, dispatches * steps)
  precision = "bf16" if half else "fp32"
  summary.update(batch=batch, steps=dispatches * steps, precision=precision,
                 images_per_sec_while_tracing=dispatches * steps * batch / wall)
  results.raw.setdefault("profile", {})[f"{arch} {attention} {precision} b{batch}"] = summary
  if results_dir and os.path.getsize(traces[0]) < 15 * 2**20:  # keep the trace if it is small
    shutil.copy(traces[0], os.path.join(
        results_dir, f"trace-{arch}-{attention}-{precision}.json.gz"))
  shutil.rmtree(trace_dir, ignore_errors=True)
  return summary


# ---------------------------------------------------------------------------
# The full training run.
# ---------------------------------------------------------------------------


def full_run(results: Results, data: str, seconds: float | None, quick: bool, workdir: str,
             results_dir: str | None) -> None:
  """`run_train.py` with the reference recipe on `data` for at most `seconds` (None: to the end).

  Runs through `reproduce.train_one` in `workdir`, so a later invocation
  resumes from its latest checkpoint; the process is stopped (SIGTERM, then
  SIGKILL) at the deadline. The workdir's train.log (every invocation's
  output) is copied to `results_dir`/full_run.log. `quick` trains
  configs/cifar.py:smoke's tiny run instead (a CPU dry run).
  """
  config = "cifar.py:smoke" if quick else "cifar.py:dataset=cifar10,arch=resnet18"
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  epochs_before = 0
  if os.path.exists(metrics_path):
    with open(metrics_path) as f:
      epochs_before = sum(1 for line in f if line.strip())
  command = [sys.executable, os.path.join(REPO_ROOT, "run_train.py"),
             "--config", os.path.join(REPO_ROOT, "configs", config),
             "--workdir", workdir, f"--config.data.image_folder={data}"]
  device = jax.devices()[0]
  start = time.perf_counter()
  # This process holds the GPU too: the run preallocates a fixed share of it.
  outcome = reproduce.train_one(
      command, workdir, seconds, f"{device.device_kind} x{jax.local_device_count()}",
      env={"XLA_PYTHON_CLIENT_PREALLOCATE": "true", "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.45"})
  wall = time.perf_counter() - start
  log_path = os.path.join(workdir, "train.log")
  if results_dir:
    shutil.copy(log_path, os.path.join(results_dir, "full_run.log"))
  records = []
  if os.path.exists(metrics_path):
    with open(metrics_path) as f:
      records = [json.loads(line) for line in f if line.strip()]
  this_call = records[epochs_before:]
  result = {"config": f"configs/{config}", "data": data, "outcome": outcome,
            "wall_seconds_this_call": wall,
            "epochs_done": len(records), "epochs_this_call": len(this_call),
            "num_epochs": None if quick else REFERENCE_EPOCHS}
  if outcome == "failed":
    with open(log_path) as f:
      result["log_tail"] = f.read()[-3000:]
  if records:
    # Over every epoch in the workdir, also those of earlier invocations.
    steady = [r["epoch_seconds"] - r["compile_seconds"] for r in records]
    epochs_total = result["num_epochs"] or len(records)
    # Process start, data loading and initialisation: the wall time of this call
    # not spent in its epochs (unknown when the call was stopped mid-epoch).
    startup = None if outcome == "stopped" else wall - sum(r["epoch_seconds"] for r in this_call)
    result.update(
        median_epoch_seconds=statistics.median(steady),
        epoch_seconds_all_epochs=sum(steady),
        median_train_images_per_sec=statistics.median(r["images_per_sec"] for r in records),
        compile_seconds_first_epoch=records[0]["compile_seconds"],
        startup_seconds=startup,
        test_accuracy=records[-1]["test_accuracy"],
        best_test_accuracy=max(r["test_accuracy"] for r in records),
        projected_wall_seconds=(startup or 0.0) + records[0]["compile_seconds"]
        + epochs_total * statistics.median(steady))
  results.raw["full_run"] = result


# ---------------------------------------------------------------------------
# The table.
# ---------------------------------------------------------------------------


def _ratio(a, b) -> str:
  return f"{a / b:.2f}x" if a and b else "n/a"


def merge_results(parts: list[dict]) -> dict:
  """One results dict from several invocations (e.g. a suite run in several pieces).

  Later parts override earlier ones row by row; a skip note is dropped once
  any part measured that phase.
  """
  merged = json.loads(json.dumps(parts[0]))
  for part in parts[1:]:
    for key in ("train", "dwt", "peers", "profile", "xla_flags"):
      merged.setdefault(key, {}).update(part.get(key, {}))
    for key in ("full_run", *CODE_LEVERS):
      if key in part:
        merged[key] = part[key]
    if part.get("dwt"):  # the floor of a DWT row uses the bandwidth measured beside it
      merged["bandwidth_bytes_per_s"] = part["bandwidth_bytes_per_s"]
    merged["skipped"] += part["skipped"]
    merged["errors"] += part["errors"]
  measured = {f"train {k}" for k in merged["train"]}
  measured |= {"full run"} if "full_run" in merged else set()
  measured |= {phase for key, (phase, *_) in CODE_LEVERS.items() if key in merged}
  skipped = {s["phase"]: s for s in merged["skipped"] if s["phase"] not in measured}
  merged["skipped"] = list(skipped.values())
  merged["settings"]["invocations"] = len(parts)
  merged["info"]["date"] = ", ".join(dict.fromkeys(p["info"]["date"] for p in parts))
  return merged


def render_rows(raw: dict) -> list[tuple[str, str, str, str]]:
  """The benchmark table's rows, from a results dict (see `Results`)."""
  rows = []
  for key, r in raw["train"].items():
    rows.append(("train", key, f"{r['train']:,.0f} img/s", f"eval {r['eval']:,.0f} img/s"))
  for key, r in raw["train"].items():  # bf16 against fp32 of the same configuration
    if " bf16 " in key and key.replace(" bf16 ", " fp32 ") in raw["train"]:
      fp32 = raw["train"][key.replace(" bf16 ", " fp32 ")]["train"]
      rows.append(("bf16 vs fp32", key.replace(" bf16", ""), _ratio(r["train"], fp32),
                   "train step, same batch"))
  for key, (_, label, (lever, ablation), _) in CODE_LEVERS.items():
    if key in raw:
      r = raw[key]
      rows.append(("train", f"resnet18 wa fp32 b{r['batch']}: {label}",
                   f"{r[lever]:,.0f} vs {r[ablation]:,.0f} img/s",
                   f"{_ratio(r[lever], r[ablation])} (windows interleaved)"))
  bandwidth = raw.get("bandwidth_bytes_per_s")
  for shape, s in raw["dwt"].items():
    floor = s["bytes"] / bandwidth
    if "repeat" in s:  # kernel time, launch overheads amortised
      rows.append(("dwt haar", shape,
                   f"dwt2 {s['dwt2'] * 1e6:,.1f} us ({s['dwt2'] / floor:.1f}x floor)",
                   f"conv path {s['conv'] * 1e6:,.1f} us ({s['conv'] / floor:.1f}x); "
                   f"matrix {s['matrix'] * 1e6:,.1f} us; floor {floor * 1e6:,.1f} us "
                   f"at {bandwidth / 1e9:,.0f} GB/s; one call at this shape, dispatch "
                   f"included: dwt2 {s['dwt2_call'] * 1e6:,.1f} us"))
    else:  # older results: one call per measurement, dispatch included
      rows.append(("dwt haar", f"{shape} (per call, dispatch included)",
                   f"dwt2 {s['dwt2'] * 1e6:,.1f} us ({s['dwt2'] / floor:.1f}x floor)",
                   f"conv path {s['conv'] * 1e6:,.1f} us; matrix {s['matrix'] * 1e6:,.1f} us; "
                   f"floor {floor * 1e6:,.1f} us at {bandwidth / 1e9:,.0f} GB/s"))
  for peer, p in raw["peers"].items():
    ours = [f"{k.split(' ', 1)[1]} {_ratio(raw['train'][k]['train'], p['rate'])}"
            for k in raw["train"]
            if k.startswith("resnet18 ") and k.endswith(f" b{p['batch']}")]
    rows.append(("peer", f"torch {peer} WA-ResNet18 b{p['batch']} ({p['device']})",
                 f"{p['rate']:,.0f} img/s",
                 "wacnn_jax resnet18 " + ", ".join(ours) if ours else ""))
  for name, prof in raw.get("profile", {}).items():
    lane, lane_summary = max(prof["lanes"].items(), key=lambda kv: kv[1]["events"],
                             default=(None, None))
    if lane_summary:
      classes = ", ".join(f"{k} {v:,.0f}" for k, v in
                          list(lane_summary["us_per_step_by_class"].items())[:4])
      untraced = raw["train"].get(name, {}).get("train")
      step = (f"a {prof['batch'] / untraced * 1e6:,.0f} us step (untraced)" if untraced else
              f"{prof['trace_wall_us_per_step']:,.0f} us/step while tracing")
      rows.append(("profile", f"{name}: {lane.split('(')[0].strip()}",
                   f"kernels busy {lane_summary['busy_us_per_step']:,.0f} us of {step}",
                   f"{lane_summary['events'] / prof['steps']:.0f} kernels/step; us/step: {classes}"
                   if "steps" in prof else f"us/step: {classes}"))
  base = raw.get("xla_flags", {}).get("default", {}).get("train")
  for name, r in raw.get("xla_flags", {}).items():
    rows.append(("xla flags", f"resnet18 wa fp32: {name}", f"{r['train']:,.0f} img/s",
                 f"{_ratio(r['train'], base)} of default; XLA_FLAGS={r['flags'] or '(none)'}"))
  full = raw.get("full_run")
  if full and "epoch_seconds_all_epochs" in full:
    startup = full["startup_seconds"]
    rows.append(("full run", f"resnet18 wa, reference recipe, {full['data'].split('/')[-1]}",
                 f"{full['epochs_done']} epochs: {full['epoch_seconds_all_epochs'] / 60:.2f} min",
                 f"train + evaluation, compile apart; median {full['median_epoch_seconds']:.2f} "
                 f"s/epoch; compile {full['compile_seconds_first_epoch']:.0f} s"
                 f"{f', start-up and data loading {startup:.0f} s' if startup else ''}; "
                 f"projected uninterrupted {full['num_epochs'] or full['epochs_done']} epochs "
                 f"{full['projected_wall_seconds'] / 60:.1f} min end to end; test acc "
                 f"{full['test_accuracy']:.4f} (best {full['best_test_accuracy']:.4f})"))
  elif full and "median_epoch_seconds" in full:  # older results: this invocation's epochs only
    rows.append(("full run", f"resnet18 wa, reference recipe, {full['data'].split('/')[-1]}",
                 f"{full['epochs_done']} epochs, {full['median_epoch_seconds']:.2f} s/epoch",
                 f"projected {full['num_epochs'] or full['epochs_done']} epochs: "
                 f"{full['projected_wall_seconds'] / 60:.1f} min; test acc "
                 f"{full['test_accuracy']:.4f} (best {full['best_test_accuracy']:.4f})"))
  elif full:
    rows.append(("full run", "resnet18 wa, reference recipe", "no epoch finished",
                 f"run {full['outcome']}"))
  for s in raw["skipped"]:
    rows.append(("skipped", s["phase"], "-", s["note"]))
  for e in raw["errors"]:
    rows.append(("error", e["phase"], "-", e["error"].splitlines()[0][:200]))
  return rows


def render_block(raw: dict) -> str:
  info, settings = raw["info"], raw["settings"]
  table = ["| what | configuration | result | note |", "|---|---|---|---|"]
  table += [f"| {' | '.join(r)} |" for r in render_rows(raw)]
  header = (f"Measured {info['date']} on {info['device']} ({info['host']}); JAX {info['jax']}, "
            f"PyTorch {info['torch']}; {'--quick (CPU smoke sizes)' if settings['quick'] else 'full sizes'}; "
            f"medians of {settings['windows']} windows of {settings['steps']} steps"
            f"{'; budget ' + str(round(settings['budget'])) + ' s' if settings.get('budget') else ''}"
            f"{'; ' + str(settings['invocations']) + ' invocations merged' if settings.get('invocations', 1) > 1 else ''}.")
  return header + "\n\n" + "\n".join(table)


def write_docs(path: str, block: str, section: str = "results") -> None:
  """Replaces the text between the `section` markers of `path` with `block`."""
  begin, end = f"<!-- {section}:begin -->", f"<!-- {section}:end -->"
  text = open(path).read() if os.path.exists(path) else f"# Benchmarks\n\n{begin}\n{end}\n"
  if begin not in text:
    text += f"\n{begin}\n{end}\n"
  head, rest = text.split(begin, 1)
  text = head + begin + "\n" + block + "\n" + end + rest.split(end, 1)[1]
  with open(path, "w") as f:
    f.write(text)


VECTOR_EXTENSIONS = ("avx512f", "avx512_bf16", "avx512_vnni", "avx2", "fma", "neon", "sve")


def cpu_description() -> str:
  """The CPU's model name and vector extensions, e.g. "AMD EPYC (avx512f, avx2, fma), 2
  cores", from /proc/cpuinfo (the platform's name where there is none)."""
  model, flags = platform.processor() or platform.machine(), set()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        key, _, value = line.partition(":")
        if key.strip() == "model name":
          model = value.strip()
        elif key.strip() in ("flags", "Features"):
          flags = set(value.split())
  except OSError:
    pass
  extensions = [flag for flag in VECTOR_EXTENSIONS if flag in flags]
  return (f"{model} ({', '.join(extensions) or 'no AVX2'}), {os.cpu_count()} cores")


def machine_info() -> dict:
  device = jax.devices()[0]
  try:
    import torch  # pylint: disable=g-import-not-at-top
    torch_version = torch.__version__
  except ImportError:
    torch_version = "not installed"
  import flax  # pylint: disable=g-import-not-at-top
  return {
      "date": datetime.date.today().isoformat(),
      "host": f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}",
      "cpu": cpu_description(),
      "device": f"{device.platform}: {device.device_kind} x{jax.local_device_count()}",
      "jax": jax.__version__, "flax": flax.__version__, "torch": torch_version,
  }


# ---------------------------------------------------------------------------
# The suite.
# ---------------------------------------------------------------------------


def run_suite(args) -> dict:
  clock = Clock(args.budget)
  q = args.quick
  steps, windows = (2, 2) if q else (50, 5)
  batch = args.batch or (32 if q else 128)
  info = machine_info()
  print(f"{info}\ndevices: {jax.devices()}", flush=True)
  results_dir = args.results
  os.makedirs(results_dir, exist_ok=True)
  tag = re.sub(r"[^A-Za-z0-9_.-]", "_", info["device"])
  path = os.path.join(results_dir, f"{tag}-{info['date']}{'-quick' if q else ''}.json")
  results = Results(path, info, {"quick": q, "steps": steps, "windows": windows,
                                 "budget": args.budget})
  raw = results.raw
  phases = set(args.phases.split(","))
  unknown = phases - set(PHASES)
  if unknown:
    raise SystemExit(f"unknown --phases {sorted(unknown)}; choose from {','.join(PHASES)}")
  # Seconds per train configuration (compile included), per architecture: the
  # longest measured so far, else a default (mobilenetv2 compiles for over a
  # minute on a GPU, so resnet18's time is no guide to it).
  default_estimate = 15.0 if q else 45.0
  estimate = {}

  def train_estimate(arch="resnet18"):
    return estimate.get(arch, default_estimate if arch != "mobilenetv2" else 2 * default_estimate)

  def train_phase(arch, attention, half, b, replicas=1):
    start = time.perf_counter()
    ok = results.phase(clock, f"train {train_key(arch, attention, half, b, replicas)}",
                       train_estimate(arch) * replicas,
                       lambda: bench_train(results, arch, attention, half, b, steps, windows,
                                           replicas))
    if ok and replicas == 1:
      estimate[arch] = max(estimate.get(arch, 0.0), time.perf_counter() - start)

  def code_lever_phase(key):
    results.phase(clock, CODE_LEVERS[key][0], 2 * train_estimate(),
                  lambda: bench_code_lever(results, key, batch, steps, windows))

  def bandwidth():
    raw["bandwidth_bytes_per_s"] = measured_bandwidth(q)
  if phases & {"dwt", "rest"}:
    results.phase(clock, "bandwidth", 5, bandwidth)

  # 1. The core train rows.
  for half in ((False,) if q else (False, True)):
    for attention in ("none", "wa"):
      if "train" in phases:
        train_phase("resnet18", attention, half, batch)
  # num_seeds: 2 (4, 8) replicas in one program, images/s summed over them.
  for replicas in ((2,) if q else (2, 4, 8)):
    if "seeds" in phases:
      train_phase("resnet18", "wa", False, batch, replicas)

  # 2. The full run (early: the slowest number to get, and the headline one).
  if args.full_run and "full_run" in phases:
    seconds = args.full_run_seconds
    if args.budget is not None:
      seconds = min(seconds or float("inf"), clock.left() - 10)
    minimum = 30 if q else 60
    results.phase(clock, "full run", minimum + 10,
                  lambda: full_run(results, args.full_run, seconds, q, args.full_run_workdir,
                                   results_dir))

  # 3. The PyTorch peers, same batch.
  try:
    import torch  # pylint: disable=g-import-not-at-top,unused-import
    have_torch = True
  except ImportError:
    have_torch = False
    raw["skipped"].append({"phase": "peers", "note": "torch not installed"})
  if have_torch and "peers" in phases:
    for peer, estimate_s in (("faithful", 20 if q else 40), ("tuned", 20 if q else 120)):
      results.phase(clock, f"peer {peer}", estimate_s,
                    lambda peer=peer: bench_torch(results, peer, batch, steps, windows))

  # 4. The DWT alone.
  n = 8 if q else 128
  shapes = ((n, 32, 32, 16), (n, 16, 16, 128)) if q else (
      (n, 32, 32, 16), (n, 32, 32, 64), (n, 16, 16, 128), (n, 8, 8, 256))
  for shape in shapes if "dwt" in phases else ():
    results.phase(clock, f"dwt {'x'.join(map(str, shape))}", 10,
                  lambda shape=shape: bench_dwt(results, shape, windows=5,
                                                min_bytes=2**20 if q else 2**28))

  # 5. Profile.
  if args.profile and "profile" in phases:
    for half in ((False,) if q else (False, True)):
      results.phase(clock, f"profile resnet18 wa {'bf16' if half else 'fp32'}",
                    train_estimate() + 10,
                    lambda half=half: profile_train_step(results, half, batch,
                                                         min(steps, 20), results_dir))

  # 6. The XLA flag levers (before the rest: they bear on the step's largest gap).
  if "levers" in phases:
    for name, flags in XLA_FLAG_LEVERS:
      results.phase(clock, f"xla flags: {name}", train_estimate() + 10,
                    lambda name=name, flags=flags: bench_xla_flags(
                        results, name, flags, batch, steps, windows, clock.left()))
    code_lever_phase("replica_lever")
  # 7. The rest of the table while time remains.
  if not q and "rest" in phases:
    # mobilenetv2 (its compile alone takes over a minute on a GPU) comes last.
    rest = [("resnet18", "none", False, 512), ("resnet18", "wa", False, 512),
            ("vgg16_bn", "none", False, 128), ("vgg16_bn", "wa", False, 128),
            ("vgg16_bn", "none", True, 128), ("vgg16_bn", "wa", True, 128),
            ("resnet18", "none", True, 512), ("resnet18", "wa", True, 512),
            ("mobilenetv2", "none", False, 128), ("mobilenetv2", "wa", False, 128),
            ("mobilenetv2", "none", True, 128), ("mobilenetv2", "wa", True, 128)]
    for arch, attention, half, b in rest:
      train_phase(arch, attention, half, b)
  if "rest" in phases:
    code_lever_phase("dwt_lever")
  raw["total_seconds"] = clock.elapsed()
  results.save()
  return raw


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="tiny sizes for a CPU dry run")
  parser.add_argument("--budget", type=float, default=None,
                      help="wall-clock seconds for the whole run; phases that do not fit are skipped")
  parser.add_argument("--full-run", metavar="DATA",
                      help="also train resnet18-wa with the reference recipe on DATA")
  parser.add_argument("--full-run-seconds", type=float, default=None,
                      help="at most this long for the full run (default: to the end, or what "
                           "the budget leaves)")
  parser.add_argument("--full-run-workdir", default=FULL_RUN_WORKDIR,
                      help="workdir of the full run; a later invocation continues it")
  parser.add_argument("--profile", action="store_true", help="trace and summarise the train step")
  parser.add_argument("--results", default=os.path.join(REPO_ROOT, "docs", "benchmarks"),
                      help="folder for the raw JSON (and with --full-run/--profile, logs and traces)")
  parser.add_argument("--docs", default=os.path.join(REPO_ROOT, "docs", "benchmarks.md"),
                      help="markdown file whose results block is rewritten ('' for none)")
  parser.add_argument("--phases", default=",".join(PHASES),
                      help=f"comma-separated subset of {','.join(PHASES)}")
  parser.add_argument("--section", default="results",
                      help="which <!-- SECTION:begin/end --> block of --docs to rewrite")
  parser.add_argument("--render", metavar="JSON", nargs="+",
                      help="only rebuild the --docs table from saved results JSON files "
                           "(several: merged, later ones win)")
  parser.add_argument("--batch", type=int, default=None,
                      help="batch size of the train rows and peers (default 128; --quick 32)")
  parser.add_argument("--train-row", help=argparse.SUPPRESS)  # ARCH,ATTENTION,fp32|bf16,B,S,W
  args = parser.parse_args()
  if args.train_row:  # one train row, printed as JSON (a child of bench_xla_flags)
    arch, attention, precision, b, steps, windows = args.train_row.split(",")
    results = Results(None, {}, {})
    bench_train(results, arch, attention, precision == "bf16", int(b), int(steps), int(windows))
    print(json.dumps(next(iter(results.raw["train"].values()))))
    return
  if args.render:
    parts = []
    for path in args.render:
      with open(path) as f:
        parts.append(json.load(f))
    raw = merge_results(parts)
  else:
    raw = run_suite(args)
  block = render_block(raw)
  print("\n" + block, flush=True)
  if args.docs:
    write_docs(args.docs, block, args.section)


if __name__ == "__main__":
  main()
