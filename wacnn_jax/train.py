"""Training and evaluation: pure pmapped steps and the `train_and_evaluate` loop.

Data lives on the accelerators: the training set (uint8) is replicated on every
local device and each step gathers its batch by index, augments and normalises
it inside the jitted function. The host only sends indices. A pmapped call runs
`steps_per_dispatch` steps under `lax.scan`; gradients are averaged with
`lax.pmean` and BatchNorm statistics are averaged across devices
(cross-replica BN, through the models' `axis_name`). Evaluation runs the whole
(padded, masked) test set in one pmapped call.

Replicas: `num_seeds` = R independent replicas of the model (seeds `seed`,
`seed + 1`, ...) train in one program. Every state array has a leading replica
axis R (after the device axis, under pmap: (devices, R, ...)); `train_steps`
and `eval_batches` are vmapped over it, and the collectives over the pmap axis
inside the vmap stay per replica. Replica k is the single-seed run with seed
`seed + k`: its initial state, data order and random keys are that run's.
`num_seeds=1` runs the same code with R = 1.

Determinism: the epoch permutation comes from (replica seed, epoch) and every
random key from `fold_in(state.rng, state.step)` (plus the device index), so a
run resumed from a checkpoint ends with the same parameters as an uninterrupted one.

Divergence: every step also reports whether it diverged (`DIVERGED_LOSS`), a
flag computed on the device and read with the epoch's other metrics; an epoch
with a diverged step (of any replica) stops the run before it is evaluated or saved.

With several processes (`config.distributed`, `initialize_distributed`) the
pmapped calls span every process's devices (`Topology.mapped_devices`). Each
process reads the whole dataset and feeds its slice of every global batch
(`epoch_indices`) and of the test set (`shard_eval_data`); all of them take
part in checkpoint saves and restores (one shared workdir), and process 0
alone writes metrics.jsonl, TensorBoard events, config.json and the model
summary.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import numbers
import os
import sys
import time
from typing import Any, Callable

from absl import logging
import flax
from flax import jax_utils
from flax.training import train_state
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from wacnn_jax import checkpointing
from wacnn_jax import input_pipeline
from wacnn_jax import models
from wacnn_jax import workdirs
from wacnn_jax.attention import AttentionSpec

AXIS_NAME = "batch"
# A step diverged when its mean cross-entropy is not finite or above this (chance
# level is log(num_classes): 2.3 for CIFAR-10), or its new parameters are not finite.
DIVERGED_LOSS = 1e4


class DivergenceError(RuntimeError):
  """Training diverged; nothing of the epoch in which it happened was evaluated or saved."""


class TrainState(train_state.TrainState):
  """step, params, opt_state (from flax) plus BatchNorm statistics and a base PRNG key."""

  batch_stats: Any
  rng: jax.Array


# ---------------------------------------------------------------------------
# Model, optimiser and schedule from the config.
# ---------------------------------------------------------------------------


# The least value of each numeric config field (the type is the default's).
NUMERIC_FIELD_MINIMUM = {
    "seed": 0, "num_seeds": 1, "batch_size": 1, "eval_batch_size": 1, "num_epochs": 0,
    "steps_per_dispatch": 0, "checkpoint_every_epochs": 1, "keep_checkpoints": 1,
    "checkpoint_step": -1, "log_every_steps": 0,
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

  for field, least in NUMERIC_FIELD_MINIMUM.items():
    value = config
    for part in field.split("."):
      value = value[part]
    check(field, value, least)
  for boundary in config.schedule.boundaries:
    check("schedule.boundaries", boundary, 0)
  create_model(config, num_classes=1)


def create_model(config: ml_collections.ConfigDict, num_classes: int,
                 axis_name: str | None = AXIS_NAME):
  """`config.model`'s network (`models.create_model`); bfloat16 compute with `half_precision`."""
  return models.create_model(
      config.model.arch, num_classes=num_classes, attention=config.model.attention,
      block=config.model.block, dtype=jnp.bfloat16 if config.half_precision else jnp.float32,
      axis_name=axis_name)


def create_learning_rate_fn(config: ml_collections.ConfigDict,
                            steps_per_epoch: int) -> Callable[[Any], Any]:
  """LR as a function of the global step, following the epoch-based recipe.

  `step`: base * decay ** (number of `boundaries` epochs passed).
  `cosine`: cosine decay from base to 0 over the epochs after warm-up.
  Warm-up: `warmup_learning_rate` for the first `warmup_epochs` epochs.
  """
  schedule = config.schedule
  base = config.optimizer.learning_rate
  if schedule.name not in ("step", "cosine"):
    raise ValueError(
        f"unknown schedule.name {schedule.name!r}; use 'step' or 'cosine'.")

  def learning_rate_fn(step):
    epoch = jnp.floor_divide(step, steps_per_epoch)
    if schedule.name == "step":
      passed = sum((epoch >= b).astype(jnp.int32) for b in schedule.boundaries)
      lr = base * jnp.power(schedule.decay, passed)
    else:
      span = max(1, config.num_epochs - schedule.warmup_epochs)
      progress = jnp.clip((step / steps_per_epoch - schedule.warmup_epochs) / span, 0, 1)
      lr = base * 0.5 * (1 + jnp.cos(jnp.pi * progress))
    if schedule.warmup_epochs:
      lr = jnp.where(epoch < schedule.warmup_epochs,
                     schedule.warmup_learning_rate, lr)
    return jnp.asarray(lr, jnp.float32)

  return learning_rate_fn


