"""Evaluate a trained checkpoint: accuracy, per-class accuracy, confusion, noise robustness.

    python run_train.py --config configs/smoke.py --workdir DIR --config.mode=evaluate \
        [--config.checkpoint_step=N] [--config.eval.noise=True] [--config.eval.visualize=True]

`evaluate_checkpoint(config, workdir)` restores the best checkpoint (or
`config.checkpoint_step`) of `workdir`, evaluates each of its `num_seeds`
replicas on the test split with the training loop's own evaluation
(`train.make_eval_fn` / `eval_batches` / `summarize_eval`), prints the results
(per replica, and their mean ± std) and writes `eval.json` and
`confusion.png` to the workdir. With `eval.noise` it repeats the evaluation on
corrupted test images (`eval.gaussian_stddevs`, `eval.salt_pepper_amounts`,
`eval.blur_sigmas`); with `eval.visualize` it saves attention-map figures.

Corruptions (`gaussian_noise`, `salt_and_pepper`, `gaussian_blur`) are pure
jittable functions `(images uint8 (b, H, W, C), key) -> uint8`, passed to
`make_eval_fn(..., transform=...)`, so they run inside the jitted evaluation
before normalisation. Convention (see NOISE_CONVENTION): they act on the 8-bit
image and return an 8-bit image, rounded half to even and clipped to
[0, 255], as a corrupted image saved to disk would be (the convention of
CIFAR-10-C). Strength 0 is the identity, so it reproduces the clean accuracy
exactly. The random draws come from the checkpoint's PRNG key, the batch index
and the device, so a sweep is reproducible.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from typing import Any, Callable, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from wacnn_jax import checkpointing
from wacnn_jax import input_pipeline
from wacnn_jax import train
from wacnn_jax import workdirs

NOISE_CONVENTION = (
    "Corruptions act on the uint8 test images before normalisation and return "
    "uint8 images (rounded half to even, clipped to [0, 255]). gaussian: adds "
    "N(0, (stddev * 255)^2) to every pixel and channel (stddev in [0, 1] pixel "
    "units). salt_pepper: sets a fraction `amount` of pixel positions (all "
    "channels) to 0 or 255 with equal probability. blur: Gaussian blur of "
    "standard deviation sigma pixels per channel, truncated at 4 sigma, "
    "symmetric borders (scipy.ndimage.gaussian_filter's 'reflect'). Strength 0 "
    "is the identity.")

# ---------------------------------------------------------------------------
# Corruptions: pure, jittable, uint8 -> uint8.
# ---------------------------------------------------------------------------


def _to_uint8(x: jax.Array) -> jax.Array:
  return jnp.clip(jnp.round(x), 0, 255).astype(jnp.uint8)


def gaussian_noise(images: jax.Array, key: jax.Array, stddev: float) -> jax.Array:
  """Additive Gaussian noise of `stddev` in [0, 1] pixel units (x255 on the uint8 scale)."""
  noise = jax.random.normal(key, images.shape, jnp.float32)
  return _to_uint8(images.astype(jnp.float32) + jnp.float32(stddev * 255.0) * noise)


def salt_and_pepper(images: jax.Array, key: jax.Array, amount: float) -> jax.Array:
  """Sets a fraction `amount` of pixel positions to white (u < amount/2) or black.

  u ~ U[0, 1) is drawn once per pixel position (N, H, W, 1); the channels of a
  pixel change together.
  """
  u = jax.random.uniform(key, images.shape[:-1] + (1,), jnp.float32)
  salt = u < amount / 2
  pepper = (u >= amount / 2) & (u < amount)
  out = jnp.where(salt, jnp.uint8(255), images)
  return jnp.where(pepper, jnp.uint8(0), out)


def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> np.ndarray:
  """Normalised 1-D Gaussian weights, radius int(truncate * sigma + 0.5) (as scipy.ndimage)."""
  radius = int(truncate * sigma + 0.5)
  x = np.arange(-radius, radius + 1, dtype=np.float64)
  weights = np.exp(-0.5 * (x / sigma) ** 2)
  return weights / weights.sum()


def gaussian_blur(images: jax.Array, key: jax.Array, sigma: float) -> jax.Array:
  """Separable Gaussian blur of each channel (height, then width); `key` is unused."""
  del key
  if sigma <= 0:
    return images
  weights = gaussian_kernel1d(sigma)
  radius = len(weights) // 2
  x = images.astype(jnp.float32)
  for axis in (1, 2):
    pad = [(0, 0)] * x.ndim
    pad[axis] = (radius, radius)
    padded = jnp.pad(x, pad, mode="symmetric")
    size = x.shape[axis]
    x = sum(jnp.float32(w) * jax.lax.slice_in_dim(padded, k, k + size, axis=axis)
            for k, w in enumerate(weights))
  return _to_uint8(x)


# name -> (function, the config field that lists its strengths)
CORRUPTIONS = {
    "gaussian": (gaussian_noise, "gaussian_stddevs"),
    "salt_pepper": (salt_and_pepper, "salt_pepper_amounts"),
    "blur": (gaussian_blur, "blur_sigmas"),
}


def corruption(name: str, strength: float) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """The transform `(images, key) -> images` of corruption `name` at `strength`."""
  if name not in CORRUPTIONS:
    raise ValueError(f"unknown corruption {name!r}; valid: {', '.join(CORRUPTIONS)}.")
  strength = float(strength)
  if not math.isfinite(strength) or strength < 0 or (name == "salt_pepper" and strength > 1):
    field = CORRUPTIONS[name][1]
    raise ValueError(f"eval.{field} must hold numbers >= 0"
                     f"{' and <= 1' if name == 'salt_pepper' else ''}, got {strength}.")
  return functools.partial(CORRUPTIONS[name][0], **{
      "gaussian": {"stddev": strength}, "salt_pepper": {"amount": strength},
      "blur": {"sigma": strength}}[name])


def sweep_from_config(eval_config) -> list[tuple[str, float]]:
  """(corruption, strength) pairs listed in `config.eval`."""
  pairs = []
  for name, (_, field) in CORRUPTIONS.items():
    values = eval_config.get(field) or ()
    if isinstance(values, (int, float)):
      values = (values,)
    for value in values:
      corruption(name, value)  # validates
      pairs.append((name, float(value)))
  return pairs


# ---------------------------------------------------------------------------
# Restoring a checkpoint.
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class Restored:
  """A checkpoint restored for evaluation, with its model and dataset."""

  config: ml_collections.ConfigDict
  state: train.TrainState  # on the host, without the device axis; all R replicas (R, ...)
  step: int
  meta: dict
  dataset: input_pipeline.Dataset
  model: Any  # the Flax module without a pmap axis (for visualisation)
  replica: int = 0  # whose `variables` are shown

  @property
  def variables(self) -> dict:
    """Replica `replica`'s {params, batch_stats} (no replica axis)."""
    state = train.replica(self.state, self.replica)
    return {"params": state.params, "batch_stats": state.batch_stats}


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run saved in `workdir/config.json`."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise checkpointing.CheckpointError(
        f"{path} does not exist: {workdir!r} is not a training workdir.")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def abstract_train_state(config, model, dataset: input_pipeline.Dataset):
  """The replicas' TrainState: structure, shapes (R, ...) and dtypes (nothing is computed)."""
  steps_per_epoch = max(1, len(dataset.train) // config.batch_size)
  learning_rate_fn = train.create_learning_rate_fn(config, steps_per_epoch)
  return jax.eval_shape(lambda: train.create_train_states(
      config, model, dataset.image_shape, learning_rate_fn))


def restore_checkpoint(config, workdir: str, step: int | None = None,
                       dataset: input_pipeline.Dataset | None = None,
                       replica: int = 0) -> Restored:
  """Restores checkpoint `step` (default `config.checkpoint_step`; -1 = best) of `workdir`.

  All `config.num_seeds` replicas are restored; `replica` picks whose
  `Restored.variables` are. Raises ValueError for a replica that is not in
  the run, CheckpointError when there is no such checkpoint, it cannot be
  read, or it belongs to another model, other classes or another number of
  replicas.
  """
  if not 0 <= replica < config.num_seeds:
    raise ValueError(f"replica {replica} is not in the run: it trained num_seeds="
                     f"{config.num_seeds} replica(s), 0 to {config.num_seeds - 1}.")
  # The checkpoints are looked up before the (slow) dataset is read.
  checkpoints = checkpointing.Checkpointer(workdir, keep=config.keep_checkpoints,
                                           create=False)
  try:
    if step is None:
      step = config.get("checkpoint_step", -1)
    if step is None or step < 0:
      step = checkpoints.best_step()
      if step is None:
        raise checkpointing.CheckpointError(
            f"no checkpoints in {checkpoints.directory}: train first (mode=train) "
            "with this --workdir, or point --workdir at a finished run.")
    elif step not in checkpoints.all_steps():
      raise checkpointing.CheckpointError(
          f"no checkpoint {step} in {checkpoints.directory}; there are "
          f"{checkpoints.all_steps() or 'none'} (checkpoint_step=-1 takes the best).")
    if dataset is None:
      dataset = input_pipeline.load_dataset(config.data)
    model = train.create_model(config, dataset.num_classes)
    checkpoints.identity = train.checkpoint_identity(config, dataset)
    state, meta = checkpoints.restore(int(step), abstract_train_state(config, model, dataset))
  except checkpointing.DamagedCheckpointError as e:
    raise checkpointing.DamagedCheckpointError(
        f"{e} Evaluate another with --config.checkpoint_step (there are "
        f"{checkpoints.all_steps()}); training on in this workdir sets damaged "
        "checkpoints aside.") from e
  finally:
    checkpoints.close()
  return Restored(config, state, int(step), meta, dataset,
                  train.create_model(config, dataset.num_classes, axis_name=None), replica)


# ---------------------------------------------------------------------------
# Evaluation.
# ---------------------------------------------------------------------------


class Evaluator:
  """The training loop's evaluation of the replicas (R, ...) of a state on one split.

  Calls return one summary per replica (`train.summarize_eval`).
  """

  def __init__(self, config, state, split: input_pipeline.Split, num_classes: int,
               devices=None):
    self.config = config
    self.num_classes = num_classes
    self.topology = train.Topology.current(devices)
    self.data = train.shard_eval_data(split, self.topology, config.eval_batch_size)
    self.state = train.replicate_state(state, self.topology)

  def __call__(self, transform=None) -> list[dict]:
    evaluate = train.make_eval_fn(self.config, self.num_classes, self.topology,
                                  transform=transform)
    return train.summarize_eval(train.unreplicate(evaluate(self.state, self.data)))

  def sweep(self, pairs: Sequence[tuple[str, float]]) -> list[list[dict]]:
    """Per replica, accuracy, top-5 and loss for each (corruption, strength): [replica][pair]."""
    rows = []
    for name, strength in pairs:
      results = self(corruption(name, strength))
      rows.append([{"corruption": name, "strength": strength,
                    **{k: r[k] for k in ("accuracy", "top5_accuracy", "loss", "count")}}
                   for r in results])
      logging.info("%s %g: top-1 %s", name, strength,
                   " ".join(f"{r['accuracy']:.4f}" for r in results))
    return [list(replica_rows) for replica_rows in zip(*rows)]


# The per-replica numbers that are averaged over the replicas.
AVERAGED = ("loss", "accuracy", "top5_accuracy")


def _averaged(rows: Sequence[dict]) -> dict:
  """The AVERAGED keys of `rows` (one per replica): means, and `<key>_std` the
  sample standard deviation (ddof 1; None for one row)."""
  averaged = {}
  for key in AVERAGED:
    values = [row[key] for row in rows]
    averaged[key] = float(np.mean(values))
    averaged[f"{key}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else None
  return averaged


def mean_over_replicas(replicas: Sequence[dict]) -> dict:
  """The replicas' results combined.

  `loss`, `accuracy`, `top5_accuracy`: means, with `<name>_std` the sample
  standard deviation (None for one replica); `count` is the test set's size;
  `confusion` sums the replicas' matrices (so it counts R x count predictions)
  and `per_class_accuracy` is its diagonal over the row sums, the mean of the
  replicas' per-class accuracies. With one replica these are its own numbers.
  """
  combined = _averaged(replicas)
  confusion = np.sum([r["confusion"] for r in replicas], axis=0)
  with np.errstate(invalid="ignore", divide="ignore"):
    per_class = np.diag(confusion) / confusion.sum(axis=1)
  combined.update(count=replicas[0]["count"], per_class_accuracy=per_class.tolist(),
                  confusion=confusion.tolist())
  return combined


def _plus_minus(std: float | None) -> str:
  return "" if std is None else f" ± {std:.4f}"


def noise_table(rows: Sequence[dict], clean_accuracy: float | None = None) -> str:
  """The sweep as a fixed-width text table (top-1 ± its `accuracy_std` where a row has one)."""
  lines = [f"noise robustness{'' if clean_accuracy is None else f' (clean top-1 {clean_accuracy:.4f})'}:",
           f"  {'corruption':<12} {'strength':>8} {'top-1':>16} {'top-5':>7} {'loss':>8}"]
  for row in rows:
    top1 = f"{row['accuracy']:.4f}{_plus_minus(row.get('accuracy_std'))}"
    lines.append(f"  {row['corruption']:<12} {row['strength']:>8g} {top1:>16} "
                 f"{row['top5_accuracy']:>7.4f} {row['loss']:>8.4f}")
  return "\n".join(lines)


def format_results(result: dict) -> str:
  """Printable summary: headline numbers, per-class accuracy, confusion matrix, noise table."""
  names = result["class_names"]
  width = max(5, min(10, max(len(n) for n in names)))
  short = [n[:width] for n in names]
  lines = [
      f"checkpoint {result['step']} (epoch {result.get('epoch')}) of {result['workdir']}: "
      f"{result['count']} test images of {result['dataset']}",
      f"top-1 accuracy {result['accuracy']:.4f}{_plus_minus(result['accuracy_std'])}   "
      f"top-5 accuracy {result['top5_accuracy']:.4f}{_plus_minus(result['top5_accuracy_std'])}"
      f"   loss {result['loss']:.4f}{_plus_minus(result['loss_std'])}"]
  for replica in result["replicas"]:
    lines.append(f"  replica {replica['replica']} (seed {replica['seed']}): top-1 "
                 f"{replica['accuracy']:.4f}   top-5 {replica['top5_accuracy']:.4f}   "
                 f"loss {replica['loss']:.4f}")
  lines.append(f"per-class accuracy{' (mean over replicas)' if len(result['replicas']) > 1 else ''}:")
  for name, accuracy in zip(names, result["per_class_accuracy"]):
    lines.append(f"  {name:<{width}} {accuracy:.4f}" if accuracy == accuracy
                 else f"  {name:<{width}} (no examples)")
  if len(names) <= 20:
    lines.append("confusion matrix (rows: true class, columns: predicted"
                 f"{'; summed over replicas' if len(result['replicas']) > 1 else ''}):")
    lines.append(" " * (width + 2) + " ".join(f"{n:>{width}}" for n in short))
    for name, row in zip(short, result["confusion"]):
      lines.append(f"  {name:<{width}}" + " ".join(f"{v:>{width}d}" for v in row))
  if "noise" in result:
    lines.append(noise_table(result["noise"], result["accuracy"]))
  return "\n".join(lines)


def _dataset_name(config) -> str:
  folder = config.data.get("image_folder")
  return os.path.basename(str(folder).rstrip("/")) if folder else config.data.dataset


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str, *,
                        devices=None, dataset: input_pipeline.Dataset | None = None,
                        verbose: bool = True) -> dict:
  """Evaluates a checkpoint of `workdir`, prints the results, writes eval.json and confusion.png.

  A failure to write (WorkdirError) comes after the results are printed.
  Returns the eval.json content: step, epoch, class_names, "replicas" (one
  dict per replica: replica, seed, loss, accuracy, top5_accuracy, count,
  per_class_accuracy, confusion (true rows x predicted columns) and, when
  `config.eval.noise`, "noise": a list of {corruption, strength, accuracy,
  top5_accuracy, loss, count}), and the replicas combined
  (`mean_over_replicas`): loss, accuracy, top5_accuracy, their `_std`s,
  count, per_class_accuracy, confusion, and "noise" rows with means and `_std`s.
  """
  from wacnn_jax import visualize  # pylint: disable=g-import-not-at-top
  train.validate_config(config)
  pairs = sweep_from_config(config.eval) if config.eval.noise else []  # validate first
  train.initialize_distributed(config)
  restored = restore_checkpoint(config, workdir, dataset=dataset)
  dataset = restored.dataset
  evaluator = Evaluator(config, restored.state, dataset.test, dataset.num_classes, devices)
  replicas = [{"replica": k, "seed": seed, **summary} for k, (seed, summary) in
              enumerate(zip(train.replica_seeds(config), evaluator()))]
  result = {
      "workdir": os.path.abspath(workdir),
      "step": restored.step,
      "epoch": restored.meta.get("epoch"),
      "checkpoint_test_accuracy": restored.meta.get("test_accuracy"),
      "model": config.model.to_dict(),
      "dataset": _dataset_name(config),
      "class_names": list(dataset.class_names),
      **mean_over_replicas(replicas),
      "replicas": replicas,
  }
  if pairs:
    for replica, rows in zip(replicas, evaluator.sweep(pairs)):
      replica["noise"] = rows
    result["noise"] = [
        {"corruption": name, "strength": strength, "count": result["count"],
         **_averaged([replica["noise"][j] for replica in replicas])}
        for j, (name, strength) in enumerate(pairs)]
    result["noise_convention"] = NOISE_CONVENTION

  if jax.process_index() != 0:  # multi-host: every host evaluated; one writes
    return result
  if verbose:
    print(format_results(result), flush=True)
  try:
    figures = [visualize.save_figure(
        visualize.confusion_figure(
            result["confusion"], dataset.class_names,
            title=f"{config.model.arch} + {config.model.attention}, step {restored.step}: "
            f"top-1 {result['accuracy']:.4f}"),
        os.path.join(workdir, "confusion.png"))]
    if config.eval.visualize:
      images, labels = visualize.pick_images(dataset.test)
      figures += visualize.save_model_figures(
          restored.model, restored.variables, images, labels, dataset.class_names, workdir,
          baseline_layers=wa_twin_layers(config, dataset))
    result["figures"] = [os.path.basename(f) for f in figures]
    workdirs.write_atomically(os.path.join(workdir, "eval.json"), json.dumps(result, indent=1))
  except OSError as e:
    raise workdirs.WorkdirError(
        f"cannot write the evaluation files to {workdir} ({e.strerror or e})"
        f"{'; the results are printed above' if verbose else ''}.") from e
  return result


def wa_twin_layers(config, dataset: input_pipeline.Dataset) -> list[str]:
  """Paths of the layers after the WA blocks in the WA version of `config`'s network."""
  from wacnn_jax import visualize  # pylint: disable=g-import-not-at-top
  twin = ml_collections.ConfigDict(config.to_dict())
  twin.model.attention = "wa"
  model = train.create_model(twin, dataset.num_classes, axis_name=None)
  variables = jax.eval_shape(lambda: train.initial_variables(
      model, dataset.image_shape, jax.random.PRNGKey(0)))
  return [layer for _, layer in visualize.layer_pairs(model, variables, dataset.image_shape)
          if layer is not None]
