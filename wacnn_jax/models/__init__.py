"""The backbones by name: `create_model(arch, ...)` for every registered arch x attention.

The layer above the building blocks (`wacnn_jax.nn`), which is all it
imports of wacnn_jax: networks, their registry and their fast initialisation
(`batched_init`), no configs, files or logging.

    model = create_model("resnet18", num_classes=10, attention="wa")
    model = create_model("resnet50", num_classes=10, attention="se(reduction=8)",
                         block="bottleneck")
    variables = model.init({"params": key, "dropout": key}, x, train=False)
    logits = model.apply(variables, x, train=False)        # x: (N, H, W, 3) NHWC
    logits, updates = model.apply(variables, x, train=True, rngs={"dropout": key},
                                  mutable=["batch_stats"])

`variables` holds 'params' (float32) and 'batch_stats'; logits are float32
(N, num_classes) whatever the compute dtype. Each backbone file registers its
arch names (`registry.register_backbone`) when imported here: the reference's
CIFAR layouts (`resnet`, `vgg`, `mobilenet_v2`; 32x32 images) and torchvision's
ImageNet layouts (`resnet_imagenet`, `mobilenet_v2_imagenet`; larger images,
torchvision's weights through `torchvision_weights`).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from wacnn_jax.models import registry
from wacnn_jax.nn.attention_spec import AttentionSpec
# The backbones register on import, in this order (that of registry.arch_names()).
from wacnn_jax.models import resnet  # pylint: disable=g-bad-import-order
from wacnn_jax.models import vgg
from wacnn_jax.models import mobilenet_v2
# torchvision's ImageNet layouts, for larger images.
from wacnn_jax.models import resnet_imagenet
from wacnn_jax.models import mobilenet_v2_imagenet


def create_model(arch: str, *, num_classes: int, attention: str | AttentionSpec = "none",
                 dtype: Any = jnp.float32, axis_name: str | None = None,
                 **options) -> nn.Module:
  """A Flax module mapping NHWC images (N, H, W, 3) to float32 logits (N, num_classes).

  Call it as `model.apply(variables, x, train=bool, ...)`.

  arch: a registered name (`registry.arch_names()`). attention: an
    `AttentionSpec` or its string, e.g. "none", "se(reduction=8)",
    "wa(wavelet='db2', stages='all')" (see wacnn_jax.nn.attention_spec).
  dtype: compute dtype (e.g. jnp.bfloat16); parameters stay float32.
  axis_name: pmap axis name over which BatchNorm averages batch statistics.
  options: the arch's own options, None = its default; the ResNets take
    `block`: 'basic' (None) or 'bottleneck' (resnet50/110/164).

  Raises ValueError for an unknown arch, attention or option and for a bad value.
  """
  backbone = registry.backbone(arch)
  if not isinstance(attention, AttentionSpec):
    attention = AttentionSpec.parse(attention)
  if not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}.")
  options = {k: v for k, v in options.items() if v is not None}
  for option, value in options.items():
    if option not in backbone.options:
      takers = registry.archs_taking(option)
      if not takers:
        raise ValueError(f"unknown model option {option}={value!r}; {arch} takes "
                         f"{', '.join(backbone.options) or 'no options'}.")
      raise ValueError(f"{option}={value!r} applies to {', '.join(takers)} only, not "
                       f"{arch}; leave {option}=None.")
  return backbone.build(arch, num_classes=num_classes, attention=attention, dtype=dtype,
                        axis_name=axis_name, **options)


__all__ = ["create_model", "mobilenet_v2", "mobilenet_v2_imagenet", "registry", "resnet",
           "resnet_imagenet", "vgg"]
