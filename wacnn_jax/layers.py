"""PyTorch-equivalent layers for the backbones and attention modules: conv, depthwise conv,
BatchNorm, Dense.

Arrays are NHWC. Every factory takes the compute `dtype` and keeps parameters
float32. Initialisers follow PyTorch's defaults: a Conv2d or Linear weight and
bias are U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (fan_in = input channels per
group x kernel area), BatchNorm scale 1 and bias 0; the modules that use other
initialisers pass them in.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

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


def linear(features: int, x, *, name: str, dtype: Any,
           kernel_init: Initializer = torch_default_init):
  """PyTorch's nn.Linear applied to (N, D) `x` -> (N, features).

  Kernel (D, features) from `kernel_init` (default PyTorch's U(+-1/sqrt(D)));
  bias PyTorch's default U(+-1/sqrt(D)).
  """
  return dense(features, bias_init=torch_default_bias_init(x.shape[-1]),
               kernel_init=kernel_init, dtype=dtype, name=name)(x)


class Conv(nn.Conv):
  """nn.Conv whose input XLA:CPU keeps in memory for the backward pass.

  XLA:CPU computes a convolution's weight gradient from a transposed copy of
  its input, and by default fuses the recomputation of that input (the
  previous BatchNorm, ReLU and residual adds, up to three layers back) into
  the transposing copy, reading several tensors in transposed order: over a
  third of a CPU train step. An optimisation barrier on the input keeps the
  stored value instead, where the compilation keeps barriers
  (`steps.compiler_options`). CPU only; elsewhere this is nn.Conv. Same
  parameters and outputs as nn.Conv.
  """

  @nn.compact
  def __call__(self, inputs):
    if jax.default_backend() == "cpu":
      inputs = jax.lax.optimization_barrier(inputs)
    return super().__call__(inputs)


def conv(features: int, kernel: int, *, strides: int = 1,
         use_bias: bool = False, dtype: Any = jnp.float32,
         kernel_init: Initializer = torch_default_init, name: str | None = None) -> Conv:
  """Square nn.Conv with PyTorch's symmetric zero padding (kernel // 2 per side).

  Kernel (k, k, Cin, features) from `kernel_init`, default PyTorch's
  U(+-1/sqrt(fan_in)), fan_in = Cin * k * k (depthwise convolutions:
  `DepthwiseConv`). No bias by default (the
  backbones' convolutions have none, except VGG's, which the reference sets
  to 0): biases start at 0. (`Conv` is nn.Conv with a CPU-only barrier.)
  """
  pad = kernel // 2
  return Conv(features, (kernel, kernel), strides=(strides, strides),
              padding=((pad, pad), (pad, pad)),
              use_bias=use_bias, kernel_init=kernel_init,
              bias_init=nn.initializers.zeros, dtype=dtype,
              param_dtype=jnp.float32, name=name)


# How `depthwise_conv2d` computes, per backend ("grouped": lax.conv_general_dilated
# with feature_group_count; "shifted": `depthwise_conv2d_shifted`). Measured in
# docs/benchmarks.md ("Depthwise convolutions"); a backend not named uses "shifted".
DEPTHWISE_IMPLEMENTATION = {"cpu": "shifted", "gpu": "shifted"}


def _pairs(padding, n: int = 2) -> tuple[tuple[int, int], ...]:
  """An int p (p each side of both spatial axes) or ((lo, hi), (lo, hi)) -> the pairs."""
  if isinstance(padding, int):
    return ((padding, padding),) * n
  pairs = tuple((int(lo), int(hi)) for lo, hi in padding)
  if len(pairs) != n:
    raise ValueError(f"padding needs {n} (low, high) pairs, got {padding!r}.")
  return pairs


def depthwise_conv2d(x, kernel, *, strides: int = 1, padding=0, implementation: str | None = None):
  """Depthwise 2-D correlation of NHWC `x` (N, H, W, C) with HWIO `kernel` (kh, kw, 1, C * m).

  Output channel c * m + j is input channel c correlated with kernel[..., c * m + j]
  (lax's `feature_group_count=C` convention; m = 1 for the backbones, 4 for the
  DWT's bands). Zero `padding` (int, or ((top, bottom), (left, right))), then
  stride `strides` on both axes: output (N, (H + top + bottom - kh) // s + 1,
  (W + left + right - kw) // s + 1, C * m), in `x.dtype` with float32
  accumulation. `implementation`: "shifted" (`depthwise_conv2d_shifted`),
  "grouped" (lax.conv_general_dilated), or None for this backend's entry of
  `DEPTHWISE_IMPLEMENTATION`. The two agree to float rounding.
  """
  if implementation is None:
    implementation = DEPTHWISE_IMPLEMENTATION.get(jax.default_backend(), "shifted")
  if implementation == "shifted":
    return depthwise_conv2d_shifted(x, kernel, strides=strides, padding=padding)
  if implementation != "grouped":
    raise ValueError(f"depthwise implementation {implementation!r} is not one of "
                     "'shifted', 'grouped'.")
  return jax.lax.conv_general_dilated(
      x, jnp.asarray(kernel, x.dtype), window_strides=(strides, strides),
      padding=_pairs(padding), dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=x.shape[-1], precision=jax.lax.Precision.HIGHEST,
      preferred_element_type=jnp.promote_types(x.dtype, jnp.float32)).astype(x.dtype)


def _taps(xp, kh: int, kw: int, strides: int, ho: int, wo: int):
  """The kh * kw strided windows of padded NHWC `xp`: tap (u, v) is xp[:, s i + u, s j + v]."""
  n, _, _, c = xp.shape
  for u in range(kh):
    for v in range(kw):
      yield u, v, jax.lax.slice(
          xp, (0, u, v, 0), (n, u + strides * (ho - 1) + 1, v + strides * (wo - 1) + 1, c),
          (1, strides, strides, 1))


def _depthwise_shape(x, kernel, strides: int, padding):
  """(m, ((top, bottom), (left, right)), ho, wo) of `depthwise_conv2d`, or a ValueError."""
  _, h, w, c = x.shape
  kh, kw, one, out = kernel.shape
  if one != 1 or out % c:
    raise ValueError(f"a depthwise kernel for {c} channels is (kh, kw, 1, {c} * m); "
                     f"got {kernel.shape}.")
  (top, bottom), (left, right) = pads = _pairs(padding)
  ho = (h + top + bottom - kh) // strides + 1
  wo = (w + left + right - kw) // strides + 1
  if ho < 1 or wo < 1:
    raise ValueError(f"a {kh}x{kw} kernel does not fit the padded {h}x{w} input.")
  return out // c, pads, ho, wo


def _accumulation_type(dtype):
  return jnp.promote_types(dtype, jnp.float32)


def _per_output(tap, m: int):
  """(N, H, W, C) -> (N, H, W, C * m): channel c repeated for its m outputs."""
  return tap if m == 1 else jnp.repeat(tap, m, axis=-1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _depthwise_shifted(x, kernel, strides: int, pads):
  return _depthwise_forward(x, kernel, strides, pads)


def _depthwise_forward(x, kernel, strides, pads):
  kh, kw, _, _ = kernel.shape
  m, pads, ho, wo = _depthwise_shape(x, kernel, strides, pads)
  f32 = _accumulation_type(x.dtype)
  xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
  weights = jnp.asarray(kernel[:, :, 0], f32)
  y = None
  for u, v, tap in _taps(xp, kh, kw, strides, ho, wo):
    term = _per_output(tap.astype(f32), m) * weights[u, v]
    y = term if y is None else y + term
  return y.astype(x.dtype)


def _depthwise_forward_with_residuals(x, kernel, strides, pads):
  return _depthwise_forward(x, kernel, strides, pads), (x, kernel)


# On CPU the kernel gradient's kh * kw per-channel sums run over blocks of the
# batch of about this many bytes each (a loop over the blocks), so that every
# block is read from cache by all the taps: 2.5x faster at MobileNetV2's
# 32x32 maps (docs/benchmarks.md). 0 turns the blocks off.
CPU_BLOCK_BYTES = 2**20


def _input_gradient(g, weights, strides: int, top: int, left: int, h: int, w: int):
  """dx (N, h, w, C * m) of the forward's padded correlation, by polyphase shifted sums.

  Padded input row p = s q + r receives sum over t of g[q - t] * w[r + s t]:
  for each of the s * s phases (r, r') a stride-1 sum over its taps, then the
  phases interleave and the padding is cropped. kh * kw multiply-adds per
  output-gradient pixel, as the forward.
  """
  n, ho, wo, cm = g.shape
  kh, kw, _ = weights.shape
  rows, cols = -(-(top + h) // strides), -(-(left + w) // strides)  # rows per phase
  taps_h, taps_w = -(-kh // strides), -(-kw // strides)
  gp = jax.lax.pad(g, jnp.zeros((), g.dtype), (
      (0, 0, 0), (taps_h - 1, rows - ho, 0), (taps_w - 1, cols - wo, 0), (0, 0, 0)))
  phases = []
  for r in range(strides):
    row = []
    for rc in range(strides):
      total = jnp.zeros((n, rows, cols, cm), g.dtype)
      for t, u in enumerate(range(r, kh, strides)):
        for tc, v in enumerate(range(rc, kw, strides)):
          window = jax.lax.slice(gp, (0, taps_h - 1 - t, taps_w - 1 - tc, 0),
                                 (n, taps_h - 1 - t + rows, taps_w - 1 - tc + cols, cm))
          total = total + window * weights[u, v]
      row.append(total)
    phases.append(jnp.stack(row, axis=3))  # (N, rows, cols, s, C * m)
  dxp = jnp.stack(phases, axis=2).reshape(n, rows * strides, cols * strides, cm)
  return dxp[:, top:top + h, left:left + w]


def _kernel_gradient(xp, g, kh: int, kw: int, strides: int, m: int):
  """dkernel (kh * kw, C * m): per tap, the sum over N, Ho, Wo of tap * g (float32)."""
  n, ho, wo, cm = g.shape

  def sums(xp, g):
    return jnp.stack([(_per_output(tap, m) * g).sum((0, 1, 2))
                      for _, _, tap in _taps(xp, kh, kw, strides, ho, wo)])

  block = max(1, CPU_BLOCK_BYTES // (xp[0].size * xp.dtype.itemsize)) if CPU_BLOCK_BYTES else n
  while n % block:
    block -= 1
  if jax.default_backend() != "cpu" or block >= n:
    return sums(xp, g)
  blocks = lambda a: a.reshape(n // block, block, *a.shape[1:])
  total, _ = jax.lax.scan(lambda acc, xg: (acc + sums(*xg), None),
                          jnp.zeros((kh * kw, cm), g.dtype), (blocks(xp), blocks(g)))
  return total


def _depthwise_backward(strides, pads, residuals, g):
  """Both gradients as shifted multiply-adds and per-channel sums (no convolution)."""
  x, kernel = residuals
  n, h, w, c = x.shape
  kh, kw, _, _ = kernel.shape
  m, ((top, bottom), (left, right)), _, _ = _depthwise_shape(x, kernel, strides, pads)
  f32 = _accumulation_type(x.dtype)
  g = jnp.asarray(g, f32)
  dx = _input_gradient(g, jnp.asarray(kernel[:, :, 0], f32), strides, top, left, h, w)
  if m > 1:
    dx = dx.reshape(n, h, w, c, m).sum(-1)
  xp = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0))).astype(f32)
  dkernel = _kernel_gradient(xp, g, kh, kw, strides, m)
  return dx.astype(x.dtype), dkernel.reshape(kernel.shape).astype(kernel.dtype)


_depthwise_shifted.defvjp(_depthwise_forward_with_residuals, _depthwise_backward)


def depthwise_conv2d_shifted(x, kernel, *, strides: int = 1, padding=0):
  """`depthwise_conv2d` as kh * kw shifted multiply-adds: no grouped convolution.

  y[n, i, j, c * m + q] = sum over (u, v) of xp[n, s i + u, s j + v, c] *
  kernel[u, v, 0, c * m + q], xp the zero-padded input: one strided slice of xp
  per tap, scaled per channel and summed in float32. A custom VJP computes the
  input gradient the same way (`_input_gradient`: shifted sums of the output
  gradient, one per tap and stride phase) and the kernel gradient as kh * kw
  per-channel sums (`_kernel_gradient`), so XLA sees only elementwise work
  and reductions, not its grouped-convolution paths (on CPU the weight
  gradient of a grouped convolution becomes a dense C x C convolution and a
  mask). docs/benchmarks.md measures it against lax's grouped convolution
  and PyTorch. Reverse mode only (jax.grad, jax.vjp; not jax.jvp).
  """
  _depthwise_shape(x, kernel, strides, padding)  # shape errors here, not inside the VJP
  return _depthwise_shifted(x, kernel, strides, _pairs(padding))


class DepthwiseConv(nn.Module):
  """PyTorch's Conv2d(C, C, k, stride, padding=k // 2, groups=C, bias=False): NHWC -> NHWC.

  Parameter `kernel` (k, k, 1, C) float32, as nn.Conv with
  `feature_group_count=C` names and shapes it, from `kernel_init` (default
  PyTorch's U(+-1/sqrt(k * k))); computed by `depthwise_conv2d` in `dtype`.
  """

  kernel_size: int
  strides: int = 1
  dtype: Any = jnp.float32
  kernel_init: Initializer = torch_default_init

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    kernel = self.param("kernel", self.kernel_init, (k, k, 1, x.shape[-1]), jnp.float32)
    return depthwise_conv2d(jnp.asarray(x, self.dtype), jnp.asarray(kernel, self.dtype),
                            strides=self.strides, padding=k // 2)


def global_average_pool(x):
  """(N, H, W, C) -> (N, C)."""
  return x.mean(axis=(1, 2))
