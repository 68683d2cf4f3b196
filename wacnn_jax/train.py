"""Training: the model and initial states a config asks for, and the loop.

    state = train_and_evaluate(config, workdir)

`train_and_evaluate` reads as setup (dataset, checkpoint or initial state),
then per epoch: train (`epochs.EpochRunner.train_epoch`: pmapped `steps.train_steps`
dispatches), check for divergence, evaluate (`steps.eval_batches`), log
(`metrics.MetricsLog`) and save (`checkpointing.Checkpointer`).

Replicas: `num_seeds` = R independent replicas of the model (seeds `seed`,
`seed + 1`, ...) train in one program, stacked on a leading replica axis R of
every state array. Replica k is the single-seed run with seed `seed + k`: its
initial state, data order and random keys are that run's. `num_seeds=1` runs
the same code with R = 1.

Determinism: the epoch permutation comes from (replica seed, epoch) and every
random key from `fold_in(state.rng, state.step)` (plus the device index), so a
run resumed from a checkpoint ends with the same parameters as an uninterrupted one.

Divergence: an epoch with a diverged step (of any replica; `steps.DIVERGED_LOSS`)
stops the run before it is evaluated or saved.

Several processes (`config.distributed`): see `parallel`. All processes take
part in checkpoint saves and restores (one shared workdir); process 0 alone
writes metrics.jsonl, TensorBoard events, config.json and the model summary.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import numbers
import os
import time
from typing import Callable

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from wacnn_jax import checkpointing
from wacnn_jax import cifar_archives
from wacnn_jax import compilation_cache
from wacnn_jax import dataset_checks
from wacnn_jax import epochs
from wacnn_jax import input_pipeline
from wacnn_jax import metrics
from wacnn_jax import models
from wacnn_jax import optim
from wacnn_jax import parallel
from wacnn_jax import status
from wacnn_jax import steps
from wacnn_jax import workdirs
from wacnn_jax.attention import AttentionSpec


# ---------------------------------------------------------------------------
# Model and initial states from the config.
# ---------------------------------------------------------------------------


# The least value of each numeric config field (the type is the default's).
NUMERIC_FIELD_MINIMUM = {
    "seed": 0, "num_seeds": 1, "batch_size": 1, "eval_batch_size": 1, "num_epochs": 0,
    "steps_per_dispatch": 0, "checkpoint_every_epochs": 1, "keep_checkpoints": 1,
    "log_every_steps": 0,
    "data.max_train_examples": 0, "data.max_test_examples": 0,
    "optimizer.learning_rate": 0, "optimizer.momentum": 0, "optimizer.weight_decay": 0,
    "schedule.decay": 0, "schedule.warmup_epochs": 0, "schedule.warmup_learning_rate": 0,
}


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Checks the numeric fields (`NUMERIC_FIELD_MINIMUM`, `schedule.boundaries`) and the
  model section (arch, attention spec, block) before any work.

  Raises ValueError naming the first bad field, e.g.
  "checkpoint_every_epochs=0 is out of range: it must be a finite number >= 1" or
  "se has no option 'kernel_size'; its options: reduction (default 4)."
  """
  def check(field, value, least):
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
        or not math.isfinite(value) or value < least):
      raise ValueError(f"{field}={value!r} is out of range: it must be a finite "
                       f"number >= {least}.")

  if not isinstance(config, ml_collections.ConfigDict):
    raise ValueError(f"the config is a {type(config).__name__}, not an ml_collections."
                     "ConfigDict: a config file's get_config() should build on "
                     "configs/default.py's.")
  for field, least in NUMERIC_FIELD_MINIMUM.items():
    value = config
    for part in field.split("."):
      if part not in value:
        raise ValueError(f"the config has no field {field}: a config file's get_config() "
                         "should build on configs/default.py's.")
      value = value[part]
    check(field, value, least)
  for boundary in config.schedule.boundaries:
    check("schedule.boundaries", boundary, 0)
  cifar_archives.check_label_mode(config.data.get("cifar100_labels", "fine"))
  create_model(config, num_classes=1)


