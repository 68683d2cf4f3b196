"""MobileNetV2 for CIFAR (stride-1 stem and second stage, plain ReLU), with attention slots.

(N, 32, 32, 3) NHWC -> float32 logits (N, num_classes). Stem conv3x3 3->32
stride 1 -> BN -> ReLU; inverted-residual stages STAGES; head conv1x1
320->1280 -> BN -> ReLU -> 4x4 average pool -> Dense 1280->classes. No conv
has a bias.

Inverted-residual block: conv1x1 expand (t * Cin, also for t = 1) -> BN ->
ReLU -> depthwise conv3x3(s) -> BN -> ReLU -> conv1x1 project -> BN ->
[SE/CBAM/ECA/GC]; + shortcut only at stride 1 (identity, or conv1x1 + BN when
channels change). With `wavelet_downsample`, a stride-2 block runs WA (its
`out`) on the expanded features and then a stride-1 depthwise conv3x3, so the
parameter count does not change.

Init as the reference, which leaves every layer at PyTorch's default: conv
kernels U(+-1/sqrt(fan_in)) (fan_in = Cin / groups * k * k, so 9 for the
depthwise convs), classifier kernel and bias U(+-1/sqrt(1280)), BatchNorm
scale 1 / bias 0 (attention modules: see wacnn_jax.attention).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from wacnn_jax.attention import WaveletAttention
from wacnn_jax.models import layers

# (expansion t, output channels c, repeats n, first stride s)
STAGES = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
          (6, 160, 3, 2), (6, 320, 1, 1))


class InvertedResidual(nn.Module):
  """NHWC (N, H, W, Cin) -> (N, H/s, W/s, features)."""

  features: int
  expansion: int
  strides: int
  wavelet_downsample: bool = False
  wavelet: str = "haar"
  attention: str | None = None
  attention_param: Any = None
  dtype: Any = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool):
    bn = lambda name: layers.batch_norm(train, dtype=self.dtype, axis_name=self.axis_name,
                                        name=name)
    hidden = self.expansion * x.shape[-1]
    y = layers.conv(hidden, 1, dtype=self.dtype, name="expand_conv")(x)
    y = nn.relu(bn("expand_bn")(y))
    strides = self.strides
    if self.wavelet_downsample and strides == 2:
      y, _ = WaveletAttention(self.wavelet, name="wavelet_attention")(y)
      strides = 1
    y = layers.conv(hidden, 3, strides=strides, groups=hidden, dtype=self.dtype,
                    name="depthwise_conv")(y)
    y = nn.relu(bn("depthwise_bn")(y))
    y = layers.conv(self.features, 1, dtype=self.dtype, name="project_conv")(y)
    y = bn("project_bn")(y)
    y = layers.comparison_attention(self.attention, self.attention_param, y, train,
                                    dtype=self.dtype, axis_name=self.axis_name,
                                    name="attention")
    if self.strides != 1:
      return y
    if x.shape[-1] == self.features:
      return y + x
    shortcut = layers.conv(self.features, 1, dtype=self.dtype, name="shortcut_conv")(x)
    return y + bn("shortcut_bn")(shortcut)


class MobileNetV2(nn.Module):
  """(N, 32, 32, 3) -> float32 logits (N, num_classes)."""

  num_classes: int
  wavelet_downsample: bool = False
  wavelet: str = "haar"
  attention: str | None = None
  attention_param: Any = None
  dtype: Any = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool):
    bn = lambda name: layers.batch_norm(train, dtype=self.dtype, axis_name=self.axis_name,
                                        name=name)
    x = jnp.asarray(x, self.dtype)
    x = nn.relu(bn("stem_bn")(layers.conv(32, 3, dtype=self.dtype, name="stem_conv")(x)))
    for stage, (t, c, n, s) in enumerate(STAGES, start=1):
      for index in range(n):
        x = InvertedResidual(
            c, t, s if index == 0 else 1, wavelet_downsample=self.wavelet_downsample,
            wavelet=self.wavelet, attention=self.attention,
            attention_param=self.attention_param, dtype=self.dtype,
            axis_name=self.axis_name, name=f"stage{stage}_block{index}")(x, train)
    x = nn.relu(bn("head_bn")(layers.conv(1280, 1, dtype=self.dtype, name="head_conv")(x)))
    x = nn.avg_pool(x, (4, 4), strides=(4, 4)).reshape(x.shape[0], -1)
    x = layers.linear(self.num_classes, x, dtype=self.dtype, name="classifier")
    return x.astype(jnp.float32)
