"""CIFAR ResNets (He et al. 2016; the reference's `resnet*` names), with attention slots.

Input (N, H, W, 3) NHWC (32x32 for CIFAR) -> float32 logits (N, num_classes). Stem conv3x3
3->16 (no bias) -> BN -> ReLU; three stages of 16/32/64 channels (x4 for
Bottleneck), the first block of stages 2 and 3 downsampling by 2; global
average pool; Dense. Convolutions have no bias; shortcuts are identity or
conv1x1(stride) + BN when the stride or channel count changes (option B).
The blocks are shared with the ImageNet layout (`resnet_imagenet`).

In-block attention (SE/CBAM/ECA/GC) sits after each block's last BN, before
the addition. WA replaces a stride-2 block's stride: `out, ll = WA(x)`, the
block's strided convolution runs at stride 1 on `out` and the shortcut is
conv1x1 stride 1 + BN on `ll`; the parameter count does not change. Where:
with `stages='reference'` as the paper's code, BasicBlock only in the first
(downsampling) block of stage 2, Bottleneck in every stride-2 block; with
`stages='all'` every stride-2 block (stage 3's too for BasicBlock).

Init as the reference, which leaves every layer at PyTorch's default: conv
kernels U(+-1/sqrt(fan_in)) (fan_in = Cin * k * k), classifier kernel and bias
U(+-1/sqrt(width)), BatchNorm scale 1 / bias 0 (attention modules: see
wacnn_jax.nn.attention).
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import flax.linen as nn
import jax.numpy as jnp

from wacnn_jax.models import registry
from wacnn_jax.nn.attention_spec import NO_ATTENTION, AttentionSpec
from wacnn_jax.nn import layers

BASIC_DEPTHS = {"resnet18": (3, 3, 3), "resnet34": (5, 5, 5), "resnet50": (9, 9, 9),
                "resnet110": (18, 18, 18), "resnet164": (27, 27, 27)}
BOTTLENECK_DEPTHS = {"resnet50": (6, 6, 6), "resnet110": (12, 12, 12),
                     "resnet164": (18, 18, 18)}
STAGE_WIDTHS = (16, 32, 64)


class _Block(registry.BackboneModule):
  """Fields shared by BasicBlock and Bottleneck (their shared entry, WA, is `_enter`;
  their shared exit, attention + shortcut + ReLU, is `_residual`; BatchNorm `_bn`).

  A stride-2 block whose attention replaces downsampling (WA) downsamples with it.
  """

  features: int
  strides: int = 1
  kernel_init: layers.Initializer = layers.torch_default_init  # of every convolution

  expansion: ClassVar[int] = 1


def _conv(block: _Block, features: int, kernel: int, name: str, strides: int = 1):
  """The block's convolution `name`, without bias, initialised by `block.kernel_init`."""
  return layers.conv(features, kernel, strides=strides, dtype=block.dtype,
                     kernel_init=block.kernel_init, name=name)


def _bn(block: _Block, train: bool, name: str) -> layers.BatchNorm:
  """The block's BatchNorm `name` (a function, not a method: model.tabulate records a
  method's return value, and a module is not an array)."""
  return layers.batch_norm(train, dtype=block.dtype, axis_name=block.axis_name, name=name)


def _enter(block: _Block, x, train: bool):
  """-> (main-path input, shortcut input, stride of the main path)."""
  if block.strides == 2 and block.attention.replaces_downsampling:
    out, ll = block.attention.module(name="wavelet_attention", dtype=block.dtype)(x, train)
    return out, ll, 1
  return x, x, block.strides


class BasicBlock(_Block):
  """NHWC (N, H, W, Cin) -> (N, H/s, W/s, features).

  conv3x3(s) -> BN -> ReLU -> conv3x3 -> BN -> [attention] -> + shortcut -> ReLU.
  """

  expansion: ClassVar[int] = 1

  @nn.compact
  def __call__(self, x, train: bool):
    x, shortcut, strides = _enter(self, x, train)
    y = _conv(self, self.features, 3, "conv1", strides)(x)
    y = nn.relu(_bn(self, train, "bn1")(y))
    y = _conv(self, self.features, 3, "conv2")(y)
    y = _bn(self, train, "bn2")(y)
    return _residual(self, y, shortcut, strides, train)


