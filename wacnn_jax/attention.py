"""Wavelet Attention and the comparison attention modules (SE, CBAM, ECA, GC).

All modules take NHWC arrays. `WaveletAttention` halves H and W (it replaces a
downsampling step) and returns `(out, ll)`; the others return an array of the
input's shape and dtype, re-weighted. `dtype` is the compute dtype (e.g.
bfloat16); parameters are always float32.

Every layer is initialised as the reference's (PyTorch) layer: PyTorch's
default for a Linear or Conv2d is U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for the
weight and for the bias (fan_in = input channels per group x kernel area);
modules state where they differ. The reference's VGG re-initialises the
layers of the attention modules inside it (Linear weights N(0, 0.01), Conv2d
weights kaiming-normal fan_out with biases 0): SE, CBAM and GC take these
initialisers as `linear_init` / `conv_init` (None: the module's own).

This module also holds what the whole network shares with CBAM's spatial gate
and the attention MLPs: the initialisers, the Dense factory and BatchNorm
(`models.layers` re-exports them, so they are written once).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from wacnn_jax import wavelets

Initializer = Callable[..., jax.Array]

# PyTorch's default Conv/Linear weight init, kaiming_uniform(a=sqrt(5)):
# U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_default_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
# nn.init.kaiming_normal_(mode='fan_in', nonlinearity='relu'): untruncated
# N(0, 2 / fan_in) (jax's "normal" distribution is not truncated).
kaiming_normal_fan_in = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def torch_default_bias_init(fan_in: int) -> Initializer:
  """PyTorch's default Conv/Linear bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


BN_MOMENTUM = 0.9  # = PyTorch momentum 0.1
BN_EPSILON = 1e-5
# The reference's CBAM builds its spatial gate's BatchNorm2d with momentum 0.01.
CBAM_BN_MOMENTUM = 0.99


class BatchNorm(nn.Module):
  """PyTorch's BatchNorm2d over the last (channel) axis: (..., C) -> (..., C).

  Training: normalises with the batch mean and the biased batch variance over
  every axis but the last (and over the devices of `axis_name`), and updates
  the running averages `mean <- m mean + (1 - m) batch_mean`, `var <- m var +
  (1 - m) n / (n - 1) batch_var` with the unbiased variance, n = values per
  channel in the whole (cross-device) batch, as PyTorch does; n = 1 is refused
  as PyTorch refuses it. Evaluation: normalises with the running averages.
  `y = (x - mean) / sqrt(var + epsilon) * scale + bias`.

  `momentum` m in flax's convention (0.9 = PyTorch's momentum 0.1). Variables
  float32: params `scale` (init 1) and `bias` (0); batch_stats `mean` (0) and
  `var` (1). Statistics and normalisation run in at least float32 (batch
  variance as E[x^2] - E[x]^2, clipped at 0, as flax's BatchNorm); the output
  has dtype `dtype`.
  """

  use_running_average: bool
  momentum: float = BN_MOMENTUM
  epsilon: float = BN_EPSILON
  dtype: Any = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x):
    features = (x.shape[-1],)
    scale = self.param("scale", nn.initializers.ones, features, jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, features, jnp.float32)
    running_mean = self.variable("batch_stats", "mean", jnp.zeros, features, jnp.float32)
    running_var = self.variable("batch_stats", "var", jnp.ones, features, jnp.float32)
    if self.use_running_average:
      mean, var = running_mean.value, running_var.value
    else:
      axes = tuple(range(x.ndim - 1))
      stats = jnp.asarray(x, jnp.promote_types(self.dtype, jnp.float32))
      moments = jnp.stack([stats.mean(axes), jnp.square(stats).mean(axes)])
      count = math.prod(x.shape[:-1])
      if self.axis_name is not None and not self.is_initializing():
        moments = jax.lax.pmean(moments, self.axis_name)
        count *= jax.lax.axis_size(self.axis_name)
      mean = moments[0]
      var = jnp.maximum(0.0, moments[1] - jnp.square(mean))
      if not self.is_initializing():
        if count < 2:
          raise ValueError(f"BatchNorm in training needs more than 1 value per channel, "
                           f"got input shape {x.shape}.")
        m = self.momentum
        running_mean.value = m * running_mean.value + (1 - m) * mean
        running_var.value = m * running_var.value + (1 - m) * var * (count / (count - 1))
    y = (x - mean) * (jax.lax.rsqrt(var + self.epsilon) * scale) + bias
    return jnp.asarray(y, self.dtype)


def batch_norm(train: bool, *, momentum: float = BN_MOMENTUM, dtype: Any = jnp.float32,
               axis_name: str | None = None, name: str | None = None) -> BatchNorm:
  """`BatchNorm` (PyTorch's BatchNorm2d: scale 1, bias 0, eps 1e-5, momentum 0.1).

  Batch statistics in training, running averages otherwise; `axis_name`
  averages the batch statistics across pmapped devices. `momentum` in flax's
  convention, default BN_MOMENTUM (= PyTorch's 0.1).
  """
  return BatchNorm(use_running_average=not train, momentum=momentum, dtype=dtype,
                   axis_name=axis_name, name=name)


