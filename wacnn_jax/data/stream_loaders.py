"""The stream pipeline's batches, made by Grain worker processes: read, decoded, augmented.

    batches = TrainBatches(dataset.train, plan, "pad_crop", first_step=0, last_step=3900)
    iterator = iterate(batches, workers=8)
    images, labels = next_batch(iterator)   # uint8 (R, b, H, W, 3), int32 (R, b): a step

Element k of `TrainBatches` is the batch of step `first_step + k` of every
replica, as the plan (`batch_plans.TrainPlan`) says; of `EvalBatches`, this
process's k-th evaluation batch over its devices. Each is made whole inside
one worker process (Grain `MapDataset.source(...).mp_prefetch`, workers
started with spawn; about 200 MB each, most of it Python, NumPy and the
JAX that Grain imports): its images read from the split's
records, decoded and brought to size (`StreamSplit.read`) and augmented
(`host_augmentation`, from the plan's Generator of that batch). Grain hands
the workers' elements back in order, so the k-th batch is the same whatever
the number of workers. A record that cannot be read or decoded stops the run
with the DatasetError that names it; a worker that dies (killed, out of
memory) is one DatasetError (`next_batch`), never a hang; and the workers end
within a second of their trainer, however it ends (`exit_with_parent`).
"""

from __future__ import annotations

import functools
import os
import threading
import time

from absl import flags
import grain
import numpy as np

from wacnn_jax.data.batch_plans import TrainPlan
from wacnn_jax.data.dataset import DatasetError
from wacnn_jax.data import host_augmentation

# Batches made ahead by each worker.
WORKER_BUFFER = 2
# How often a worker checks that the trainer that started it still runs.
PARENT_CHECK_SECONDS = 1.0
MAX_DEFAULT_WORKERS = 16


def default_workers() -> int:
  """One worker per CPU core but one (the trainer's), at least 1 and at most 16."""
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return max(1, min((cores or 1) - 1, MAX_DEFAULT_WORKERS))


class TrainBatches:
  """Grain source of training batches: element k is step `first_step + k`, images uint8
  (R, b, H, W, 3) augmented and labels int32 (R, b), R the plan's replicas."""

  def __init__(self, split, plan: TrainPlan, augmentation: str, first_step: int,
               last_step: int):
    self.split, self.plan, self.augmentation = split, plan, augmentation
    self.first_step, self.last_step = first_step, last_step

  def __len__(self) -> int:
    return self.last_step - self.first_step

  def __getitem__(self, k: int) -> dict:
    step = self.first_step + int(k)
    images, labels = [], []
    for replica in range(len(self.plan.seeds)):
      records = self.plan.records(replica, step)
      pixels = np.stack([self.split.read(int(i)) for i in records])
      images.append(host_augmentation.augment(pixels, self.plan.rng(replica, step),
                                              self.augmentation))
      labels.append(self.split.labels[records])
    return {"images": np.stack(images), "labels": np.stack(labels)}

  def __repr__(self) -> str:
    return f"TrainBatches({self.plan}, {self.augmentation}, steps {self.first_step}..)"


class EvalBatches:
  """Grain source of this process's evaluation batches: element k is batch k over its
  devices, images uint8 (D, b, H, W, 3), labels int32 (D, b) and mask bool (D, b), from
  `batch_plans.eval_layout`'s `indices` and `mask` (D, num_batches, b)."""

  def __init__(self, split, indices: np.ndarray, mask: np.ndarray):
    self.split, self.indices, self.mask = split, indices, mask

  def __len__(self) -> int:
    return self.indices.shape[1]

  def __getitem__(self, k: int) -> dict:
    indices = self.indices[:, int(k)]
    images = np.stack([self.split.read(int(i)) for i in indices.reshape(-1)])
    return {"images": images.reshape(indices.shape + images.shape[1:]),
            "labels": self.split.labels[indices], "mask": self.mask[:, int(k)]}


def iterate(batches, workers: int, repeat: bool = False):
  """A Grain iterator over `batches` (TrainBatches or EvalBatches; for ever if `repeat`),
  made by `workers` processes (0: in this process)."""
  if not flags.FLAGS.is_parsed():  # Grain reads its absl flags (defaults outside an absl app)
    flags.FLAGS.mark_as_parsed()
  dataset = grain.MapDataset.source(batches)
  if repeat:
    dataset = dataset.repeat()
  # No read-ahead threads inside a worker: an element is a whole batch.
  dataset = dataset.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
  if workers:
    dataset = dataset.mp_prefetch(
        grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=WORKER_BUFFER),
        worker_init_fn=functools.partial(exit_with_parent, os.getpid()))
  return iter(dataset)


def exit_with_parent(parent: int, worker_index: int, worker_count: int) -> None:
  """In each worker: a thread that ends the worker once its parent (the trainer) is gone,
  however that ended (SIGTERM and SIGKILL leave no time to stop the workers)."""
  del worker_index, worker_count

  def watch():
    while os.getppid() == parent:
      time.sleep(PARENT_CHECK_SECONDS)
    os._exit(0)  # pylint: disable=protected-access

  threading.Thread(target=watch, daemon=True, name="exit with parent").start()


def next_batch(iterator) -> dict:
  """The iterator's next batch, copied out of the workers' shared memory (which is freed);
  DatasetError (one line) for a worker process that died."""
  try:
    return {key: np.array(value) for key, value in next(iterator).items()}
  except RuntimeError as e:
    if "terminated unexpectedly" not in str(e):
      raise
    code = str(e).split("exit code ")[-1].split(".")[0].strip()
    killed = ": killed, e.g. for lack of memory" if code == "-9" else ""
    raise DatasetError(
        f"a stream worker process died (exit code {code}{killed}). Lower data.workers or the "
        "batch size, or use data.pipeline='memory'; the same command resumes from the last "
        "checkpoint.") from e
