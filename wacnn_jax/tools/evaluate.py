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

The corruptions are `corruptions`'s, run inside the jitted evaluation; the
random draws come from the checkpoint's PRNG key, the batch index and the
device, so a sweep is reproducible. `eval_results` combines, prints and
merges the results.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags
import optax

from wacnn_jax.data.dataset import Dataset, Split
from wacnn_jax.data.normalization import Normalization
from wacnn_jax.files import atomic
from wacnn_jax import pretrained
from wacnn_jax.tools import command_line
from wacnn_jax.tools import corruptions
from wacnn_jax.tools import eval_results
from wacnn_jax.tools import failures
from wacnn_jax.tools import figures
from wacnn_jax.tools import intermediates
from wacnn_jax.tools import visualize
from wacnn_jax.training import compilation_cache
from wacnn_jax.training import config_checks
from wacnn_jax.training import parallel
from wacnn_jax.training import restore
from wacnn_jax.training import states
from wacnn_jax.training import steps
from wacnn_jax.training import workdirs

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


def noise_sweep(options: ml_collections.ConfigDict) -> list[tuple[str, float]]:
  """(corruption, strength) pairs listed in the evaluation `options`."""
  pairs = []
  for name, (_, field) in corruptions.CORRUPTIONS.items():
    values = options.get(field) or ()
    if isinstance(values, (int, float)):
      values = (values,)
    for value in values:
      corruptions.corruption(name, value)  # validates
      pairs.append((name, float(value)))
  return pairs


class Evaluator:
  """The training loop's evaluation of the replicas (R, ...) of a state on one split.

  Calls return one summary per replica (`steps.summarize_eval`).
  """

  def __init__(self, config, state, split: Split, num_classes: int,
               normalization: Normalization, devices=None):
    self.config = config
    self.num_classes = num_classes
    self.normalization = normalization
    self.topology = parallel.Topology.current(devices)
    self.data = parallel.shard_eval_data(split, self.topology, config.eval_batch_size)
    self.state = parallel.replicate_state(state, self.topology)

  def __call__(self, transform=None) -> list[dict]:
    evaluate = steps.make_eval_fn(self.config, self.num_classes, self.normalization,
                                  self.topology, transform=transform)
    return steps.summarize_eval(parallel.unreplicate(evaluate(self.state, self.data)))

  def sweep(self, pairs: Sequence[tuple[str, float]]) -> list[list[dict]]:
    """Per replica, accuracy, top-5 and loss for each (corruption, strength): [replica][pair]."""
    rows = []
    for name, strength in pairs:
      results = self(corruptions.corruption(name, strength))
      rows.append([{"corruption": name, "strength": strength,
                    **{k: r[k] for k in ("accuracy", "top5_accuracy", "loss", "count")}}
                   for r in results])
      logging.info("%s %g: top-1 %s", name, strength,
                   " ".join(f"{r['accuracy']:.4f}" for r in results))
    return [list(replica_rows) for replica_rows in zip(*rows)]


def _dataset_name(config) -> str:
  folder = config.data.get("image_folder")
  return os.path.basename(str(folder).rstrip("/")) if folder else config.data.dataset