def dense(features: int, *, bias_init: Initializer | None,
          kernel_init: Initializer = torch_default_init, dtype: Any = jnp.float32,
          name: str | None = None) -> nn.Dense:
  """nn.Dense with float32 parameters; `bias_init` None: no bias.

  Kernel (in, out) from `kernel_init` (default PyTorch's U(+-1/sqrt(in))).
  """
  return nn.Dense(features, use_bias=bias_init is not None, kernel_init=kernel_init,
                  bias_init=nn.initializers.zeros if bias_init is None else bias_init,
                  dtype=dtype, param_dtype=jnp.float32, name=name)


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

  No biases: 2 * C * (C // r) parameters. Kernels: `linear_init`, None =
  PyTorch's default U(+-1/sqrt(fan_in)).
  """

  reduction: int = 4
  dtype: Any = jnp.float32
  linear_init: Initializer | None = None

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    kernel_init = self.linear_init or torch_default_init
    layer = lambda features, name: dense(features, bias_init=None, kernel_init=kernel_init,
                                         dtype=self.dtype, name=name)
    s = x.mean(axis=(1, 2))
    s = nn.relu(layer(c // self.reduction, "squeeze")(s))
    s = nn.sigmoid(layer(c, "excite")(s))
    return x * s[:, None, None, :].astype(x.dtype)


class CBAM(nn.Module):
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
  dtype: Any = jnp.float32
  axis_name: str | None = None
  linear_init: Initializer | None = None
  conv_init: Initializer | None = None

  @nn.compact
  def __call__(self, x, train: bool):
    c = x.shape[-1]
    hidden_features = c // self.reduction
    kernel_init = self.linear_init or torch_default_init
    hidden = dense(hidden_features, bias_init=torch_default_bias_init(c),
                   kernel_init=kernel_init, dtype=self.dtype, name="mlp_hidden")
    output = dense(c, bias_init=torch_default_bias_init(hidden_features),
                   kernel_init=kernel_init, dtype=self.dtype, name="mlp_output")
    mlp = lambda v: output(nn.relu(hidden(v)))
    channel_gate = nn.sigmoid(mlp(x.mean(axis=(1, 2))) + mlp(x.max(axis=(1, 2))))
    x = x * channel_gate[:, None, None, :].astype(x.dtype)
    pooled = jnp.concatenate([x.max(axis=-1, keepdims=True),
                              x.mean(axis=-1, keepdims=True)], axis=-1)
    s = nn.Conv(1, (7, 7), padding=((3, 3), (3, 3)), use_bias=False,
                kernel_init=self.conv_init or torch_default_init, dtype=self.dtype,
                param_dtype=jnp.float32, name="spatial_conv")(pooled)
    s = batch_norm(train, momentum=CBAM_BN_MOMENTUM, dtype=self.dtype,
                   axis_name=self.axis_name, name="spatial_bn")(s)
    return x * nn.sigmoid(s).astype(x.dtype)


class ECA(nn.Module):
  """ECA: global average pool -> 1-D conv over the channel axis -> sigmoid -> scale.

  Kernel k, no bias, zero padding ((k-1)//2, k//2) so that C stays C: k
  parameters, initialised as PyTorch's Conv1d, U(+-1/sqrt(k)) (the reference's
  VGG re-initialises Conv2d layers only, so also there).
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

  Init (GCNet's reset_parameters, as the reference): mask conv kaiming-normal
  fan_in (N(0, 2/C), untruncated), bias 0; first transform conv PyTorch's
  default (kernel and bias U(+-1/sqrt(C))); LayerNorm scale 1, bias 0; last
  transform conv kernel and bias 0, so that the block starts as the identity.
  With `conv_init` (the reference's VGG re-initialisation) every conv kernel
  is `conv_init` and every conv bias 0.
  """

  reduction: int = 4
  dtype: Any = jnp.float32
  conv_init: Initializer | None = None

  @nn.compact
  def __call__(self, x):
    n, h, w, c = x.shape
    hidden = c // self.reduction
    zeros = nn.initializers.zeros
    if self.conv_init is None:
      inits = {"context_mask": (kaiming_normal_fan_in, zeros),
               "transform_reduce": (torch_default_init, torch_default_bias_init(c)),
               "transform_expand": (zeros, zeros)}
    else:
      inits = dict.fromkeys(("context_mask", "transform_reduce", "transform_expand"),
                            (self.conv_init, zeros))
    conv1x1 = lambda features, name: dense(features, kernel_init=inits[name][0],
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
