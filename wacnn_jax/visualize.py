"""Look inside a model: WA attention maps, feature maps and the confusion matrix.

Every plotting function returns a `matplotlib.figure.Figure` made without
pyplot (so no display and no global backend are involved; `savefig` renders
with Agg). Notebooks save it and show the PNG, or display it directly. The numbers
come from the models themselves:

- `activations(model, variables, images)` runs the model once in eval mode with
  `mutable=['intermediates']`, so that every `WaveletAttention` block's sown
  `attention` = softmax over channels of (lh + hl), `ll` and `out` = ll + ll *
  attention (the re-weighted LL) come back, and with `capture_intermediates`
  restricted to the requested layers (their `__call__` outputs).
- `layer_pairs(model, variables)` finds, for each WA block, the layer that
  consumes its output: the next module called in the same parent (ResNet
  `stageN_block0/conv1`, MobileNetV2 `.../depthwise_conv`, VGG `conv{k}`).
  That path exists in the baseline (attention='none') as well, at the same
  resolution, so the WA model and the baseline can be compared layer by layer.

Maps with channels are shown as one 2-D image: the attention as its maximum
over channels (where one channel dominates the softmax; 1/C where the
attention is flat); LL, LL x attention (what the attention adds), the
re-weighted LL and feature maps as the mean absolute value over channels. `feature_grid_figure` shows single channels.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
from matplotlib.figure import Figure
import ml_collections
import numpy as np

from wacnn_jax import input_pipeline
from wacnn_jax import pretrained
from wacnn_jax import restore
from wacnn_jax import train
from wacnn_jax.attention import WaveletAttention

WA_NAMES = ("attention", "ll", "out")


def path_name(path: Sequence[str]) -> str:
  return "/".join(path)


@dataclasses.dataclass
class Activations:
  """One forward pass: logits (N, classes), WA maps and captured layer outputs.

  `wa[block_path] = {'attention', 'll', 'out'}` and `features[layer_path]`
  are float32 numpy arrays (N, h, w, C); paths are '/'-joined module names in
  call order.
  """

  images: np.ndarray
  logits: np.ndarray
  wa: dict
  features: dict

  @property
  def predictions(self) -> np.ndarray:
    return self.logits.argmax(-1)


def _call_order(model, variables, image_shape) -> tuple[list[tuple[str, ...]], dict]:
  """Module paths in the order the forward pass calls them, and their output shapes.

  Shapes only (`jax.eval_shape`), nothing is computed.
  """
  order = []

  def record(module, method):
    if method == "__call__" and module.path not in order:
      order.append(tuple(module.path))
    return method == "__call__"

  x = jax.ShapeDtypeStruct((1,) + tuple(image_shape), jnp.float32)
  _, state = jax.eval_shape(
      lambda v, x: model.apply(v, x, train=False, capture_intermediates=record,
                               mutable=["intermediates"]), variables, x)
  shapes = {}
  for path in order:
    node = state["intermediates"]
    for name in path:
      node = node.get(name, {})
    output = node.get("__call__", (None,))[0]
    if isinstance(output, (tuple, list)):
      output = output[0]
    shapes[path] = getattr(output, "shape", None)
  return order, shapes


def wa_blocks(model, variables, image_shape=(32, 32, 3)) -> list[str]:
  """Paths of the model's WaveletAttention blocks, in call order."""
  found = []

  def record(module, method):
    if method == "__call__" and isinstance(module, WaveletAttention):
      name = path_name(module.path)
      if name not in found:
        found.append(name)
    return False

  x = jax.ShapeDtypeStruct((1,) + tuple(image_shape), jnp.float32)
  jax.eval_shape(lambda v, x: model.apply(v, x, train=False, capture_intermediates=record,
                                          mutable=["intermediates"]), variables, x)
  return found


