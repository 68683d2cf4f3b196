"""Figures of what a model computes: WA attention maps, feature maps, the confusion matrix.

Every plotting function returns a `matplotlib.figure.Figure` made without
pyplot (so no display and no global backend are involved; `savefig` renders
with Agg). Notebooks save it and show the PNG, or display it directly.

Maps with channels are shown as one 2-D image: the attention as its maximum
over channels (where one channel dominates the softmax; 1/C where the
attention is flat); LL, LL x attention (what the attention adds), the
re-weighted LL and feature maps as the mean absolute value over channels.
`feature_grid_figure` shows single channels.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from matplotlib.figure import Figure
import numpy as np

from wacnn_jax.tools.intermediates import Activations

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


def save_figure(fig: Figure, path: str, dpi: int = 100) -> str:
  fig.savefig(path, dpi=dpi)
  return path
