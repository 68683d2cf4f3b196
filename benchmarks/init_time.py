"""How long `create_model(...).init` takes on a cold start, per arch: Flax's ways and wacnn_jax's.

    python benchmarks/init_time.py [--archs resnet18,mobilenetv2] [--attention wa]
        [--repeats 3] [--methods eager,jit,init]

Every measurement is a fresh Python process (a cold start: nothing compiled
yet, as for a new user) that builds the model and times one initialisation
of a (1, 32, 32, 3) input with `{"params": PRNGKey(0), "dropout": PRNGKey(1)}`:

- `eager`: `flax.linen.Module.init(model, ...)`, the forward pass op by op
  (what `model.init` was before `wacnn_jax.models.batched_init`);
- `jit`: `jax.jit(flax.linen.Module.init)` (what training used);
- `init`: `model.init(...)` as it is now (`batched_init`).

The methods of an arch run side by side (interleaved per repeat), so a load
on the machine affects them alike. Printed: a markdown table of the medians
of wall-clock and CPU seconds (user + system of the process, less sensitive
to other processes on the machine), the ratios eager/init and jit/init of
both, and
whether `init`'s variables equal `jit`'s bit for bit (from the last repeat).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

# Runs in the child process: one cold initialisation, timed; prints a JSON line.
CHILD = r"""
import functools, hashlib, json, resource, sys, time
import flax.linen as nn, jax, jax.numpy as jnp, numpy as np
from wacnn_jax import models
arch, attention, method = sys.argv[1:4]
model = models.create_model(arch, num_classes=10, attention=attention)
x = jnp.zeros((1, 32, 32, 3), jnp.float32)
rngs = {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}
init = {"eager": functools.partial(nn.Module.init, model),
        "jit": jax.jit(functools.partial(nn.Module.init, model, train=False)),
        "init": model.init}[method]
kwargs = {} if method == "jit" else {"train": False}
usage = resource.getrusage(resource.RUSAGE_SELF)
start = time.perf_counter()
variables = jax.block_until_ready(init(rngs, x, **kwargs))
wall = time.perf_counter() - start
after = resource.getrusage(resource.RUSAGE_SELF)
digest = hashlib.sha256()
for leaf in jax.tree.leaves(variables):
  digest.update(np.asarray(leaf).tobytes())
print(json.dumps({"wall": wall, "cpu": after.ru_utime + after.ru_stime - usage.ru_utime
                  - usage.ru_stime, "digest": digest.hexdigest()}))
"""

ARCHS = ("resnet18", "resnet34", "resnet50", "resnet110", "resnet164", "vgg11_bn", "vgg13_bn",
         "vgg16_bn", "vgg19_bn", "mobilenetv2")
METHODS = ("eager", "jit", "init")


def measure(arch: str, attention: str, method: str) -> dict:
  result = subprocess.run([sys.executable, "-c", CHILD, arch, attention, method],
                          capture_output=True, text=True, check=False)
  if result.returncode != 0:
    raise RuntimeError(f"{arch} {method} failed:\n{result.stderr[-2000:]}")
  return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--archs", default=",".join(ARCHS))
  parser.add_argument("--attention", default="wa")
  parser.add_argument("--repeats", type=int, default=1)
  parser.add_argument("--methods", default=",".join(METHODS))
  args = parser.parse_args()
  methods = args.methods.split(",")
  started = time.strftime("%Y-%m-%d %H:%M")
  rows = []
  for arch in args.archs.split(","):
    runs = {m: [] for m in methods}
    for _ in range(args.repeats):
      for method in methods:
        runs[method].append(measure(arch, args.attention, method))
        print(f"{arch} {method}: {runs[method][-1]['wall']:.1f} s", file=sys.stderr, flush=True)
    rows.append((arch, runs))
  import jax  # pylint: disable=g-import-not-at-top
  print(f"Cold `init` of each model + {args.attention}, measured {started} on "
        f"{jax.devices()[0].device_kind} (JAX {jax.__version__}); medians of {args.repeats} "
        "fresh process(es) per cell, wall / CPU seconds.\n")
  header = [f"{m} wall / CPU (s)" for m in methods]
  ratios = [f"{m}/init wall / CPU" for m in methods if m != "init" and "init" in methods]
  compared = {"init", "jit"} <= set(methods)
  columns = ["arch"] + header + ratios + (["init == jit"] if compared else [])
  print("| " + " | ".join(columns) + " |")
  print("|---" * len(columns) + "|")
  for arch, runs in rows:
    wall = {m: statistics.median(r["wall"] for r in runs[m]) for m in methods}
    cpu = {m: statistics.median(r["cpu"] for r in runs[m]) for m in methods}
    cells = [f"{wall[m]:.1f} / {cpu[m]:.1f}" for m in methods]
    cells += [f"{wall[m] / wall['init']:.1f}x / {cpu[m] / cpu['init']:.1f}x"
              for m in methods if m != "init" and "init" in methods]
    if compared:
      cells.append(str(runs["init"][-1]["digest"] == runs["jit"][-1]["digest"]))
    print(f"| {arch} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
  main()