def create_model(config: ml_collections.ConfigDict, num_classes: int,
                 axis_name: str | None = parallel.AXIS_NAME):
  """`config.model`'s network (`models.create_model`); bfloat16 compute with `half_precision`."""
  return models.create_model(
      config.model.arch, num_classes=num_classes, attention=config.model.attention,
      block=config.model.block, dtype=jnp.bfloat16 if config.half_precision else jnp.float32,
      axis_name=axis_name)


def initial_variables(model, image_shape, rng):
  """Model variables {params, batch_stats} for NHWC images of shape `image_shape` (H, W, C)."""
  dummy = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
  params_key, dropout_key = jax.random.split(rng)
  # One compiled program without the forward pass (models.batched_init).
  return model.init({"params": params_key, "dropout": dropout_key}, dummy, train=False)


def create_train_state(config, model, image_shape, learning_rate_fn,
                       rng) -> steps.TrainState:
  init_key, state_key = jax.random.split(rng)
  variables = initial_variables(model, image_shape, init_key)
  return steps.TrainState.create(
      apply_fn=model.apply,
      params=variables["params"],
      batch_stats=variables.get("batch_stats", {}),
      tx=optim.create_optimizer(config, learning_rate_fn),
      rng=state_key)


def replica_seeds(config) -> list[int]:
  """The seeds of the `num_seeds` replicas: `seed`, `seed + 1`, ..."""
  return [config.seed + k for k in range(config.num_seeds)]


def create_train_states(config, model, image_shape, learning_rate_fn) -> steps.TrainState:
  """The replicas' initial states, stacked on a leading replica axis R = `num_seeds`.

  Replica k is `create_train_state(..., PRNGKey(seed + k))`, the initial state
  of a single-seed run with seed `seed + k`.
  """
  states = [create_train_state(config, model, image_shape, learning_rate_fn,
                               jax.random.PRNGKey(seed)) for seed in replica_seeds(config)]
  # Leaf by leaf: each state has its own optimiser object, so the trees' static parts differ.
  leaves = zip(*(jax.tree.leaves(state) for state in states))
  return jax.tree.unflatten(jax.tree.structure(states[0]),
                            [jnp.stack(replicas) for replicas in leaves])


def checkpoint_identity(config, dataset: input_pipeline.Dataset) -> dict:
  """What must match between a checkpoint and any config restoring it: the model (its
  attention as the canonical spec string), its classes, the number of replicas and
  their seeds (which evaluation reports)."""
  identity = {f"model.{k}": v for k, v in config.model.to_dict().items()}
  identity["model.attention"] = str(AttentionSpec.parse(config.model.attention))
  identity["num_seeds"] = config.num_seeds
  identity["seed"] = config.seed
  identity["num_classes"] = dataset.num_classes
  identity["class_names"] = list(dataset.class_names)
  identity["image_shape"] = list(dataset.image_shape)
  return identity


# The config fields that may change when a run resumes (README, "When things go
# wrong"): how long, how fast, where and with what cadence it trains, the data's
# location (its content is compared by checksum) and, after divergence, the
# learning rate. Every other field must match the checkpoint's.
RESUMABLE_FIELDS = (
    "num_epochs", "optimizer.learning_rate", "eval_batch_size", "steps_per_dispatch",
    "checkpoint_every_epochs", "keep_checkpoints", "log_every_steps",
    "distributed", "coordinator_address", "num_processes", "process_id",
    "initialization_timeout", "heartbeat_timeout", "compilation_cache_dir",
    "data.dataset", "data.image_folder", "data.data_dir", "data.download", "data.cache_dir",
    "data.allow_missing_classes")