def create_optimizer(config, learning_rate_fn) -> optax.GradientTransformation:
  """SGD with momentum and PyTorch's coupled weight decay.

  Per parameter: g <- g + wd * p; buf <- momentum * buf + g; p <- p - lr * buf
  (torch.optim.SGD with dampening 0), for every parameter, BN and biases too.
  """
  opt = config.optimizer
  return optax.chain(
      optax.add_decayed_weights(opt.weight_decay),
      optax.sgd(learning_rate_fn, momentum=opt.momentum, nesterov=opt.nesterov))


def initial_variables(model, image_shape, rng):
  """Model variables {params, batch_stats} for NHWC images of shape `image_shape` (H, W, C)."""
  dummy = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
  params_key, dropout_key = jax.random.split(rng)
  return jax.jit(functools.partial(model.init, train=False))(
      {"params": params_key, "dropout": dropout_key}, dummy)


def create_train_state(config, model, image_shape, learning_rate_fn,
                       rng) -> TrainState:
  init_key, state_key = jax.random.split(rng)
  variables = initial_variables(model, image_shape, init_key)
  return TrainState.create(
      apply_fn=model.apply,
      params=variables["params"],
      batch_stats=variables.get("batch_stats", {}),
      tx=create_optimizer(config, learning_rate_fn),
      rng=state_key)


def replica_seeds(config) -> list[int]:
  """The seeds of the `num_seeds` replicas: `seed`, `seed + 1`, ..."""
  return [config.seed + k for k in range(config.num_seeds)]


def create_train_states(config, model, image_shape, learning_rate_fn) -> TrainState:
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


def replica(tree, k: int):
  """Replica k of a pytree with a leading replica axis R (R, ...) -> (...)."""
  return jax.tree.map(lambda x: x[k], tree)


# ---------------------------------------------------------------------------
# Pure step functions (run under pmap with axis AXIS_NAME; `train_steps` and
# `eval_batches` over the leading replica axis R of the state).
# ---------------------------------------------------------------------------


def cross_entropy(logits, labels):
  """Per-example cross-entropy (N,), computed in float32."""
  return optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), labels)


def scan(body, carry, xs, *, unroll: bool):
  """`lax.scan`, or with `unroll` a Python loop (no XLA while loop at all)."""
  if not unroll:
    return jax.lax.scan(body, carry, xs)
  outputs = []
  for i in range(jax.tree.leaves(xs)[0].shape[0]):
    carry, out = body(carry, jax.tree.map(lambda x: x[i], xs))
    outputs.append(out)
  return carry, jax.tree.map(lambda *ys: jnp.stack(ys), *outputs)


def train_step(state: TrainState, images, labels, *, augment: bool,
               compute_dtype, learning_rate_fn):
  """One SGD step on a per-device batch of uint8 images (b, H, W, C), labels (b,).

  Returns the new state and the step's metrics summed over all devices, plus
  the learning rate and `diverged` (bool: mean loss not finite or above
  `DIVERGED_LOSS`, or new parameters not finite; the same on every device).
  """
  step_key = jax.random.fold_in(state.rng, state.step)
  device_key = jax.random.fold_in(step_key, jax.lax.axis_index(AXIS_NAME))
  augment_key, dropout_key = jax.random.split(device_key)
  if augment:
    images = input_pipeline.augment_batch(images, augment_key)
  x = input_pipeline.normalize(images, compute_dtype)

  def loss_fn(params):
    logits, new_model_state = state.apply_fn(
        {"params": params, "batch_stats": state.batch_stats}, x, train=True,
        rngs={"dropout": dropout_key}, mutable=["batch_stats"])
    loss = cross_entropy(logits, labels)
    return loss.mean(), (loss, logits, new_model_state)

  grads, (loss, logits, new_model_state) = jax.grad(loss_fn, has_aux=True)(
      state.params)
  grads = jax.lax.pmean(grads, AXIS_NAME)
  new_state = state.apply_gradients(
      grads=grads, batch_stats=new_model_state["batch_stats"])
  metrics = {
      "loss_sum": loss.sum(),
      "correct": (logits.argmax(-1) == labels).sum(),
      "count": jnp.asarray(labels.shape[0], jnp.int32),
  }
  metrics = jax.lax.psum(metrics, AXIS_NAME)
  metrics["learning_rate"] = learning_rate_fn(state.step)
  # NaN compares False, so a NaN loss counts as diverged. The squares overflow
  # (to inf) only for parameters beyond ~1e19, diverged as well.
  squares = sum(jnp.sum(jnp.square(p)) for p in jax.tree.leaves(new_state.params))
  metrics["diverged"] = ~((metrics["loss_sum"] <= DIVERGED_LOSS * metrics["count"])
                          & jnp.isfinite(squares))
  return new_state, metrics