def layer_pairs(model, variables, image_shape=(32, 32, 3)) -> list[tuple[str, str | None]]:
  """(WA block path, path of the layer that consumes its output) for each WA block.

  The consumer is the next module called in the block's parent; it is None
  when that module's output is not a feature map (N, h, w, C), e.g. VGG's
  classifier after the last WA block.
  """
  order, shapes = _call_order(model, variables, image_shape)
  pairs = []
  for block in wa_blocks(model, variables, image_shape):
    path = tuple(block.split("/"))
    after = order[order.index(path) + 1:]
    consumer = next((p for p in after if p[:-1] == path[:-1] and len(p) == len(path)), None)
    if consumer is not None and len(shapes.get(consumer) or ()) != 4:
      consumer = None
    pairs.append((block, None if consumer is None else path_name(consumer)))
  return pairs


def activations(model, variables, images: np.ndarray, layers: Sequence[str] = ()) -> Activations:
  """Runs `model` (eval mode) on uint8 images (N, H, W, 3); returns WA maps and `layers`' outputs."""
  wanted = set(layers)

  def capture(module, method):
    return method == "__call__" and path_name(module.path) in wanted

  @jax.jit
  def forward(variables, images):
    logits, state = model.apply(
        variables, input_pipeline.normalize(images), train=False,
        capture_intermediates=capture, mutable=["intermediates"])
    return logits, state.get("intermediates", {})

  logits, intermediates = jax.device_get(forward(variables, jnp.asarray(images)))
  wa, features = {}, {}

  def walk(tree, prefix):
    for key, value in tree.items():
      if isinstance(value, Mapping):
        walk(value, prefix + (key,))
      elif key in WA_NAMES and prefix:
        wa.setdefault(path_name(prefix), {})[key] = np.asarray(value[0], np.float32)
      elif key == "__call__" and path_name(prefix) in wanted:
        output = value[0]
        if isinstance(output, (tuple, list)):  # a WA block returns (out, ll)
          output = output[0]
        features[path_name(prefix)] = np.asarray(output, np.float32)

  walk(intermediates, ())
  missing = wanted - set(features)
  if missing:
    raise ValueError(f"no layer(s) {sorted(missing)} in the model; module paths look "
                     "like 'stage2_block0/conv1' (see visualize.layer_pairs).")
  return Activations(np.asarray(images), np.asarray(logits, np.float32), wa, features)


# ---------------------------------------------------------------------------
# Figures.
# ---------------------------------------------------------------------------


def _figure(rows: int, cols: int, panel: float = 1.6):
  fig = Figure(figsize=(max(panel * cols, 4.0), panel * rows + 0.5), layout="constrained")
  axes = fig.subplots(rows, cols, squeeze=False)
  for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
  return fig, axes


def _mean_abs(x: np.ndarray) -> np.ndarray:
  return np.abs(x).mean(-1)


def _image_label(index, labels, predictions, class_names, baseline_predictions=None,
                 baseline_name="baseline"):
  name = lambda k: class_names[k] if class_names is not None else str(k)
  parts = []
  if labels is not None:
    parts.append(f"true: {name(int(labels[index]))}")
  if predictions is not None:
    parts.append(f"pred: {name(int(predictions[index]))}")
  if baseline_predictions is not None:
    parts.append(f"{baseline_name}: {name(int(baseline_predictions[index]))}")
  return "\n".join(parts)


