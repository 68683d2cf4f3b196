"""Start-up time of a training run, process start to its first train step, by cache state.

    python benchmarks/startup.py --data ../shared/data/cifar10-jpeg.tar.gz [--arch resnet18]
        [--attention wa] [--batch 128] [--repeats 1] [--set KEY=VALUE ...]

Each repeat runs `run_train.py` three times as a fresh process, one train
step of one epoch (`data.max_train_examples` = the batch, 100 test images),
with new cache folders per repeat, in this order:

1. cold: empty dataset cache (`data.cache_dir`) and compilation cache
   (`compilation_cache_dir`);
2. warm data: the dataset cache that run 1 wrote, an empty compilation cache;
3. warm data + compile: both caches that runs 1 and 2 wrote.

Both caches are on by default, so run 3 is what a second identical
`run_train.py` command meets; the last line gives its time to the first step
as a share of the cold run's.

Per run, from the arrival time of the run's log lines and its metrics.jsonl:
`imports` (the first line of `train_and_evaluate`: Python, JAX and the
package imported), `data` (when `data/cache.py` says the images were decoded
or read), `setup`
(the "Training ..." line: data loaded, model initialised, state on the
devices), `to first step` (setup + the train step's `compile_seconds` + the
step's own time), and the whole run (process exit; it also compiles the
evaluation and saves a checkpoint). Prints a markdown table of medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

STATES = ("cold", "warm data", "warm data + compile")


def run_once(args, workdir: str, data_cache: str, compile_cache: str) -> dict:
  """One `run_train.py` process; the seconds from its start to each milestone."""
  command = [sys.executable, os.path.join(REPO_ROOT, "run_train.py"),
             "--config", os.path.join(REPO_ROOT, "configs", "default.py"),
             "--workdir", workdir, "--verbose",  # absl's header: the file of each line
             f"--config.data.image_folder={os.path.abspath(args.data)}",
             f"--config.model.arch={args.arch}", f"--config.model.attention={args.attention}",
             f"--config.batch_size={args.batch}", "--config.num_epochs=1",
             f"--config.data.max_train_examples={args.batch}",
             "--config.data.max_test_examples=100",
             f"--config.data.cache_dir={data_cache}",
             f"--config.compilation_cache_dir={compile_cache}"]
  command += [f"--config.{o}" for o in args.set]
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  env.pop("JAX_COMPILATION_CACHE_DIR", None)  # the run's own folder only
  start = time.perf_counter()
  times, lines = {}, []
  with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                        text=True, cwd=REPO_ROOT, env=env) as process:
    for line in process.stdout:
      now = time.perf_counter() - start
      lines.append(line)
      if "compilation_cache.py" in line:  # train_and_evaluate's first line: imports done
        times.setdefault("imports", now)
      if " cache.py:" in line and ("Decoded " in line or "Read " in line):
        times.setdefault("data", now)
      if "] Training " in line:
        times.setdefault("setup", now)
  times["whole run"] = time.perf_counter() - start
  if process.returncode != 0 or "setup" not in times:
    raise RuntimeError(f"{' '.join(command)} failed:\n{''.join(lines[-30:])}")
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    record = json.loads(f.readline())
  step = args.batch / record["images_per_sec"]
  times["train step compile"] = record["compile_seconds"]
  times["to first step"] = times["setup"] + record["compile_seconds"] + step
  return times


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--data", required=True, help="An image folder or an archive of one.")
  parser.add_argument("--arch", default="resnet18")
  parser.add_argument("--attention", default="wa")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=1)
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="A config override for every run (repeatable).")
  args = parser.parse_args()
  measured = {state: [] for state in STATES}
  with tempfile.TemporaryDirectory(prefix="startup-") as scratch:
    for repeat in range(args.repeats):
      folder = os.path.join(scratch, str(repeat))
      data_cache, compile_cache = os.path.join(folder, "data"), os.path.join(folder, "xla")
      for state in STATES:
        xla = compile_cache if state != "warm data" else os.path.join(folder, "xla-empty")
        times = run_once(args, os.path.join(folder, state.replace(" ", "_")), data_cache, xla)
        measured[state].append(times)
        print(f"repeat {repeat + 1}, {state}: " + ", ".join(
            f"{k} {v:.1f} s" for k, v in times.items()), flush=True)
  columns = ("imports", "data", "setup", "train step compile", "to first step", "whole run")
  print(f"\n{args.arch}-{args.attention}, batch {args.batch}, {args.data}; seconds from "
        f"process start, median of {args.repeats}:\n")
  print("| caches | " + " | ".join(columns) + " |")
  print("|---|" + "---|" * len(columns))
  for state in STATES:
    print(f"| {state} | " + " | ".join(
        f"{statistics.median(t[c] for t in measured[state]):.1f}" for c in columns) + " |")
  ratios = [warm["to first step"] / cold["to first step"]
            for cold, warm in zip(measured["cold"], measured["warm data + compile"])]
  print(f"\nA second identical run (both caches warm, as every run leaves them) reaches its "
        f"first step in {100 * statistics.median(ratios):.0f} % of the first's time "
        f"(median of {len(ratios)}; each repeat's pair: "
        f"{', '.join(f'{100 * r:.0f} %' for r in ratios)}).")


if __name__ == "__main__":
  main()
