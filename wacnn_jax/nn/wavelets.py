"""Single-level 2-D discrete wavelet transform: separable filter banks or one strided depthwise
convolution.

Arrays are NHWC. `dwt2(x)` returns the four bands `(ll, lh, hl, hh)`, each
(N, ceil(H/2), ceil(W/2), C), with pywt's meaning and values:

    ll == cA  low-pass along height and width
    lh == cH  high-pass along height, low-pass along width
    hl == cV  low-pass along height, high-pass along width
    hh == cD  high-pass along both

of `pywt.dwt2(x, wavelet, mode="periodization", axes=(1, 2))`. Filters come
from PyWavelets for any discrete wavelet; they are numpy constants folded into
the compiled graph (never parameters) and take the input's dtype.

Periodization as a convolution: with filter length F and p = F/2 - 1, pad the
input circularly by p on each side, then correlate (VALID, stride 2) with the
2-D kernels outer(a, b) of the reversed analysis filters lo = dec_lo[::-1],
hi = dec_hi[::-1] (first factor along height): ll = lo x lo, lh = hi x lo,
hl = lo x hi, hh = hi x hi. Odd sizes repeat the last row/column first, as
pywt does. Mode `zero` pads with zeros instead of wrapping (same alignment,
same output size; this is not pywt's `zero` mode, whose output is larger).

The kernels are outer products, so the same map is separable: filter the
height with (lo, hi) at stride 2, then the width of both results
(`dwt2_separable`, by `separable_dwt.analysis`): 2F multiply-adds per input
pixel instead of the F^2 of the dense kernels (`dwt2_conv`, one strided
depthwise convolution by `depthwise.depthwise_conv2d`). `dwt2` picks one per
backend (`DWT_IMPLEMENTATION`); the two agree to float rounding.

For two-tap wavelets (haar) the stride-2 windows do not overlap, and `dwt2`
applies the same 2x2 kernels as a space-to-depth plus a fixed 4x4 mix
(`dwt2_two_tap`) on every backend, one fused elementwise pass.

`idwt2` is the transpose of the DWT with the synthesis filters (rec_lo,
rec_hi) in place of the reversed analysis ones: a stride-2 transposed
convolution followed by folding the p border rows/columns back circularly
(`idwt2_conv`), or the separable synthesis along the width, then the height
(`idwt2_separable`), per backend as `dwt2`. In periodization mode it inverts
`dwt2` exactly (as `pywt.idwt2(..., mode="periodization")`). In zero mode
the border is cropped instead, which is not an exact inverse near the edges.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pywt

from wacnn_jax.nn import depthwise
from wacnn_jax.nn import separable_dwt

MODES = ("periodization", "zero")
# How `dwt2` and `idwt2` compute wavelets longer than two taps, per backend ("separable":
# `dwt2_separable` / `idwt2_separable`; "conv": `dwt2_conv` / `idwt2_conv`). On XLA:CPU the
# separable forward + gradient of db2, sym4 and bior2.2 at (64, 32, 32, 64) is 6-10x faster
# than the convolution (benchmarks/cpu_peers.py), the separable idwt2 about 100x faster than
# lax's transposed grouped convolution. GPUs keep the convolution, the path measured there
# (benchmarks/depthwise.py). A backend not named uses "conv".
DWT_IMPLEMENTATION = {"cpu": "separable", "gpu": "conv"}
_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")


@dataclasses.dataclass(frozen=True)
class WaveletFilters:
  """Analysis (dec) and synthesis (rec) filters of a discrete wavelet, float64 numpy."""

  name: str
  dec_lo: np.ndarray
  dec_hi: np.ndarray
  rec_lo: np.ndarray
  rec_hi: np.ndarray

  @property
  def length(self) -> int:
    """Filter length F (even for every pywt discrete wavelet)."""
    return len(self.dec_lo)

  @property
  def padding(self) -> int:
    """Circular padding p = F/2 - 1 on each side for periodization."""
    return self.length // 2 - 1


@functools.lru_cache(maxsize=None)
def wavelet_filters(wavelet: str) -> WaveletFilters:
  """The filters of a discrete pywt wavelet; ValueError for any other name."""
  if not isinstance(wavelet, str) or wavelet not in pywt.wavelist(kind="discrete"):
    if isinstance(wavelet, str) and wavelet in pywt.wavelist(kind="continuous"):
      problem = (f"{wavelet!r} is a continuous wavelet; the DWT needs a discrete "
                 "one")
    else:
      problem = f"unknown wavelet {wavelet!r}"
    raise ValueError(
        f"{problem}. Use a discrete PyWavelets name such as 'haar', 'db2', "
        "'sym4', 'coif1', 'bior2.2' or 'rbio2.2' (all of them: "
        "pywt.wavelist(kind='discrete')).")
  w = pywt.Wavelet(wavelet)
  as_array = lambda f: np.asarray(f, np.float64)
  return WaveletFilters(wavelet, as_array(w.dec_lo), as_array(w.dec_hi),
                        as_array(w.rec_lo), as_array(w.rec_hi))


@functools.lru_cache(maxsize=None)
def band_kernels(wavelet: str, synthesis: bool = False,
                 dtype: str = "float32") -> np.ndarray:
  """(F, F, 4) numpy kernels for the bands (ll, lh, hl, hh), first axis = height.

  Analysis (`synthesis=False`): correlation kernels outer(a, b) of the
  reversed analysis filters, used by `dwt2`. Synthesis: outer(a, b) of
  rec_lo/rec_hi, used (flipped) by the transposed convolution of `idwt2_conv`.
  """
  f = wavelet_filters(wavelet)
  if synthesis:
    lo, hi = f.rec_lo, f.rec_hi
  else:
    lo, hi = f.dec_lo[::-1], f.dec_hi[::-1]
  kernels = np.stack([np.outer(lo, lo), np.outer(hi, lo), np.outer(lo, hi),
                      np.outer(hi, hi)], axis=-1)
  kernels = kernels.astype(jnp.dtype(dtype))
  kernels.setflags(write=False)
  return kernels


def _check_mode(mode: str) -> None:
  if mode not in MODES:
    raise ValueError(
        f"unknown DWT mode {mode!r}; use mode='periodization' (pywt's, keeps "
        "size N/2) or mode='zero' (zero padding, same alignment).")


def _check_nhwc(x, what: str) -> None:
  if getattr(x, "ndim", None) != 4:
    raise ValueError(
        f"{what} takes NHWC arrays (N, H, W, C); got shape "
        f"{getattr(x, 'shape', type(x).__name__)}. Add the missing axes, e.g. "
        "x[None] for one image or x[..., None] for one channel.")


def _as_float(x):
  """A floating jax array in a dtype JAX computes in (float64 only with x64 enabled)."""
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    return x.astype(jnp.float32)
  return x.astype(jax.dtypes.canonicalize_dtype(x.dtype))


def _make_even(x):
  """Repeats the last row/column of odd-sized inputs (as pywt periodization does)."""
  if x.shape[1] % 2:
    x = jnp.concatenate([x, x[:, -1:]], axis=1)
  if x.shape[2] % 2:
    x = jnp.concatenate([x, x[:, :, -1:]], axis=2)
  return x


def _implementation(implementation: str | None) -> str:
  if implementation is None:
    implementation = DWT_IMPLEMENTATION.get(jax.default_backend(), "conv")
  if implementation not in ("separable", "conv"):
    raise ValueError(f"DWT implementation {implementation!r} is not one of 'separable', "
                     "'conv'.")
  return implementation


def dwt2(x, wavelet: str = "haar", mode: str = "periodization", *,
         implementation: str | None = None):
  """Single-level 2-D DWT of every channel of NHWC `x`: (ll, lh, hl, hh).

  Each band is (N, ceil(H/2), ceil(W/2), C) in `x.dtype` (integers become
  float32); see the module docstring for the band meanings (pywt's cA, cH,
  cV, cD). Two-tap wavelets (`haar` and its aliases `db1`, `bior1.1`,
  `rbio1.1`), whose stride-2 2x2 kernels do not overlap, take `dwt2_two_tap`
  (a 2x2 space-to-depth plus a fixed 4x4 mix that XLA fuses into one
  elementwise pass); longer ones `dwt2_separable` or `dwt2_conv` as
  `implementation` says ("separable", "conv", or None for this backend's
  entry of `DWT_IMPLEMENTATION`). All are the same linear map with the same
  filter values; they differ only in float rounding order (about 1 ulp).
  """
  _check_mode(mode)  # the two-tap path has no mode to check (both modes agree there)
  implementation = _implementation(implementation)
  if wavelet_filters(wavelet).length == 2:
    return dwt2_two_tap(x, wavelet)
  if implementation == "separable":
    return dwt2_separable(x, wavelet, mode)
  return dwt2_conv(x, wavelet, mode)


def dwt2_separable(x, wavelet: str = "haar", mode: str = "periodization"):
  """`dwt2` for any wavelet as separable filter banks: the height, then the width.

  `separable_dwt.analysis` with the correlation taps lo = dec_lo[::-1],
  hi = dec_hi[::-1] along the height gives (low, high), each (N, H/2, W, C);
  along the width of low it gives (ll, hl), of high (lh, hh). Shifted
  slices and multiply-adds only, forward and backward (its custom VJP is
  the transposed filter bank); an unused band costs nothing in the backward
  pass.
  """
  _check_mode(mode)
  _check_nhwc(x, "dwt2")
  x = _make_even(_as_float(x))
  f = wavelet_filters(wavelet)
  lo, hi = f.dec_lo[::-1], f.dec_hi[::-1]
  low, high = separable_dwt.analysis(x, 1, lo, hi, mode)
  ll, hl = separable_dwt.analysis(low, 2, lo, hi, mode)
  lh, hh = separable_dwt.analysis(high, 2, lo, hi, mode)
  return ll, lh, hl, hh


def dwt2_conv(x, wavelet: str = "haar", mode: str = "periodization"):
  """`dwt2` for any wavelet as one stride-2 depthwise conv (4 outputs per channel).

  The padded input (wrapped in periodization mode, zeros in zero mode)
  correlated with the F x F band kernels by `depthwise.depthwise_conv2d`.
  """
  _check_mode(mode)
  _check_nhwc(x, "dwt2")
  x = _make_even(_as_float(x))
  kernels = band_kernels(wavelet, False, jnp.dtype(x.dtype).name)
  n, h, w, c = x.shape
  p = kernels.shape[0] // 2 - 1
  if p > 0:
    x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)),
                mode="wrap" if mode == "periodization" else "constant")
  # HWIO (F, F, 1, 4C): channel c produces output channels 4c .. 4c + 3.
  rhs = np.tile(kernels[:, :, None, :], (1, 1, 1, c))
  y = depthwise.depthwise_conv2d(x, rhs, strides=2)
  y = y.reshape(n, h // 2, w // 2, c, 4)
  return tuple(y[..., band] for band in range(4))


def dwt2_two_tap(x, wavelet: str = "haar"):
  """`dwt2` for a two-tap wavelet (haar) as a 2x2 space-to-depth and a 4x4 mix.

  With F = 2 there is no padding (both modes agree) and output pixel (i, j)
  of band b is sum over u, v in {0, 1} of kernels[u, v, b] * x[2i + u, 2j + v]
  with `band_kernels(wavelet)` (for haar every weight is +-0.5, exact in
  float32 and bfloat16). Slices, multiplies and adds only: forward and
  backward each fuse into a single pass over the data.
  """
  _check_nhwc(x, "dwt2")
  x = _make_even(_as_float(x))
  kernels = band_kernels(wavelet, False, jnp.dtype(x.dtype).name)
  if kernels.shape[0] != 2:
    raise ValueError(f"dwt2_two_tap needs a two-tap wavelet such as 'haar'; "
                     f"{wavelet!r} has {kernels.shape[0]} taps (use dwt2).")
  n, h, w, c = x.shape
  blocks = x.reshape(n, h // 2, 2, w // 2, 2, c)
  taps = [[blocks[:, :, u, :, v, :] for v in range(2)] for u in range(2)]

  def band(b):
    k = kernels[:, :, b]
    return (taps[0][0] * k[0, 0] + taps[0][1] * k[0, 1]) + (
        taps[1][0] * k[1, 0] + taps[1][1] * k[1, 1])

  return tuple(band(b) for b in range(4))


def _fold(z, axis: int, size: int, p: int, mode: str):
  """Adjoint of padding by p on each side of `axis` (length size + 2p -> size)."""
  if p == 0:
    return z
  if mode == "zero":
    return jax.lax.slice_in_dim(z, p, p + size, axis=axis)
  # Periodization: padded index m holds input index (m - p) mod size; sum them.
  length = z.shape[axis]
  front = (-p) % size
  back = (-(front + length)) % size
  pad = [(0, 0)] * z.ndim
  pad[axis] = (front, back)
  z = jnp.pad(z, pad)
  shape = z.shape[:axis] + (z.shape[axis] // size, size) + z.shape[axis + 1:]
  return z.reshape(shape).sum(axis=axis)


def _bands(bands):
  """The four bands (ll, lh, hl, hh) as float arrays of one shape and dtype, or a ValueError."""
  if not isinstance(bands, (tuple, list)) or len(bands) != 4:
    raise ValueError("idwt2 takes the four bands (ll, lh, hl, hh) that dwt2 "
                     "returns, as a tuple.")
  ll = _as_float(bands[0])
  _check_nhwc(ll, "idwt2")
  bands = [jnp.asarray(b, ll.dtype) for b in bands]
  if any(b.shape != ll.shape for b in bands):
    raise ValueError("idwt2 needs four bands of the same shape; got "
                     f"{[b.shape for b in bands]}.")
  return bands


def idwt2(bands, wavelet: str = "haar", mode: str = "periodization", *,
          implementation: str | None = None):
  """Inverse of `dwt2`: (ll, lh, hl, hh), each (N, h, w, C) -> (N, 2h, 2w, C).

  `idwt2_separable` or `idwt2_conv` as `implementation` says ("separable",
  "conv", or None for this backend's entry of `DWT_IMPLEMENTATION`); they
  agree to float rounding. `idwt2(dwt2(x)) == x` for even H, W in
  periodization mode (odd sizes give back the padded, even-sized input).
  """
  _check_mode(mode)
  if _implementation(implementation) == "separable":
    return idwt2_separable(bands, wavelet, mode)
  return idwt2_conv(bands, wavelet, mode)


def idwt2_separable(bands, wavelet: str = "haar", mode: str = "periodization"):
  """`idwt2` as separable synthesis filter banks: the width, then the height.

  `separable_dwt.synthesis` with rec_lo, rec_hi: (ll, hl) -> low and
  (lh, hh) -> high along the width, each (N, h, 2w, C), then (low, high) ->
  (N, 2h, 2w, C) along the height. Its custom VJP is the analysis filter
  bank with the same filters.
  """
  _check_mode(mode)
  ll, lh, hl, hh = _bands(bands)
  f = wavelet_filters(wavelet)
  low = separable_dwt.synthesis(ll, hl, 2, f.rec_lo, f.rec_hi, mode)
  high = separable_dwt.synthesis(lh, hh, 2, f.rec_lo, f.rec_hi, mode)
  return separable_dwt.synthesis(low, high, 1, f.rec_lo, f.rec_hi, mode)


def idwt2_conv(bands, wavelet: str = "haar", mode: str = "periodization"):
  """`idwt2` as one stride-2 transposed depthwise convolution and a circular fold.

  `lhs_dilation=2`, 4C inputs, C outputs, `feature_group_count=C`, with the
  synthesis filters, then the fold of the p border rows/columns.
  """
  _check_mode(mode)
  bands = _bands(bands)
  n, h, w, c = bands[0].shape
  kernels = band_kernels(wavelet, True, jnp.dtype(bands[0].dtype).name)
  f = kernels.shape[0]
  y = jnp.stack(bands, axis=-1).reshape(n, h, w, 4 * c)
  # HWIO (F, F, 4, C), spatially flipped: the transpose of dwt2's correlation.
  rhs = np.tile(kernels[::-1, ::-1, :, None], (1, 1, 1, c))
  z = jax.lax.conv_general_dilated(
      y, rhs, window_strides=(1, 1), padding=((f - 1, f - 1), (f - 1, f - 1)),
      lhs_dilation=(2, 2), dimension_numbers=_DIMENSION_NUMBERS,
      feature_group_count=c, precision=jax.lax.Precision.HIGHEST)
  p = f // 2 - 1
  z = _fold(z, 1, 2 * h, p, mode)
  return _fold(z, 2, 2 * w, p, mode)


class DWT2D(nn.Module):
  """`dwt2` as a parameter-free Flax module: NHWC -> (ll, lh, hl, hh)."""

  wavelet: str = "haar"
  mode: str = "periodization"

  @nn.compact
  def __call__(self, x):
    return dwt2(x, self.wavelet, self.mode)


class IDWT2D(nn.Module):
  """`idwt2` as a parameter-free Flax module: (ll, lh, hl, hh) -> NHWC."""

  wavelet: str = "haar"
  mode: str = "periodization"

  @nn.compact
  def __call__(self, bands):
    return idwt2(bands, self.wavelet, self.mode)
