"""Throughput benchmark of wacnn_jax and its PyTorch peers, measured side by side.

    python benchmarks/throughput.py [--quick] [--full-run DATA] [--out docs/benchmarks.md]

Prints one table and writes it (with the machine, device, versions and date)
between the `results` markers of `docs/benchmarks.md`; the raw numbers go to
`docs/benchmarks/<device>-<date>.json`. Every figure is a median over timed
windows after warm-up, with `block_until_ready` (or `torch.cuda.synchronize`)
before the clock stops:

- training images/s of the real pmapped train step (gather, augmentation,
  forward, backward, SGD) for resnet18 / vgg16_bn / mobilenetv2, baseline and
  WA, float32 and bfloat16, batch 128 and 512;
- evaluation images/s;
- the DWT alone (haar): `wacnn_jax.wavelets.dwt2` (its two-tap fused path),
  the general strided-conv path `dwt2_conv`, and the reference's
  matrix-multiply DWT, with the bytes-moved floor from the measured bandwidth;
- the PyTorch peers (faithful reference-style and tuned WA-ResNet18) in the
  same process on the same device, as ratios to wacnn_jax;
- with `--full-run DATA`: wall time of `run_train.py` for resnet18-wa,
  160 epochs on DATA (an image folder or archive), compilation reported apart.

`--quick` shrinks everything so that it runs in a minute or two on a CPU (CI
runs it as a smoke test); its numbers are not GPU figures.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp
import numpy as np

from configs import default  # pylint: disable=wrong-import-position
from wacnn_jax import input_pipeline, train, wavelets  # pylint: disable=wrong-import-position

NOT_MEASURED = "not yet measured"


def median_rate(run, items: int, windows: int) -> float:
  """Median of items/s over `windows` calls of `run()` (already warmed up)."""
  rates = []
  for _ in range(windows):
    start = time.perf_counter()
    jax.block_until_ready(run())
    rates.append(items / (time.perf_counter() - start))
  return statistics.median(rates)


@contextlib.contextmanager
def dwt_through_conv():
  """Ablation: trace models with the general conv DWT even for haar (the pre-two-tap path)."""
  two_tap = wavelets.dwt2
  wavelets.dwt2 = wavelets.dwt2_conv
  try:
    yield
  finally:
    wavelets.dwt2 = two_tap


def train_runners(arch, attention, half, batch, steps):
  """Warmed-up `(run_train, run_eval)` closures of the real train/eval functions on random uint8 data.

  `run_train()` does `steps` steps of global batch `batch` (gather,
  augmentation, forward, backward, SGD); `run_eval()` evaluates the padded
  test set of min(steps * batch, 10,000) images. Both return device arrays.
  """
  config = default.get_config()
  config.model.arch, config.model.attention = arch, attention
  config.half_precision = half
  topology = train.Topology.current()
  per_device = topology.per_device_batch(batch)
  rng = np.random.default_rng(0)
  n = max(batch * steps, 2 * batch)
  images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, (n,), dtype=np.int32)
  lr_fn = train.create_learning_rate_fn(config, 1000)
  model = train.create_model(config, 10)
  state = train.replicate_state(
      train.create_train_state(config, model, (32, 32, 3), lr_fn, jax.random.PRNGKey(0)),
      topology)
  train_images, train_labels = train.replicate_state((images, labels), topology)
  p_train = train.make_train_fn(config, lr_fn, topology)
  indices = rng.permutation(n)[:steps * batch].reshape(
      steps, topology.local_device_count, per_device).transpose(1, 0, 2).astype(np.int32)
  holder = {"state": state}

  def run_train():
    holder["state"], metrics = p_train(holder["state"], train_images, train_labels,
                                       indices)
    return metrics

  test = input_pipeline.Split(images[:min(n, 10_000)], labels[:min(n, 10_000)])
  data = train.shard_eval_data(test, topology, batch)
  evaluate = train.make_eval_fn(config, 10, topology)
  run_eval = lambda: evaluate(holder["state"], data)
  jax.block_until_ready(run_train())  # compile + warm-up
  jax.block_until_ready(run_eval())
  return run_train, run_eval, len(test)


def bench_train(arch, attention, half, batch, steps, windows):
  """(train images/s, eval images/s): medians over `windows` timed windows."""
  run_train, run_eval, n_test = train_runners(arch, attention, half, batch, steps)
  return (median_rate(run_train, steps * batch, windows),
          median_rate(run_eval, n_test, windows))


def bench_dwt_lever(batch, steps, windows):
  """ResNet18-WA train images/s with the two-tap DWT and with the conv DWT, windows interleaved."""
  runners = {"two_tap": train_runners("resnet18", "wa", False, batch, steps)[0]}
  with dwt_through_conv():  # traced (in the warm-up call) with the conv DWT
    runners["conv"] = train_runners("resnet18", "wa", False, batch, steps)[0]
  rates = {name: [] for name in runners}
  for _ in range(windows):
    for name, run in runners.items():
      rates[name].append(median_rate(run, steps * batch, 1))
  return {name: statistics.median(r) for name, r in rates.items()}


def measured_bandwidth(quick: bool) -> float:
  """Bytes/s of a large elementwise copy-like pass (read + write)."""
  size = (16 if quick else 256) * 2**20 // 4
  x = jnp.arange(size, dtype=jnp.float32)
  f = jax.jit(lambda v: v * 1.0001)
  jax.block_until_ready(f(x))
  return median_rate(lambda: f(x), 2 * size * 4, 5)


def bench_dwt(shape, windows):
  """Seconds per haar DWT of one NHWC shape for each implementation, and the bytes moved.

  `dwt2` takes the fused two-tap path for haar; `dwt2_conv` is the general
  strided depthwise conv; `matrix` is the reference's matrix-multiply DWT.
  """
  from benchmarks import matrix_dwt  # pylint: disable=g-import-not-at-top
  x = jax.random.normal(jax.random.PRNGKey(0), shape, jnp.float32)
  seconds = {}
  for name, dwt in (("dwt2", wavelets.dwt2), ("conv", wavelets.dwt2_conv),
                    ("matrix", matrix_dwt.matrix_dwt2)):
    f = jax.jit(lambda v, dwt=dwt: dwt(v, "haar"))
    jax.block_until_ready(f(x))
    seconds[name] = 1 / median_rate(lambda f=f: f(x), 1, windows)
  return seconds, 2 * x.size * 4  # read x, write 4 quarter bands


def bench_torch(peer, batch, steps, windows):
  try:
    import torch  # pylint: disable=g-import-not-at-top
    from benchmarks import torch_peers  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  device = "cuda" if torch.cuda.is_available() else "cpu"
  rates = torch_peers.time_torch_training(
      peer, batch, device=device, steps=steps, warmup=max(2, steps // 5), windows=windows,
      dataset_size=max(batch * steps, 2 * batch))
  return statistics.median(rates)


def full_run(data: str) -> dict:
  """Wall time of the real CLI run: resnet18-wa, 160 epochs, per-epoch evaluation."""
  workdir = os.path.join(REPO_ROOT, "workdirs", "benchmark_full_run")
  start = time.perf_counter()
  subprocess.run([sys.executable, os.path.join(REPO_ROOT, "run_train.py"),
                  "--config", os.path.join(REPO_ROOT, "configs", "cifar10_resnet18.py"),
                  "--workdir", workdir, f"--config.data.image_folder={data}"],
                 check=True)
  wall = time.perf_counter() - start
  records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  return {"wall_seconds": wall, "compile_seconds": sum(r["compile_seconds"] for r in records),
          "best_test_accuracy": max(r["test_accuracy"] for r in records),
          "epochs": len(records)}


def machine_info() -> dict:
  device = jax.devices()[0]
  try:
    import torch  # pylint: disable=g-import-not-at-top
    torch_version = torch.__version__
  except ImportError:
    torch_version = "not installed"
  return {
      "date": datetime.date.today().isoformat(),
      "host": f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}",
      "device": f"{device.platform}: {device.device_kind} x{jax.local_device_count()}",
      "jax": jax.__version__, "torch": torch_version,
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="tiny sizes for a CPU smoke run")
  parser.add_argument("--full-run", metavar="DATA", help="also time run_train.py for 160 epochs")
  parser.add_argument("--out", default=os.path.join(REPO_ROOT, "docs", "benchmarks.md"))
  args = parser.parse_args()
  on_gpu = jax.devices()[0].platform == "gpu"
  info = machine_info()
  q = args.quick
  steps, windows = (2, 3) if q else (50, 5)
  archs = ("resnet18",) if q else ("resnet18", "vgg16_bn", "mobilenetv2")
  batches = (32,) if q else (128, 512)
  precisions = (False,) if q else (False, True)
  rows, raw = [], {"info": info, "quick": q}

  train_rates = {}
  for arch in archs:
    for attention in ("none", "wa"):
      for half in precisions:
        for batch in batches:
          rate, eval_rate = bench_train(arch, attention, half, batch, steps, windows)
          key = f"{arch} {attention} {'bf16' if half else 'fp32'} b{batch}"
          train_rates[key] = rate
          rows.append(("train", key, f"{rate:,.0f} img/s", f"eval {eval_rate:,.0f} img/s"))
          print(rows[-1], flush=True)
  # The two-tap DWT lever, side by side: the same WA step with the conv DWT.
  lever = bench_dwt_lever(batches[0], steps, windows)
  raw["dwt_lever"] = lever
  rows.append(("train", f"resnet18 wa fp32 b{batches[0]}: two-tap vs conv DWT",
               f"{lever['two_tap']:,.0f} vs {lever['conv']:,.0f} img/s",
               f"two-tap is {lever['two_tap'] / lever['conv']:.2f}x (windows interleaved)"))
  print(rows[-1], flush=True)
  raw["train"] = train_rates

  bandwidth = measured_bandwidth(q)
  n = 8 if q else 128
  shapes = ((n, 32, 32, 16), (n, 16, 16, 128)) if q else (
      (n, 32, 32, 16), (n, 32, 32, 64), (n, 16, 16, 128), (n, 8, 8, 256), (n, 4, 4, 512))
  for shape in shapes:
    seconds, nbytes = bench_dwt(shape, windows=5)
    floor = nbytes / bandwidth
    raw.setdefault("dwt_seconds", {})["x".join(map(str, shape))] = seconds
    rows.append(("dwt haar", "x".join(map(str, shape)),
                 f"dwt2 {seconds['dwt2'] * 1e6:,.1f} us ({seconds['dwt2'] / floor:.1f}x floor)",
                 f"conv path {seconds['conv'] * 1e6:,.1f} us ({seconds['conv'] / floor:.1f}x); "
                 f"matrix {seconds['matrix'] * 1e6:,.1f} us; floor {floor * 1e6:,.1f} us"))
    print(rows[-1], flush=True)
  raw["bandwidth_bytes_per_s"] = bandwidth

  peer_batch = 32 if q else 128
  jax_key = f"resnet18 wa fp32 b{peer_batch}"
  for peer in ("faithful", "tuned"):
    rate = bench_torch(peer, peer_batch, steps, windows)
    raw[f"torch_{peer}"] = rate
    if rate is None:
      rows.append(("peer", f"torch {peer} WA-ResNet18 b{peer_batch}", "torch not installed", ""))
    else:
      reference = train_rates[jax_key] if peer == "faithful" or q else train_rates[
          f"resnet18 wa bf16 b{peer_batch}"]
      rows.append(("peer", f"torch {peer} WA-ResNet18 b{peer_batch}", f"{rate:,.0f} img/s",
                   f"wacnn_jax is {reference / rate:.2f}x"))
    print(rows[-1], flush=True)

  if args.full_run:
    result = full_run(args.full_run)
    raw["full_run"] = result
    rows.append(("full run", "resnet18 wa, 160 epochs, CIFAR-10 (shared JPEGs)",
                 f"{result['wall_seconds'] / 60:.1f} min wall", f"compile {result['compile_seconds']:.0f} s, "
                 f"best acc {result['best_test_accuracy']:.4f}"))
  else:
    rows.append(("full run", "resnet18 wa, 160 epochs, CIFAR-10", NOT_MEASURED, "needs --full-run on a GPU"))
  if not on_gpu:
    rows.append(("GPU (H100)", "all rows above on a CUDA GPU", NOT_MEASURED, "no GPU was available"))

  table = ["| what | configuration | result | note |", "|---|---|---|---|"]
  table += [f"| {' | '.join(r)} |" for r in rows]
  header = (f"Measured {info['date']} on {info['device']} ({info['host']}); JAX {info['jax']}, "
            f"PyTorch {info['torch']}; {'--quick (CPU smoke sizes)' if q else 'full sizes'}; "
            f"medians of {windows} windows of {steps} steps.")
  block = header + "\n\n" + "\n".join(table)
  print("\n" + block)

  tag = re.sub(r"[^A-Za-z0-9_.-]", "_", info["device"])
  os.makedirs(os.path.join(os.path.dirname(args.out), "benchmarks"), exist_ok=True)
  with open(os.path.join(os.path.dirname(args.out), "benchmarks",
                         f"{tag}-{info['date']}{'-quick' if q else ''}.json"), "w") as f:
    json.dump(raw, f, indent=2)
  begin, end = "<!-- results:begin -->", "<!-- results:end -->"
  text = open(args.out).read() if os.path.exists(args.out) else f"# Benchmarks\n\n{begin}\n{end}\n"
  if begin not in text:
    text += f"\n{begin}\n{end}\n"
  head, rest = text.split(begin, 1)
  text = head + begin + "\n" + block + "\n" + end + rest.split(end, 1)[1]
  with open(args.out, "w") as f:
    f.write(text)


if __name__ == "__main__":
  main()
