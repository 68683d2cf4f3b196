"""Depthwise 2-D convolutions of NHWC arrays, as shifted multiply-adds with their own VJP.

A depthwise convolution correlates each channel with its own kernels
(lax's `feature_group_count` = channels). XLA's grouped-convolution paths are
slow for it: XLA:CPU rewrites the weight gradient into a dense C x C
convolution and a mask (`ConvolutionGroupConverter`), and on GPUs the grouped
backward pass is reported to run as slowly as a dense one (jax-ml/jax issue
13800). `depthwise_conv2d_shifted` computes the same map as kh * kw shifted,
per-channel-scaled slices, with a custom VJP that keeps both gradients
elementwise work and per-channel sums. `depthwise_conv2d` picks it or lax's
grouped convolution per backend (`DEPTHWISE_IMPLEMENTATION`, decided by
benchmarks/depthwise.py; docs/benchmarks.md "Depthwise convolutions").

Used by MobileNetV2 (`layers.DepthwiseConv`) and by the convolution DWT of
wavelets longer than haar (`wavelets.dwt2_conv`: 4 band kernels per channel;
the backends whose `wavelets.DWT_IMPLEMENTATION` is "conv").
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

# How `depthwise_conv2d` computes, per backend ("grouped": lax.conv_general_dilated
# with feature_group_count; "shifted": `depthwise_conv2d_shifted`), from
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
    phases.append(row)
  if strides == 1:
    dxp = phases[0][0]
  else:  # (N, rows, s, cols, s, C * m) -> the interleaved rows and columns
    dxp = jnp.stack([jnp.stack(row, axis=3) for row in phases], axis=2).reshape(
        n, rows * strides, cols * strides, cm)
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
