"""Building blocks shared by the backbones: PyTorch-equivalent conv/BN/Dense and attention slots.

Every factory takes the compute `dtype` and keeps parameters float32.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from wacnn_jax import attention as attention_lib

# Written once in attention.py (the attention modules need them too).
Initializer = attention_lib.Initializer
torch_default_init = attention_lib.torch_default_init
torch_default_bias_init = attention_lib.torch_default_bias_init
batch_norm = attention_lib.batch_norm
dense = attention_lib.dense

# Comparison attention modules that sit inside blocks; "wa" replaces downsampling instead.
COMPARISON_ATTENTIONS = ("se", "cbam", "eca", "gc")
DEFAULT_ATTENTION_PARAM = {"se": 4, "cbam": 4, "eca": 3, "gc": 4, "wa": "haar"}


def conv(features: int, kernel: int, *, strides: int = 1, groups: int = 1,
         use_bias: bool = False, dtype: Any = jnp.float32,
         kernel_init: Initializer = torch_default_init, name: str | None = None) -> nn.Conv:
  """Square nn.Conv with PyTorch's symmetric zero padding (kernel // 2 per side).

  Kernel (k, k, Cin / groups, features) from `kernel_init`, default PyTorch's
  U(+-1/sqrt(fan_in)), fan_in = Cin / groups * k * k. No bias by default (the
  backbones' convolutions have none, except VGG's, which the reference sets
  to 0): biases start at 0.
  """
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(strides, strides),
                 padding=((pad, pad), (pad, pad)), feature_group_count=groups,
                 use_bias=use_bias, kernel_init=kernel_init,
                 bias_init=nn.initializers.zeros, dtype=dtype,
                 param_dtype=jnp.float32, name=name)


def linear(features: int, x, *, name: str, dtype: Any,
           kernel_init: Initializer = torch_default_init):
  """PyTorch's nn.Linear applied to (N, D) `x` -> (N, features).

  Kernel (D, features) from `kernel_init` (default PyTorch's U(+-1/sqrt(D)));
  bias PyTorch's default U(+-1/sqrt(D)).
  """
  return dense(features, bias_init=torch_default_bias_init(x.shape[-1]),
               kernel_init=kernel_init, dtype=dtype, name=name)(x)


def comparison_attention(kind: str | None, param: Any, x, train: bool, *, dtype: Any,
                         axis_name: str | None, name: str,
                         linear_init: Initializer | None = None,
                         conv_init: Initializer | None = None):
  """Applies SE / CBAM / ECA / GC to NHWC `x`, or returns `x` for kind None.

  `linear_init` / `conv_init`: the initialisers of the module's Linear / Conv2d
  kernels when the backbone re-initialises them (VGG); None: the module's own.
  """
  if kind is None:
    return x
  if kind == "se":
    return attention_lib.SqueezeExcitation(param, dtype=dtype, linear_init=linear_init,
                                           name=name)(x)
  if kind == "cbam":
    return attention_lib.CBAM(param, dtype=dtype, axis_name=axis_name,
                              linear_init=linear_init, conv_init=conv_init, name=name)(x, train)
  if kind == "eca":
    return attention_lib.ECA(param, dtype=dtype, name=name)(x)
  if kind == "gc":
    return attention_lib.GlobalContext(param, dtype=dtype, conv_init=conv_init, name=name)(x)
  raise ValueError(f"unknown attention {kind!r}; valid: {', '.join(COMPARISON_ATTENTIONS)}.")


def global_average_pool(x):
  """(N, H, W, C) -> (N, C)."""
  return x.mean(axis=(1, 2))
