"""The stream pipeline (data.pipeline='stream'): host throughput, bounded memory, same learning.

    python benchmarks/stream.py throughput [--images 2000] [--batch 256] [--docs docs/benchmarks.md]
    python benchmarks/stream.py memory [--sizes 20000,100000] [--docs ...]
    python benchmarks/stream.py learning --archive ../shared/data/cifar10-jpeg.tar.gz
        [--seeds 0,1,2] [--epochs 8] [--train 5000] [--docs ...]

`throughput`: images per second per host core of what a stream worker
process does for each batch (read the JPEG file, decode, bring to size,
augment, stack: `stream_loaders.TrainBatches`), at 32x32 and 64x64 (JPEGs of
that size, the reference's pad-crop-flip) and 224x224 (256x256 JPEGs brought
to 224 by Resize + CenterCrop, then RandomResizedCrop + flip), measured in
this process (one core): the median of 5 windows; then through Grain with
one worker per core, whole. From the one-core rate: the host cores a GPU
needs to be fed at a given rate (a resnet18 at batch 256 trains 47,900 img/s
at 32x32 on an H100, `docs/benchmarks.md`).

`memory`: a generated folder of 64x64 JPEGs (made here, in a temporary
folder, not kept) at each `--sizes` count; for each count and pipeline, a
child process loads the data, puts it where the trainer does (`feeds`) and
feeds 100 training steps of 256 and an evaluation; its peak RSS and its
stream workers' (sampled every step, all of them together) are reported.

`learning`: the same CIFAR-10 subset (`--train` training images, 1,000 test
images of the JPEG archive) trained with the smoke model for `--epochs`
epochs through each pipeline with each seed; final test accuracy, mean and
spread (standard deviation over the seeds).

Every table names the CPU; `--docs FILE` writes each between the lines
`<!-- stream_<command>:begin -->` and `<!-- stream_<command>:end -->`.
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
sys.path.insert(0, REPO_ROOT)

import numpy as np  # pylint: disable=wrong-import-position
from PIL import Image  # pylint: disable=wrong-import-position

from benchmarks import throughput as throughput_benchmark  # pylint: disable=wrong-import-position

# resnet18 (WA) at batch 256 on an H100, 32x32 (docs/benchmarks.md, "GPU throughput").
H100_RESNET18_IMAGES_PER_SECOND = 47_900


def write_jpegs(root: str, count: int, size: int, classes: int = 10, seed: int = 0) -> str:
  """`count` JPEGs of size x size (smooth colour fields plus noise, as photos compress) in
  root/train/<class>/ (and a tenth as many in root/test/)."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
  for split, n in (("train", count), ("test", max(classes, count // 10))):
    for k in range(n):
      label = f"class{k % classes}"
      folder = os.path.join(root, split, label)
      os.makedirs(folder, exist_ok=True)
      a, b, c = rng.random(3)
      field = np.stack([a * xx + (1 - a) * yy, b * yy, c * (1 - xx)], -1)
      pixels = 255 * (0.8 * field + 0.2 * rng.random((size, size, 3)))
      Image.fromarray(pixels.astype(np.uint8)).save(os.path.join(folder, f"{k:06d}.jpg"),
                                                    quality=90)
  return root


def data_config(folder: str, pipeline: str, **fields):
  from configs import default  # pylint: disable=import-outside-toplevel
  config = default.get_config()
  config.data.image_folder = folder
  config.data.pipeline = pipeline
  config.data.cache_dir = ""
  for key, value in fields.items():
    config.data[key] = value
  return config


def host_rate(folder: str, image_size: int | None, batch: int, windows: int = 5):
  """Images/s of `TrainBatches` in this process (one core), median of `windows` batches, and
  through Grain with one worker per core (images/s, workers)."""
  from wacnn_jax.data import batch_plans, pipeline, stream_loaders  # pylint: disable=import-outside-toplevel
  config = data_config(folder, "stream", image_size=image_size)
  dataset = pipeline.load(config.data)
  steps = len(dataset.train) // batch
  plan = batch_plans.TrainPlan(len(dataset.train), (0,), batch, steps)
  batches = stream_loaders.TrainBatches(dataset.train, plan, dataset.preprocessing.augmentation,
                                        0, steps)
  times = []
  for k in range(windows):
    start = time.perf_counter()
    batches[k % steps]
    times.append(time.perf_counter() - start)
  one_core = batch / statistics.median(times)
  workers = stream_loaders.default_workers() + 1 if os.cpu_count() > 1 else 1
  workers = min(workers, os.cpu_count())
  iterator = stream_loaders.iterate(batches, workers, repeat=True)
  for _ in range(workers):  # each worker started, its first batch made
    stream_loaders.next_batch(iterator)
  start = time.perf_counter()
  count = max(steps - workers, 4 * workers)
  for _ in range(count):
    stream_loaders.next_batch(iterator)
  all_cores = count * batch / (time.perf_counter() - start)
  iterator.close()
  return one_core, all_cores, workers, dataset.preprocessing.augmentation


def throughput_table(args) -> str:
  rows = []
  with tempfile.TemporaryDirectory() as root:
    for size, stored, image_size in ((32, 32, None), (64, 64, None), (224, 256, 224)):
      folder = write_jpegs(os.path.join(root, str(size)), args.images, stored)
      one_core, all_cores, workers, augmentation = host_rate(folder, image_size, args.batch)
      rows.append((size, stored, augmentation, one_core, all_cores, workers))
  lines = [f"Stream host throughput on {throughput_benchmark.cpu_description()}; batches of "
           f"{args.batch}, {args.images} JPEGs per size (`benchmarks/stream.py throughput`).",
           "",
           "| images | JPEGs | augmentation | img/s, one core | img/s, Grain workers | "
           "cores per 10,000 img/s |",
           "|---|---|---|---|---|---|"]
  for size, stored, augmentation, one_core, all_cores, workers in rows:
    lines.append(f"| {size}x{size} | {stored}x{stored} | {augmentation} | {one_core:,.0f} | "
                 f"{all_cores:,.0f} ({workers} workers) | {10_000 / one_core:.1f} |")
  cores_32 = H100_RESNET18_IMAGES_PER_SECOND / rows[0][3]
  lines += ["", f"A resnet18 at batch 256 on one H100 trains {H100_RESNET18_IMAGES_PER_SECOND:,} "
            f"img/s at 32x32: streamed, it needs about {cores_32:.0f} host cores of this kind "
            "for the workers, plus one for the trainer "
            f"({'a 16-core machine suffices' if cores_32 + 1 <= 16 else 'more than a 16-core machine has'}"
            "; the memory pipeline needs none, which is why it stays the default for "
            "CIFAR-sized data)."]
  return "\n".join(lines)


MEMORY_CHILD = r"""
import json, os, resource, sys
import psutil
sys.path.insert(0, sys.argv[1])
from benchmarks import stream
from wacnn_jax.data import pipeline
from wacnn_jax.training import feeds, parallel
folder, kind = sys.argv[2:]
config = stream.data_config(folder, kind)
config.batch_size, config.eval_batch_size, config.num_epochs = 256, 256, 1
dataset = pipeline.load(config.data)
topology = parallel.Topology.current()
steps = min(100, len(dataset.train) // config.batch_size)
feed = feeds.create(config, dataset, topology, [0], len(dataset.train) // config.batch_size)
feed.to_devices()

import jax, numpy as np
class State:  # the memory feed gathers with the state's keys and step: (devices, R, ...)
  rng = parallel.put_sharded(np.asarray(jax.random.PRNGKey(0))[None, None], topology.devices)
  step = parallel.put_sharded(np.zeros((1, 1), np.int32), topology.devices)

def workers_rss():  # the stream's worker processes, together
  return sum(p.memory_info().rss for p in psutil.Process().children(recursive=True)
             if "spawn_main" in " ".join(p.cmdline()))

worker_rss = 0
for step in range(steps):
  images, labels = feed.train_chunk(State, 0, step, 1)
  images.block_until_ready()
  worker_rss = max(worker_rss, workers_rss())
for data in feed.eval_data():
  data.images.block_until_ready()
worker_rss = max(worker_rss, workers_rss())
feed.close()
print(json.dumps({"rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "worker_rss": worker_rss}))
"""


def memory_table(args) -> str:
  rows = []
  with tempfile.TemporaryDirectory() as root:
    for count in map(int, args.sizes.split(",")):
      folder = write_jpegs(os.path.join(root, str(count)), count, 64)
      for kind in ("stream", "memory"):
        result = subprocess.run([sys.executable, "-c", MEMORY_CHILD, REPO_ROOT, folder, kind],
                                capture_output=True, text=True)
        if result.returncode:
          raise SystemExit(f"{kind} at {count}: {result.stderr[-3000:]}")
        rows.append((count, kind, json.loads(result.stdout.strip().splitlines()[-1])))
  lines = [f"Peak RSS streaming 64x64 JPEGs (100 steps of 256 and an evaluation) on "
           f"{throughput_benchmark.cpu_description()} (`benchmarks/stream.py memory`).", "",
           "| training images | pipeline | peak RSS, trainer | workers' RSS together, peak |",
           "|---|---|---|---|"]
  for count, kind, rss in rows:
    worker = f"{rss['worker_rss'] / 2**20:,.0f} MiB" if kind == "stream" else "-"
    lines.append(f"| {count:,} | {kind} | {rss['rss'] / 2**20:,.0f} MiB | {worker} |")
  by = {(count, kind): rss["rss"] for count, kind, rss in rows}
  counts = sorted({count for count, _, _ in rows})
  if len(counts) >= 2:
    small, large = counts[0], counts[-1]
    lines += ["", f"From {small:,} to {large:,} images the stream's peak RSS changes by "
              f"{100 * (by[large, 'stream'] / by[small, 'stream'] - 1):+.1f} %, the memory "
              f"pipeline's by {100 * (by[large, 'memory'] / by[small, 'memory'] - 1):+.1f} %."]
  return "\n".join(lines)


LEARNING_CHILD = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from configs import cifar
from wacnn_jax.training import train
archive, kind, seed, epochs, train_examples, workdir = sys.argv[2:]
config = cifar.get_config("smoke")
config.data.image_folder, config.data.pipeline = archive, kind
config.data.max_train_examples, config.data.max_test_examples = int(train_examples), 1000
config.seed, config.num_epochs = int(seed), int(epochs)
config.schedule.name, config.optimizer.learning_rate = "cosine", 0.05
train.train_and_evaluate(config, workdir)
with open(workdir + "/metrics.jsonl") as f:
  print(json.dumps([json.loads(line)["test_accuracy"] for line in f][-1]))
"""


def learning_table(args) -> str:
  results = {}
  with tempfile.TemporaryDirectory() as root:
    for kind in ("memory", "stream"):
      for seed in map(int, args.seeds.split(",")):
        result = subprocess.run(
            [sys.executable, "-c", LEARNING_CHILD, REPO_ROOT, args.archive, kind, str(seed),
             str(args.epochs), str(args.train), os.path.join(root, f"{kind}{seed}")],
            capture_output=True, text=True)
        if result.returncode:
          raise SystemExit(f"{kind} seed {seed}: {result.stderr[-3000:]}")
        results.setdefault(kind, []).append(json.loads(result.stdout.strip().splitlines()[-1]))
  lines = [f"Test accuracy after {args.epochs} epochs on {args.train:,} CIFAR-10 training "
           f"images (1,000 test), smoke model, seeds {args.seeds}, on "
           f"{throughput_benchmark.cpu_description()} (`benchmarks/stream.py learning`).", "",
           "| pipeline | per seed | mean | std over seeds |", "|---|---|---|---|"]
  for kind, accuracies in results.items():
    lines.append(f"| {kind} | {', '.join(f'{100 * a:.1f}' for a in accuracies)} | "
                 f"{100 * np.mean(accuracies):.2f} % | {100 * np.std(accuracies, ddof=1):.2f} |")
  difference = np.mean(results["stream"]) - np.mean(results["memory"])
  spread = np.sqrt(np.var(results["stream"], ddof=1) / len(results["stream"])
                   + np.var(results["memory"], ddof=1) / len(results["memory"]))
  lines += ["", f"Difference of the means: {100 * difference:+.2f} points, "
            f"{abs(difference) / max(spread, 1e-12):.1f} standard errors."]
  return "\n".join(lines)


def write_docs(path: str, name: str, table: str) -> None:
  begin, end = f"<!-- stream_{name}:begin -->", f"<!-- stream_{name}:end -->"
  with open(path) as f:
    text = f.read()
  if begin not in text:
    raise SystemExit(f"{path} has no line {begin}")
  head, rest = text.split(begin, 1)
  _, tail = rest.split(end, 1)
  with open(path, "w") as f:
    f.write(f"{head}{begin}\n{table}\n{end}{tail}")


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  commands = parser.add_subparsers(dest="command", required=True)
  throughput = commands.add_parser("throughput")
  throughput.add_argument("--images", type=int, default=6000)
  throughput.add_argument("--batch", type=int, default=256)
  memory = commands.add_parser("memory")
  memory.add_argument("--sizes", default="20000,100000")
  learning = commands.add_parser("learning")
  learning.add_argument("--archive", default=os.path.join(REPO_ROOT, "..", "shared", "data",
                                                          "cifar10-jpeg.tar.gz"))
  learning.add_argument("--seeds", default="0,1,2")
  learning.add_argument("--epochs", type=int, default=8)
  learning.add_argument("--train", type=int, default=5000)
  for command in (throughput, memory, learning):
    command.add_argument("--docs", default=None)
  args = parser.parse_args()
  table = {"throughput": throughput_table, "memory": memory_table,
           "learning": learning_table}[args.command](args)
  print(table)
  if args.docs:
    write_docs(args.docs, args.command, table)
  return 0


if __name__ == "__main__":
  sys.exit(main())
