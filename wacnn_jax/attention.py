"""Wavelet Attention and the comparison attention modules (SE, CBAM, ECA, GC).

All modules take NHWC arrays. `WaveletAttention` halves H and W (it replaces a
downsampling step) and returns `(out, ll)`; the others return an array of the
input's shape and dtype, re-weighted. `dtype` is the compute dtype (e.g.
bfloat16); parameters are always float32.

This module also holds the two settings the whole network shares with CBAM's
spatial gate: PyTorch's default initialiser and the BatchNorm factory
(`models.layers` re-exports them, so they are written once).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from wacnn_jax import wavelets

# PyTorch's default Conv/Linear weight init, kaiming_uniform(a=sqrt(5)):
# U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_default_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")

BN_MOMENTUM = 0.9  # = PyTorch momentum 0.1
BN_EPSILON = 1e-5


def batch_norm(train: bool, *, dtype: Any = jnp.float32, axis_name: str | None = None,
               name: str | None = None) -> nn.BatchNorm:
  """BatchNorm as PyTorch's BatchNorm2d defaults: scale 1, bias 0, momentum 0.1, eps 1e-5.

  Batch statistics in training, running averages otherwise; `axis_name`
  averages the batch statistics across pmapped devices. Parameters float32.
  """
  return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM,
                      epsilon=BN_EPSILON, axis_name=axis_name, dtype=dtype,
                      param_dtype=jnp.float32, name=name)


def _dense(features: int, dtype: Any, name: str, use_bias: bool = True) -> nn.Dense:
  return nn.Dense(features, use_bias=use_bias, kernel_init=torch_default_init,
                  bias_init=nn.initializers.zeros, dtype=dtype,
                  param_dtype=jnp.float32, name=name)


class WaveletAttention(nn.Module):
  """WA block: x (N, H, W, C) -> (out, ll), each (N, ceil(H/2), ceil(W/2), C).

  `ll, lh, hl, _ = dwt2(x, wavelet)`; `attention = softmax over the channel
  axis (last) of (lh + hl)` at each position (hh unused); `out = ll + ll *
  attention`. No parameters. Residual networks feed `out` to the block's
  first convolution and `ll` to the shortcut; plain networks use `out` only.
  `attention`, `ll` and `out` are sown into the `intermediates` collection
  (read them with `apply(..., mutable=['intermediates'])`). `dtype`: compute
  dtype, None = the input's; the softmax runs in at least float32.
  """

  wavelet: str = "haar"
  dtype: Any = None

  @nn.compact
  def __call__(self, x):
    if self.dtype is not None:
      x = jnp.asarray(x, self.dtype)
    ll, lh, hl, _ = wavelets.dwt2(x, self.wavelet)
    logits = (lh + hl).astype(jnp.promote_types(ll.dtype, jnp.float32))
    attention = jax.nn.softmax(logits, axis=-1).astype(ll.dtype)
    out = ll + ll * attention
    self.sow("intermediates", "attention", attention)
    self.sow("intermediates", "ll", ll)
    self.sow("intermediates", "out", out)
    return out, ll


class SqueezeExcitation(nn.Module):
  """SE: global average pool -> Dense C->C/r -> ReLU -> Dense C/r->C -> sigmoid -> scale.

  No biases: 2 * C * (C // r) parameters.
  """

  reduction: int = 4
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    s = x.mean(axis=(1, 2))
    s = nn.relu(_dense(c // self.reduction, self.dtype, "squeeze", use_bias=False)(s))
    s = nn.sigmoid(_dense(c, self.dtype, "excite", use_bias=False)(s))
    return x * s[:, None, None, :].astype(x.dtype)


class CBAM(nn.Module):
  """CBAM: channel gate, then spatial gate; NHWC -> NHWC.

  Channel gate: sigmoid(mlp(avg_pool(x)) + mlp(max_pool(x))) with the shared
  mlp Dense C->C/r -> ReLU -> Dense C/r->C (biases). Spatial gate on the
  channel-gated x: [max, mean] over channels -> conv 7x7 2->1 (no bias, zero
  padding 3) -> BatchNorm -> sigmoid. Parameters: 2 C (C//r) + C//r + C + 98
  + 2 (BN scale, bias). `train` and `axis_name` drive the BatchNorm.
  """

  reduction: int = 4
  dtype: Any = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool):
    c = x.shape[-1]
    hidden = _dense(c // self.reduction, self.dtype, "mlp_hidden")
    output = _dense(c, self.dtype, "mlp_output")
    mlp = lambda v: output(nn.relu(hidden(v)))
    channel_gate = nn.sigmoid(mlp(x.mean(axis=(1, 2))) + mlp(x.max(axis=(1, 2))))
    x = x * channel_gate[:, None, None, :].astype(x.dtype)
    pooled = jnp.concatenate([x.max(axis=-1, keepdims=True),
                              x.mean(axis=-1, keepdims=True)], axis=-1)
    s = nn.Conv(1, (7, 7), padding=((3, 3), (3, 3)), use_bias=False,
                kernel_init=torch_default_init, dtype=self.dtype,
                param_dtype=jnp.float32, name="spatial_conv")(pooled)
    s = batch_norm(train, dtype=self.dtype, axis_name=self.axis_name,
                   name="spatial_bn")(s)
    return x * nn.sigmoid(s).astype(x.dtype)


class ECA(nn.Module):
  """ECA: global average pool -> 1-D conv over the channel axis -> sigmoid -> scale.

  Kernel k, no bias, zero padding ((k-1)//2, k//2) so that C stays C: k
  parameters.
  """

  kernel_size: int = 3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    s = x.mean(axis=(1, 2))[:, :, None]  # (N, C, 1): channels as a 1-D sequence
    s = nn.Conv(1, (k,), padding=(((k - 1) // 2, k // 2),), use_bias=False,
                kernel_init=torch_default_init, dtype=self.dtype,
                param_dtype=jnp.float32, name="channel_conv")(s)
    return x * nn.sigmoid(s[:, None, None, :, 0]).astype(x.dtype)


class GlobalContext(nn.Module):
  """GC (GCNet, fusion by addition): NHWC -> NHWC.

  context = sum over positions of softmax_hw(conv1x1 C->1 (x)) * x;
  transform = conv1x1 C->C/r -> LayerNorm -> ReLU -> conv1x1 C/r->C (biases;
  1x1 convs on the pooled vector are Dense layers); out = x + transform,
  broadcast to every position. Parameters: (C + 1) + (C (C//r) + C//r) +
  2 (C//r) + ((C//r) C + C).
  """

  reduction: int = 4
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    n, h, w, c = x.shape
    hidden = c // self.reduction
    logits = _dense(1, self.dtype, "context_mask")(x).reshape(n, h * w)
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    weights = jax.nn.softmax(logits, axis=-1).astype(x.dtype)
    context = jnp.einsum("np,npc->nc", weights, x.reshape(n, h * w, c))
    t = _dense(hidden, self.dtype, "transform_reduce")(context)
    t = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, param_dtype=jnp.float32,
                     name="transform_norm")(t)
    t = _dense(c, self.dtype, "transform_expand")(nn.relu(t))
    return x + t[:, None, None, :].astype(x.dtype)
