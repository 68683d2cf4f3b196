"""Model registry: `create_model(arch, ...)` for every backbone x attention.

    model = create_model("resnet18", num_classes=10, attention="wa")
    variables = model.init({"params": key, "dropout": key}, x, train=False)
    logits = model.apply(variables, x, train=False)        # x: (N, 32, 32, 3) NHWC
    logits, updates = model.apply(variables, x, train=True, rngs={"dropout": key},
                                  mutable=["batch_stats"])

`variables` holds 'params' (float32) and 'batch_stats'; logits are float32
(N, num_classes) whatever the compute dtype.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from wacnn_jax import wavelets
from wacnn_jax.models import layers
from wacnn_jax.models import mobilenet_v2
from wacnn_jax.models import resnet
from wacnn_jax.models import vgg
from wacnn_jax.models.mobilenet_v2 import MobileNetV2
from wacnn_jax.models.resnet import BasicBlock, Bottleneck, CifarResNet
from wacnn_jax.models.vgg import VGG

RESNETS = tuple(resnet.BASIC_DEPTHS)
ARCHS = RESNETS + tuple(vgg.CONFIGS) + ("mobilenetv2",)
ATTENTIONS = ("none",) + layers.COMPARISON_ATTENTIONS + ("wa",)
ATTENTION_ALIASES = {"wad": "wa"}
BLOCKS = ("basic", "bottleneck")
WA_STAGES = ("reference", "all")
DEFAULT_ATTENTION_PARAM = layers.DEFAULT_ATTENTION_PARAM


def _check_choice(kind: str, value: Any, valid) -> None:
  if value not in valid:
    raise ValueError(f"unknown {kind} {value!r}; choose one of: {', '.join(valid)}.")


def create_model(arch: str, *, num_classes: int, attention: str = "none",
                 attention_param: Any = None, block: str | None = None,
                 wa_stages: str = "reference", dtype: Any = jnp.float32,
                 axis_name: str | None = None) -> nn.Module:
  """A Flax module mapping NHWC images (N, 32, 32, 3) to float32 logits (N, num_classes).

  Call it as `model.apply(variables, x, train=bool, ...)`.

  arch: one of ARCHS. attention: one of ATTENTIONS ('wad' = 'wa').
  attention_param: reduction r (se/cbam/gc, default 4), kernel size (eca, 3)
    or wavelet name (wa, 'haar'); None = default; ignored for 'none'.
  block: ResNets only: 'basic' (None) or 'bottleneck' (resnet50/110/164).
  wa_stages: where WA goes when attention is 'wa'. 'reference' as the paper's
    code: ResNet BasicBlock only the first (downsampling) block of stage 2;
    Bottleneck every stride-2 block; VGG every max-pool; MobileNetV2 every
    stride-2 block. 'all': every downsampling (differs only for BasicBlock
    ResNets, where stage 3's downsampling block also uses WA).
  dtype: compute dtype (e.g. jnp.bfloat16); parameters stay float32.
  axis_name: pmap axis name over which BatchNorm averages batch statistics.
  """
  _check_choice("arch", arch, ARCHS)
  attention = ATTENTION_ALIASES.get(attention, attention)
  _check_choice("attention", attention, ATTENTIONS)
  _check_choice("wa_stages", wa_stages, WA_STAGES)
  if not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}.")
  if attention_param is None:
    attention_param = DEFAULT_ATTENTION_PARAM.get(attention)
  wa = attention == "wa"
  if wa:
    wavelets.wavelet_filters(attention_param)  # ValueError for a bad wavelet name
  elif attention != "none" and (isinstance(attention_param, bool)
                                or not isinstance(attention_param, int)
                                or attention_param < 1):
    raise ValueError(f"attention_param for {attention!r} must be a positive integer "
                     f"(reduction or kernel size), got {attention_param!r}.")
  common = dict(num_classes=num_classes,
                wavelet=attention_param if wa else "haar",
                attention=None if attention in ("none", "wa") else attention,
                attention_param=None if attention in ("none", "wa") else attention_param,
                dtype=dtype, axis_name=axis_name)

  if arch in RESNETS:
    block = "basic" if block is None else block
    _check_choice("block", block, BLOCKS)
    depths = resnet.BASIC_DEPTHS if block == "basic" else resnet.BOTTLENECK_DEPTHS
    if arch not in depths:
      raise ValueError(f"{arch} has no {block} version; {block} ResNets: "
                       f"{', '.join(depths)}.")
    if not wa:
      stages = ()
    elif block == "basic" and wa_stages == "reference":
      stages = (2,)
    else:
      stages = (2, 3)
    block_cls = BasicBlock if block == "basic" else Bottleneck
    return CifarResNet(depths[arch], block_cls, wavelet_stages=stages, **common)
  if block is not None:
    raise ValueError(f"block={block!r} applies to ResNets only ({', '.join(RESNETS)}), "
                     f"not {arch}; leave block=None.")
  if arch in vgg.CONFIGS:
    return VGG(vgg.CONFIGS[arch], wavelet_pooling=wa, **common)
  return MobileNetV2(wavelet_downsample=wa, **common)


__all__ = ["ARCHS", "ATTENTIONS", "BLOCKS", "WA_STAGES", "create_model", "CifarResNet",
           "BasicBlock", "Bottleneck", "VGG", "MobileNetV2", "mobilenet_v2", "resnet", "vgg"]
