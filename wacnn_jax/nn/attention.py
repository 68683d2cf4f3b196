"""Wavelet Attention and the comparison attention modules (SE, CBAM, ECA, GC) as Flax modules.

All modules take NHWC arrays and are called as `module(x, train)` (`train`
defaults to False). `WaveletAttention` halves H and W (it replaces a
downsampling step) and returns `(out, ll)`; the others return an array of
the input's shape, re-weighted. `dtype` is the compute dtype (e.g.
bfloat16): the input is cast to it and the output has it; parameters are
always float32. They are plain Flax modules: use them in any network,

    out, ll = WaveletAttention(wavelet="haar")(x, train=False)   # (N, H/2, W/2, C) each
    y = SqueezeExcitation(reduction=8)(x, train=False)            # (N, H, W, C)

The backbones choose them by name with an `attention_spec.AttentionSpec`
("se(reduction=8)", "wa(wavelet='db2')"), which also says where a module goes.

Every layer is initialised as the reference's (PyTorch) layer: PyTorch's
default for a Linear or Conv2d is U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for the
weight and for the bias (fan_in = input channels per group x kernel area);
modules state where they differ. The reference's VGG re-initialises the
layers of the attention modules inside it (Linear weights N(0, 0.01), Conv2d
weights kaiming-normal fan_out with biases 0): SE, CBAM and GC take these
initialisers as `linear_init` / `conv_init` (None: the module's own).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from wacnn_jax.nn import layers
from wacnn_jax.nn import wavelets

# The reference's CBAM builds its spatial gate's BatchNorm2d with momentum 0.01.
CBAM_BN_MOMENTUM = 0.99


class AttentionModule(nn.Module):
  """Base of the attention modules: the backbone's context, as keyword-only fields.

  `dtype`: compute dtype; `axis_name`: the pmap axis over which BatchNorm
  averages batch statistics; `linear_init` / `conv_init`: the backbone's
  initialisers of the module's Linear / Conv2d kernels (None: the module's
  own). A module uses those that apply to its layers. Subclasses declare
  their options as (positional) fields with defaults and implement
  `__call__(self, x, train)`.
  """

  _: dataclasses.KW_ONLY
  dtype: Any = jnp.float32
  axis_name: str | None = None
  linear_init: layers.Initializer | None = None
  conv_init: layers.Initializer | None = None


class SqueezeExcitation(AttentionModule):
  """SE: global average pool -> Dense C->C/r -> ReLU -> Dense C/r->C -> sigmoid -> scale.

  No biases: 2 * C * (C // r) parameters. Kernels: `linear_init`, None =
  PyTorch's default U(+-1/sqrt(fan_in)).
  """

  reduction: int = 4

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # no batch statistics
    x = jnp.asarray(x, self.dtype)
    c = x.shape[-1]
    kernel_init = self.linear_init or layers.torch_default_init
    layer = lambda features, name: layers.dense(features, bias_init=None,
                                                kernel_init=kernel_init, dtype=self.dtype,
                                                name=name)
    s = x.mean(axis=(1, 2))
    s = nn.relu(layer(c // self.reduction, "squeeze")(s))
    s = nn.sigmoid(layer(c, "excite")(s))
    return x * s[:, None, None, :].astype(x.dtype)


class CBAM(AttentionModule):
  """CBAM: channel gate, then spatial gate; NHWC -> NHWC.

  Channel gate: sigmoid(mlp(avg_pool(x)) + mlp(max_pool(x))) with the shared
  mlp Dense C->C/r -> ReLU -> Dense C/r->C (biases). Spatial gate on the
  channel-gated x: [max, mean] over channels -> conv 7x7 2->1 (no bias, zero
  padding 3) -> BatchNorm -> sigmoid. Parameters: 2 C (C//r) + C//r + C + 98
  + 2 (BN scale, bias). `train` and `axis_name` drive the BatchNorm, whose
  momentum is the reference's 0.01 (PyTorch convention; CBAM_BN_MOMENTUM).

  Init: mlp kernels `linear_init`, conv kernel `conv_init` (None: PyTorch's
  default U(+-1/sqrt(fan_in)), fan_in C, C//r and 98); mlp biases PyTorch's
  default U(+-1/sqrt(fan_in)) in any case; BatchNorm scale 1, bias 0.
  """

  reduction: int = 4

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = jnp.asarray(x, self.dtype)
    c = x.shape[-1]
    hidden_features = c // self.reduction
    kernel_init = self.linear_init or layers.torch_default_init
    hidden = layers.dense(hidden_features, bias_init=layers.torch_default_bias_init(c),
                          kernel_init=kernel_init, dtype=self.dtype, name="mlp_hidden")
    output = layers.dense(c, bias_init=layers.torch_default_bias_init(hidden_features),
                          kernel_init=kernel_init, dtype=self.dtype, name="mlp_output")
    mlp = lambda v: output(nn.relu(hidden(v)))
    channel_gate = nn.sigmoid(mlp(x.mean(axis=(1, 2))) + mlp(x.max(axis=(1, 2))))
    x = x * channel_gate[:, None, None, :].astype(x.dtype)
    pooled = jnp.concatenate([x.max(axis=-1, keepdims=True),
                              x.mean(axis=-1, keepdims=True)], axis=-1)
    s = nn.Conv(1, (7, 7), padding=((3, 3), (3, 3)), use_bias=False,
                kernel_init=self.conv_init or layers.torch_default_init, dtype=self.dtype,
                param_dtype=jnp.float32, name="spatial_conv")(pooled)
    s = layers.batch_norm(train, momentum=CBAM_BN_MOMENTUM, dtype=self.dtype,
                          axis_name=self.axis_name, name="spatial_bn")(s)
    return x * nn.sigmoid(s).astype(x.dtype)


class ECA(AttentionModule):
  """ECA: global average pool -> 1-D conv over the channel axis -> sigmoid -> scale.

  Kernel k, no bias, zero padding ((k-1)//2, k//2) so that C stays C: k
  parameters, initialised as PyTorch's Conv1d, U(+-1/sqrt(k)) (the reference's
  VGG re-initialises Conv2d layers only, so also there: `conv_init` is not used).
  """

  kernel_size: int = 3

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # no batch statistics
    x = jnp.asarray(x, self.dtype)
    k = self.kernel_size
    s = x.mean(axis=(1, 2))[:, :, None]  # (N, C, 1): channels as a 1-D sequence
    s = nn.Conv(1, (k,), padding=(((k - 1) // 2, k // 2),), use_bias=False,
                kernel_init=layers.torch_default_init, dtype=self.dtype,
                param_dtype=jnp.float32, name="channel_conv")(s)
    return x * nn.sigmoid(s[:, None, None, :, 0]).astype(x.dtype)


class GlobalContext(AttentionModule):
  """GC (GCNet, fusion by addition): NHWC -> NHWC.

  context = sum over positions of softmax_hw(conv1x1 C->1 (x)) * x;
  transform = conv1x1 C->C/r -> LayerNorm -> ReLU -> conv1x1 C/r->C (biases;
  1x1 convs on the pooled vector are Dense layers); out = x + transform,
  broadcast to every position. Parameters: (C + 1) + (C (C//r) + C//r) +
  2 (C//r) + ((C//r) C + C).

  Init (GCNet's reset_parameters, as the reference): mask conv kaiming-normal
  fan_in (N(0, 2/C), untruncated), bias 0; first transform conv PyTorch's
  default (kernel and bias U(+-1/sqrt(C))); LayerNorm scale 1, bias 0; last
  transform conv kernel and bias 0, so that the block starts as the identity.
  With `conv_init` (the reference's VGG re-initialisation) every conv kernel
  is `conv_init` and every conv bias 0.
  """

  reduction: int = 4

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # no batch statistics
    x = jnp.asarray(x, self.dtype)
    n, h, w, c = x.shape
    hidden = c // self.reduction
    zeros = nn.initializers.zeros
    if self.conv_init is None:
      inits = {"context_mask": (layers.kaiming_normal_fan_in, zeros),
               "transform_reduce": (layers.torch_default_init,
                                    layers.torch_default_bias_init(c)),
               "transform_expand": (zeros, zeros)}
    else:
      inits = dict.fromkeys(("context_mask", "transform_reduce", "transform_expand"),
                            (self.conv_init, zeros))
    conv1x1 = lambda features, name: layers.dense(features, kernel_init=inits[name][0],
                                                  bias_init=inits[name][1], dtype=self.dtype,
                                                  name=name)
    logits = conv1x1(1, "context_mask")(x).reshape(n, h * w)
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    weights = jax.nn.softmax(logits, axis=-1).astype(x.dtype)
    context = jnp.einsum("np,npc->nc", weights, x.reshape(n, h * w, c))
    t = conv1x1(hidden, "transform_reduce")(context)
    t = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, param_dtype=jnp.float32,
                     name="transform_norm")(t)
    t = conv1x1(c, "transform_expand")(nn.relu(t))
    return x + t[:, None, None, :].astype(x.dtype)


class WaveletAttention(AttentionModule):
  """WA block: x (N, H, W, C) -> (out, ll), each (N, ceil(H/2), ceil(W/2), C).

  `ll, lh, hl, _ = dwt2(x, wavelet)`; `attention = softmax over the channel
  axis (last) of (lh + hl)` at each position (hh unused); `out = ll + ll *
  attention`. No parameters. Residual networks feed `out` to the block's
  first convolution and `ll` to the shortcut; plain networks use `out` only.
  `attention`, `ll` and `out` are sown into the `intermediates` collection
  (read them with `apply(..., mutable=['intermediates'])`). The input is cast
  to `dtype`; the softmax runs in at least float32.

  `wavelet`: any discrete pywt name (`wavelets.wavelet_filters` checks it).
  Where the backbones put it is the spec's option `stages` (`attention_spec`).
  """

  wavelet: str = "haar"

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # no batch statistics
    x = jnp.asarray(x, self.dtype)
    ll, lh, hl, _ = wavelets.dwt2(x, self.wavelet)
    logits = (lh + hl).astype(jnp.promote_types(ll.dtype, jnp.float32))
    attention = jax.nn.softmax(logits, axis=-1).astype(ll.dtype)
    out = ll + ll * attention
    self.sow("intermediates", "attention", attention)
    self.sow("intermediates", "ll", ll)
    self.sow("intermediates", "out", out)
    return out, ll