def evaluate_replicas(config, state, dataset: Dataset, normalization: Normalization,
                      seeds: Sequence[int], pairs: Sequence[tuple[str, float]],
                      devices=None) -> dict:
  """Evaluates the replicas (R, ...) of `state` on `dataset.test`, standardised by
  `normalization` (the model's), and on the noise `pairs`.

  Returns class_names, the replicas combined (`mean_over_replicas`),
  "replicas" (one dict per replica: replica, seed from `seeds`, and its
  summary) and, with `pairs`, "noise" (their rows, means over the replicas)
  and "noise_convention".
  """
  evaluator = Evaluator(config, state, dataset.test, dataset.num_classes, normalization,
                        devices)
  replicas = [{"replica": k, "seed": seed, **summary} for k, (seed, summary) in
              enumerate(zip(seeds, evaluator()))]
  result = {"class_names": list(dataset.class_names), **eval_results.mean_over_replicas(replicas),
            "replicas": replicas}
  if pairs:
    for replica, rows in zip(replicas, evaluator.sweep(pairs)):
      replica["noise"] = rows
    result["noise"] = [
        {"corruption": name, "strength": strength, "count": result["count"],
         **eval_results.averaged([replica["noise"][j] for replica in replicas])}
        for j, (name, strength) in enumerate(pairs)]
    result["noise_convention"] = corruptions.NOISE_CONVENTION
  return result


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                        options: ml_collections.ConfigDict | None = None, *,
                        devices=None, dataset: Dataset | None = None,
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
  config_checks.validate_config(config)
  compilation_cache.enable(config.get("compilation_cache_dir"))
  workdirs.check_exists(workdir)
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
      **evaluate_replicas(config, restored.state, dataset,
                          restored.preprocessing.normalization, states.replica_seeds(config),
                          pairs, devices),
  }

  if jax.process_index() != 0:  # multi-host: every host evaluated; one writes
    return result
  if verbose:
    print(eval_results.format_results(result), flush=True)
  try:
    written = [figures.save_figure(
        figures.confusion_figure(
            result["confusion"], dataset.class_names,
            title=f"{config.model.arch} + {config.model.attention}, step {restored.step}: "
            f"top-1 {result['accuracy']:.4f}"),
        os.path.join(workdir, "confusion.png"))]
    if options.visualize:
      images, labels = visualize.pick_images(dataset.test)
      written += visualize.save_model_figures(
          restored.model, restored.variables, images, labels, dataset.class_names, workdir,
          normalization=restored.preprocessing.normalization,
          baseline_layers=intermediates.wa_twin_layers(config, dataset))
    result["figures"] = [os.path.basename(f) for f in written]
    path = os.path.join(workdir, "eval.json")
    result, kept = eval_results.merge_with_earlier(result, eval_results.read_earlier(path))
    if kept:
      logging.info("%s keeps %d noise row(s) of an earlier evaluation of checkpoint %d "
                   "(not recomputed now).", path, kept, result["step"])
    atomic.write_atomically(path, json.dumps(result, indent=1))
  except OSError as e:
    raise workdirs.WorkdirError(
        f"cannot write the evaluation files to {workdir} ({e.strerror or e})"
        f"{'; the results are printed above' if verbose else ''}.") from e
  if verbose:
    print(f"wrote in {os.path.abspath(workdir)}: eval.json, {', '.join(result['figures'])}",
          flush=True)
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
  compilation_cache.enable()  # the per-machine folder: weights carry no config that sets it
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
      **evaluate_replicas(config, state, dataset, net.preprocessing.normalization, [record.seed],
                          pairs, devices),
  }
  if verbose:
    print(eval_results.format_results(result), flush=True)
  return result

# ---------------------------------------------------------------------------
# The command.
# ---------------------------------------------------------------------------


def define_flags(fv: flags.FlagValues, argv: list[str]) -> None:
  flags.DEFINE_string("workdir", None, "Workdir of a training run.", flag_values=fv)
  flags.DEFINE_string("pretrained", None, "Instead of --workdir: trained weights, a shipped "
                      "model's name or the path of exported ones (wacnn_jax.pretrained.load); "
                      "evaluated on the test split of their dataset, nothing is written.",
                      flag_values=fv)
  flags.DEFINE_string("image_folder", None, "Overrides data.image_folder: the test images, an "
                      "image folder or archive (with --pretrained, default: tensorflow-datasets).",
                      flag_values=fv)
  config_flags.DEFINE_config_file(
      "config", None, "Config file with get_config() (default: the run's config.json).",
      flag_values=fv, lock_config=True, sys_argv=argv)
  config_flags.DEFINE_config_dict(
      "eval", default_options(),
      "Evaluation options, set as --eval.NAME=VALUE (OPTIONS).",
      flag_values=fv, lock_config=True, sys_argv=argv)


def run(fv: flags.FlagValues, args: list[str]) -> int:
  del args
  command_line.one_model(fv, "workdir", "pretrained")
  try:
    noise_sweep(fv.eval)
  except ValueError as e:
    command_line.exit_with_usage_error(str(e))
  if fv.pretrained:
    if fv.config is not None:
      command_line.exit_with_usage_error("--config describes a training run; with --pretrained the model "
                             "comes from the weights (give the test images with --image_folder).")

    def run_pretrained() -> int:
      evaluate_pretrained(fv.pretrained, fv.eval, image_folder=fv.image_folder)
      return 0

    return failures.print_error(run_pretrained)
  if fv.config is not None:
    command_line.check_config(fv.config)

  def run():
    config = fv.config if fv.config is not None else restore.load_config(fv.workdir)
    if fv.image_folder:
      config.data.image_folder = fv.image_folder
    evaluate_checkpoint(config, fv.workdir, fv.eval)

  return failures.report_user_errors(fv.workdir, run)


COMMAND = command_line.Command(
    define_flags, run, choice="(--workdir=WORKDIR | --pretrained=PRETRAINED)",
    on_signal="evaluation stopped (eval.json is written when it ends).",
    field_help={f"eval.{name}": text for name, (_, text) in OPTIONS.items()})
