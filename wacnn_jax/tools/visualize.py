"""`python -m wacnn_jax visualize`: the attention maps of a WA model next to its baseline.

    python -m wacnn_jax visualize --workdir W [--baseline W0] [--out PNG]
    python -m wacnn_jax visualize --pretrained NAME [--baseline_pretrained NAME0] [--out PNG]

`attention_figures(model, variables, images)` draws one figure per WA block
(`figures.attention_figure`) from one forward pass (`intermediates`);
`save_model_figures` writes them into a workdir (`evaluate --eval.visualize`).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

from absl import flags
from matplotlib.figure import Figure
import numpy as np

from wacnn_jax.data.dataset import Split
from wacnn_jax import pretrained
from wacnn_jax.files import records
from wacnn_jax.tools import command_line
from wacnn_jax.tools import failures
from wacnn_jax.tools import figures
from wacnn_jax.tools import intermediates
from wacnn_jax.training import compilation_cache
from wacnn_jax.training import restore


def attention_figures(model, variables, images, *, normalization, baseline=None, labels=None,
                      class_names=None) -> list[tuple[str, Figure]]:
  """`attention_figure` for every WA block of `model`: [(block path, figure)].

  `images` uint8 (N, H, W, 3), standardised by `normalization` (the run's).
  `baseline`: optional (model, variables) of the same network without WA,
  shown at the layer after each WA block.
  """
  pairs = intermediates.layer_pairs(model, variables, images.shape[1:])
  layers = [layer for _, layer in pairs if layer is not None]
  acts = intermediates.activations(model, variables, images, layers,
                                  normalization=normalization)
  base = None
  if baseline is not None:
    base_model, base_variables = baseline
    base = intermediates.activations(base_model, base_variables, images, layers,
                                     normalization=normalization)
  return [(block, figures.attention_figure(acts, block, layer=layer, baseline=base,
                                           labels=labels, class_names=class_names))
          for block, layer in pairs]


def pick_images(split: Split, count: int = 4):
  """The first test image of each of the first `count` classes (deterministic)."""
  indices = []
  for label in np.unique(split.labels)[:count]:
    indices.append(int(np.flatnonzero(split.labels == label)[0]))
  indices = np.asarray(indices, int)
  return split.images[indices], split.labels[indices]


def save_model_figures(model, variables, images, labels, class_names, workdir: str,
                       *, normalization, baseline_layers: Sequence[str] = ()) -> list[str]:
  """Saves the attention maps of every WA block (`attention_maps_wa<k>.png`).

  A model without WA blocks gets `feature_maps.png` of `baseline_layers` (the
  layers that follow the WA blocks in the WA version of the same network).
  Returns the paths written.
  """
  written = []
  maps = attention_figures(model, variables, images, normalization=normalization,
                           labels=labels, class_names=class_names)
  for k, (_, fig) in enumerate(maps):
    written.append(figures.save_figure(fig, os.path.join(workdir, f"attention_maps_wa{k}.png")))
  if not maps and baseline_layers:
    acts = intermediates.activations(model, variables, images, baseline_layers,
                                     normalization=normalization)
    fig = figures.feature_maps_figure(images, baseline_layers, {"this model": acts},
                                      labels=labels, class_names=class_names)
    written.append(figures.save_figure(fig, os.path.join(workdir, "feature_maps.png")))
  return written


@dataclasses.dataclass(frozen=True)
class ModelAbout:
  """What a model is, as far as comparing it with a baseline goes (None: not known yet)."""

  arch: str
  attention: str
  dataset: str | None
  class_names: tuple[str, ...] | None
  image_shape: tuple[int, ...] | None

  @classmethod
  def of_workdir(cls, workdir: str) -> "ModelAbout":
    """From the run's config.json and dataset.json (its data: None where that is missing)."""
    config = restore.load_config(workdir)
    path = os.path.join(workdir, "dataset.json")
    data = records.read_json(path) if os.path.exists(path) else {}
    return cls(config.model.arch, config.model.attention, data.get("name"),
               tuple(data["class_names"]) if "class_names" in data else None,
               tuple(data["image_shape"][:2]) if "image_shape" in data else None)

  @classmethod
  def of_weights(cls, record) -> "ModelAbout":
    return cls(record.arch, record.attention, record.dataset, tuple(record.class_names),
               tuple(record.image_shape[:2]))

  def differences(self, baseline: "ModelAbout") -> list[str]:
    """What `baseline` has otherwise than this model, besides its attention: 'architecture
    resnet34 (baseline) vs resnet18', ...; empty when they are comparable."""
    fields = (("architecture", "arch"), ("dataset", "dataset"), ("classes", "class_names"),
              ("image size", "image_shape"))
    found = []
    for what, field in fields:
      ours, theirs = getattr(self, field), getattr(baseline, field)
      if ours is not None and theirs is not None and ours != theirs:
        if field == "class_names":
          ours, theirs = f"{len(ours)} ({', '.join(ours[:3])}, ...)", \
              f"{len(theirs)} ({', '.join(theirs[:3])}, ...)"
        elif field == "image_shape":
          ours, theirs = f"{ours[0]}x{ours[1]}", f"{theirs[0]}x{theirs[1]}"
        found.append(f"{what} {theirs} (baseline) vs {ours}")
    return found


def baseline_mismatch(baseline: str, differences: list[str]) -> str:
  return (f"the baseline {baseline} is not the WA model's network without WA: "
          f"{'; '.join(differences)}. Give a baseline trained with the same architecture "
          "and data (attention 'none').")


def save_attention_maps(workdir: str | None = None, *, pretrained_weights: str | None = None,
                        baseline: str | None = None, baseline_pretrained: str | None = None,
                        images: int = 4, image_folder: str | None = None, replica: int = 0,
                        baseline_replica: int = 0, out: str = "attention_maps.png",
                        dpi: int = 100) -> int:
  """`python -m wacnn_jax visualize`: attention maps of a WA model; the exit code.

  The WA model is `workdir`'s best checkpoint or `pretrained_weights`
  (`pretrained.load`: a shipped name or exported weights), beside the feature
  maps of the baseline, `baseline`'s best checkpoint or `baseline_pretrained`,
  when given. One PNG per WA block (`out`, or `<out>_wa<k>` with several);
  `image_folder` overrides the runs' `data.image_folder` (the test images of
  trained weights come from it, else from tensorflow-datasets). Raises
  ValueError, CheckpointError, WeightsError or DatasetError.
  """

  def open_model(run_workdir, weights, run_replica, dataset=None):
    """(model, variables, dataset, its normalisation, what it is) of a workdir's best
    checkpoint or of trained weights."""
    if weights is not None:
      net = pretrained.load(weights)
      if dataset is None:
        dataset = pretrained.load_test_data(net, image_folder)
      pretrained.check_dataset(net, dataset)
      return (net.model, net.variables, dataset, net.preprocessing.normalization,
              ModelAbout.of_weights(net.record))
    config = restore.load_config(run_workdir)
    if image_folder:
      config.data.image_folder = image_folder
    run = restore.restore_checkpoint(config, run_workdir, dataset=dataset, replica=run_replica)
    return (run.model, run.variables, run.dataset, run.preprocessing.normalization,
            ModelAbout.of_workdir(run_workdir))

  if workdir and baseline:  # two runs: compared before anything is restored
    differences = ModelAbout.of_workdir(workdir).differences(ModelAbout.of_workdir(baseline))
    if differences:
      raise ValueError(baseline_mismatch(baseline, differences))
  model, variables, dataset, normalization, about = open_model(workdir, pretrained_weights,
                                                               replica)
  base = None
  if baseline or baseline_pretrained:
    base = open_model(baseline, baseline_pretrained, baseline_replica, dataset)
    differences = about.differences(base[4])
    if differences:
      raise ValueError(baseline_mismatch(baseline or baseline_pretrained, differences))
  chosen, labels = pick_images(dataset.test, images)
  maps = attention_figures(
      model, variables, chosen, normalization=normalization, labels=labels,
      class_names=dataset.class_names, baseline=base[:2] if base else None)
  if not maps:
    raise ValueError(f"the model of {workdir or pretrained_weights} has no WA blocks "
                     "(its attention is not 'wa').")
  stem, ext = os.path.splitext(out)
  for k, (block, fig) in enumerate(maps):
    path = out if len(maps) == 1 else f"{stem}_wa{k}{ext or '.png'}"
    figures.save_figure(fig, path, dpi=dpi)
    print(f"{block}: wrote {path}")
  return 0


def define_flags(fv: flags.FlagValues, argv: list[str]) -> None:
  del argv
  flags.DEFINE_string("workdir", None, "Workdir of a training run with WA.", flag_values=fv)
  flags.DEFINE_string("pretrained", None, "Instead of --workdir: trained WA weights, a shipped "
                      "model's name or the path of exported ones.", flag_values=fv)
  flags.DEFINE_string("baseline", None, "Workdir of the same network without WA.",
                      flag_values=fv)
  flags.DEFINE_string("baseline_pretrained", None, "Instead of --baseline: trained weights of "
                      "the same network without WA.", flag_values=fv)
  flags.DEFINE_integer("images", 4, "How many test images (one per class).", flag_values=fv)
  flags.DEFINE_string("image_folder", None, "Overrides data.image_folder of the runs (with "
                      "--pretrained, default: the weights' dataset from tensorflow-datasets).",
                      flag_values=fv)
  flags.DEFINE_integer("replica", 0, "Which replica of a run trained with num_seeds > 1: "
                       "K is the one of seed seed + K.", flag_values=fv)
  flags.DEFINE_integer("baseline_replica", 0, "Which replica of the --baseline run.",
                       flag_values=fv)
  flags.DEFINE_string("out", "attention_maps.png",
                      "Output PNG; with several WA blocks, _wa<k> is added per block.",
                      flag_values=fv)
  flags.DEFINE_integer("dpi", 100, "Figure resolution.", flag_values=fv)


def run(fv: flags.FlagValues, args: list[str]) -> int:
  del args
  command_line.one_model(fv, "workdir", "pretrained")
  command_line.one_model(fv, "baseline", "baseline_pretrained", required=False)
  for replica_flag, weights_flag in (("replica", "pretrained"),
                                     ("baseline_replica", "baseline_pretrained")):
    if fv[replica_flag].value and fv[weights_flag].value:
      command_line.exit_with_usage_error(f"--{replica_flag} picks a replica of a workdir; --{weights_flag} "
                             "is one model.")
  compilation_cache.enable()  # the per-machine folder, as for every command
  return failures.print_error(lambda: save_attention_maps(
      fv.workdir, pretrained_weights=fv.pretrained, baseline=fv.baseline,
      baseline_pretrained=fv.baseline_pretrained, images=fv.images,
      image_folder=fv.image_folder, replica=fv.replica, baseline_replica=fv.baseline_replica,
      out=fv.out, dpi=fv.dpi))


COMMAND = command_line.Command(define_flags, run,
                               choice="(--workdir=WORKDIR | --pretrained=PRETRAINED)")
