"""ResNet-18/34/50 in torchvision's ImageNet layout (`resnet*_imagenet`), with attention slots.

(N, H, W, 3) NHWC (224x224 for ImageNet; it downsamples by 32) -> float32
logits (N, num_classes). torchvision's `resnet18()`, `resnet34()` and
`resnet50()`, layer for layer: stem conv7x7 3->64 stride 2 -> BN -> ReLU ->
max-pool 3x3 stride 2; four stages of 64/128/256/512 channels (x4 for
Bottleneck), the first block of stages 2-4 downsampling by 2; global average
pool; Dense. The blocks are the CIFAR ResNets' (`resnet.BasicBlock`,
`resnet.Bottleneck`: the stride on the 3x3 convolution, as torchvision's
v1.5), with their shortcuts: identity, or conv1x1(stride) + BN.

Attention where the reference's rules put it: SE/CBAM/ECA/GC after each
block's last BN; WA replaces the stem's max-pool (as the reference's VGG
replaces every max-pool: its `out`) and the stride of every stride-2 block
(as the reference's Bottleneck does: `out` to the block, `ll` to a stride-1
shortcut), for `stages` 'reference' and 'all' alike. The parameter count
does not change.

Init as torchvision: conv kernels kaiming-normal (fan_out, relu), BatchNorm
scale 1 / bias 0, the classifier at PyTorch's default U(+-1/sqrt(fan_in)).
`models.torchvision_weights` copies a torchvision state_dict into these variables.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from wacnn_jax.models import registry
from wacnn_jax.models import resnet
from wacnn_jax.nn import layers

DEPTHS = {"resnet18_imagenet": (resnet.BasicBlock, (2, 2, 2, 2)),
          "resnet34_imagenet": (resnet.BasicBlock, (3, 4, 6, 3)),
          "resnet50_imagenet": (resnet.Bottleneck, (3, 4, 6, 3))}
STAGE_WIDTHS = (64, 128, 256, 512)


class ImageNetResNet(registry.Network):
  """Stem, four stages of `stage_sizes` blocks of `block_cls`, global average pool, Dense."""

  stage_sizes: Sequence[int]
  block_cls: Any

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = jnp.asarray(x, self.dtype)
    x = layers.conv(64, 7, strides=2, dtype=self.dtype, kernel_init=layers.kaiming_normal_fan_out,
                    name="stem_conv")(x)
    x = nn.relu(layers.batch_norm(train, dtype=self.dtype, axis_name=self.axis_name,
                                  name="stem_bn")(x))
    if self.attention.replaces_downsampling:
      x, _ = self.attention.module(name="stem_wavelet_attention", dtype=self.dtype)(x, train)
    else:
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for stage, (size, width) in enumerate(zip(self.stage_sizes, STAGE_WIDTHS), start=1):
      for index in range(size):
        x = self.block_cls(
            width, strides=2 if stage > 1 and index == 0 else 1,
            kernel_init=layers.kaiming_normal_fan_out, attention=self.attention,
            dtype=self.dtype, axis_name=self.axis_name,
            name=f"stage{stage}_block{index}")(x, train)
    x = layers.global_average_pool(x)
    x = layers.linear(self.num_classes, x, dtype=self.dtype, name="classifier")
    return x.astype(jnp.float32)


@registry.register_backbone(*DEPTHS, layout="imagenet")
def build(arch: str, **fields) -> ImageNetResNet:
  block_cls, sizes = DEPTHS[arch]
  return ImageNetResNet(sizes, block_cls, **fields)
