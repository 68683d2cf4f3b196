"""MobileNetV2 for CIFAR (stride-1 stem and second stage, plain ReLU), with attention slots.

(N, H, W, 3) NHWC (32x32 for CIFAR) -> float32 logits (N, num_classes). Stem
conv3x3 3->32 stride 1 -> BN -> ReLU; inverted-residual stages STAGES; head
conv1x1 320->1280 -> BN -> ReLU -> average pool over the map (the reference's
4x4 pool at 32x32) -> Dense 1280->classes. No conv has a bias.

Inverted-residual block (`InvertedResidual`, shared with the ImageNet layout
of `mobilenet_v2_imagenet`): conv1x1 expand (t * Cin, here also for t = 1)
-> BN -> ReLU -> depthwise conv3x3(s) -> BN -> ReLU -> conv1x1 project -> BN
-> [in-block attention: SE/CBAM/ECA/GC]; + shortcut only at stride 1
(identity, or here conv1x1 + BN when channels change). With WA, every
stride-2 block runs WA (its `out`) on the expanded features and then a
stride-1 depthwise conv3x3, so the parameter count does not change (`stages`
'reference' and 'all' alike).

Init as the reference, which leaves every layer at PyTorch's default: conv
kernels U(+-1/sqrt(fan_in)) (fan_in = Cin / groups * k * k, so 9 for the
depthwise convs), classifier kernel and bias U(+-1/sqrt(1280)), BatchNorm
scale 1 / bias 0 (attention modules: see wacnn_jax.nn.attention).
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from wacnn_jax.models import registry
from wacnn_jax.nn import layers

# (expansion t, output channels c, repeats n, first stride s)
STAGES = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
          (6, 160, 3, 2), (6, 320, 1, 1))


class InvertedResidual(registry.BackboneModule):
  """NHWC (N, H, W, Cin) -> (N, H/s, W/s, features); expansion t, stride s.

  The reference's CIFAR block by default; torchvision's with `activation=relu6`,
  `expand_always=False` (no expansion conv for t = 1), `projection_shortcut=False`
  (a shortcut only where input and output channels agree) and its initialiser.
  """

  features: int
  expansion: int
  strides: int
  activation: Callable[[Any], Any] = nn.relu
  expand_always: bool = True
  projection_shortcut: bool = True
  kernel_init: layers.Initializer = layers.torch_default_init

  @nn.compact
  def __call__(self, x, train: bool):
    bn = lambda name: layers.batch_norm(train, dtype=self.dtype, axis_name=self.axis_name,
                                        name=name)
    conv = lambda features, name: layers.conv(features, 1, dtype=self.dtype,
                                              kernel_init=self.kernel_init, name=name)
    y = x
    if self.expand_always or self.expansion != 1:
      y = self.activation(bn("expand_bn")(conv(self.expansion * x.shape[-1], "expand_conv")(y)))
    strides = self.strides
    if strides == 2 and self.attention.replaces_downsampling:
      y, _ = self.attention.module(name="wavelet_attention", dtype=self.dtype)(y, train)
      strides = 1
    y = layers.DepthwiseConv(3, strides, dtype=self.dtype, kernel_init=self.kernel_init,
                             name="depthwise_conv")(y)
    y = self.activation(bn("depthwise_bn")(y))
    y = bn("project_bn")(conv(self.features, "project_conv")(y))
    if self.attention.in_blocks:
      y = self.attention.module(name="attention", dtype=self.dtype,
                                axis_name=self.axis_name)(y, train)
    if self.strides != 1:
      return y
    if x.shape[-1] == self.features:
      return y + x
    if not self.projection_shortcut:
      return y
    return y + bn("shortcut_bn")(conv(self.features, "shortcut_conv")(x))


class MobileNetV2(registry.Network):
  """(N, H, W, 3) -> float32 logits (N, num_classes); the reference's CIFAR layout."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    bn = lambda name: layers.batch_norm(train, dtype=self.dtype, axis_name=self.axis_name,
                                        name=name)
    x = jnp.asarray(x, self.dtype)
    x = nn.relu(bn("stem_bn")(layers.conv(32, 3, dtype=self.dtype, name="stem_conv")(x)))
    for stage, (t, c, n, s) in enumerate(STAGES, start=1):
      for index in range(n):
        x = InvertedResidual(
            c, t, s if index == 0 else 1, attention=self.attention, dtype=self.dtype,
            axis_name=self.axis_name, name=f"stage{stage}_block{index}")(x, train)
    x = nn.relu(bn("head_bn")(layers.conv(1280, 1, dtype=self.dtype, name="head_conv")(x)))
    # The reference's F.avg_pool2d(out, 4) on its 4x4 map; the same op over any map.
    x = nn.avg_pool(x, x.shape[1:3], strides=x.shape[1:3]).reshape(x.shape[0], -1)
    x = layers.linear(self.num_classes, x, dtype=self.dtype, name="classifier")
    return x.astype(jnp.float32)


@registry.register_backbone("mobilenetv2")
def build(arch: str, **fields) -> MobileNetV2:
  del arch  # one arch
  return MobileNetV2(**fields)