class Bottleneck(_Block):
  """NHWC (N, H, W, Cin) -> (N, H/s, W/s, 4 * features).

  conv1x1 -> BN -> ReLU -> conv3x3(s) -> BN -> ReLU -> conv1x1 (x4) -> BN ->
  [attention] -> + shortcut -> ReLU (the reference's conv3x3 input-channel bug
  fixed: it takes `features` channels). With WA, WA runs on the block input.
  """

  expansion: ClassVar[int] = 4

  @nn.compact
  def __call__(self, x, train: bool):
    x, shortcut, strides = _enter(self, x, train)
    y = _conv(self, self.features, 1, "conv1")(x)
    y = nn.relu(_bn(self, train, "bn1")(y))
    y = _conv(self, self.features, 3, "conv2", strides)(y)
    y = nn.relu(_bn(self, train, "bn2")(y))
    y = _conv(self, self.features * self.expansion, 1, "conv3")(y)
    y = _bn(self, train, "bn3")(y)
    return _residual(self, y, shortcut, strides, train)


def _residual(block: _Block, y, shortcut, strides: int, train: bool):
  """[attention] -> + shortcut (identity, or conv1x1(strides) + BN) -> ReLU."""
  if block.attention.in_blocks:
    y = block.attention.module(name="attention", dtype=block.dtype,
                               axis_name=block.axis_name)(y, train)
  if block.strides != 1 or shortcut.shape[-1] != y.shape[-1]:
    shortcut = _conv(block, y.shape[-1], 1, "shortcut_conv", strides)(shortcut)
    shortcut = _bn(block, train, "shortcut_bn")(shortcut)
  return nn.relu(y + shortcut)


class CifarResNet(registry.Network):
  """Stem, three stages of `stage_sizes` blocks of `block_cls`, global average pool, Dense.

  (N, 32, 32, 3) -> float32 logits (N, num_classes).
  """

  stage_sizes: Sequence[int]
  block_cls: Any

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = jnp.asarray(x, self.dtype)
    x = layers.conv(16, 3, dtype=self.dtype, name="stem_conv")(x)
    x = layers.batch_norm(train, dtype=self.dtype, axis_name=self.axis_name,
                          name="stem_bn")(x)
    x = nn.relu(x)
    for stage, (size, width) in enumerate(zip(self.stage_sizes, STAGE_WIDTHS), start=1):
      for index in range(size):
        x = self.block_cls(
            width, strides=2 if stage > 1 and index == 0 else 1,
            attention=_stage_attention(self, stage), dtype=self.dtype,
            axis_name=self.axis_name, name=f"stage{stage}_block{index}")(x, train)
    x = layers.global_average_pool(x)
    x = layers.linear(self.num_classes, x, dtype=self.dtype, name="classifier")
    return x.astype(jnp.float32)


def _stage_attention(net: CifarResNet, stage: int) -> AttentionSpec:
  """The attention of `stage`'s blocks: none in stage 3 of a BasicBlock ResNet with
  WA at the reference's stages (that stage keeps its strided convolution)."""
  spec = net.attention
  if (spec.replaces_downsampling and spec.options["stages"] == "reference"
      and net.block_cls is BasicBlock and stage == 3):
    return NO_ATTENTION
  return spec


BLOCKS = {"basic": (BasicBlock, BASIC_DEPTHS), "bottleneck": (Bottleneck, BOTTLENECK_DEPTHS)}


@registry.register_backbone(*BASIC_DEPTHS, options=("block",))
def build(arch: str, *, block: str | None = None, **fields) -> CifarResNet:
  """`arch` of `block` 'basic' (None) or 'bottleneck' (resnet50/110/164 only)."""
  block = "basic" if block is None else block
  if block not in BLOCKS:
    raise ValueError(f"unknown block {block!r}; choose one of: {', '.join(BLOCKS)}.")
  block_cls, depths = BLOCKS[block]
  if arch not in depths:
    raise ValueError(f"{arch} has no {block} version; {block} ResNets: "
                     f"{', '.join(depths)}.")
  return CifarResNet(depths[arch], block_cls, **fields)
