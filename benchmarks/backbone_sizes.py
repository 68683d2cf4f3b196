"""Every backbone at 32, 64 and 224 pixels: parameters, FLOPs per image and the CPU train step.

    python benchmarks/backbone_sizes.py [--archs resnet18,...] [--sizes 32,64,224]
        [--steps 3] [--windows 3] [--seconds 600] [--docs docs/benchmarks.md]

For each arch (CIFAR layouts and torchvision's ImageNet layouts, with WA)
and image size: the parameter count (`jax.eval_shape(model.init, ...)`), the
FLOPs of one image's eval forward pass (XLA's cost analysis, as
`run_info.model_summary` counts them) and the train step's images/s on this
machine: the trainer's own compiled step (`benchmarks/throughput.py`'s
`train_runners`: gather, the augmentation of that size, forward, backward,
SGD), the median of `--windows` windows of `--steps` steps. The batch is 32
images up to 64 pixels and 8 at 224. Rows whose train step would not fit
`--seconds` (estimated from the FLOPs at this machine's measured rate) are
left out and say so. Prints a markdown table (with the CPU model and its
vector extensions); `--docs` also writes it into that file between the lines
`<!-- backbone_sizes:begin -->` and `<!-- backbone_sizes:end -->`.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp

from benchmarks import throughput  # pylint: disable=wrong-import-position
from wacnn_jax import models  # pylint: disable=wrong-import-position

ARCHS = ("resnet18", "vgg16_bn", "mobilenetv2", "resnet18_imagenet", "resnet50_imagenet",
         "mobilenetv2_imagenet")
SIZES = (32, 64, 224)


def counts(arch: str, size: int) -> tuple[int, float]:
  """(parameters, FLOPs of one image's eval forward pass)."""
  model = models.create_model(arch, num_classes=10, attention="wa")
  x = jnp.zeros((1, size, size, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  params = sum(int(a.size) for a in jax.tree.leaves(variables["params"]))
  cost = jax.jit(functools.partial(model.apply, train=False)).lower(variables, x).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return params, float((cost or {}).get("flops", float("nan")))


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--archs", default=",".join(ARCHS))
  parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--windows", type=int, default=3)
  parser.add_argument("--seconds", type=float, default=600.0,
                      help="leave out a row whose windows would take longer (estimated)")
  parser.add_argument("--docs", default=None)
  args = parser.parse_args()
  rows, flops_per_second = [], None
  for arch in args.archs.split(","):
    layout = models.registry.backbone(arch).layout
    for size in map(int, args.sizes.split(",")):
      params, flops = counts(arch, size)
      batch = 32 if size <= 64 else 8
      estimate = (None if flops_per_second is None else
                  3 * flops * batch * args.steps * (args.windows + 2) / flops_per_second)
      if estimate is not None and estimate > args.seconds:
        rate = f"- (about {estimate / 60:.0f} min, over --seconds)"
      else:
        start = time.perf_counter()
        run_train, _, _, _ = throughput.train_runners(arch, "wa", False, batch, args.steps,
                                                      image_size=size)
        images_per_second = throughput.median_rate(run_train, args.steps * batch,
                                                   args.windows)
        flops_per_second = 3 * flops * images_per_second  # forward + backward ~ 3 forwards
        rate = f"{images_per_second:,.1f} img/s (b{batch})"
        print(f"{arch} {size}: {rate}, {time.perf_counter() - start:.0f} s", flush=True)
      rows.append(f"| {arch} | {layout} | {size}x{size} | {params:,} | {flops / 1e6:,.1f} | "
                  f"{rate} |")
  info = throughput.machine_info()
  table = "\n".join([
      f"Measured {info['date']} on {info['cpu']}; JAX {info['jax']}, fp32, WA, 10 classes; "
      f"the trainer's compiled train step, median of {args.windows} windows of {args.steps} "
      "steps.", "",
      "| arch | layout | image | parameters | MFLOPs per image (eval forward) | CPU train step |",
      "|---|---|---|---|---|---|", *rows])
  print(table)
  if args.docs:
    throughput.write_docs(args.docs, table, "backbone_sizes")
  return 0


if __name__ == "__main__":
  sys.exit(main())