def attention_figure(acts: Activations, block: str, *, layer: str | None = None,
                     baseline: Activations | None = None, labels=None,
                     class_names: Sequence[str] | None = None,
                     baseline_name: str = "baseline") -> Figure:
  """One row per image: input | LL | attention | LL x attention | re-weighted LL
  [| layer (WA) [| layer (baseline)]].

  `acts` must hold the WA maps of `block`; `layer` (usually the block's
  consumer from `layer_pairs`) adds that layer's output, and `baseline`
  (activations of the model without WA on the same images, with `layer`
  captured) adds the same layer of the baseline.
  """
  if block not in acts.wa:
    raise ValueError(f"no WA block {block!r}; the model has {sorted(acts.wa) or 'none'}.")
  maps = acts.wa[block]
  columns = [("input", None, None), ("LL", _mean_abs(maps["ll"]), "viridis"),
             ("attention (max over C)", maps["attention"].max(-1), "magma"),
             ("LL x attention", _mean_abs(maps["ll"] * maps["attention"]), "magma"),
             ("re-weighted LL", _mean_abs(maps["out"]), "viridis")]
  if layer is not None:
    columns.append((f"{layer}\n(WA)", _mean_abs(acts.features[layer]), "viridis"))
    if baseline is not None:
      columns.append((f"{layer}\n({baseline_name})", _mean_abs(baseline.features[layer]),
                      "viridis"))
  n = len(acts.images)
  fig, axes = _figure(n, len(columns))
  for row in range(n):
    for col, (title, values, cmap) in enumerate(columns):
      ax = axes[row, col]
      if values is None:
        ax.imshow(acts.images[row])
        ax.set_ylabel(_image_label(
            row, labels, acts.predictions, class_names,
            None if baseline is None else baseline.predictions, baseline_name), fontsize=7)
      else:
        ax.imshow(values[row], cmap=cmap)
      if row == 0:
        ax.set_title(title, fontsize=7)
  fig.suptitle(f"Wavelet attention at {block}", fontsize=9)
  return fig


def attention_figures(model, variables, images, *, baseline=None, labels=None,
                      class_names=None) -> list[tuple[str, Figure]]:
  """`attention_figure` for every WA block of `model`: [(block path, figure)].

  `baseline`: optional (model, variables) of the same network without WA,
  shown at the layer after each WA block.
  """
  pairs = layer_pairs(model, variables, images.shape[1:])
  layers = [layer for _, layer in pairs if layer is not None]
  acts = activations(model, variables, images, layers)
  base = None
  if baseline is not None:
    base_model, base_variables = baseline
    base = activations(base_model, base_variables, images, layers)
  return [(block, attention_figure(acts, block, layer=layer, baseline=base, labels=labels,
                                   class_names=class_names)) for block, layer in pairs]


def feature_maps_figure(images: np.ndarray, layers: Sequence[str],
                        runs: Mapping[str, Activations], *, labels=None,
                        class_names=None) -> Figure:
  """One row per image: input, then for each layer and each run the mean |activation| map."""
  columns = [(f"{layer}\n({name})", acts, layer) for layer in layers
             for name, acts in runs.items()]
  fig, axes = _figure(len(images), 1 + len(columns))
  first = next(iter(runs.values()))
  for row in range(len(images)):
    axes[row, 0].imshow(images[row])
    axes[row, 0].set_ylabel(_image_label(row, labels, first.predictions, class_names),
                            fontsize=7)
    for col, (title, acts, layer) in enumerate(columns, start=1):
      axes[row, col].imshow(_mean_abs(acts.features[layer][row]), cmap="viridis")
      if row == 0:
        axes[row, col].set_title(title, fontsize=7)
  axes[0, 0].set_title("input", fontsize=7)
  fig.suptitle("Feature maps (mean |activation|)", fontsize=9)
  return fig