def train_steps(state, train_images, train_labels, indices, *, unroll: bool = False,
                **step_kwargs):
  """S steps of R replicas in one dispatch: `train_step` scanned over the steps, vmapped over R.

  `state` holds R replicas (leading axis R); `indices` (R, S, b) are each
  replica's batches. `train_images` (N, H, W, C) uint8 and `train_labels` (N,)
  are the whole training set on this device, shared by the replicas. Returns
  the states and per-step metrics (R, S). `unroll` (used on CPU, see
  `Topology.loops_in_xla`) unrolls the loop.
  """

  def replica_steps(state, replica_indices):
    def body(state, batch_indices):
      return train_step(state, train_images[batch_indices],
                        train_labels[batch_indices], **step_kwargs)

    return scan(body, state, replica_indices, unroll=unroll)

  return jax.vmap(replica_steps)(state, indices)


def eval_batches(state, images, labels, mask, *, num_classes: int,
                 compute_dtype, transform: Callable | None = None,
                 unroll: bool = False):
  """Evaluates (nb, b, H, W, C) uint8 batches with a 0/1 mask (nb, b), for each replica.

  `state` holds R replicas (leading axis R). `transform(x_uint8, key) -> uint8`
  (optional) corrupts the images first, with keys from each replica's
  `state.rng`. Returns sums over all devices with a leading axis R: loss,
  top-1/top-5 hits, count, and the confusion matrix (true class rows x
  predicted columns).
  """
  return jax.vmap(functools.partial(
      _eval_replica, images=images, labels=labels, mask=mask, num_classes=num_classes,
      compute_dtype=compute_dtype, transform=transform, unroll=unroll))(state)


def _eval_replica(state, *, images, labels, mask, num_classes, compute_dtype,
                  transform, unroll):
  """`eval_batches` of one replica."""
  variables = {"params": state.params, "batch_stats": state.batch_stats}

  def body(totals, batch):
    index, batch_images, batch_labels, batch_mask = batch
    if transform is not None:
      key = jax.random.fold_in(
          jax.random.fold_in(state.rng, index), jax.lax.axis_index(AXIS_NAME))
      batch_images = transform(batch_images, key)
    logits = state.apply_fn(variables, input_pipeline.normalize(
        batch_images, compute_dtype), train=False).astype(jnp.float32)
    predictions = logits.argmax(-1)
    top5 = jax.lax.top_k(logits, min(5, num_classes))[1]
    weights = batch_mask.astype(jnp.float32)
    totals = {
        "loss_sum": totals["loss_sum"] + (cross_entropy(logits, batch_labels) * weights).sum(),
        "correct": totals["correct"] + ((predictions == batch_labels) * weights).sum(),
        "top5_correct": totals["top5_correct"] + (
            (top5 == batch_labels[:, None]).any(-1) * weights).sum(),
        "count": totals["count"] + weights.sum(),
        "confusion": totals["confusion"] + jnp.einsum(
            "n,ni,nj->ij", weights, jax.nn.one_hot(batch_labels, num_classes),
            jax.nn.one_hot(predictions, num_classes)),
    }
    return totals, None

  zeros = {k: jnp.zeros((), jnp.float32)
           for k in ("loss_sum", "correct", "top5_correct", "count")}
  zeros["confusion"] = jnp.zeros((num_classes, num_classes), jnp.float32)
  totals, _ = scan(
      body, zeros, (jnp.arange(images.shape[0]), images, labels, mask), unroll=unroll)
  return jax.lax.psum(totals, AXIS_NAME)


def summarize_eval(totals) -> list[dict]:
  """Host-side summaries of `eval_batches` totals (leading axis R): one dict per replica."""
  totals = jax.device_get(totals)
  return [_summarize_replica(replica(totals, k)) for k in range(len(totals["count"]))]


def _summarize_replica(totals) -> dict:
  count = float(totals["count"])
  confusion = np.asarray(totals["confusion"])
  with np.errstate(invalid="ignore", divide="ignore"):
    per_class = np.diag(confusion) / confusion.sum(axis=1)
  return {
      "loss": float(totals["loss_sum"]) / count,
      "accuracy": float(totals["correct"]) / count,
      "top5_accuracy": float(totals["top5_correct"]) / count,
      "count": int(round(count)),
      "per_class_accuracy": per_class.tolist(),
      "confusion": confusion.astype(np.int64).tolist(),
  }


# ---------------------------------------------------------------------------
# Device placement.
# ---------------------------------------------------------------------------


