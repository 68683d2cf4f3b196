"""The reference's matrix-multiply DWT: its matrices (one port) and a JAX version.

The reference WA-CNN (after WaveCNet's `DWT_2D`) computes a single-level 2-D
DWT by multiplying with dense analysis matrices:

    L  = M_lo_h @ x        (H/2 x H)  low-pass along height
    H  = M_hi_h @ x        (H/2 x H)  high-pass along height
    LL = L @ M_lo_w        (W x W/2)
    cV = L @ M_hi_w        (the reference calls it "LH")
    cH = H @ M_lo_w        (the reference calls it "HL")
    cD = H @ M_hi_w

Each matrix row holds pywt's *synthesis* filter (`rec_lo` / `rec_hi`) shifted by
2 per row, and the rows are cut so that the input is zero-padded by F/2 - 1 on
each side (F = filter length). For `haar` on even sizes this equals
`pywt.dwt2(x, 'haar')` exactly (every boundary mode agrees there); for longer
filters it is a zero-padded transform with the rec filters (so "bior2.2" acts
like pywt's rbio2.2), kept here only because it is the reference's algorithm.

`reference_dwt_matrices` builds the matrices with the reference's numpy loops,
uncached: the faithful PyTorch peer (benchmarks/torch_peers.py) calls it on
every forward, as the reference does; `matrix_dwt2` is the JAX peer of
`wacnn_jax.nn.wavelets.dwt2` (one strided depthwise convolution) in the DWT
benchmark. The package wacnn_jax does not use this module.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pywt


def reference_dwt_matrices(height: int, width: int, wavelet: str = "haar"):
  """(low_h, low_w, high_h, high_w) float64 matrices, a port of the reference's get_matrix.

  low_h/high_h are (height/2, height) and multiply from the left; low_w/high_w
  are (width, width/2) and multiply from the right. Even sizes only.
  """
  if height % 2 or width % 2:
    raise ValueError(f"matrix DWT needs even sizes, got {height}x{width}")
  w = pywt.Wavelet(wavelet)
  band_low, band_high = w.rec_lo, w.rec_hi
  band_length = len(band_low)
  if band_length % 2:
    raise ValueError(f"wavelet {wavelet!r} has odd filter length {band_length}")
  half = band_length // 2
  l1 = max(height, width)
  l = l1 // 2
  matrix_h = np.zeros((l, l1 + band_length - 2))
  matrix_g = np.zeros((l1 - l, l1 + band_length - 2))
  end = None if half == 1 else (-half + 1)
  index = 0
  for i in range(l):
    for j in range(band_length):
      matrix_h[i, index + j] = band_low[j]
    index += 2
  index = 0
  for i in range(l1 - l):
    for j in range(band_length):
      matrix_g[i, index + j] = band_high[j]
    index += 2
  h0 = matrix_h[0:math.floor(height / 2), 0:height + band_length - 2]
  h1 = matrix_h[0:math.floor(width / 2), 0:width + band_length - 2]
  g0 = matrix_g[0:height - math.floor(height / 2), 0:height + band_length - 2]
  g1 = matrix_g[0:width - math.floor(width / 2), 0:width + band_length - 2]
  low_h = h0[:, half - 1:end]
  low_w = np.transpose(h1[:, half - 1:end])
  high_h = g0[:, half - 1:end]
  high_w = np.transpose(g1[:, half - 1:end])
  return low_h, low_w, high_h, high_w


def matrix_dwt2(x, wavelet: str = "haar"):
  """Single-level 2-D DWT of NHWC `x` by matrix products, per channel.

  Returns (ll, lh, hl, hh), each (N, H/2, W/2, C), with pywt's band meaning:
  ll = cA, lh = cH (high along height), hl = cV (high along width), hh = cD.
  For haar on even sizes it equals `pywt.dwt2(x, 'haar', axes=(1, 2))`.
  The matrices are numpy constants in x's dtype (built once per trace under jit).
  """
  x = jnp.asarray(x)
  _, height, width, _ = x.shape
  low_h, low_w, high_h, high_w = (
      jnp.asarray(m, x.dtype) for m in reference_dwt_matrices(height, width, wavelet))
  lo = jnp.einsum("ih,nhwc->niwc", low_h, x)   # low-pass along height
  hi = jnp.einsum("ih,nhwc->niwc", high_h, x)  # high-pass along height
  ll = jnp.einsum("niwc,wj->nijc", lo, low_w)
  hl = jnp.einsum("niwc,wj->nijc", lo, high_w)  # cV: low H, high W
  lh = jnp.einsum("niwc,wj->nijc", hi, low_w)   # cH: high H, low W
  hh = jnp.einsum("niwc,wj->nijc", hi, high_w)
  return ll, lh, hl, hh