def feature_grid_figure(maps: np.ndarray, *, title: str, channels: int = 16,
                        columns: int = 8, cmap: str = "viridis") -> Figure:
  """Single channels of one image's map (h, w, C): the first `channels` ones, titled 'ch k'."""
  count = min(channels, maps.shape[-1])
  rows = -(-count // columns)
  fig, axes = _figure(rows, min(columns, count), panel=1.1)
  for k, ax in enumerate(axes.flat):
    if k < count:
      ax.imshow(maps[..., k], cmap=cmap)
      ax.set_title(f"ch {k}", fontsize=7)
    else:
      ax.set_axis_off()
  fig.suptitle(title, fontsize=9)
  return fig


def confusion_figure(confusion, class_names: Sequence[str], *, title: str = "") -> Figure:
  """Confusion matrix (rows: true class, columns: predicted) with counts in the cells."""
  confusion = np.asarray(confusion)
  k = len(class_names)
  size = max(4.0, 0.45 * k + 1.5)
  fig = Figure(figsize=(size + 1, size), layout="constrained")
  ax = fig.subplots()
  image = ax.imshow(confusion, cmap="Blues")
  fig.colorbar(image, ax=ax, shrink=0.8)
  ticks = np.arange(k)
  ax.set_xticks(ticks, class_names, rotation=90, fontsize=7)
  ax.set_yticks(ticks, class_names, fontsize=7)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  if k <= 20:
    threshold = confusion.max() / 2 if confusion.size else 0
    for i in range(k):
      for j in range(k):
        ax.text(j, i, str(int(confusion[i, j])), ha="center", va="center", fontsize=6,
                color="white" if confusion[i, j] > threshold else "black")
  ax.set_title(title or "confusion matrix", fontsize=9)
  return fig


def wa_twin_layers(config, dataset: input_pipeline.Dataset) -> list[str]:
  """Paths of the layers after the WA blocks in the WA version of `config`'s network."""
  twin = ml_collections.ConfigDict(config.to_dict())
  twin.model.attention = "wa"
  model = train.create_model(twin, dataset.num_classes, axis_name=None)
  variables = jax.eval_shape(lambda: train.initial_variables(
      model, dataset.image_shape, jax.random.PRNGKey(0)))
  return [layer for _, layer in layer_pairs(model, variables, dataset.image_shape)
          if layer is not None]


def save_figure(fig: Figure, path: str, dpi: int = 100) -> str:
  fig.savefig(path, dpi=dpi)
  return path


def pick_images(split: input_pipeline.Split, count: int = 4):
  """The first test image of each of the first `count` classes (deterministic)."""
  indices = []
  for label in np.unique(split.labels)[:count]:
    indices.append(int(np.flatnonzero(split.labels == label)[0]))
  indices = np.asarray(indices, int)
  return split.images[indices], split.labels[indices]


def save_model_figures(model, variables, images, labels, class_names, workdir: str,
                       *, baseline_layers: Sequence[str] = ()) -> list[str]:
  """Saves the attention maps of every WA block (`attention_maps_wa<k>.png`).

  A model without WA blocks gets `feature_maps.png` of `baseline_layers` (the
  layers that follow the WA blocks in the WA version of the same network).
  Returns the paths written.
  """
  written = []
  figures = attention_figures(model, variables, images, labels=labels,
                              class_names=class_names)
  for k, (_, fig) in enumerate(figures):
    written.append(save_figure(fig, os.path.join(workdir, f"attention_maps_wa{k}.png")))
  if not figures and baseline_layers:
    acts = activations(model, variables, images, baseline_layers)
    fig = feature_maps_figure(images, baseline_layers, {"this model": acts}, labels=labels,
                              class_names=class_names)
    written.append(save_figure(fig, os.path.join(workdir, "feature_maps.png")))
  return written


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
    """(model, variables, dataset) of a workdir's best checkpoint or of trained weights."""
    if weights is not None:
      net = pretrained.load(weights)
      if dataset is None:
        dataset = pretrained.load_test_data(net, image_folder)
      pretrained.check_dataset(net, dataset)
      return net.model, net.variables, dataset
    config = restore.load_config(run_workdir)
    if image_folder:
      config.data.image_folder = image_folder
    run = restore.restore_checkpoint(config, run_workdir, dataset=dataset, replica=run_replica)
    return run.model, run.variables, run.dataset

  model, variables, dataset = open_model(workdir, pretrained_weights, replica)
  base = (open_model(baseline, baseline_pretrained, baseline_replica, dataset)
          if baseline or baseline_pretrained else None)
  chosen, labels = pick_images(dataset.test, images)
  figures = attention_figures(
      model, variables, chosen, labels=labels, class_names=dataset.class_names,
      baseline=base[:2] if base else None)
  if not figures:
    raise ValueError(f"the model of {workdir or pretrained_weights} has no WA blocks "
                     "(its attention is not 'wa').")
  stem, ext = os.path.splitext(out)
  for k, (block, fig) in enumerate(figures):
    path = out if len(figures) == 1 else f"{stem}_wa{k}{ext or '.png'}"
    save_figure(fig, path, dpi=dpi)
    print(f"{block}: wrote {path}")
  return 0