def initialize_distributed(config: ml_collections.ConfigDict) -> None:
  """Joins the multi-process runtime if `config.distributed` (once per process).

  Unset `coordinator_address`, `num_processes` and `process_id` are detected
  by JAX from the environment (SLURM, Open MPI, Cloud TPU). A process that has
  not connected within `initialization_timeout` seconds, or has sent no
  heartbeat for `heartbeat_timeout` seconds, stops every process with an error.
  """
  if not config.distributed or jax.distributed.is_initialized():
    return
  jax.distributed.initialize(
      coordinator_address=config.coordinator_address,
      num_processes=config.num_processes,
      process_id=config.process_id,
      initialization_timeout=config.initialization_timeout,
      heartbeat_timeout_seconds=config.heartbeat_timeout)


@dataclasses.dataclass(frozen=True)
class Topology:
  """How a global batch splits over hosts and local devices.

  `devices` are this process's devices. The pmapped functions map over
  `mapped_devices`: with several processes, every process's devices, ordered
  by process and then as on each process, so that global device
  `process_index * local_device_count + i` is this process's `devices[i]`.
  """

  devices: tuple
  process_index: int = 0
  process_count: int = 1

  @classmethod
  def current(cls, devices=None) -> "Topology":
    """The running processes; `devices` (a subset of the local ones) only with one process."""
    if devices is not None and jax.process_count() > 1:
      raise ValueError(
          f"with {jax.process_count()} processes every process maps over all "
          "its local devices; pass devices=None.")
    return cls(tuple(devices or jax.local_devices()), jax.process_index(),
               jax.process_count())

  @property
  def mapped_devices(self) -> tuple:
    if self.process_count == 1:
      return self.devices
    return tuple(sorted(jax.devices(), key=lambda d: (d.process_index, d.id)))

  @property
  def loops_in_xla(self) -> bool:
    """Whether to run many steps per dispatch as an XLA loop.

    XLA:CPU runs convolutions inside loop bodies ~20x slower than at top
    level, so on CPU every dispatch is one (unrolled) step or batch; on GPU and
    TPU an epoch is one `lax.scan`.
    """
    return self.devices[0].platform != "cpu"

  @property
  def local_device_count(self) -> int:
    return len(self.devices)

  @property
  def global_device_count(self) -> int:
    return self.local_device_count * self.process_count

  def per_device_batch(self, global_batch: int, what="batch_size") -> int:
    if global_batch <= 0 or global_batch % self.global_device_count:
      raise ValueError(
          f"{what}={global_batch} does not divide by the {self.global_device_count} "
          f"devices ({self.process_count} host(s) x {self.local_device_count}); "
          f"use a multiple of {self.global_device_count}, e.g. "
          f"--config.{what}={max(1, global_batch // self.global_device_count) * self.global_device_count}.")
    return global_batch // self.global_device_count


def epoch_indices(num_examples: int, epoch: int, seed: int, steps: int,
                  topology: Topology, per_device_batch: int) -> np.ndarray:
  """This host's indices for one epoch: int32 (local_devices, steps, per_device_batch).

  One permutation per (seed, epoch), the same on every host; each host takes
  its slice of every global batch. The last partial batch is dropped.
  """
  global_batch = per_device_batch * topology.global_device_count
  order = np.random.default_rng([seed, epoch]).permutation(num_examples)
  order = order[:steps * global_batch].reshape(
      steps, topology.process_count, topology.local_device_count,
      per_device_batch)[:, topology.process_index]
  return np.ascontiguousarray(order.transpose(1, 0, 2).astype(np.int32))


@dataclasses.dataclass(frozen=True)
class EvalData:
  """A split padded to whole batches and sharded over local devices.

  images (devices, nb, b, H, W, C) uint8; labels and mask (devices, nb, b).
  """

  images: jax.Array
  labels: jax.Array
  mask: jax.Array


def shard_eval_data(split: input_pipeline.Split, topology: Topology,
                    global_batch: int) -> EvalData:
  """Pads `split` so every example is evaluated exactly once, then shards it.

  The per-device batch is ceil(global_batch / devices), so any eval batch size
  works with any device count; padded examples have mask 0.
  """
  per_device = max(1, math.ceil(global_batch / topology.global_device_count))
  n = len(split)
  block = per_device * topology.global_device_count
  num_batches = max(1, math.ceil(n / block))
  total = num_batches * block
  pad = total - n
  images = np.concatenate([split.images, np.zeros((pad,) + split.images.shape[1:], np.uint8)])
  labels = np.concatenate([split.labels, np.zeros((pad,), np.int32)])
  mask = np.concatenate([np.ones((n,), np.bool_), np.zeros((pad,), np.bool_)])

  def local(array):  # (total, ...) -> this host's (devices, nb, b, ...)
    per_host = total // topology.process_count
    array = array[topology.process_index * per_host:(topology.process_index + 1) * per_host]
    array = array.reshape((topology.local_device_count, num_batches, per_device)
                          + array.shape[1:])
    return put_sharded(array, topology.devices)

  return EvalData(local(images), local(labels), local(mask))


