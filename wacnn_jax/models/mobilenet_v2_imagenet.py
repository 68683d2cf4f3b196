"""MobileNetV2 in torchvision's ImageNet layout (`mobilenetv2_imagenet`), with attention slots.

(N, H, W, 3) NHWC (224x224 for ImageNet; it downsamples by 32) -> float32
logits (N, num_classes). torchvision's `mobilenet_v2()` (width 1.0), layer for
layer: stem conv3x3 3->32 stride 2 -> BN -> ReLU6; inverted-residual stages
STAGES (the original strides: 1, 2, 2, 2, 1, 2, 1); head conv1x1 320->1280 ->
BN -> ReLU6 -> global average pool -> Dropout(0.2) -> Dense 1280->classes.
Where it differs from the reference's CIFAR network (`mobilenet_v2`), it
follows torchvision: ReLU6, no expansion conv in the t = 1 block, a shortcut
only where a stride-1 block keeps its channels (no projection), the dropout.

Attention as in the CIFAR network: SE/CBAM/ECA/GC after each block's project
BN; WA in every stride-2 block, on the expanded features, before a stride-1
depthwise conv3x3 (`stages` 'reference' and 'all' alike); the parameter count
does not change.

Init as torchvision: conv kernels kaiming-normal (fan_out), BatchNorm scale
1 / bias 0, classifier kernel N(0, 0.01) and bias 0. `models.torchvision_weights`
copies a torchvision state_dict into these variables.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from wacnn_jax.models import registry
from wacnn_jax.models.mobilenet_v2 import STAGES, InvertedResidual
from wacnn_jax.nn import layers

# torchvision's strides per stage: the CIFAR layout's, with stage 2 at stride 2 again.
IMAGENET_STRIDES = (1, 2, 2, 2, 1, 2, 1)
DROPOUT = 0.2


class MobileNetV2ImageNet(registry.Network):
  """(N, H, W, 3) -> float32 logits (N, num_classes); torchvision's layout."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    bn = lambda name: layers.batch_norm(train, dtype=self.dtype, axis_name=self.axis_name,
                                        name=name)
    conv = lambda features, kernel, name, strides=1: layers.conv(
        features, kernel, strides=strides, dtype=self.dtype,
        kernel_init=layers.kaiming_normal_fan_out, name=name)
    x = jnp.asarray(x, self.dtype)
    x = layers.relu6(bn("stem_bn")(conv(32, 3, "stem_conv", strides=2)(x)))
    for stage, ((t, c, n, _), s) in enumerate(zip(STAGES, IMAGENET_STRIDES), start=1):
      for index in range(n):
        x = InvertedResidual(
            c, t, s if index == 0 else 1, activation=layers.relu6, expand_always=False,
            projection_shortcut=False, kernel_init=layers.kaiming_normal_fan_out,
            attention=self.attention, dtype=self.dtype, axis_name=self.axis_name,
            name=f"stage{stage}_block{index}")(x, train)
    x = layers.relu6(bn("head_bn")(conv(1280, 1, "head_conv")(x)))
    x = layers.global_average_pool(x)
    x = nn.Dropout(DROPOUT, deterministic=not train, name="dropout")(x)
    x = layers.dense(self.num_classes, bias_init=nn.initializers.zeros,
                     kernel_init=layers.normal_001, dtype=self.dtype, name="classifier")(x)
    return x.astype(jnp.float32)


@registry.register_backbone("mobilenetv2_imagenet", layout="imagenet")
def build(arch: str, **fields) -> MobileNetV2ImageNet:
  del arch  # one arch
  return MobileNetV2ImageNet(**fields)
