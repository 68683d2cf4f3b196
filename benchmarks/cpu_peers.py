"""The DWT and the backbones' train step beside the PyTorch and JAX wavelet libraries, on the CPU.

Prints markdown tables (and writes them to `--out`):

1. dwt: a single-level 2-D DWT, forward + gradient (all four bands with
   fixed cotangents), of haar, db2, sym4 and bior2.2 on a float32 batch of
   (64, 32, 32, 64): this project (`wavelets.dwt2`, this backend's entry of
   `wavelets.DWT_IMPLEMENTATION`; and its convolution path `dwt2_conv` for
   comparison) in NHWC, and in NCHW as they take it jaxwt (JAX, jitted),
   ptwt and pytorch_wavelets (PyTorch, eager). Every implementation is
   first checked against `pywt.dwt2` in its boundary mode on a small input.
   jaxwt has no periodization: it runs in its "zero" mode, ptwt in its
   "periodic" one (pywt's "periodic": circular padding, (N + F - 1) / 2
   outputs per axis instead of N / 2); pytorch_wavelets runs periodization.
2. train: the real train step (throughput.train_runners: gather,
   augmentation, forward, backward, SGD) of vgg16_bn, mobilenetv2 and
   resnet18, each with attention none and wa, beside the faithful PyTorch
   peer of benchmarks/torch_peers.py where it has one (mobilenetv2,
   mobilenetv2-wa, resnet18-wa).

    python benchmarks/cpu_peers.py --out /tmp/cpu_peers_table.md
    python benchmarks/cpu_peers.py --phases dwt --batch 16

Each cell is the median over `--windows` windows with the implementations
interleaved in one process (throughput.interleaved_seconds); a ratio
compares medians of the same run. A peer that is not installed
(benchmarks/requirements.txt) leaves its column empty.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import importlib.metadata
import importlib.util
import os
import sys
from typing import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import pywt  # pylint: disable=g-import-not-at-top

from benchmarks import throughput  # pylint: disable=g-import-not-at-top
from wacnn_jax.nn import wavelets  # pylint: disable=g-import-not-at-top

WAVELETS = ("haar", "db2", "sym4", "bior2.2")
# (arch, attention) of the train phase -> the model of torch_peers.MODELS that is its peer.
TRAIN_MODELS = {("vgg16_bn", "none"): None, ("vgg16_bn", "wa"): None,
                ("mobilenetv2", "none"): "mobilenetv2", ("mobilenetv2", "wa"): "mobilenetv2-wa",
                ("resnet18", "none"): None, ("resnet18", "wa"): "resnet18-wa"}


@dataclasses.dataclass(frozen=True)
class Implementation:
  """One DWT of the comparison.

  `prepare(wavelet, x)` takes an NHWC float32 numpy batch and returns
  `(step, low)`: `step()` runs the forward pass and the gradient of all
  four bands once (with fixed cotangents) and returns what to wait for;
  `low()` gives the low band (cA) as NHWC numpy. `mode` is the pywt name
  of the boundary mode it computes; `package` the distribution it needs.
  """

  name: str
  mode: str
  package: str | None
  prepare: Callable


def _cotangents(shapes, seed: int = 1):
  rng = np.random.default_rng(seed)
  return [rng.normal(size=s).astype(np.float32) for s in shapes]


def _jax_prepare(dwt: Callable, layout: str):
  """`prepare` of a JAX DWT `dwt(x, wavelet) -> four bands`, jitted, in `layout` NHWC / NCHW."""

  def prepare(wavelet, x):
    x = jnp.asarray(x if layout == "NHWC" else x.transpose(0, 3, 1, 2))
    bands = jax.eval_shape(lambda v: dwt(v, wavelet), x)
    cotangents = tuple(jnp.asarray(g) for g in _cotangents([b.shape for b in bands]))

    @jax.jit
    def forward_and_gradient(x, cotangents):
      bands, vjp = jax.vjp(lambda v: dwt(v, wavelet), x)
      return bands, vjp(cotangents)[0]

    step = lambda: forward_and_gradient(x, cotangents)
    jax.block_until_ready(step())  # compiles
    low = lambda: np.asarray(step()[0][0])
    return step, (low if layout == "NHWC" else lambda: low().transpose(0, 2, 3, 1))

  return prepare


def _jaxwt_dwt(x, wavelet):
  import jaxwt  # pylint: disable=g-import-not-at-top
  low, (ch, cv, cd) = jaxwt.wavedec2(x, wavelet, mode="zero", level=1)
  return low, ch, cv, cd


def _torch_prepare(dwt_factory: Callable):
  """`prepare` of a PyTorch DWT: `dwt_factory(wavelet)` -> `dwt(x) -> four bands`, NCHW."""

  def prepare(wavelet, x):
    import torch  # pylint: disable=g-import-not-at-top
    dwt = dwt_factory(wavelet)
    x = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).requires_grad_()
    with torch.no_grad():
      shapes = [b.shape for b in dwt(x)]
    cotangents = [torch.from_numpy(g) for g in _cotangents(shapes)]

    def step():
      x.grad = None
      torch.autograd.backward(dwt(x), cotangents)

    step()
    low = lambda: dwt(x)[0].detach().numpy().transpose(0, 2, 3, 1)
    return step, low

  return prepare


def _ptwt_factory(wavelet):
  import ptwt  # pylint: disable=g-import-not-at-top

  def dwt(x):
    low, (ch, cv, cd) = ptwt.wavedec2(x, wavelet, mode="periodic", level=1)
    return low, ch, cv, cd

  return dwt


def _pytorch_wavelets_forward():
  """pytorch_wavelets' DWTForward class.

  The package's __init__ also imports its dual-tree transform, whose
  coefficient files load through pkg_resources, which setuptools 81 and
  later no longer ship; the `dwt` subpackage alone needs only torch and
  pywt, so without pkg_resources the package is registered without running
  its __init__ and only that subpackage is imported.
  """
  name = "pytorch_wavelets.dwt.transform2d"
  try:
    return importlib.import_module(name).DWTForward
  except ModuleNotFoundError as error:
    if error.name != "pkg_resources":
      raise
  sys.modules["pytorch_wavelets"] = importlib.util.module_from_spec(  # __init__ not run
      importlib.util.find_spec("pytorch_wavelets"))
  return importlib.import_module(name).DWTForward


def _pytorch_wavelets_factory(wavelet):
  forward = _pytorch_wavelets_forward()(J=1, wave=wavelet, mode="periodization")

  def dwt(x):
    low, (high,) = forward(x)  # high: (N, C, 3, H/2, W/2), pywt's cH, cV, cD
    return low, high[:, :, 0], high[:, :, 1], high[:, :, 2]

  return dwt


IMPLEMENTATIONS = (
    Implementation("this project", "periodization", None,
                   _jax_prepare(wavelets.dwt2, "NHWC")),
    Implementation("this project, conv path", "periodization", None,
                   _jax_prepare(wavelets.dwt2_conv, "NHWC")),
    Implementation("jaxwt", "zero", "jaxwt", _jax_prepare(_jaxwt_dwt, "NCHW")),
    Implementation("ptwt", "periodic", "ptwt", _torch_prepare(_ptwt_factory)),
    Implementation("pytorch_wavelets", "periodization", "pytorch_wavelets",
                   _torch_prepare(_pytorch_wavelets_factory)),
)


def installed(implementation: Implementation) -> bool:
  """Whether its package (and PyTorch where it needs it) imports."""
  if implementation.package is None:
    return True
  needs = [implementation.package] + (["torch"] if implementation.package != "jaxwt" else [])
  return all(importlib.util.find_spec(name) is not None for name in needs)


def check_against_pywt(implementation: Implementation, wavelet: str,
                       shape=(2, 12, 10, 3)) -> float:
  """The largest difference of its low band from pywt.dwt2's in its mode (float64); raises
  AssertionError when the shapes differ or the difference exceeds float32 rounding (1e-4)."""
  x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
  _, low = implementation.prepare(wavelet, x)
  want = pywt.dwt2(x.astype(np.float64), wavelet, mode=implementation.mode, axes=(1, 2))[0]
  got = low()
  assert got.shape == want.shape, (implementation.name, wavelet, got.shape, want.shape)
  error = float(np.abs(got - want).max())
  assert error < 1e-4, (implementation.name, wavelet, error)
  return error


def bench_dwt(shape, windows: int, repeats: int, wavelet_names=WAVELETS) -> list[dict]:
  present = [i for i in IMPLEMENTATIONS if installed(i)]
  x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
  rows = []
  for wavelet in wavelet_names:
    runners = {}
    for implementation in present:
      check_against_pywt(implementation, wavelet)
      step, _ = implementation.prepare(wavelet, x)

      def run(step=step):
        for _ in range(repeats):
          out = step()
        return out

      runners[implementation.name] = run
    seconds = throughput.interleaved_seconds(runners, windows)
    rows.append({"wavelet": wavelet, **{name: s / repeats for name, s in seconds.items()}})
    print("  dwt", rows[-1], flush=True)
  return rows


def bench_train(batch: int, steps: int, windows: int, with_torch: bool,
                models=tuple(TRAIN_MODELS)) -> list[dict]:
  rows = []
  for arch, attention in models:
    runners = {"this project": throughput.train_runners(arch, attention, False, batch, steps)[0]}
    peer_model = TRAIN_MODELS[(arch, attention)]
    if with_torch and peer_model:
      from benchmarks import torch_peers  # pylint: disable=g-import-not-at-top
      seconds = torch_peers.training_runner("faithful", batch, "cpu",
                                            dataset_size=max(batch * steps, 2 * batch),
                                            model=peer_model)
      seconds(1)  # warm-up
      runners["PyTorch"] = lambda seconds=seconds: seconds(steps)
    times = throughput.interleaved_seconds(runners, windows)
    rows.append({"model": f"{arch} {attention}",
                 **{name: steps * batch / s for name, s in times.items()}})
    print("  train", rows[-1], flush=True)
  return rows


def _versions() -> str:
  versions = [f"JAX {jax.__version__}"]
  for name, label in (("torch", "PyTorch"), ("jaxwt", "jaxwt"), ("ptwt", "ptwt"),
                      ("pytorch_wavelets", "pytorch_wavelets")):
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
      versions.append(f"{label} {importlib.metadata.version(name)}")
  return ", ".join(versions)


def _ms(seconds) -> str:
  return "-" if seconds is None else f"{seconds * 1e3:,.1f} ms"


def render(raw: dict) -> str:
  lines = [f"Measured {raw['date']} on {raw['cpu']}; {raw['versions']}; float32; medians of "
           f"{raw['windows']} interleaved windows in one process.", ""]
  if raw.get("dwt"):
    names = [i.name for i in IMPLEMENTATIONS]
    modes = {i.name: i.mode for i in IMPLEMENTATIONS}
    lines += [f"Single-level 2-D DWT of {raw['dwt_shape']} (NHWC; NCHW for jaxwt, ptwt and "
              f"pytorch_wavelets), forward + gradient of all four bands "
              f"(`wavelets.dwt2` runs \"{raw['dwt_implementation']}\" for wavelets longer "
              "than haar, its two-tap path for haar):", "",
              "| wavelet | " + " | ".join(f"{n} ({modes[n]})" for n in names)
              + " | fastest peer / this project |",
              "|---|" + "---|" * (len(names) + 1)]
    for r in raw["dwt"]:
      peers = [r[n] for n in names[2:] if n in r]
      ratio = f"{min(peers) / r['this project']:.1f}x" if peers else "-"
      lines.append(f"| {r['wavelet']} | " + " | ".join(_ms(r.get(n)) for n in names)
                   + f" | {ratio} |")
    lines += ["", "Modes in brackets are pywt's names of what each computes (every one "
              "checked against pywt.dwt2 first). jaxwt has no periodization mode and runs "
              "its zero mode; ptwt's nearest is \"periodic\" (circular padding like "
              "periodization, but (N + F - 1) / 2 outputs per axis instead of N / 2, so "
              "slightly more work for long filters). pytorch_wavelets runs periodization, "
              "as this project.", ""]
  if raw.get("train"):
    lines += [f"Train step (gather, augmentation, forward, backward, SGD), batch "
              f"{raw['batch']}, fp32, images/s; PyTorch: the faithful peer of "
              "benchmarks/torch_peers.py (the reference's eager NCHW code with its "
              "DataLoader; \"-\" where it has none):", "",
              "| model attention | this project | PyTorch | this project / PyTorch |",
              "|---|---|---|---|"]
    for r in raw["train"]:
      torch_rate = r.get("PyTorch")
      lines.append(f"| {r['model']} | {r['this project']:,.1f} | "
                   + (f"{torch_rate:,.1f} | {r['this project'] / torch_rate:.2f}x |"
                      if torch_rate else "- | - |"))
  return "\n".join(lines).rstrip()


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--phases", default="dwt,train")
  parser.add_argument("--shape", default="64,32,32,64", help="the DWT's NHWC input")
  parser.add_argument("--wavelets", default=",".join(WAVELETS))
  parser.add_argument("--repeats", type=int, default=3, help="DWT calls per window")
  parser.add_argument("--windows", type=int, default=5)
  parser.add_argument("--batch", type=int, default=32, help="train step batch")
  parser.add_argument("--steps", type=int, default=2, help="train steps per window")
  parser.add_argument("--models", default=",".join(f"{a}:{s}" for a, s in TRAIN_MODELS),
                      help="arch:attention pairs of the train phase")
  parser.add_argument("--out", help="markdown file for the tables (rewritten after each phase)")
  args = parser.parse_args(argv)
  phases = set(args.phases.split(","))
  if phases - {"dwt", "train"}:
    parser.error(f"unknown phases {sorted(phases - {'dwt', 'train'})}; choose from dwt, train")
  models = tuple(tuple(m.split(":")) for m in args.models.split(","))
  if set(models) - set(TRAIN_MODELS):
    parser.error(f"unknown models {sorted(set(models) - set(TRAIN_MODELS))}")
  info = throughput.machine_info()
  raw = {"date": info["date"], "cpu": throughput.cpu_description(), "versions": _versions(),
         "windows": args.windows, "batch": args.batch,
         "dwt_shape": tuple(int(v) for v in args.shape.split(",")),
         "dwt_implementation": wavelets.DWT_IMPLEMENTATION.get(jax.default_backend(), "conv")}
  missing = [i.name for i in IMPLEMENTATIONS if not installed(i)]
  if missing:
    print(f"not installed, left out: {', '.join(missing)}", flush=True)
  runs = {
      "dwt": lambda: bench_dwt(raw["dwt_shape"], args.windows, args.repeats,
                               args.wavelets.split(",")),
      "train": lambda: bench_train(args.batch, args.steps, args.windows,
                                   importlib.util.find_spec("torch") is not None, models),
  }
  for phase, run in runs.items():
    if phase in phases:
      raw[phase] = run()
      if args.out:
        with open(args.out, "w") as f:
          f.write(render(raw) + "\n")
  print(render(raw))
  return raw


if __name__ == "__main__":
  with contextlib.suppress(KeyboardInterrupt):
    main()