def make_eval_fn(config, num_classes: int, topology: Topology, transform=None):
  """`evaluate(replicated_state, eval_data) -> totals` (replicated; see `eval_batches`).

  One dispatch for the whole split where `topology.loops_in_xla`, else one
  per batch with the totals summed on the devices.
  """
  p_eval = jax.pmap(
      functools.partial(
          eval_batches, num_classes=num_classes, transform=transform,
          unroll=not topology.loops_in_xla,
          compute_dtype=jnp.bfloat16 if config.half_precision else jnp.float32),
      axis_name=AXIS_NAME, devices=topology.mapped_devices)

  def evaluate(state, data: EvalData):
    num_batches = data.images.shape[1]
    chunk = num_batches if topology.loops_in_xla else 1
    totals = None
    for begin in range(0, num_batches, chunk):
      part = p_eval(state, *(a[:, begin:begin + chunk]
                             for a in (data.images, data.labels, data.mask)))
      totals = part if totals is None else jax.tree.map(jnp.add, totals, part)
    return totals

  return evaluate


def make_train_fn(config, learning_rate_fn, topology: Topology):
  """pmapped `train_steps(state, train_images, train_labels, indices)`; donates state."""
  return jax.pmap(
      functools.partial(
          train_steps, augment=config.data.augment, unroll=not topology.loops_in_xla,
          learning_rate_fn=learning_rate_fn,
          compute_dtype=jnp.bfloat16 if config.half_precision else jnp.float32),
      axis_name=AXIS_NAME, devices=topology.mapped_devices, donate_argnums=(0,))


def put_sharded(array: np.ndarray, devices) -> jax.Array:
  """Host array (devices, ...) -> one slice per device, as pmap takes its inputs."""
  mesh = jax.sharding.Mesh(np.array(devices), ("devices",))
  return jax.device_put(array, jax.NamedSharding(mesh, jax.P("devices")))


def replicate_state(tree, topology: Topology):
  """Copies a host pytree to every local device, laid out as pmap outputs are.

  (So that a compiled step sees one input layout from the first call on.)
  """
  return jax.pmap(lambda x: x, devices=topology.mapped_devices)(
      jax_utils.replicate(tree, devices=topology.devices))


def unreplicate(tree):
  """First replica of a pmapped (devices, ...) pytree, fetched to host memory.

  (flax's `jax_utils.unreplicate` keeps the device axis when pmap ran on a
  subset of the local devices.)
  """
  return jax.device_get(jax.tree.map(lambda x: x.addressable_shards[0].data[0], tree))


# ---------------------------------------------------------------------------
# Reporting.
# ---------------------------------------------------------------------------


def model_summary(model, variables, image_shape) -> dict:
  """Parameter count, FLOPs per image and the layer table.

  FLOPs: XLA's cost analysis of the unoptimised HLO of the eval forward pass
  (the same on every backend; after GPU compilation convolutions are cuDNN
  calls that the analysis does not count).
  """
  params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables["params"]))
  x = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
  lowered = jax.jit(functools.partial(model.apply, train=False)).lower(variables, x)
  cost = lowered.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  flops = float((cost or {}).get("flops", float("nan")))
  table = model.tabulate(
      {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(0)}, x,
      train=False, console_kwargs={"width": 200, "force_terminal": False})
  return {"params": params, "flops_per_image": flops, "table": table}


class MetricsLog:
  """metrics.jsonl plus TensorBoard event files, one row per epoch and replica.

  metrics.jsonl holds one JSON object per epoch and replica, the replicas of
  an epoch in order: {"epoch", "replica": k, "seed": seed + k, ...}, with the
  fields of a single-seed run with seed `seed + k` (`images_per_sec` is the
  replica's own: the rows of an epoch sum to the program's throughput).
  TensorBoard: one event folder per replica, `tensorboard/replica<k>`.
  """

  def __init__(self, workdir: str, enabled: bool, num_replicas: int):
    self.enabled = enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tensorboard = []
    if enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tensorboard = [SummaryWriter(os.path.join(workdir, "tensorboard", f"replica{k}"))
                           for k in range(num_replicas)]

  def truncate_after(self, epoch: int) -> None:
    """Drops records of epochs after `epoch` (written before a crash), in one atomic rewrite.

    A torn line (the process was killed while appending it) is dropped too.
    """
    if not (self.enabled and os.path.exists(self.path)):
      return
    kept = []
    with open(self.path) as f:
      for line in f:
        try:
          record = json.loads(line)
        except json.JSONDecodeError:
          continue
        if record["epoch"] <= epoch:
          kept.append(json.dumps(record) + "\n")
    workdirs.write_atomically(self.path, "".join(kept))

  def write_epoch(self, records: list[dict]) -> None:
    """Appends one epoch's records, `records[k]` of replica k, in one write."""
    if not self.enabled:
      return
    with open(self.path, "a") as f:
      f.write("".join(json.dumps(record) + "\n" for record in records))
    for writer, record in zip(self._tensorboard, records):
      for key, value in record.items():
        if key not in ("epoch", "replica", "seed") and isinstance(value, (int, float)):
          writer.add_scalar(f"epoch/{key}", value, record["epoch"])
      writer.flush()

  def write_steps(self, first_step: int, losses, learning_rates, every: int) -> None:
    """TensorBoard train scalars every `every` steps: `losses` (R, S), `learning_rates` (S,)."""
    if not self.enabled or every <= 0:
      return
    for writer, replica_losses in zip(self._tensorboard, losses):
      for i, (loss, lr) in enumerate(zip(replica_losses, learning_rates)):
        step = first_step + i + 1
        if step % every == 0:
          writer.add_scalar("train/loss", float(loss), step)
          writer.add_scalar("train/learning_rate", float(lr), step)

  def close(self) -> None:
    for writer in self._tensorboard:
      writer.close()


