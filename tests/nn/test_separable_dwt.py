"""wacnn_jax.nn.separable_dwt: the filter banks against their definition, each other and pywt."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import pywt

from wacnn_jax.nn import separable_dwt


def _random(shape, seed=0):
  return np.random.default_rng(seed).normal(size=shape)


def _analysis_loops(x, lo, hi, mode):
  """The module docstring's definition along axis 0, summed in float64 loops."""
  n, f = len(x), len(lo)
  p = f // 2 - 1
  low, high = np.zeros((n // 2,) + x.shape[1:]), np.zeros((n // 2,) + x.shape[1:])
  for i in range(n // 2):
    for a in range(f):
      j = 2 * i + a - p
      if mode == "periodization":
        j %= n
      elif not 0 <= j < n:
        continue
      low[i] += lo[a] * x[j]
      high[i] += hi[a] * x[j]
  return low, high


# (axis length, filter length): interior and both borders, filters longer than the axis.
CASES = ((12, 4), (12, 8), (10, 6), (2, 8), (4, 20), (6, 2))


@pytest.mark.parametrize("mode", separable_dwt.MODES)
@pytest.mark.parametrize("n, f", CASES)
def test_analysis_is_its_definition_and_synthesis_its_transpose(n, f, mode):
  """Random taps: analysis against float64 loops; <analysis(x), g> = <x, synthesis(g)>."""
  rng = np.random.default_rng(n * 100 + f)
  lo, hi = rng.normal(size=f), rng.normal(size=f)
  x = rng.normal(size=(n, 3))
  g = rng.normal(size=(2, n // 2, 3))
  with jax.enable_x64(True):
    low, high = separable_dwt.analysis(jnp.asarray(x), 0, lo, hi, mode)
    want = _analysis_loops(x, lo, hi, mode)
    np.testing.assert_allclose(np.asarray(low), want[0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(high), want[1], rtol=1e-12, atol=1e-12)
    back = separable_dwt.synthesis(jnp.asarray(g[0]), jnp.asarray(g[1]), 0, lo, hi, mode)
    assert back.shape == x.shape
    np.testing.assert_allclose(float(jnp.sum(back * x)),
                               float(jnp.sum(low * g[0]) + jnp.sum(high * g[1])), rtol=1e-12)


@pytest.mark.parametrize("axis", (0, 1, 2, -1))
def test_every_axis_and_perfect_reconstruction(axis):
  """Along any axis (negative ones too): the bands equal pywt.dwt's, and synthesis with the
  rec filters gives the input back (periodization)."""
  w = pywt.Wavelet("sym4")
  x = _random((6, 8, 10), seed=1)
  with jax.enable_x64(True):
    low, high = separable_dwt.analysis(jnp.asarray(x), axis, w.dec_lo[::-1], w.dec_hi[::-1])
    ca, cd = pywt.dwt(x, w, mode="periodization", axis=axis)
    np.testing.assert_allclose(np.asarray(low), ca, atol=1e-12)
    np.testing.assert_allclose(np.asarray(high), cd, atol=1e-12)
    rec = separable_dwt.synthesis(low, high, axis, w.rec_lo, w.rec_hi)
    np.testing.assert_allclose(np.asarray(rec), x, atol=1e-12)


@functools.partial(jax.jit, static_argnums=(2,))
def _vjps(x, g, mode):
  lo, hi = (0.1, -0.4, 0.8, 0.3), (-0.3, 0.8, 0.4, -0.1)
  bands, analysis_vjp = jax.vjp(lambda v: separable_dwt.analysis(v, 1, lo, hi, mode), x)
  out, synthesis_vjp = jax.vjp(lambda a, b: separable_dwt.synthesis(a, b, 1, lo, hi, mode), *g)
  return {
      "analysis vjp": analysis_vjp(g)[0],
      "synthesis": out,
      "synthesis vjp": synthesis_vjp(x),
      "analysis": bands,
      "low only": jax.grad(lambda v: jnp.sum(separable_dwt.analysis(v, 1, lo, hi, mode)[0]
                                             * g[0]))(x),
      "synthesis of low": separable_dwt.synthesis(g[0], jnp.zeros_like(g[1]), 1, lo, hi, mode),
  }


@pytest.mark.parametrize("mode", separable_dwt.MODES)
def test_each_vjp_is_the_other_map(mode):
  """The VJP of analysis is synthesis and vice versa; a band left out of the loss (a
  symbolic zero cotangent) gives the gradient of a zero cotangent."""
  x = jnp.asarray(_random((2, 10, 3), seed=2), jnp.float32)
  g = tuple(jnp.asarray(_random((2, 5, 3), seed=3 + i), jnp.float32) for i in range(2))
  out = _vjps(x, g, mode)
  np.testing.assert_allclose(out["analysis vjp"], out["synthesis"], rtol=1e-6, atol=1e-6)
  for got, want in zip(out["synthesis vjp"], out["analysis"]):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(out["low only"], out["synthesis of low"], rtol=1e-6, atol=1e-6)


def test_bfloat16_is_accumulated_in_float32():
  w = pywt.Wavelet("db4")
  x = _random((16, 4), seed=4)
  low, high = separable_dwt.analysis(jnp.asarray(x, jnp.bfloat16), 0, w.dec_lo[::-1],
                                     w.dec_hi[::-1])
  assert low.dtype == high.dtype == jnp.bfloat16
  ca, cd = pywt.dwt(np.asarray(jnp.asarray(x, jnp.bfloat16), np.float64), w,
                    mode="periodization", axis=0)
  # Only the final rounding to bfloat16: 2^-8 of each value.
  np.testing.assert_allclose(np.asarray(low, np.float64), ca, rtol=2**-8, atol=1e-2)
  np.testing.assert_allclose(np.asarray(high, np.float64), cd, rtol=2**-8, atol=1e-2)
  rec = separable_dwt.synthesis(low, high, 0, w.rec_lo, w.rec_hi)
  assert rec.dtype == jnp.bfloat16


def test_elementwise_work_only():
  """No convolution, gather or dot in the graph of either map or of its gradient."""
  x = jnp.zeros((2, 16, 8, 3))
  lo, hi = pywt.Wavelet("sym4").dec_lo[::-1], pywt.Wavelet("sym4").dec_hi[::-1]
  graphs = [
      jax.make_jaxpr(jax.grad(lambda v: sum(jnp.sum(b) for b in separable_dwt.analysis(
          v, 1, lo, hi))))(x),
      jax.make_jaxpr(jax.grad(lambda v: jnp.sum(separable_dwt.synthesis(
          v, v, 2, lo, hi, "zero"))))(x),
  ]
  for graph in graphs:
    text = str(graph)
    assert "conv_general_dilated" not in text and "gather" not in text
    assert "dot_general" not in text


def test_bad_arguments():
  x = jnp.zeros((4, 6))
  with pytest.raises(ValueError, match="even length; got 5"):
    separable_dwt.analysis(jnp.zeros((5, 2)), 0, (1.0, 1.0), (1.0, -1.0))
  with pytest.raises(ValueError, match="taps need one even length; got 2 and 4"):
    separable_dwt.analysis(x, 0, (1.0, 1.0), (1.0, -1.0, 0.0, 0.0))
  with pytest.raises(ValueError, match="taps need one even length; got 3 and 3"):
    separable_dwt.analysis(x, 0, (1.0, 1.0, 1.0), (1.0, -1.0, 0.0))
  with pytest.raises(ValueError, match="unknown filter bank mode 'symmetric'"):
    separable_dwt.analysis(x, 0, (1.0, 1.0), (1.0, -1.0), "symmetric")
  with pytest.raises(ValueError, match="axis 2 is out of range"):
    separable_dwt.analysis(x, 2, (1.0, 1.0), (1.0, -1.0))
  with pytest.raises(ValueError, match="two bands of one shape"):
    separable_dwt.synthesis(x, jnp.zeros((4, 5)), 0, (1.0, 1.0), (1.0, -1.0))
