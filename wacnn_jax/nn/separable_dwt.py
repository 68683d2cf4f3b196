"""Two-channel filter banks along one axis, analysis and synthesis, each the other's VJP.

The single-level DWT is separable: `analysis` filters one axis into a low and
a high band of half its length, so that the 2-D DWT of NHWC arrays is
`analysis` along the height, then along the width of both results
(`wavelets.dwt2_separable`): 2F multiply-adds per input pixel for filters of
length F, where the dense F x F band kernels of `wavelets.dwt2_conv` take F^2.

Conventions, for an axis of even length n (odd lengths are made even by the
caller) and correlation taps `lo`, `hi` of even length F (pywt's dec_lo and
dec_hi reversed for the DWT), p = F/2 - 1:

    analysis   low[i]  = sum over a of lo[a] * xp[2i + a],   i < n/2
               high[i] = sum over a of hi[a] * xp[2i + a]

where xp is the axis padded by p on each side: wrapped around in mode
"periodization" (pywt's), zeros in mode "zero". `synthesis` is its transpose:

    synthesis  x[j] = sum over (i, a) with 2i + a - p = j of lo[a] low[i] + hi[a] high[i]

with 2i + a - p taken modulo n in periodization mode and terms outside
[0, n) dropped in zero mode. Called with pywt's rec_lo and rec_hi as taps,
it is the inverse DWT along the axis (exact in periodization mode).

Both are strided or polyphase shifted slices, multiplied by constants and
summed in float32 (float64 for float64 inputs): elementwise work that XLA
fuses, no convolution. Each has a custom VJP, the other map with the same
taps, so that the gradient is the same kind of pass rather than the sum of
zero-dilated pads that autodiff makes of strided slices (several times
slower on XLA:CPU). Cotangents of unused bands (symbolic zeros: the DWT's
hh band in Wavelet Attention) cost nothing. Reverse mode only (jax.grad,
jax.vjp).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

MODES = ("periodization", "zero")


def _accumulation_type(dtype):
  return jnp.promote_types(dtype, jnp.float32)


def _extended(x, axis: int, start: int, stop: int, mode: str):
  """Elements start .. stop - 1 along `axis` of `x` extended beyond its ends: periodically
  (periodization) or by zeros. Slices of `x` (and zeros), concatenated."""
  n = x.shape[axis]
  pieces, j = [], start
  while j < stop:
    if mode == "periodization" or 0 <= j < n:
      first = j % n if mode == "periodization" else j
      length = min(n - first, stop - j)
      pieces.append(jax.lax.slice_in_dim(x, first, first + length, 1, axis))
    else:
      length = min(-j, stop - j) if j < 0 else stop - j
      shape = list(x.shape)
      shape[axis] = length
      pieces.append(jnp.zeros(shape, x.dtype))
    j += length
  return pieces[0] if len(pieces) == 1 else jnp.concatenate(pieces, axis)


def _shifted_sums(inputs, axis: int, weights, stride: int, offset: int, count: int, mode: str):
  """Per output o: y_o[i] = sum over b, k of weights[o][b][k] * ext(b)[stride i + offset + k].

  i < count; ext(b) is inputs[b] extended along `axis` as `_extended` extends
  it. Outputs whose taps all fall inside the inputs (the interior) are strided
  slices of the inputs themselves; only the few at each end read an
  extended copy. Padding the whole input instead puts a concatenation in
  front of every tap, which XLA:CPU evaluates element by element (the DWT's
  forward pass up to 2.5x slower at (64, 32, 32, 64)).
  """
  n, taps = inputs[0].shape[axis], len(weights[0][0])
  first = min(max(0, -(offset // stride)), count)  # -(offset // stride) = ceil(-offset / stride)
  last = min(max(first, (n - taps - offset) // stride + 1), count)

  def sums(pieces, outputs: int):
    ys = []
    for per_input in weights:
      y = None
      for piece, ws in zip(pieces, per_input):
        for k, w in enumerate(ws):
          tap = jax.lax.slice_in_dim(piece, k, k + stride * (outputs - 1) + 1, stride, axis)
          y = tap * w if y is None else y + tap * w
      ys.append(y)
    return ys

  parts = []
  for begin, end, inside in ((0, first, False), (first, last, True), (last, count, False)):
    if end > begin:
      start, stop = stride * begin + offset, stride * (end - 1) + offset + taps
      pieces = [jax.lax.slice_in_dim(x, start, stop, 1, axis) if inside
                else _extended(x, axis, start, stop, mode) for x in inputs]
      parts.append(sums(pieces, end - begin))
  return [ys[0] if len(parts) == 1 else jnp.concatenate(ys, axis) for ys in zip(*parts)]


def _analysis(x, axis: int, lo, hi, mode: str):
  """(low, high), each x with `axis` halved: stride-2 shifted sums, from p before the start."""
  p = len(lo) // 2 - 1
  low, high = _shifted_sums([x.astype(_accumulation_type(x.dtype))], axis, ((lo,), (hi,)), 2,
                            -p, x.shape[axis] // 2, mode)
  return low.astype(x.dtype), high.astype(x.dtype)


def _synthesis(bands, axis: int, lo, hi, mode: str):
  """x with `axis` doubled from (low, high) (either None for zeros): two polyphase sums.

  Output j = 2q + r takes the taps a = r + p (mod 2) from band element
  i = q + (r + p - a) / 2: for each phase r a stride-1 shifted sum of the
  bands; the phases then interleave.
  """
  present = [(band, taps) for band, taps in zip(bands, (lo, hi)) if band is not None]
  reference = present[0][0]
  half = reference.shape[axis]
  p, f = len(lo) // 2 - 1, len(lo)
  accumulate = _accumulation_type(reference.dtype)
  inputs = [band.astype(accumulate) for band, _ in present]
  phases = []
  for r in (0, 1):
    # The phase's taps, largest first: shifts (r + p - a) / 2 ascending by one.
    a_values = range((r + p) % 2, f, 2)[::-1]
    weights = [[taps[a] for a in a_values] for _, taps in present]
    offset = (r + p - a_values[0]) // 2
    phases.append(_shifted_sums(inputs, axis, (weights,), 1, offset, half, mode)[0])
  # Interleaved: phase r to the elements 2q + r.
  shape = list(reference.shape)
  shape[axis] = 2 * half
  return jnp.stack(phases, axis + 1).reshape(shape).astype(reference.dtype)


def _nonzero(cotangent):
  return None if isinstance(cotangent, jax.custom_derivatives.SymbolicZero) else cotangent


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _analysis_map(x, axis, lo, hi, mode):
  return _analysis(x, axis, lo, hi, mode)


def _analysis_forward(x, axis, lo, hi, mode):
  return _analysis(x.value, axis, lo, hi, mode), None


def _analysis_backward(axis, lo, hi, mode, _, cotangents):
  bands = tuple(_nonzero(c) for c in cotangents)
  if bands == (None, None):
    return (None,)
  return (_synthesis_map(bands, axis, lo, hi, mode),)


_analysis_map.defvjp(_analysis_forward, _analysis_backward, symbolic_zeros=True)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _synthesis_map(bands, axis, lo, hi, mode):
  """`_synthesis` of (low, high), either None for zeros (a cotangent that autodiff left out)."""
  return _synthesis(bands, axis, lo, hi, mode)


def _synthesis_forward(bands, axis, lo, hi, mode):
  values = tuple(None if b is None else b.value for b in bands)
  # Residuals without arrays: which bands are present (an empty tuple) or left out (None).
  return _synthesis(values, axis, lo, hi, mode), tuple(None if b is None else () for b in bands)


def _synthesis_backward(axis, lo, hi, mode, present, cotangent):
  cotangent = _nonzero(cotangent)
  if cotangent is None:
    return (tuple(None for _ in present),)
  bands = _analysis_map(cotangent, axis, lo, hi, mode)
  return (tuple(None if p is None else band for p, band in zip(present, bands)),)


_synthesis_map.defvjp(_synthesis_forward, _synthesis_backward, symbolic_zeros=True)


def _taps_and_axis(lo, hi, mode: str, shape, axis: int, length: int):
  """(lo, hi) as tuples of floats and `axis` in range(len(shape)), or a ValueError."""
  if mode not in MODES:
    raise ValueError(f"unknown filter bank mode {mode!r}; one of {', '.join(MODES)}.")
  lo, hi = tuple(map(float, lo)), tuple(map(float, hi))
  if len(lo) != len(hi) or len(lo) % 2 or not lo:
    raise ValueError(f"the taps need one even length; got {len(lo)} and {len(hi)}.")
  if not -len(shape) <= axis < len(shape):
    raise ValueError(f"axis {axis} is out of range for shape {shape}.")
  if length % 2:
    raise ValueError(f"the filtered axis needs an even length; got {length} (shape {shape}).")
  return lo, hi, axis % len(shape)


def analysis(x, axis: int, lo, hi, mode: str = "periodization"):
  """(low, high) bands of `x` along `axis` (even length n -> n/2 each), in `x.dtype`.

  `lo`, `hi`: the correlation taps (sequences of floats, one even length F);
  `mode`: "periodization" or "zero". See the module docstring for the map.
  Reverse-mode differentiable (its VJP is `synthesis`); not forward mode.
  """
  x = jnp.asarray(x)
  length = x.shape[axis] if -x.ndim <= axis < x.ndim else 0
  lo, hi, axis = _taps_and_axis(lo, hi, mode, x.shape, axis, length)
  return _analysis_map(x, axis, lo, hi, mode)


def synthesis(low, high, axis: int, lo, hi, mode: str = "periodization"):
  """The transpose of `analysis`: bands of length n/2 along `axis` -> length n, `low.dtype`.

  With pywt's rec_lo and rec_hi as `lo`, `hi` it inverts the periodized
  DWT along the axis. Reverse-mode differentiable (its VJP is `analysis`).
  """
  low = jnp.asarray(low)
  high = jnp.asarray(high, low.dtype)
  if high.shape != low.shape:
    raise ValueError(f"synthesis needs two bands of one shape; got {low.shape}, {high.shape}.")
  lo, hi, axis = _taps_and_axis(lo, hi, mode, low.shape, axis, 0)
  return _synthesis_map((low, high), axis, lo, hi, mode)
