"""Evaluate a trained checkpoint: accuracy, per-class accuracy, confusion, noise robustness.

    python -m wacnn_jax evaluate --workdir DIR [--eval.step=N] [--eval.noise=True] \
        [--eval.visualize=True] [--config configs/default.py --config.x=y ...]
    python -m wacnn_jax evaluate --pretrained NAME_OR_PATH [--image_folder F] [--eval.noise=True]

`evaluate_checkpoint(config, workdir, options)` restores the best checkpoint
(or `options.step`) of `workdir`, evaluates each of its `num_seeds` replicas
on the test split with the training loop's own evaluation
(`steps.make_eval_fn` / `eval_batches` / `summarize_eval`), prints the results
(per replica, and their mean ± std) and writes `eval.json` and
`confusion.png` to the workdir. With `options.noise` it repeats the
evaluation on corrupted test images (`gaussian_stddevs`,
`salt_pepper_amounts`, `blur_sigmas`); with `options.visualize` it saves
attention-map figures. `default_options()` lists the options.
`evaluate_pretrained(name_or_path, options)` does the same for trained weights
(`wacnn_jax.pretrained.load`) on the test split of their dataset, and prints
the results only (there is no workdir to write to).

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

import functools
import json
import math
import os
from typing import Callable, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from wacnn_jax import compilation_cache
from wacnn_jax import input_pipeline
from wacnn_jax import parallel
from wacnn_jax import pretrained
from wacnn_jax import restore
from wacnn_jax import steps
from wacnn_jax import train
from wacnn_jax import visualize
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


# The evaluation options (`--eval.<name>` flags), their defaults and meaning.
OPTIONS = {
    "step": (-1, "the checkpoint's step; -1: the best checkpoint"),
    "noise": (False, "also evaluate under the three corruptions below"),
    "gaussian_stddevs": ((0.0, 0.02, 0.05, 0.1, 0.2),
                         "additive Gaussian noise, stddev in [0, 1] pixel units"),
    "salt_pepper_amounts": ((0.01, 0.02, 0.05, 0.1),
                            "salt and pepper, fraction of pixel positions changed"),
    "blur_sigmas": ((0.5, 1.0, 1.5, 2.0), "Gaussian blur, sigma in pixels"),
    "visualize": (False, "also save attention-map figures"),
}


def default_options() -> ml_collections.ConfigDict:
  """The evaluation options (`--eval.<name>` flags of `python -m wacnn_jax evaluate`): OPTIONS."""
  return ml_collections.ConfigDict({name: default for name, (default, _) in OPTIONS.items()})


# name -> (function, the option that lists its strengths)
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


def noise_sweep(options: ml_collections.ConfigDict) -> list[tuple[str, float]]:
  """(corruption, strength) pairs listed in the evaluation `options`."""
  pairs = []
  for name, (_, field) in CORRUPTIONS.items():
    values = options.get(field) or ()
    if isinstance(values, (int, float)):
      values = (values,)
    for value in values:
      corruption(name, value)  # validates
      pairs.append((name, float(value)))
  return pairs


# ---------------------------------------------------------------------------
# Restoring a checkpoint.
# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# Evaluation.
# ---------------------------------------------------------------------------


class Evaluator:
  """The training loop's evaluation of the replicas (R, ...) of a state on one split.

  Calls return one summary per replica (`steps.summarize_eval`).
  """

  def __init__(self, config, state, split: input_pipeline.Split, num_classes: int,
               devices=None):
    self.config = config
    self.num_classes = num_classes
    self.topology = parallel.Topology.current(devices)
    self.data = parallel.shard_eval_data(split, self.topology, config.eval_batch_size)
    self.state = parallel.replicate_state(state, self.topology)

  def __call__(self, transform=None) -> list[dict]:
    evaluate = steps.make_eval_fn(self.config, self.num_classes, self.topology,
                                  transform=transform)
    return steps.summarize_eval(parallel.unreplicate(evaluate(self.state, self.data)))

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
  source = (f"weights {result['pretrained']} (epoch {result.get('epoch')})"
            if "pretrained" in result else
            f"checkpoint {result['step']} (epoch {result.get('epoch')}) of {result['workdir']}")
  lines = [
      f"{source}: {result['count']} test images of {result['dataset']}",
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


# What must agree for an earlier eval.json's noise rows to be kept beside new results.
SAME_EVALUATION = ("step", "dataset", "count", "class_names", "model")


def _noise_order(row: dict) -> tuple:
  names = list(CORRUPTIONS)
  return (names.index(row["corruption"]) if row["corruption"] in names else len(names),
          row["corruption"], row["strength"])


def _merged_rows(earlier: Sequence[dict], new: Sequence[dict]) -> list[dict]:
  """`new` noise rows plus those of `earlier` at other (corruption, strength), in sweep order."""
  recomputed = {(row["corruption"], row["strength"]) for row in new}
  kept = [row for row in earlier if (row["corruption"], row["strength"]) not in recomputed]
  return sorted(kept + list(new), key=_noise_order)


def merge_with_earlier(result: dict, earlier: dict | None) -> tuple[dict, int]:
  """`result` with what the workdir's earlier eval.json holds and this evaluation did not
  recompute: noise rows (per replica too) and figures. Returns (merged, rows kept).

  Only an evaluation of the same checkpoint on the same test set and model
  (SAME_EVALUATION, and as many replicas) is merged; otherwise `result` replaces it.
  """
  if not earlier or len(earlier.get("replicas", [])) != len(result["replicas"]) or any(
      earlier.get(key) != result.get(key) for key in SAME_EVALUATION):
    return result, 0
  merged = dict(result)
  kept = len(_merged_rows(earlier.get("noise", []), result.get("noise", []))) - len(
      result.get("noise", []))
  if earlier.get("noise"):
    merged["noise"] = _merged_rows(earlier["noise"], result.get("noise", []))
    merged["noise_convention"] = NOISE_CONVENTION
    merged["replicas"] = [
        dict(replica, noise=_merged_rows(old.get("noise", []), replica.get("noise", [])))
        for replica, old in zip(result["replicas"], earlier["replicas"])]
  figures = list(dict.fromkeys(earlier.get("figures", []) + result.get("figures", [])))
  if figures:
    merged["figures"] = figures
  return merged, kept


def _read_earlier(path: str) -> dict | None:
  """The eval.json at `path`, or None (none yet, or unreadable: then it is replaced)."""
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    return None
  except (OSError, ValueError) as e:
    logging.warning("%s cannot be read (%s); it is replaced.", path, e)
    return None


def _dataset_name(config) -> str:
  folder = config.data.get("image_folder")
  return os.path.basename(str(folder).rstrip("/")) if folder else config.data.dataset


def evaluate_replicas(config, state, dataset: input_pipeline.Dataset, seeds: Sequence[int],
                      pairs: Sequence[tuple[str, float]], devices=None) -> dict:
  """Evaluates the replicas (R, ...) of `state` on `dataset.test`, and on the noise `pairs`.

  Returns class_names, the replicas combined (`mean_over_replicas`),
  "replicas" (one dict per replica: replica, seed from `seeds`, and its
  summary) and, with `pairs`, "noise" (their rows, means over the replicas)
  and "noise_convention".
  """
  evaluator = Evaluator(config, state, dataset.test, dataset.num_classes, devices)
  replicas = [{"replica": k, "seed": seed, **summary} for k, (seed, summary) in
              enumerate(zip(seeds, evaluator()))]
  result = {"class_names": list(dataset.class_names), **mean_over_replicas(replicas),
            "replicas": replicas}
  if pairs:
    for replica, rows in zip(replicas, evaluator.sweep(pairs)):
      replica["noise"] = rows
    result["noise"] = [
        {"corruption": name, "strength": strength, "count": result["count"],
         **_averaged([replica["noise"][j] for replica in replicas])}
        for j, (name, strength) in enumerate(pairs)]
    result["noise_convention"] = NOISE_CONVENTION
  return result


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                        options: ml_collections.ConfigDict | None = None, *,
                        devices=None, dataset: input_pipeline.Dataset | None = None,
                        verbose: bool = True) -> dict:
  """Evaluates a checkpoint of `workdir`, prints the results, writes eval.json and confusion.png.

  `config` is the run's (`restore.load_config(workdir)`, or a config file's
  with the same model); `options` default to `default_options()`.

  A failure to write (WorkdirError) comes after the results are printed.
  An eval.json already in the workdir for the same checkpoint keeps its
  noise rows and figures that this evaluation does not recompute
  (`merge_with_earlier`). Returns the eval.json content: step, epoch, class_names, "replicas" (one
  dict per replica: replica, seed, loss, accuracy, top5_accuracy, count,
  per_class_accuracy, confusion (true rows x predicted columns) and, when
  `options.noise`, "noise": a list of {corruption, strength, accuracy,
  top5_accuracy, loss, count}), and the replicas combined
  (`mean_over_replicas`): loss, accuracy, top5_accuracy, their `_std`s,
  count, per_class_accuracy, confusion, and "noise" rows with means and `_std`s.
  """
  options = options if options is not None else default_options()
  train.validate_config(config)
  compilation_cache.enable(config.get("compilation_cache_dir"))
  pairs = noise_sweep(options) if options.noise else []  # validate first
  parallel.initialize_distributed(config)
  restored = restore.restore_checkpoint(config, workdir, step=options.step, dataset=dataset)
  dataset = restored.dataset
  result = {
      "workdir": os.path.abspath(workdir),
      "step": restored.step,
      "epoch": restored.meta.get("epoch"),
      "checkpoint_test_accuracy": restored.meta.get("test_accuracy"),
      "model": config.model.to_dict(),
      "dataset": _dataset_name(config),
      **evaluate_replicas(config, restored.state, dataset, train.replica_seeds(config), pairs,
                          devices),
  }

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
    if options.visualize:
      images, labels = visualize.pick_images(dataset.test)
      figures += visualize.save_model_figures(
          restored.model, restored.variables, images, labels, dataset.class_names, workdir,
          baseline_layers=visualize.wa_twin_layers(config, dataset))
    result["figures"] = [os.path.basename(f) for f in figures]
    path = os.path.join(workdir, "eval.json")
    result, kept = merge_with_earlier(result, _read_earlier(path))
    if kept:
      logging.info("%s keeps %d noise row(s) of an earlier evaluation of checkpoint %d "
                   "(not recomputed now).", path, kept, result["step"])
    workdirs.write_atomically(path, json.dumps(result, indent=1))
  except OSError as e:
    raise workdirs.WorkdirError(
        f"cannot write the evaluation files to {workdir} ({e.strerror or e})"
        f"{'; the results are printed above' if verbose else ''}.") from e
  return result


# The test batch size of evaluations of trained weights (the reference's; the
# results do not depend on it).
PRETRAINED_EVAL_BATCH_SIZE = 100


def evaluate_pretrained(name_or_path: str, options: ml_collections.ConfigDict | None = None,
                        *, image_folder: str | None = None, devices=None,
                        verbose: bool = True) -> dict:
  """Evaluates trained weights (`pretrained.load(name_or_path)`) on the test split of their dataset.

  The test images are read from `image_folder` (a folder or archive) when
  given, else from tensorflow-datasets, and must have the classes and image
  size the weights were trained on. Prints the results (when `verbose`) and
  writes nothing. `options` as for `evaluate_checkpoint`, without `step` and
  `visualize`, which need a workdir; the noise sweep draws from PRNGKey(0).
  Returns eval.json's dict with "pretrained" (the record's path) in place of
  "workdir", and the record's step, epoch and test top-1.
  """
  options = options if options is not None else default_options()
  if options.step != -1 or options.visualize:
    raise ValueError("eval.step and eval.visualize need a --workdir; with --pretrained, see the "
                     "attention maps with `python -m wacnn_jax visualize --pretrained NAME`.")
  pairs = noise_sweep(options) if options.noise else []  # validate first
  net = pretrained.load(name_or_path)
  dataset = pretrained.load_test_data(net, image_folder)
  record = net.record
  config = record.model_config()
  config.eval_batch_size = PRETRAINED_EVAL_BATCH_SIZE
  model = pretrained.create_model(record, axis_name=parallel.AXIS_NAME)
  state = steps.TrainState.create(apply_fn=model.apply, tx=optax.identity(),
                                  rng=jax.random.PRNGKey(0), **net.variables)
  state = jax.tree.map(lambda x: jnp.asarray(x)[None], state)  # one replica (R = 1)
  result = {
      "pretrained": net.path,
      "step": record.step,
      "epoch": record.epoch,
      "checkpoint_test_accuracy": record.test_top1,
      "model": config.model.to_dict(),
      "dataset": dataset.name,
      **evaluate_replicas(config, state, dataset, [record.seed], pairs, devices),
  }
  if verbose:
    print(format_results(result), flush=True)
  return result