def _flat(tree: dict, prefix: str = "") -> dict:
  """{dotted key: JSON value} of a nested dict (tuples become lists, as in a checkpoint's meta)."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flat(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = json.loads(json.dumps(value))
  return flat


def resume_identity(config, dataset: input_pipeline.Dataset) -> dict:
  """`checkpoint_identity` plus what must also match to train on from a checkpoint.

  Every config field but RESUMABLE_FIELDS (the seed, batch size, optimiser,
  schedule, subsets, augmentation, precision, ...), the number of training
  examples, and the data as trained on: the sha256 of each split's decoded
  images and labels (`dataset_checks.content_sha256`), and of the source file
  where it is one (compared only as `checkpointing.IDENTITY_FALLBACKS` says).
  """
  identity = {k: v for k, v in _flat(config.to_dict()).items() if k not in RESUMABLE_FIELDS}
  identity.update(checkpoint_identity(config, dataset))
  identity["training examples (data.max_train_examples)"] = len(dataset.train)
  for split in ("train", "test"):
    data = getattr(dataset, split)
    identity[f"{split} data sha256"] = (
        dataset.summary.splits[split].sha256 if dataset.summary
        else dataset_checks.content_sha256(data.images, data.labels))
  if dataset.summary and dataset.summary.source_sha256:
    identity["data source sha256"] = dataset.summary.source_sha256
  return identity


# ---------------------------------------------------------------------------
# The loop.
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class Progress:
  """Where a run stands after `epoch` epochs (restored from a checkpoint's meta)."""

  epoch: int
  best_accuracy: np.ndarray  # (R,) each replica's best test accuracy
  best_mean: float = 0.0  # the best test accuracy averaged over the replicas
  checkpoint_epoch: int | None = None  # the epoch of the newest checkpoint
  checkpoint_records: list[dict] | None = None  # its epoch's metrics.jsonl records

  def add_test_accuracy(self, test_accuracy: np.ndarray) -> bool:
    """Takes an epoch's test accuracies (R,); whether their mean is the best so far."""
    self.best_accuracy = np.maximum(self.best_accuracy, test_accuracy)
    mean = float(test_accuracy.mean())
    is_best = mean >= self.best_mean
    self.best_mean = max(self.best_mean, mean)
    return is_best

  def checkpoint_meta(self, epoch: int, test_accuracy: np.ndarray, records: list[dict]) -> dict:
    """The meta saved with the checkpoint of (1-based) `epoch`, with its metrics `records`."""
    return {"epoch": epoch, "test_accuracy": float(test_accuracy.mean()),
            "best_test_accuracy": self.best_mean,
            "replica_test_accuracy": test_accuracy.tolist(),
            "replica_best_test_accuracy": self.best_accuracy.tolist(),
            "records": records}


def create_runner(config, dataset: input_pipeline.Dataset, topology: parallel.Topology):
  """The run's `epochs.EpochRunner`, and a function returning its initial host state."""
  steps_per_epoch = len(dataset.train) // config.batch_size
  if steps_per_epoch == 0:
    raise ValueError(
        f"batch_size={config.batch_size} is larger than the training set "
        f"({len(dataset.train)} examples); lower --config.batch_size.")
  learning_rate_fn = optim.create_learning_rate_fn(config, steps_per_epoch)
  initial_state = functools.partial(create_train_states, config,
                                    create_model(config, dataset.num_classes),
                                    dataset.image_shape, learning_rate_fn)
  runner = epochs.EpochRunner(config, dataset, topology, learning_rate_fn, steps_per_epoch,
                              replica_seeds(config))
  return runner, initial_state


def restore_or_initialize(initial_state: Callable[[], steps.TrainState],
                          checkpoints: checkpointing.Checkpointer, num_replicas: int):
  """The newest readable checkpoint's (host state, Progress), or the initial ones."""
  restored = checkpoints.restore_latest(jax.eval_shape(initial_state))
  if restored is None:
    return initial_state(), Progress(0, np.zeros(num_replicas))
  latest, state, meta = restored
  progress = Progress(meta["epoch"], np.asarray(meta["replica_best_test_accuracy"]),
                      meta["best_test_accuracy"], checkpoint_epoch=meta["epoch"],
                      checkpoint_records=meta.get("records"))
  logging.info("Resumed from %s/%d: epoch %d, best test accuracy %s",
               checkpoints.directory, latest, progress.epoch,
               " ".join(f"{a:.4f}" for a in progress.best_accuracy))
  return state, progress


def write_run_info(config, workdir: str, runner: epochs.EpochRunner, state) -> None:
  """config.json, dataset.json (`dataset_checks.DatasetSummary`) and the model summary
  (replica 0's variables) of a run starting to train."""
  workdirs.write_atomically(os.path.join(workdir, "config.json"),
                            config.to_json_best_effort(indent=2))
  data = runner.dataset.summary or dataset_checks.summarize(runner.dataset, runner.dataset.name)
  workdirs.write_atomically(os.path.join(workdir, "dataset.json"),
                            json.dumps(data.to_json(), indent=1))
  first = steps.replica(state, 0)
  summary = metrics.model_summary(
      create_model(config, runner.dataset.num_classes, axis_name=None),
      {"params": first.params, "batch_stats": first.batch_stats}, runner.dataset.image_shape)
  metrics.write_model_summary(
      workdir, summary, f"model: {config.model.to_dict()}\nclasses: {runner.dataset.num_classes}")
  logging.info("%s + %s: %s parameters, %.1f MFLOPs per image", config.model.arch,
               config.model.attention, f"{summary['params']:,}", summary["flops_per_image"] / 1e6)


def epoch_records(epoch: int, runner: epochs.EpochRunner, train: epochs.EpochTrain, tests: list[dict],
                  progress: Progress, epoch_seconds: float,
                  startup_seconds: float = 0.0) -> list[dict]:
  """metrics.jsonl's records of (0-based) `epoch`, one per replica (see `metrics.MetricsLog`).

  `compile_seconds` and `startup_seconds` (the process's start to its first
  epoch: imports, data, model, restore) are those of the first epoch a process
  trains, 0 for the others.
  """
  return [{
      "epoch": epoch + 1,
      "replica": k,
      "seed": seed,
      "step": (epoch + 1) * runner.steps_per_epoch,
      "learning_rate": float(train.learning_rates[0]),
      "train_loss": float(train.loss[k]),
      "train_accuracy": float(train.accuracy[k]),
      "test_loss": test["loss"],
      "test_accuracy": test["accuracy"],
      "test_top5_accuracy": test["top5_accuracy"],
      "best_test_accuracy": float(progress.best_accuracy[k]),
      "test_examples": test["count"],
      "images_per_sec": float(train.images[k]) / max(train.seconds, 1e-9),
      "compile_seconds": train.compile_seconds,
      "startup_seconds": startup_seconds,
      "epoch_seconds": epoch_seconds,
  } for k, (seed, test) in enumerate(zip(runner.seeds, tests))]


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       devices=None) -> steps.TrainState:
  """Trains `config` on local `devices` (default: all), writing to `workdir`.

  Resumes from the newest readable checkpoint in `workdir/checkpoints` if
  there is one (`Checkpointer.restore_latest`), holding the workdir's lock
  (`workdirs.lock`) throughout. Returns the final states of the `num_seeds`
  replicas (leading axis R, without the device axis, on the host); with no
  epoch left to train, the restored (or initial) ones.

  A checkpoint holds all replicas; its meta records, per replica, the test and
  best test accuracies (`replica_test_accuracy`, `replica_best_test_accuracy`)
  and, for ranking checkpoints, their means over the replicas
  (`test_accuracy`, `best_test_accuracy`).

  Problems the user can fix raise ValueError (a config field),
  `workdirs.WorkdirError`, `input_pipeline.DatasetError`,
  `checkpointing.CheckpointError` or `epochs.DivergenceError`, each with a message.
  """
  # Setup: every check that needs no data first.
  validate_config(config)
  compilation_cache.enable(config.get("compilation_cache_dir"))
  parallel.initialize_distributed(config)
  topology = parallel.Topology.current(devices)
  topology.per_device_batch(config.batch_size)
  workdirs.prepare(workdir)
  primary = topology.process_index == 0
  with contextlib.ExitStack() as cleanup:
    if primary:
      cleanup.enter_context(workdirs.lock(workdir))
    dataset = status.load_dataset(config.data)
    runner, initial_state = create_runner(config, dataset, topology)
    checkpoints = cleanup.enter_context(checkpointing.Checkpointer(
        workdir, keep=config.keep_checkpoints, identity=resume_identity(config, dataset)))
    metrics_log = cleanup.enter_context(
        metrics.MetricsLog(workdir, enabled=primary, num_replicas=config.num_seeds))
    state, progress = restore_or_initialize(initial_state, checkpoints, config.num_seeds)
    # Records of later epochs are from a run that stopped before saving them.
    metrics_log.truncate_after(progress.epoch, progress.checkpoint_records)
    if progress.epoch >= config.num_epochs:
      logging.warning("Nothing to train: %s", f"num_epochs={config.num_epochs}."
                      if progress.checkpoint_epoch is None else
                      f"the checkpoint in {checkpoints.directory} is at epoch "
                      f"{progress.epoch} and num_epochs={config.num_epochs}; raise "
                      "--config.num_epochs to train on.")
      return state
    if primary:
      write_run_info(config, workdir, runner, state)
    state = runner.to_devices(state)
    logging.info("Training %s on %s: %d examples, %d steps/epoch, %d devices, seeds %s, "
                 "epochs %d..%d", config.model.arch, dataset.name, len(dataset.train),
                 runner.steps_per_epoch, topology.global_device_count, runner.seeds,
                 progress.epoch + 1, config.num_epochs)

    # The epochs: train, check, evaluate, log, save.
    clock = status.RunClock(progress.epoch, config.num_epochs)
    for epoch in range(progress.epoch, config.num_epochs):
      epoch_start = time.perf_counter()
      state, train = runner.train_epoch(state, epoch, show_progress=primary)
      train.raise_if_diverged(epoch, runner.seeds, progress.checkpoint_epoch,
                              checkpoints.directory)
      tests = runner.evaluate(state)
      test_accuracy = np.array([test["accuracy"] for test in tests])
      is_best = progress.add_test_accuracy(test_accuracy)
      records = epoch_records(epoch, runner, train, tests, progress,
                              time.perf_counter() - epoch_start,
                              clock.startup_seconds if not clock.epochs else 0.0)
      metrics_log.write_steps(epoch * runner.steps_per_epoch, train.losses,
                              train.learning_rates, config.log_every_steps)
      metrics_log.write_epoch(records)
      clock.add_epoch(records[0]["epoch_seconds"], train.compile_seconds)
      metrics.log_records(records, config.num_epochs, clock.eta_seconds())
      if (epoch + 1 == config.num_epochs or (epoch + 1) % config.checkpoint_every_epochs == 0
          or is_best):
        host_state = parallel.unreplicate(state)
        checkpoints.save(int(host_state.step[0]), host_state,
                         progress.checkpoint_meta(epoch + 1, test_accuracy, records))
        progress.checkpoint_epoch = epoch + 1

    # Finish.
    status.log_summary(config.num_epochs, config.num_epochs, clock.epochs, clock.elapsed(),
                       progress.best_mean, metrics_log.best_epoch(), float(test_accuracy.mean()),
                       checkpoints.directory, config.num_seeds)
  return parallel.unreplicate(state)


