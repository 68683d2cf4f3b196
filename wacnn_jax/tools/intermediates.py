"""What a model computes inside: WA maps and layer outputs of one forward pass, and where they are.

- `activations(model, variables, images, normalization=...)` runs the model once in eval mode with
  `mutable=['intermediates']`, so that every `WaveletAttention` block's sown
  `attention` = softmax over channels of (lh + hl), `ll` and `out` = ll + ll *
  attention (the re-weighted LL) come back, and with `capture_intermediates`
  restricted to the requested layers (their `__call__` outputs).
- `layer_pairs(model, variables)` finds, for each WA block, the layer that
  consumes its output: the next module called in the same parent (ResNet
  `stageN_block0/conv1`, MobileNetV2 `.../depthwise_conv`, VGG `conv{k}`).
  That path exists in the baseline (attention='none') as well, at the same
  resolution, so the WA model and the baseline can be compared layer by layer.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from wacnn_jax.data.dataset import Dataset
from wacnn_jax.data.normalization import Normalization
from wacnn_jax.data import transforms
from wacnn_jax.nn.attention import WaveletAttention
from wacnn_jax.training import states

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


def activations(model, variables, images: np.ndarray, layers: Sequence[str] = (), *,
                normalization: Normalization) -> Activations:
  """Runs `model` (eval mode) on uint8 images (N, H, W, 3), standardised by `normalization`
  (the run's: `dataset.preprocessing.normalization`); returns WA maps and `layers`' outputs."""
  wanted = set(layers)

  def capture(module, method):
    return method == "__call__" and path_name(module.path) in wanted

  @jax.jit
  def forward(variables, images):
    logits, state = model.apply(
        variables, transforms.normalize(images, normalization), train=False,
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
                     "like 'stage2_block0/conv1' (see intermediates.layer_pairs).")
  return Activations(np.asarray(images), np.asarray(logits, np.float32), wa, features)


def wa_twin_layers(config, dataset: Dataset) -> list[str]:
  """Paths of the layers after the WA blocks in the WA version of `config`'s network."""
  twin = ml_collections.ConfigDict(config.to_dict())
  twin.model.attention = "wa"
  model = states.create_model(twin, dataset.num_classes, axis_name=None)
  variables = jax.eval_shape(lambda: states.initial_variables(
      model, dataset.image_shape, jax.random.PRNGKey(0)))
  return [layer for _, layer in layer_pairs(model, variables, dataset.image_shape)
          if layer is not None]