def _progress_bar(total: int, description: str, enabled: bool):
  import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm.tqdm(total=total, desc=description, unit="step", leave=False,
                   disable=not (enabled and sys.stderr.isatty()))


# ---------------------------------------------------------------------------
# The loop.
# ---------------------------------------------------------------------------


def checkpoint_identity(config, dataset: input_pipeline.Dataset) -> dict:
  """What must match between a checkpoint and any config restoring it: the model (its
  attention as the canonical spec string), its classes, the number of replicas."""
  identity = {f"model.{k}": v for k, v in config.model.to_dict().items()}
  identity["model.attention"] = str(AttentionSpec.parse(config.model.attention))
  identity["num_seeds"] = config.num_seeds
  identity["num_classes"] = dataset.num_classes
  identity["class_names"] = list(dataset.class_names)
  identity["image_shape"] = list(dataset.image_shape)
  return identity


def resume_identity(config, dataset: input_pipeline.Dataset) -> dict:
  """`checkpoint_identity` plus what must also match to train on from a checkpoint.

  The dataset, and what fixes the steps of an epoch (the batch size and the
  number of training examples): checkpoint steps, the learning-rate schedule
  and the epochs' batches are all counted in them.
  """
  return dict(checkpoint_identity(config, dataset), dataset=dataset.name,
              batch_size=config.batch_size,
              **{"training examples (data.max_train_examples)": len(dataset.train)})


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       devices=None) -> TrainState:
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
  `checkpointing.CheckpointError` or `DivergenceError`, each with a message.
  """
  validate_config(config)
  initialize_distributed(config)
  topology = Topology.current(devices)
  per_device_batch = topology.per_device_batch(config.batch_size)
  workdirs.prepare(workdir)
  with contextlib.ExitStack() as cleanup:
    if topology.process_index == 0:
      cleanup.enter_context(workdirs.lock(workdir))
    return _train(config, workdir, topology, per_device_batch, cleanup)


def _train(config, workdir: str, topology: Topology, per_device_batch: int,
           cleanup: contextlib.ExitStack) -> TrainState:
  """`train_and_evaluate` in a prepared, locked workdir; `cleanup` closes what it opens."""
  primary = topology.process_index == 0
  dataset = input_pipeline.load_dataset(config.data)
  steps_per_epoch = len(dataset.train) // config.batch_size
  if steps_per_epoch == 0:
    raise ValueError(
        f"batch_size={config.batch_size} is larger than the training set "
        f"({len(dataset.train)} examples); lower --config.batch_size.")
  model = create_model(config, dataset.num_classes)
  learning_rate_fn = create_learning_rate_fn(config, steps_per_epoch)
  initial_state = functools.partial(
      create_train_states, config, model, dataset.image_shape, learning_rate_fn)
  seeds = replica_seeds(config)

  checkpoints = cleanup.enter_context(checkpointing.Checkpointer(
      workdir, keep=config.keep_checkpoints,
      identity=resume_identity(config, dataset)))
  metrics_log = MetricsLog(workdir, enabled=primary, num_replicas=len(seeds))
  cleanup.callback(metrics_log.close)
  # Best test accuracy of each replica, and the best mean over the replicas.
  start_epoch, best_accuracy, best_mean, checkpoint_epoch = 0, np.zeros(len(seeds)), 0.0, None
  restored = checkpoints.restore_latest(jax.eval_shape(initial_state))
  if restored is None:
    state = initial_state()
  else:
    latest, state, meta = restored
    start_epoch, best_mean = meta["epoch"], meta["best_test_accuracy"]
    best_accuracy = np.asarray(meta["replica_best_test_accuracy"])
    checkpoint_epoch = start_epoch
    logging.info("Resumed from %s/%d: epoch %d, best test accuracy %s",
                 checkpoints.directory, latest, start_epoch,
                 " ".join(f"{a:.4f}" for a in best_accuracy))
  # Records of epochs after the checkpoint (or of any epoch, without one) are
  # from a run that stopped before saving them: they are trained again.
  metrics_log.truncate_after(start_epoch)
  if start_epoch >= config.num_epochs:
    logging.warning(
        "Nothing to train: %s", f"num_epochs={config.num_epochs}." if restored is None
        else f"the checkpoint in {checkpoints.directory} is at epoch {start_epoch} "
        f"and num_epochs={config.num_epochs}; raise --config.num_epochs to train on.")
    return state

  if primary:
    workdirs.write_atomically(os.path.join(workdir, "config.json"),
                              config.to_json_best_effort(indent=2))
    first = replica(state, 0)
    summary = model_summary(
        create_model(config, dataset.num_classes, axis_name=None),
        {"params": first.params, "batch_stats": first.batch_stats},
        dataset.image_shape)
    with open(os.path.join(workdir, "model_summary.txt"), "w") as f:
      f.write(f"model: {config.model.to_dict()}\nclasses: {dataset.num_classes}\n"
              f"parameters: {summary['params']:,}\n"
              f"FLOPs per image (XLA cost analysis, eval forward): "
              f"{summary['flops_per_image']:,.0f}\n\n{summary['table']}\n")
    with open(os.path.join(workdir, "model_summary.json"), "w") as f:
      json.dump({k: summary[k] for k in ("params", "flops_per_image")}, f)
    logging.info("%s + %s: %s parameters, %.1f MFLOPs per image",
                 config.model.arch, config.model.attention,
                 f"{summary['params']:,}", summary["flops_per_image"] / 1e6)

  # Data on the devices, once.
  train_images, train_labels = jax_utils.replicate(
      (dataset.train.images, dataset.train.labels), devices=topology.devices)
  test_data = shard_eval_data(dataset.test, topology, config.eval_batch_size)
  p_train = make_train_fn(config, learning_rate_fn, topology)
  p_eval = make_eval_fn(config, dataset.num_classes, topology)
  state = replicate_state(state, topology)

  chunk = config.steps_per_dispatch or (steps_per_epoch if topology.loops_in_xla else 1)
  compiled = {}

  def train_fn(num_steps, *args):
    """AOT-compiled train function per chunk length (compile time is reported).

    With several processes pmap's AOT executables take global shapes, so
    there the first call compiles, and its time counts as compile time.
    """
    if num_steps not in compiled:
      start = time.perf_counter()
      if topology.process_count > 1:
        outputs = p_train(*args)  # compiles, then dispatches asynchronously
        compiled[num_steps] = p_train
        compile_seconds[0] += time.perf_counter() - start
        return outputs
      compiled[num_steps] = p_train.lower(*args).compile()
      compile_seconds[0] += time.perf_counter() - start
    return compiled[num_steps](*args)

  compile_seconds = [0.0]
  logging.info("Training %s on %s: %d examples, %d steps/epoch, %d devices, "
               "seeds %s, epochs %d..%d", config.model.arch, dataset.name,
               len(dataset.train), steps_per_epoch, topology.global_device_count,
               seeds, start_epoch + 1, config.num_epochs)
  for epoch in range(start_epoch, config.num_epochs):
    epoch_start = time.perf_counter()
    compile_before = compile_seconds[0]
    first_step = epoch * steps_per_epoch
    indices = np.stack([  # (local_devices, R, steps, per_device_batch)
        epoch_indices(len(dataset.train), epoch, seed, steps_per_epoch, topology,
                      per_device_batch) for seed in seeds], axis=1)
    chunk_metrics = []
    with _progress_bar(steps_per_epoch, f"epoch {epoch + 1}", primary) as bar:
      for begin in range(0, steps_per_epoch, chunk):
        chunk_indices = indices[:, :, begin:begin + chunk]
        state, step_metrics = train_fn(
            chunk_indices.shape[2], state, train_images, train_labels, chunk_indices)
        if chunk_metrics:  # keep one dispatch in flight; the bar follows the device
          jax.block_until_ready(chunk_metrics[-1])
          bar.update(chunk_metrics[-1]["count"].shape[2])
        chunk_metrics.append(step_metrics)
      # Device 0's copy (they are equal): each metric (R, steps).
      step_metrics = jax.tree.map(
          lambda *chunks: np.concatenate(chunks, axis=1),
          *jax.device_get([jax.tree.map(lambda x: x[0], m) for m in chunk_metrics]))
      bar.update(chunk_metrics[-1]["count"].shape[2])
    train_seconds = time.perf_counter() - epoch_start - (compile_seconds[0] - compile_before)
    losses = step_metrics["loss_sum"] / step_metrics["count"]
    learning_rates = step_metrics["learning_rate"][0]
    diverged = step_metrics["diverged"]
    if diverged.any():
      index, replicas = first_divergence(diverged)
      raise DivergenceError(divergence_message(
          epoch, steps_per_epoch, index, losses[replicas[0]], learning_rates,
          checkpoint_epoch, checkpoints.directory, replicas=replicas, seeds=seeds))
    seen = step_metrics["count"].sum(axis=1)
    train_loss = step_metrics["loss_sum"].sum(axis=1) / seen
    train_accuracy = step_metrics["correct"].sum(axis=1) / seen

    tests = summarize_eval(unreplicate(p_eval(state, test_data)))
    test_accuracy = np.array([test["accuracy"] for test in tests])
    best_accuracy = np.maximum(best_accuracy, test_accuracy)
    epoch_seconds = time.perf_counter() - epoch_start
    records = [{
        "epoch": epoch + 1,
        "replica": k,
        "seed": seed,
        "step": first_step + steps_per_epoch,
        "learning_rate": float(learning_rates[0]),
        "train_loss": float(train_loss[k]),
        "train_accuracy": float(train_accuracy[k]),
        "test_loss": test["loss"],
        "test_accuracy": test["accuracy"],
        "test_top5_accuracy": test["top5_accuracy"],
        "best_test_accuracy": float(best_accuracy[k]),
        "test_examples": test["count"],
        "images_per_sec": float(seen[k]) / max(train_seconds, 1e-9),
        "compile_seconds": compile_seconds[0] - compile_before,
        "epoch_seconds": epoch_seconds,
    } for k, (seed, test) in enumerate(zip(seeds, tests))]
    metrics_log.write_steps(first_step, losses, learning_rates, config.log_every_steps)
    metrics_log.write_epoch(records)
    for record in records:
      logging.info(
          "epoch %3d/%d  seed %d  lr %.4g  train loss %.4f acc %.4f  test loss %.4f acc "
          "%.4f  best %.4f  %.0f img/s  %.1fs%s", epoch + 1, config.num_epochs,
          record["seed"], record["learning_rate"], record["train_loss"],
          record["train_accuracy"], record["test_loss"], record["test_accuracy"],
          record["best_test_accuracy"], record["images_per_sec"], epoch_seconds,
          f" (compile {record['compile_seconds']:.1f}s)" if record["compile_seconds"] else "")

    mean_accuracy = float(test_accuracy.mean())
    is_best = mean_accuracy >= best_mean
    best_mean = max(best_mean, mean_accuracy)
    is_last = epoch + 1 == config.num_epochs
    if is_last or (epoch + 1) % config.checkpoint_every_epochs == 0 or is_best:
      host_state = unreplicate(state)
      checkpoints.save(
          int(host_state.step[0]), host_state,
          {"epoch": epoch + 1, "test_accuracy": mean_accuracy, "best_test_accuracy": best_mean,
           "replica_test_accuracy": test_accuracy.tolist(),
           "replica_best_test_accuracy": best_accuracy.tolist()})
      checkpoint_epoch = epoch + 1

  return unreplicate(state)


def first_divergence(diverged: np.ndarray) -> tuple[int, list[int]]:
  """The first step (0-based) at which any replica diverged, and the replicas that did then.

  `diverged` is bool (R, steps) with at least one True.
  """
  index = int(np.argmax(diverged.any(axis=0)))
  return index, np.flatnonzero(diverged[:, index]).tolist()


def divergence_message(epoch: int, steps_per_epoch: int, index: int, losses,
                       learning_rates, checkpoint_epoch: int | None,
                       checkpoint_directory: str, *, replicas: list[int],
                       seeds: list[int]) -> str:
  """What `DivergenceError` says: step `index` (0-based) of `epoch` (0-based) diverged.

  `replicas` are the ones that diverged at that step (0-based; the first one's
  `losses` are reported) of the run's replicas, whose seeds are `seeds`.
  `losses` and `learning_rates` are the epoch's per-step values.
  """
  loss = float(losses[index])
  if not math.isfinite(loss):
    what = f"train loss {loss}"
  elif loss > DIVERGED_LOSS:
    what = f"train loss {loss:.3g}, above {DIVERGED_LOSS:g}"
  else:
    what = f"train loss {loss:.4g}, but the parameters became infinite or NaN"
  saved = (f"the checkpoints up to epoch {checkpoint_epoch} in {checkpoint_directory} "
           "are from before it" if checkpoint_epoch is not None else
           "no checkpoint had been written")
  which = ", ".join(f"replica {k} (seed {seeds[k]})" for k in replicas)
  return (f"training diverged at step {epoch * steps_per_epoch + index + 1} (epoch "
          f"{epoch + 1}, step {index + 1} of {steps_per_epoch}) in {which} of "
          f"{len(seeds)}: {what}. The run stopped "
          f"before evaluating or saving epoch {epoch + 1}; {saved}. Lower "
          f"optimizer.learning_rate (step {index + 1} used {float(learning_rates[index]):g}) "
          "or check the data.")
