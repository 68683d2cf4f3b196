"""Depthwise convolutions side by side: shifted multiply-adds, lax's grouped convolution, PyTorch.

`wacnn_jax.nn.depthwise.depthwise_conv2d` computes a depthwise convolution either as
shifted multiply-adds (`depthwise_conv2d_shifted`) or as lax's grouped
convolution; `depthwise.DEPTHWISE_IMPLEMENTATION` picks one per backend. This
script measures both, in one process with their windows interleaved, beside
PyTorch on the same device, and prints a markdown table:

1. op: one depthwise 3x3 convolution, forward + both gradients, at the
   shapes of MobileNetV2's blocks (batch `--batch`), against
   torch.nn.functional.conv2d(groups=C) (NCHW, as the reference runs);
2. dwt: `wavelets.dwt2` of db2 (the stride-2 depthwise convolution with 4
   band kernels per channel) forward + input gradient, at WA's inputs in
   resnet18 and mobilenetv2;
3. train: the real train step (throughput.train_runners: gather,
   augmentation, forward, backward, SGD) of mobilenetv2, mobilenetv2-WA and
   resnet18-WA with db2, with each implementation, and the faithful PyTorch
   peer of each (benchmarks/torch_peers.py: the reference's eager NCHW fp32
   code with its DataLoader; its WA through the reference's matrix DWT), on
   CUDA also a torch.compile'd channels_last fp32 peer of mobilenetv2;
4. levers: the train step of mobilenetv2 and resnet18-WA with every CPU lever
   of `layers.Conv` and with each one taken out (the output-gradient barrier),
   windows interleaved;
5. profile: where mobilenetv2's train step goes (a jax.profiler trace of it
   with this backend's implementation, time per op class and the top ops,
   throughput.summarize_trace).

    python benchmarks/depthwise.py --batch 32 --docs docs/benchmarks.md --section depthwise-cpu

Each row is the median over `--windows` windows; a ratio compares medians of
the same run. `--phases` picks op, dwt, train, levers (CPU only), profile;
`--out FILE` keeps the raw JSON and `--docs` the table, both rewritten after
every phase (a time limit keeps the phases done). On CUDA the mobilenetv2 row
adds a torch.compile'd channels_last fp32 PyTorch peer (torch_peers "tuned-fp32").
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from unittest import mock

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

from benchmarks import throughput  # pylint: disable=g-import-not-at-top
from wacnn_jax.nn import depthwise
from wacnn_jax.nn import layers
from wacnn_jax.nn import wavelets



IMPLEMENTATIONS = ("shifted", "grouped")
# (H = W, channels, stride) of MobileNetV2's depthwise convolutions on 32x32 inputs.
OP_SHAPES = ((32, 96, 1), (32, 144, 2), (16, 192, 1), (8, 384, 1), (8, 576, 2), (4, 960, 1))
# WA's inputs: resnet18's stage 2 (16 channels at 32x32), mobilenetv2's stage 3 (144 at 32x32).
DWT_SHAPES = ((32, 16), (32, 144))
# (row label, arch, attention spec, PyTorch peer model, wavelet)
TRAIN_MODELS = (("mobilenetv2", "mobilenetv2", "none", "mobilenetv2", "haar"),
                ("mobilenetv2-WA", "mobilenetv2", "wa", "mobilenetv2-wa", "haar"),
                ("resnet18-WA db2", "resnet18", "wa(wavelet='db2')", "resnet18-wa", "db2"))


@contextlib.contextmanager
def implementation(name: str):
  """A context in which this backend's depthwise convolutions trace as `name`, and the DWT
  as its depthwise convolution (`wavelets.dwt2_conv`, not the separable filter banks)."""
  backend = jax.default_backend()
  with mock.patch.dict(depthwise.DEPTHWISE_IMPLEMENTATION, {backend: name}), \
      mock.patch.dict(wavelets.DWT_IMPLEMENTATION, {backend: "conv"}):
    yield


def _jax_runner(fn, *args, repeats: int):
  """Warmed-up `run()` of jitted `fn(*args)`, `repeats` calls per window."""
  jitted = jax.jit(fn)
  jax.block_until_ready(jitted(*args))

  def run():
    for _ in range(repeats):
      out = jitted(*args)
    jax.block_until_ready(out)

  return run


def _torch_device() -> str:
  import torch  # pylint: disable=g-import-not-at-top
  return "cuda" if torch.cuda.is_available() and jax.default_backend() == "gpu" else "cpu"


def _torch_depthwise_runner(batch, hw, c, strides, repeats):
  """PyTorch's depthwise conv3x3 (NCHW), forward + both gradients."""
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  device = _torch_device()
  x = torch.randn(batch, c, hw, hw, device=device, requires_grad=True)
  w = torch.randn(c, 1, 3, 3, device=device, requires_grad=True)
  g = torch.randn(batch, c, (hw - 1) // strides + 1, (hw - 1) // strides + 1, device=device)

  def run():
    for _ in range(repeats):
      x.grad = w.grad = None
      F.conv2d(x, w, stride=strides, padding=1, groups=c).backward(g)
    if device == "cuda":
      torch.cuda.synchronize()

  run()
  return run


def bench_ops(batch: int, windows: int, repeats: int, with_torch: bool) -> list[dict]:
  rows = []
  for hw, c, strides in OP_SHAPES:
    x = jax.random.normal(jax.random.key(0), (batch, hw, hw, c))
    kernel = jax.random.normal(jax.random.key(1), (3, 3, 1, c)) / 3
    runners = {}
    for name in IMPLEMENTATIONS:
      def loss(x, kernel, name=name):
        y = depthwise.depthwise_conv2d(x, kernel, strides=strides, padding=1, implementation=name)
        return jnp.sum(y * y)
      runners[name] = _jax_runner(jax.grad(loss, argnums=(0, 1)), x, kernel, repeats=repeats)
    if with_torch:
      runners["torch"] = _torch_depthwise_runner(batch, hw, c, strides, repeats)
    seconds = throughput.interleaved_seconds(runners, windows)
    rows.append({"shape": f"{batch}x{hw}x{hw}x{c} s{strides}",
                 **{name: s / repeats for name, s in seconds.items()}})
    print("  op", rows[-1], flush=True)
  return rows


def bench_dwt(batch: int, windows: int, repeats: int) -> list[dict]:
  rows = []
  bandwidth = throughput.measured_bandwidth(quick=jax.default_backend() == "cpu")
  for hw, c in DWT_SHAPES:
    x = jax.random.normal(jax.random.key(0), (batch, hw, hw, c))
    floor = 2 * x.size * 4 / bandwidth  # read the input, write four quarter-size bands
    forward, backward = {}, {}
    for name in IMPLEMENTATIONS:
      with implementation(name):
        forward[name] = _jax_runner(lambda v: wavelets.dwt2(v, "db2"), x, repeats=repeats)
        backward[name] = _jax_runner(
            jax.grad(lambda v: sum(jnp.sum(b * b) for b in wavelets.dwt2(v, "db2"))), x,
            repeats=repeats)
    seconds = throughput.interleaved_seconds(
        {**{f"{n} forward": r for n, r in forward.items()},
         **{f"{n} forward+gradient": r for n, r in backward.items()}}, windows)
    rows.append({"shape": f"{batch}x{hw}x{hw}x{c}", "floor": floor,
                 **{name: s / repeats for name, s in seconds.items()}})
    print("  dwt", rows[-1], flush=True)
  return rows


def bench_train(batch: int, steps: int, windows: int, with_torch: bool) -> list[dict]:
  rows = []
  for label, arch, spec, peer_model, wavelet in TRAIN_MODELS:
    runners = {}
    for name in IMPLEMENTATIONS:
      with implementation(name):
        run_train, _, _, _ = throughput.train_runners(arch, spec, False, batch, steps)
      runners[name] = run_train
    if with_torch:
      from benchmarks import torch_peers  # pylint: disable=g-import-not-at-top

      def peer_runner(peer, warmup):
        seconds = torch_peers.training_runner(
            peer, batch, _torch_device(), dataset_size=max(batch * steps, 2 * batch),
            model=peer_model, wavelet=wavelet)
        seconds(warmup)  # torch.compile compiles here
        return lambda: seconds(steps)

      runners["torch"] = peer_runner("faithful", max(1, steps // 2))
      if arch == "mobilenetv2" and _torch_device() == "cuda":  # torch.compile'd, fp32
        runners["torch compiled"] = peer_runner("tuned-fp32", max(2, steps // 2))
    times = throughput.interleaved_seconds(runners, windows)
    rows.append({"model": label, **{name: steps * batch / s for name, s in times.items()}})
    print("  train", rows[-1], flush=True)
  return rows


# Levers of layers.Conv: name -> the context in which the step is traced without it.
LEVER_ABLATIONS = {
    "without the output-gradient barrier": lambda: mock.patch.object(
        layers, "_cotangent_barrier", lambda y: y),
}


def bench_levers(batch: int, steps: int, windows: int) -> list[dict]:
  rows = []
  for arch, spec in (("mobilenetv2", "none"), ("resnet18", "wa")):
    runners = {}
    for name, ablation in {"all levers": contextlib.nullcontext, **LEVER_ABLATIONS}.items():
      with ablation():
        run_train, _, _, _ = throughput.train_runners(arch, spec, False, batch, steps)
      runners[name] = run_train
    times = throughput.interleaved_seconds(runners, windows)
    rows.append({"model": f"{arch} {spec}",
                 **{name: steps * batch / s for name, s in times.items()}})
    print("  levers", rows[-1], flush=True)
  return rows


def bench_profile(batch: int, steps: int, out_dir: str | None) -> dict:
  results = throughput.Results(None, {}, {})
  summary = throughput.profile_train_step(results, False, batch, steps, out_dir,
                                          arch="mobilenetv2", attention="none")
  print("  profile", {lane: round(v["busy_us_per_step"]) for lane, v in summary["lanes"].items()},
        flush=True)
  return summary


def _ms(seconds: float) -> str:
  return f"{seconds * 1e3:,.2f} ms" if seconds < 1 else f"{seconds:,.2f} s"


def render(raw: dict) -> str:
  info = raw["info"]
  lines = [f"Measured {info['date']} on {info['device']} ({info['host']}); JAX {info['jax']}, "
           f"PyTorch {info['torch']}; fp32; medians of {raw['windows']} interleaved windows "
           f"in one process.", ""]
  if raw.get("op"):
    lines += ["| depthwise conv3x3, forward + both gradients | shifted | grouped (lax) | "
              "PyTorch | shifted vs grouped | PyTorch time / shifted |",
              "|---|---|---|---|---|---|"]
    for r in raw["op"]:
      torch_time = r.get("torch")
      torch_cells = (_ms(torch_time), f"{torch_time / r['shifted']:.2f}x") if torch_time else (
          "-", "-")
      lines.append(f"| {r['shape']} | {_ms(r['shifted'])} | {_ms(r['grouped'])} | "
                   f"{torch_cells[0]} | {r['grouped'] / r['shifted']:.1f}x faster | "
                   f"{torch_cells[1]} |")
    lines.append("")
  if raw.get("dwt"):
    lines += ["| dwt2 db2 | shifted forward | grouped forward | shifted fwd+grad | "
              "grouped fwd+grad | forward / floor (shifted, grouped) |",
              "|---|---|---|---|---|---|"]
    for r in raw["dwt"]:
      lines.append(
          f"| {r['shape']} | {_ms(r['shifted forward'])} | {_ms(r['grouped forward'])} | "
          f"{_ms(r['shifted forward+gradient'])} | {_ms(r['grouped forward+gradient'])} | "
          f"{r['shifted forward'] / r['floor']:.1f}x, {r['grouped forward'] / r['floor']:.1f}x |")
    lines.append("")
  if raw.get("train"):
    compiled = any("torch compiled" in r for r in raw["train"])
    lines += [f"| train step, batch {raw['batch']} | shifted | grouped (lax) | faithful PyTorch | "
              "shifted vs grouped | shifted vs PyTorch |"
              + (" compiled PyTorch (channels_last, fp32) | shifted vs compiled |"
                 if compiled else ""), "|---|---|---|---|---|---|" + "---|---|" * compiled]

    def peer_cells(r, key):
      rate = r.get(key)
      return (f"{rate:,.1f} img/s", f"{r['shifted'] / rate:.2f}x") if rate else ("-", "-")

    for r in raw["train"]:
      cells = peer_cells(r, "torch") + (peer_cells(r, "torch compiled") if compiled else ())
      lines.append(f"| {r['model']} | {r['shifted']:,.1f} img/s | {r['grouped']:,.1f} img/s | "
                   f"{cells[0]} | {r['shifted'] / r['grouped']:.2f}x | {cells[1]} |"
                   + "".join(f" {c} |" for c in cells[2:]))
    lines.append("")
  if raw.get("levers"):
    names = list(LEVER_ABLATIONS)
    lines += [f"| train step, batch {raw['batch']} | all levers | " + " | ".join(names) + " |",
              "|---|---|" + "---|" * len(names)]
    for r in raw["levers"]:
      cells = [f"{r[n]:,.1f} img/s ({r['all levers'] / r[n]:.2f}x)" for n in names]
      lines.append(f"| {r['model']} | {r['all levers']:,.1f} img/s | " + " | ".join(cells) + " |")
    lines.append("")
  if raw.get("profile"):
    profile = raw["profile"]
    lines += [f"mobilenetv2 train step, batch {profile['batch']}, traced: "
              f"{profile['trace_wall_us_per_step'] / 1e3:,.1f} ms per step.", "",
              "| lane | busy ms/step | by op class (ms/step) | top ops (ms/step) |",
              "|---|---|---|---|"]
    for lane, v in list(profile["lanes"].items())[:2]:
      classes = ", ".join(f"{k} {t / 1e3:.1f}" for k, t in v["us_per_step_by_class"].items())
      top = ", ".join(f"`{k[:40]}` {t / 1e3:.1f}"
                      for k, t in list(v["top_ops_us_per_step"].items())[:6])
      lines.append(f"| {lane} | {v['busy_us_per_step'] / 1e3:,.1f} | {classes} | {top} |")
  return "\n".join(lines).rstrip()


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--steps", type=int, default=2, help="train steps per window")
  parser.add_argument("--repeats", type=int, default=5, help="op calls per window")
  parser.add_argument("--windows", type=int, default=5)
  parser.add_argument("--phases", default="op,dwt,train,levers,profile")
  parser.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
  parser.add_argument("--docs", help="markdown file to write the table into")
  parser.add_argument("--section", default="depthwise", help="marker name in --docs")
  parser.add_argument("--out", help="JSON file for the raw numbers")
  args = parser.parse_args(argv)
  phases = set(args.phases.split(","))
  unknown = phases - {"op", "dwt", "train", "levers", "profile"}
  if unknown:
    parser.error(f"unknown phases {sorted(unknown)}; choose from op, dwt, train, levers, "
                 "profile")
  with_torch = not args.no_torch
  if with_torch:
    try:
      import torch  # pylint: disable=g-import-not-at-top,unused-import
    except ImportError:
      print("PyTorch is not installed: its columns stay empty.", flush=True)
      with_torch = False
  if "levers" in phases and jax.default_backend() != "cpu":
    print("levers: left out, layers.Conv's levers apply on the CPU only.", flush=True)
    phases.discard("levers")
  raw = {"info": throughput.machine_info(), "batch": args.batch, "windows": args.windows}
  profile_dir = os.path.dirname(os.path.abspath(args.out)) if args.out else None
  runs = {
      "op": lambda: bench_ops(args.batch, args.windows, args.repeats, with_torch),
      "dwt": lambda: bench_dwt(args.batch, args.windows, args.repeats),
      "train": lambda: bench_train(args.batch, args.steps, args.windows, with_torch),
      "levers": lambda: bench_levers(args.batch, args.steps, args.windows),
      "profile": lambda: bench_profile(args.batch, args.steps, profile_dir),
  }
  for phase, run in runs.items():
    if phase in phases:
      raw[phase] = run()
      # After every phase, so that a time limit keeps the phases done.
      table = render(raw)
      if args.out:
        with open(args.out, "w") as f:
          json.dump(raw, f, indent=1)
      if args.docs:
        throughput.write_docs(args.docs, table, args.section)
  print(render(raw))
  return raw


if __name__ == "__main__":
  with contextlib.suppress(KeyboardInterrupt):
    main()
