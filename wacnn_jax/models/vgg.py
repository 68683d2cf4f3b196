"""VGG with BatchNorm for CIFAR (vgg11_bn/13/16/19), with attention slots.

(N, H, W, 3) NHWC (32x32 for CIFAR) -> float32 logits (N, num_classes). Each
number in the config is conv3x3 (with bias) -> BN -> [in-block attention:
SE/CBAM/ECA/GC] -> ReLU; 'M' is a 2x2 max-pool, or, with WA, the WA block (its
`out`; all five pools are replaced, for `stages` 'reference' and 'all'
alike). After five halvings the features are (N, H/32, W/32, 512), averaged
over the map: at 32x32 the reference's flattened 1x1 map, elsewhere a
classifier that does not grow with the image. Classifier Dense 512->4096 ->
ReLU -> Dropout(0.5) -> Dense 4096->4096 -> ReLU -> Dropout(0.5) -> Dense
4096->classes.

Init as the reference's `_initialize_weights`, which visits every layer of the
network, the attention modules' included: Conv2d kernels kaiming-normal
(fan_out, relu; untruncated N(0, 2 / (9 * Cout)) for the backbone convs) and
conv biases 0; Linear kernels N(0, 0.01), Linear biases left at PyTorch's
default U(+-1/sqrt(fan_in)); BatchNorm scale 1 / bias 0. In attention modules
this replaces their own Conv2d / Linear kernel initialisers (SE and CBAM
Linears, CBAM's 7x7 conv, GC's 1x1 convs, whose biases become 0); ECA's Conv1d
and GC's LayerNorm keep theirs.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from wacnn_jax.models import registry
from wacnn_jax.nn import layers

CONFIGS = {
    "vgg11_bn": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg13_bn": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16_bn": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                 512, 512, 512, "M"),
    "vgg19_bn": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512,
                 "M", 512, 512, 512, 512, "M"),
}

conv_init = layers.kaiming_normal_fan_out
linear_init = layers.normal_001


class VGG(registry.Network):
  """VGG-bn of `layout` (a CONFIGS value): (N, 32, 32, 3) -> float32 logits (N, num_classes)."""

  layout: Sequence[Any]

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = jnp.asarray(x, self.dtype)
    conv_index = pool_index = 0
    for item in self.layout:
      if item == "M":
        if self.attention.replaces_downsampling:
          x, _ = self.attention.module(name=f"wavelet_attention{pool_index}",
                                       dtype=self.dtype)(x, train)
        else:
          x = nn.max_pool(x, (2, 2), strides=(2, 2))
        pool_index += 1
        continue
      x = layers.conv(item, 3, use_bias=True, kernel_init=conv_init, dtype=self.dtype,
                      name=f"conv{conv_index}")(x)
      x = layers.batch_norm(train, dtype=self.dtype, axis_name=self.axis_name,
                            name=f"bn{conv_index}")(x)
      if self.attention.in_blocks:
        x = self.attention.module(name=f"attention{conv_index}", dtype=self.dtype,
                                  axis_name=self.axis_name, linear_init=linear_init,
                                  conv_init=conv_init)(x, train)
      x = nn.relu(x)
      conv_index += 1
    x = layers.global_average_pool(x)  # (N, 512) at any size; at 32x32 the 1x1 map itself
    for index in (1, 2):
      x = layers.linear(4096, x, kernel_init=linear_init, dtype=self.dtype, name=f"fc{index}")
      x = nn.Dropout(0.5, deterministic=not train, name=f"dropout{index}")(nn.relu(x))
    x = layers.linear(self.num_classes, x, kernel_init=linear_init, dtype=self.dtype,
                      name="classifier")
    return x.astype(jnp.float32)


@registry.register_backbone(*CONFIGS)
def build(arch: str, **fields) -> VGG:
  return VGG(CONFIGS[arch], **fields)
