"""The pure step functions, vmapped over replicas and pmapped over devices.

A pmapped call runs many steps under `lax.scan` (`train_steps`) or evaluates
many batches (`eval_batches`) of uint8 images that are already on the
devices, augmented: both input pipelines (`feeds`) feed the same compiled
step with batches of the same shape. Where the training set lives on the
devices (the memory pipeline), `gather_batches` gathers and augments a
dispatch's batches by index on the device, with the keys the steps draw
(`step_keys`), so that the host only sends indices. The step normalises,
runs forward and backward passes and SGD; gradients are averaged with
`lax.pmean` over `parallel.AXIS_NAME` and BatchNorm statistics are averaged
across devices (cross-replica BN, through the models' `axis_name`).

Replicas: every state array has a leading replica axis R (after the device
axis, under pmap: (devices, R, ...)); `train_steps` and `eval_batches` are
vmapped over it (`map_replicas`; one replica runs unbatched), and the
collectives over the pmap axis inside the vmap stay per replica.

Divergence: every step also reports whether it diverged (`DIVERGED_LOSS`), a
flag computed on the device and read with the epoch's other metrics.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

from flax.training import train_state
import jax
import jax.numpy as jnp
import numpy as np
import optax

from wacnn_jax.data import transforms
from wacnn_jax.training import parallel
from wacnn_jax.training.parallel import AXIS_NAME

# A step diverged when its mean cross-entropy is not finite or above this (chance
# level is log(num_classes): 2.3 for CIFAR-10), or its new parameters are not finite.
DIVERGED_LOSS = 1e4


class TrainState(train_state.TrainState):
  """step, params, opt_state (from flax) plus BatchNorm statistics and a base PRNG key."""

  batch_stats: Any
  rng: jax.Array



def replica(tree, k: int):
  """Replica k of a pytree with a leading replica axis R (R, ...) -> (...)."""
  return jax.tree.map(lambda x: x[k], tree)



def cross_entropy(logits, labels):
  """Per-example cross-entropy (N,), computed in float32."""
  return optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), labels)


def map_replicas(fn, *trees):
  """`jax.vmap(fn)(*trees)` over the leading replica axis R of every leaf.

  With R == 1 the axis is dropped and `fn` runs unbatched (its outputs get
  the axis back), so a single-seed run compiles exactly the unbatched
  program: vmap batches each convolution over the replicas' weights as a
  grouped convolution, which in resnet18-WA's train step adds 474 transposes
  to the lowered program even at R == 1.
  """
  if jax.tree.leaves(trees[0])[0].shape[0] == 1:
    outputs = fn(*jax.tree.map(lambda x: x[0], trees))
    return jax.tree.map(lambda x: x[None], outputs)
  return jax.vmap(fn)(*trees)


def scan(body, carry, xs, *, unroll: bool):
  """`lax.scan`, or with `unroll` a Python loop (no XLA while loop at all)."""
  if not unroll:
    return jax.lax.scan(body, carry, xs)
  outputs = []
  for i in range(jax.tree.leaves(xs)[0].shape[0]):
    carry, out = body(carry, jax.tree.map(lambda x: x[i], xs))
    outputs.append(out)
  return carry, jax.tree.map(lambda *ys: jnp.stack(ys), *outputs)


def step_keys(rng, step):
  """(augmentation key, dropout key) of train step `step` of a replica whose base key is
  `rng`, on this device: fold_in(fold_in(rng, step), device index), split in two."""
  step_key = jax.random.fold_in(rng, step)
  device_key = jax.random.fold_in(step_key, jax.lax.axis_index(AXIS_NAME))
  augment_key, dropout_key = jax.random.split(device_key)
  return augment_key, dropout_key


def train_step(state: TrainState, images, labels, *, normalization: transforms.Normalization,
               compute_dtype, learning_rate_fn):
  """One SGD step on a per-device batch of augmented uint8 images (b, H, W, C) and labels (b,),
  standardised by `normalization`.

  Returns the new state and the step's metrics summed over all devices, plus
  the learning rate and `diverged` (bool: mean loss not finite or above
  `DIVERGED_LOSS`, or new parameters not finite; the same on every device).
  """
  _, dropout_key = step_keys(state.rng, state.step)
  x = transforms.normalize(images, normalization, compute_dtype)

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


def train_steps(state, images, labels, *, unroll: bool = False, **step_kwargs):
  """S steps of R replicas in one dispatch: `train_step` scanned over the steps, vmapped over R.

  `state` holds R replicas (leading axis R); `images` (R, S, b, H, W, C) uint8
  and `labels` (R, S, b) are each replica's S batches on this device, already
  augmented (by `gather_batches` from the training set on the device, or by
  the stream's worker processes). Returns the states and per-step metrics
  (R, S). `unroll` (used on CPU, see `parallel.Topology.loops_in_xla`)
  unrolls the loop.
  """

  def replica_steps(state, images, labels):
    def body(state, batch):
      return train_step(state, *batch, **step_kwargs)

    return scan(body, state, (images, labels), unroll=unroll)

  return map_replicas(replica_steps, state, images, labels)


def gather_batches(rng, step, train_images, train_labels, indices, *, augmentation: str):
  """The augmented batches of S train steps of R replicas, from the training set on the device.

  `rng` (R, key) and `step` (R,) are the replicas' `state.rng` and
  `state.step` at the first of the steps; `indices` (R, S, b) each replica's
  batches of `train_images` (N, H, W, C) uint8 and `train_labels` (N,).
  Step s of replica r is augmented (`transforms.augment`) with the key that
  train step `step + s` of that replica draws (`step_keys`) on this device.
  Returns images (R, S, b, H, W, C) uint8 and labels (R, S, b).
  """

  def replica(rng, step, replica_indices):
    def one_step(s, batch_indices):
      augment_key, _ = step_keys(rng, step + s)
      return transforms.augment(train_images[batch_indices], augment_key, augmentation)

    steps = jnp.arange(replica_indices.shape[0], dtype=step.dtype)
    return jax.vmap(one_step)(steps, replica_indices), train_labels[replica_indices]

  return map_replicas(replica, rng, step, indices)


def eval_batches(state, images, labels, mask, *, num_classes: int,
                 compute_dtype, normalization: transforms.Normalization,
                 transform: Callable | None = None, unroll: bool = False):
  """Evaluates (nb, b, H, W, C) uint8 batches with a 0/1 mask (nb, b), for each replica,
  standardised by `normalization`.

  `state` holds R replicas (leading axis R). `transform(x_uint8, key) -> uint8`
  (optional) corrupts the images first, with keys from each replica's
  `state.rng`. Returns sums over all devices with a leading axis R: loss,
  top-1/top-5 hits, count, and the confusion matrix (true class rows x
  predicted columns).
  """
  return map_replicas(functools.partial(
      _eval_replica, images=images, labels=labels, mask=mask, num_classes=num_classes,
      compute_dtype=compute_dtype, normalization=normalization, transform=transform,
      unroll=unroll), state)


def _eval_replica(state, *, images, labels, mask, num_classes, compute_dtype, normalization,
                  transform, unroll):
  """`eval_batches` of one replica."""
  variables = {"params": state.params, "batch_stats": state.batch_stats}

  def body(totals, batch):
    index, batch_images, batch_labels, batch_mask = batch
    if transform is not None:
      key = jax.random.fold_in(
          jax.random.fold_in(state.rng, index), jax.lax.axis_index(AXIS_NAME))
      batch_images = transform(batch_images, key)
    logits = state.apply_fn(variables, transforms.normalize(
        batch_images, normalization, compute_dtype), train=False).astype(jnp.float32)
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



def make_eval_fn(config, num_classes: int, normalization: transforms.Normalization,
                 topology: parallel.Topology, transform=None):
  """`evaluate(replicated_state, eval_data) -> totals` (replicated; see `eval_batches`), the
  images standardised by `normalization`.

  One dispatch for the whole split where `topology.loops_in_xla`, else one
  per batch with the totals summed on the devices.
  """
  p_eval = jax.pmap(
      functools.partial(
          eval_batches, num_classes=num_classes, normalization=normalization,
          transform=transform, unroll=not topology.loops_in_xla,
          compute_dtype=jnp.bfloat16 if config.half_precision else jnp.float32),
      axis_name=AXIS_NAME, devices=topology.mapped_devices)

  def evaluate(state, data: parallel.EvalData):
    num_batches = data.images.shape[1]
    chunk = num_batches if topology.loops_in_xla else 1
    totals = None
    for begin in range(0, num_batches, chunk):
      part = p_eval(state, *(a[:, begin:begin + chunk]
                             for a in (data.images, data.labels, data.mask)))
      totals = part if totals is None else jax.tree.map(jnp.add, totals, part)
    return totals

  return evaluate


# XLA:CPU options of the train step (docs/benchmarks.md, "On a 2-core CPU"):
CPU_COMPILER_OPTIONS = {
    # Keep the optimisation barriers of `layers.Conv` through fusion (XLA:CPU
    # removes barriers early by default), so that the weight gradients read the
    # stored convolution inputs: resnet18 1.2x.
    "xla_disable_hlo_passes": "cse_barrier_expander",
    # YNNPACK for reductions only. Its convolutions (the "individual convolution"
    # library fusions XLA:CPU makes by default) run resnet18's step 1.6x slower
    # than XLA's own; its elementwise fusions are slower too.
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE",
}


@functools.cache
def _accepted_cpu_options() -> tuple[tuple[str, str], ...]:
  """The entries of CPU_COMPILER_OPTIONS that this XLA knows (an older one lacks some)."""
  accepted = []
  for key, value in CPU_COMPILER_OPTIONS.items():
    try:
      jax.jit(lambda x: x + 1).lower(np.float32(0)).compile(compiler_options={key: value})
      accepted.append((key, value))
    except jax.errors.JaxRuntimeError:
      pass
  return tuple(accepted)


def compiler_options() -> dict[str, str] | None:
  """XLA options for compiling the train step (`.lower(...).compile(compiler_options=...)`).

  On CPU: `CPU_COMPILER_OPTIONS`, those that this XLA knows. None elsewhere.
  """
  if jax.default_backend() == "cpu":
    return dict(_accepted_cpu_options())
  return None


def make_gather_fn(preprocessing: transforms.Preprocessing, topology: parallel.Topology):
  """pmapped `gather_batches(state.rng, state.step, train_images, train_labels, indices)`."""
  return jax.pmap(functools.partial(gather_batches, augmentation=preprocessing.augmentation),
                  axis_name=AXIS_NAME, devices=topology.mapped_devices)


def make_train_fn(config, preprocessing: transforms.Preprocessing, learning_rate_fn,
                  topology: parallel.Topology):
  """pmapped `train_steps(state, images, labels)`; donates state.

  Compile it with `compiler_options()` (`EpochRunner` does).
  """
  return jax.pmap(
      functools.partial(
          train_steps, normalization=preprocessing.normalization,
          unroll=not topology.loops_in_xla,
          learning_rate_fn=learning_rate_fn,
          compute_dtype=jnp.bfloat16 if config.half_precision else jnp.float32),
      axis_name=AXIS_NAME, devices=topology.mapped_devices, donate_argnums=(0,))
