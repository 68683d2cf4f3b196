"""torchvision's weights in the ImageNet-layout backbones: a state_dict as Flax variables.

    import torchvision
    model = create_model("resnet50_imagenet", num_classes=1000)
    state = torchvision.models.resnet50(weights="IMAGENET1K_V2").state_dict()
    variables = variables_from_torchvision(model, state)   # {"params", "batch_stats"}
    logits = model.apply(variables, x)                     # x: (N, 224, 224, 3) NHWC

`state_dict` maps torchvision's names to arrays (torch tensors on the CPU or
numpy arrays; torch itself is not imported here). Convolution kernels go from
PyTorch's OIHW to Flax's HWIO, Linear weights are transposed, BatchNorm's
weight / bias / running_mean / running_var become scale / bias and the
batch_stats mean / var; `num_batches_tracked` is dropped. The ImageNet
preprocessing (resize, crop, torchvision's mean and std) is the caller's.
With attention modules other than none and WA the network has parameters
that torchvision's has not: they are refused by name, as are missing,
unexpected and misshapen entries.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from wacnn_jax.models import mobilenet_v2
from wacnn_jax.models import mobilenet_v2_imagenet
from wacnn_jax.models import resnet_imagenet

_BATCH_NORM = {"weight": ("params", "scale"), "bias": ("params", "bias"),
               "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}


def _resnet_module(name: str) -> str | None:
  """torchvision ResNet module name -> our module path ('stage1_block0/bn1'), or None."""
  if name in ("conv1", "bn1"):
    return {"conv1": "stem_conv", "bn1": "stem_bn"}[name]
  if name == "fc":
    return "classifier"
  match = re.fullmatch(r"layer(\d)\.(\d+)\.(conv\d|bn\d|downsample\.[01])", name)
  if not match:
    return None
  layer = {"downsample.0": "shortcut_conv", "downsample.1": "shortcut_bn"}.get(
      match.group(3), match.group(3))
  return f"stage{match.group(1)}_block{match.group(2)}/{layer}"


def _mobilenet_blocks() -> list[tuple[str, int]]:
  """(our block path, its expansion t) of torchvision's features.1 .. features.17."""
  return [(f"stage{stage}_block{index}", t)
          for stage, (t, _, n, _) in enumerate(mobilenet_v2.STAGES, start=1)
          for index in range(n)]


def _mobilenet_module(name: str) -> str | None:
  """torchvision MobileNetV2 module name -> our module path, or None."""
  fixed = {"features.0.0": "stem_conv", "features.0.1": "stem_bn",
           "features.18.0": "head_conv", "features.18.1": "head_bn",
           "classifier.1": "classifier"}
  if name in fixed:
    return fixed[name]
  match = re.fullmatch(r"features\.(\d+)\.conv\.(.+)", name)
  blocks = _mobilenet_blocks()
  if not match or not 1 <= int(match.group(1)) <= len(blocks):
    return None
  block, t = blocks[int(match.group(1)) - 1]
  layers = ({"0.0": "depthwise_conv", "0.1": "depthwise_bn", "1": "project_conv",
             "2": "project_bn"} if t == 1 else
            {"0.0": "expand_conv", "0.1": "expand_bn", "1.0": "depthwise_conv",
             "1.1": "depthwise_bn", "2": "project_conv", "3": "project_bn"})
  layer = layers.get(match.group(2))
  return None if layer is None else f"{block}/{layer}"


def _module_name(model: nn.Module):
  if isinstance(model, resnet_imagenet.ImageNetResNet):
    return _resnet_module
  if isinstance(model, mobilenet_v2_imagenet.MobileNetV2ImageNet):
    return _mobilenet_module
  raise ValueError(f"{type(model).__name__} has no torchvision counterpart; torchvision's "
                   "weights load into resnet18_imagenet, resnet34_imagenet, "
                   "resnet50_imagenet and mobilenetv2_imagenet.")


def variables_from_torchvision(model: nn.Module, state_dict: Mapping[str, Any]) -> dict:
  """{"params", "batch_stats"} of `model` (an ImageNet-layout backbone) from torchvision's
  `state_dict`; ValueError naming the first entry that does not fit."""
  module_name = _module_name(model)
  expected = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))
  targets = {tuple(str(k.key) for k in path): leaf for path, leaf in
             jax.tree_util.tree_flatten_with_path(expected)[0]}
  variables: dict = {}
  for key, value in state_dict.items():
    name, _, field = key.rpartition(".")
    if field == "num_batches_tracked":
      continue
    module = module_name(name)
    if module is None:
      raise ValueError(f"the state_dict's {key!r} has no place in {type(model).__name__}.")
    array = np.asarray(value, np.float32)
    shape = array.shape
    if module.rsplit("/", 1)[-1].endswith("_bn") or module.rsplit("/", 1)[-1].startswith("bn"):
      collection, leaf = _BATCH_NORM[field]
    elif field == "weight":
      collection, leaf = "params", "kernel"
      array = array.transpose(2, 3, 1, 0) if array.ndim == 4 else array.T
    else:
      collection, leaf = "params", field
    path = (collection, *module.split("/"), leaf)
    if path not in targets:
      raise ValueError(f"the state_dict's {key!r} ({'/'.join(path)}) is not a variable of "
                       f"{type(model).__name__}.")
    if array.shape != targets[path].shape:
      raise ValueError(f"the state_dict's {key!r} {shape} does not fit {'/'.join(path)} "
                       f"{targets[path].shape} of {type(model).__name__} (another number "
                       "of classes?).")
    node = variables
    for part in path[:-1]:
      node = node.setdefault(part, {})
    node[path[-1]] = jnp.asarray(array)
  filled = {tuple(str(k.key) for k in path) for path, _ in
            jax.tree_util.tree_flatten_with_path(variables)[0]}
  missing = sorted(set(targets) - filled)
  if missing:
    raise ValueError(f"the state_dict has nothing for {'/'.join(missing[0])} (and "
                     f"{len(missing) - 1} more): {type(model).__name__} with its attention "
                     "has parameters that torchvision's network has not.")
  return variables
