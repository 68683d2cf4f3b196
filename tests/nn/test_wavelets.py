"""wacnn_jax.nn.wavelets against PyWavelets and an explicit numpy reference."""

import jax
import jax.numpy as jnp
from jax.test_util import check_grads
import numpy as np
import pytest
import pywt

from wacnn_jax.nn import depthwise
from wacnn_jax.nn import wavelets


WAVELETS = ("haar", "db2", "sym4", "coif1", "bior2.2")


def _random(shape, seed=0):
  return np.random.default_rng(seed).normal(size=shape)


def _pywt_bands(x, wavelet, mode="periodization"):
  ca, (ch, cv, cd) = pywt.dwt2(np.asarray(x, np.float64), wavelet, mode=mode, axes=(1, 2))
  return ca, ch, cv, cd


def _assert_bands_close(got, expected, **tol):
  assert len(got) == 4
  for name, g, e in zip(("ll", "lh", "hl", "hh"), got, expected):
    assert g.shape == e.shape, name
    np.testing.assert_allclose(np.asarray(g, np.float64), e, err_msg=name, **tol)


@pytest.mark.parametrize("wavelet", WAVELETS)
def test_dwt2_matches_pywt_periodization(wavelet):
  x = _random((3, 12, 10, 5))
  got = wavelets.dwt2(jnp.asarray(x, jnp.float32), wavelet)
  assert all(b.dtype == jnp.float32 and b.shape == (3, 6, 5, 5) for b in got)
  _assert_bands_close(got, _pywt_bands(x, wavelet), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("wavelet", ("db2", "bior2.2", "sym4"))
def test_dwt2_matches_pywt_in_float64(wavelet):
  x = _random((2, 8, 8, 3), seed=1)
  with jax.enable_x64(True):
    got = wavelets.dwt2(jnp.asarray(x, jnp.float64), wavelet)
    assert got[0].dtype == jnp.float64
    _assert_bands_close(got, _pywt_bands(x, wavelet), atol=1e-12, rtol=0)


def test_band_meaning():
  """lh = cH is high-pass along height: an image varying only along height has hl = hh = 0."""
  rows = np.tile(np.array([0.0, 1.0, 3.0, -2.0])[None, :, None, None], (1, 1, 4, 2))
  ll, lh, hl, hh = (np.asarray(b) for b in wavelets.dwt2(jnp.asarray(rows, jnp.float32)))
  np.testing.assert_allclose(hl, 0, atol=1e-6)
  np.testing.assert_allclose(hh, 0, atol=1e-6)
  # haar: ll = (a + b) / sqrt2 * sqrt2 = a + b over 2x2; lh = (a - b) along height.
  np.testing.assert_allclose(ll[0, :, 0, 0], [1.0, 1.0], atol=1e-6)
  np.testing.assert_allclose(lh[0, :, 0, 0], [-1.0, 5.0], atol=1e-6)


@pytest.mark.parametrize("wavelet", ("haar", "db2", "bior2.2"))
@pytest.mark.parametrize("size", ((7, 9), (5, 5), (3, 6)))
def test_odd_sizes_match_pywt(wavelet, size):
  x = _random((2,) + size + (3,), seed=2)
  got = wavelets.dwt2(jnp.asarray(x, jnp.float32), wavelet)
  assert got[0].shape == (2, (size[0] + 1) // 2, (size[1] + 1) // 2, 3)
  _assert_bands_close(got, _pywt_bands(x, wavelet), atol=1e-5, rtol=1e-5)


def _numpy_zero_mode(x, wavelet):
  """Explicit loops: zero-pad by p = F/2 - 1, correlate the reversed filters, stride 2."""
  w = pywt.Wavelet(wavelet)
  lo, hi = np.asarray(w.dec_lo)[::-1], np.asarray(w.dec_hi)[::-1]
  f = len(lo)
  p = f // 2 - 1
  xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  n, h, wd, c = x.shape
  bands = [np.zeros((n, h // 2, wd // 2, c)) for _ in range(4)]
  pairs = ((lo, lo), (hi, lo), (lo, hi), (hi, hi))  # (height filter, width filter)
  for band, (fh, fw) in zip(bands, pairs):
    for i in range(h // 2):
      for j in range(wd // 2):
        for a in range(f):
          for b in range(f):
            band[:, i, j, :] += fh[a] * fw[b] * xp[:, 2 * i + a, 2 * j + b, :]
  return bands


@pytest.mark.parametrize("wavelet", ("db2", "sym4", "bior2.2"))
def test_zero_mode_matches_numpy_loops(wavelet):
  x = _random((2, 8, 6, 3), seed=3)
  got = wavelets.dwt2(jnp.asarray(x, jnp.float32), wavelet, mode="zero")
  expected = _numpy_zero_mode(x, wavelet)
  _assert_bands_close(got, expected, atol=1e-5, rtol=1e-5)
  # Cross-check the loop reference itself: zero mode == pywt periodization of
  # the input embedded in zeros (an even margin q >= p), cropped.
  q = 4
  embedded = _pywt_bands(np.pad(x, ((0, 0), (q, q), (q, q), (0, 0))), wavelet)
  cropped = [b[:, q // 2:q // 2 + 4, q // 2:q // 2 + 3] for b in embedded]
  _assert_bands_close(expected, cropped, atol=1e-12, rtol=0)
  # ... and it differs from periodization at the border, so the test can tell them apart.
  periodic = wavelets.dwt2(jnp.asarray(x, jnp.float32), wavelet)
  assert np.abs(np.asarray(periodic[0]) - expected[0]).max() > 1e-2


def test_haar_modes_agree():
  x = jnp.asarray(_random((2, 8, 8, 4), seed=4), jnp.float32)
  for a, b in zip(wavelets.dwt2(x, "haar", "zero"), wavelets.dwt2(x, "haar")):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("wavelet", ("haar", "db2", "sym4", "coif1", "bior2.2", "rbio3.1"))
def test_round_trip(wavelet):
  x = jnp.asarray(_random((2, 8, 12, 3), seed=5), jnp.float32)
  bands = wavelets.dwt2(x, wavelet)
  rec = wavelets.idwt2(bands, wavelet)
  assert rec.shape == x.shape and rec.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(rec), np.asarray(x), atol=1e-5)


@pytest.mark.parametrize("wavelet", ("db2", "bior2.2", "sym4"))
def test_idwt2_matches_pywt(wavelet):
  bands = [_random((2, 4, 5, 3), seed=6 + i) for i in range(4)]
  expected = pywt.idwt2((bands[0], tuple(bands[1:])), wavelet, mode="periodization",
                        axes=(1, 2))
  got = wavelets.idwt2([jnp.asarray(b, jnp.float32) for b in bands], wavelet)
  np.testing.assert_allclose(np.asarray(got), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("implementation", ["shifted", "grouped"])
def test_one_depthwise_conv_with_constant_filters(implementation, monkeypatch):
  """With DWT_IMPLEMENTATION "conv", dwt2 of a long wavelet is one stride-2 depthwise
  convolution with constant filters, computed as this backend's entry of
  depthwise.DEPTHWISE_IMPLEMENTATION says: lax's grouped convolution, or shifted
  multiply-adds with no convolution at all. Both equal pywt."""
  monkeypatch.setitem(wavelets.DWT_IMPLEMENTATION, jax.default_backend(), "conv")
  monkeypatch.setitem(depthwise.DEPTHWISE_IMPLEMENTATION, jax.default_backend(), implementation)
  x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype(np.float32)
  jaxpr = jax.make_jaxpr(lambda v: wavelets.dwt2(v, "db2"))(x)
  assert len(jaxpr.jaxpr.invars) == 1  # the filters are constants, not inputs
  convs = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "conv_general_dilated"]
  if implementation == "grouped":
    assert len(convs) == 1
    assert convs[0].params["feature_group_count"] == 3
    assert tuple(convs[0].params["window_strides"]) == (2, 2)
    assert convs[0].outvars[0].aval.shape == (2, 4, 4, 12)
  else:
    assert not convs and "custom_vjp_call" in str(jaxpr)
  for got, want in zip(wavelets.dwt2(x, "db2"), _pywt_bands(x, "db2")):
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=1e-5)
  inverse = jax.make_jaxpr(lambda b: wavelets.idwt2(b, "db2"))(wavelets.dwt2(x, "db2"))
  convs = [e for e in inverse.jaxpr.eqns if e.primitive.name == "conv_general_dilated"]
  assert len(convs) == 1 and tuple(convs[0].params["lhs_dilation"]) == (2, 2)


@pytest.mark.parametrize("wavelet", ("haar", "db1", "bior1.1", "rbio1.1"))
@pytest.mark.parametrize("shape", ((3, 12, 10, 5), (2, 7, 9, 3)))
def test_two_tap_path_matches_conv_and_pywt(wavelet, shape):
  """Two-tap wavelets skip the conv: same values as the conv path and pywt, no conv in the graph."""
  x = _random(shape, seed=11)
  xj = jnp.asarray(x, jnp.float32)
  jaxpr = jax.make_jaxpr(lambda v: wavelets.dwt2(v, wavelet))(xj)
  assert not [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "conv_general_dilated"]
  fast, conv = wavelets.dwt2(xj, wavelet), wavelets.dwt2_conv(xj, wavelet)
  for mode in ("periodization", "zero"):
    _assert_bands_close(wavelets.dwt2(xj, wavelet, mode), _pywt_bands(x, wavelet),
                        atol=1e-6, rtol=1e-6)
  # Same linear map, same float32 weights (+-0.5 for haar): only rounding order differs.
  _assert_bands_close(fast, [np.asarray(b, np.float64) for b in conv], atol=1e-6, rtol=0)
  # Gradients agree as well (the backward pass of the fused form is elementwise too).
  weights = [jnp.asarray(_random(b.shape, seed=12 + i), jnp.float32) for i, b in enumerate(fast)]
  loss = lambda f: (lambda v: sum((b * m).sum() for b, m in zip(f(v, wavelet), weights)))
  np.testing.assert_allclose(np.asarray(jax.grad(loss(wavelets.dwt2))(xj)),
                             np.asarray(jax.grad(loss(wavelets.dwt2_conv))(xj)), atol=1e-5)
  for b in wavelets.dwt2(xj.astype(jnp.bfloat16), wavelet):
    assert b.dtype == jnp.bfloat16


def test_two_tap_path_refuses_longer_filters():
  with pytest.raises(ValueError, match="two-tap"):
    wavelets.dwt2_two_tap(jnp.zeros((1, 4, 4, 1)), "db2")


def test_bfloat16():
  x = _random((2, 16, 16, 3), seed=7)
  ref = _pywt_bands(x, "db2")
  for b, e in zip(wavelets.dwt2(jnp.asarray(x, jnp.bfloat16), "db2"), ref):
    assert b.dtype == jnp.bfloat16
    # bf16 keeps 8 significant bits: rounding the input and the result costs ~1e-2 here.
    np.testing.assert_allclose(np.asarray(b, np.float64), e, atol=3e-2, rtol=1e-2)
  rec = wavelets.idwt2(wavelets.dwt2(jnp.asarray(x, jnp.bfloat16), "db2"), "db2")
  assert rec.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(rec, np.float64), x, atol=5e-2)


def test_gradients():
  """Reverse-mode gradients against finite differences in float64 (the shifted depthwise
  convolution's custom VJP included; it has no forward mode)."""
  with jax.enable_x64(True):
    x = jnp.asarray(_random((1, 4, 6, 2), seed=8), jnp.float64)
    # Jitted: each of check_grads' evaluations is one compiled call, not op-by-op dispatch.
    check_grads(jax.jit(lambda v: wavelets.dwt2(v, "db2")), (x,), order=1, modes=["rev"])
    check_grads(jax.jit(lambda v: wavelets.idwt2(wavelets.dwt2(v, "sym4"), "sym4")), (x,),
                order=1, modes=["rev"])
    round_trip = lambda v: wavelets.idwt2(wavelets.dwt2(v, "coif1"), "coif1").sum()
    grad = jax.jit(jax.grad(round_trip))(x)
    np.testing.assert_allclose(np.asarray(grad), 1.0, atol=1e-10)  # identity map


def test_modules_wrap_functions():
  x = jnp.asarray(_random((2, 8, 8, 3), seed=9), jnp.float32)
  dwt = wavelets.DWT2D(wavelet="db2")
  variables = dwt.init(jax.random.key(0), x)
  assert not variables.get("params")
  bands = dwt.apply(variables, x)
  for a, b in zip(bands, wavelets.dwt2(x, "db2")):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  rec = wavelets.IDWT2D(wavelet="db2").apply({}, bands)
  np.testing.assert_allclose(np.asarray(rec), np.asarray(x), atol=1e-5)


def test_wavelet_filters():
  f = wavelets.wavelet_filters("bior2.2")
  w = pywt.Wavelet("bior2.2")
  np.testing.assert_array_equal(f.dec_lo, w.dec_lo)
  np.testing.assert_array_equal(f.rec_hi, w.rec_hi)
  assert f.length == 6 and f.padding == 2
  kernels = wavelets.band_kernels("haar")
  assert kernels.shape == (2, 2, 4) and kernels.dtype == np.float32
  np.testing.assert_allclose(kernels[..., 0], 0.5)


@pytest.mark.parametrize("wavelet, match", [
    ("morl", r"'morl' is a continuous wavelet.*discrete.*'haar'.*pywt.wavelist"),
    ("nope", r"unknown wavelet 'nope'.*'haar', 'db2'"),
])
def test_bad_wavelet(wavelet, match):
  with pytest.raises(ValueError, match=match):
    wavelets.dwt2(jnp.zeros((1, 4, 4, 1)), wavelet)
  with pytest.raises(ValueError, match=match):
    wavelets.idwt2([jnp.zeros((1, 2, 2, 1))] * 4, wavelet)


def test_bad_input_and_mode():
  with pytest.raises(ValueError, match=r"NHWC.*\(4, 4, 3\).*x\[None\]"):
    wavelets.dwt2(jnp.zeros((4, 4, 3)))
  with pytest.raises(ValueError, match=r"unknown DWT mode 'symmetric'.*periodization.*zero"):
    wavelets.dwt2(jnp.zeros((1, 4, 4, 1)), mode="symmetric")
  with pytest.raises(ValueError, match="four bands"):
    wavelets.idwt2([jnp.zeros((1, 2, 2, 1))] * 3)


# The separable path (`dwt2_separable`, `idwt2_separable`) for every discrete family of pywt.


def _family_members():
  """The first two, the middle and the last wavelet of every discrete pywt family: filter
  lengths 2 to 102 (coif17), dmey's 62, biorthogonal pairs of unequal support."""
  discrete, members = pywt.wavelist(kind="discrete"), []
  for family in pywt.families():
    names = [name for name in pywt.wavelist(family) if name in discrete]
    picks = names[:2] + names[len(names) // 2:len(names) // 2 + 1] + names[-1:] if names else []
    for name in picks:
      if name not in members:
        members.append(name)
  return members


FAMILY_MEMBERS = _family_members()
# The default run takes the middle member of every family and the longest filter (coif17,
# 102 taps); the other members run with the slow tests.
DEFAULT_MEMBERS = {names[len(names) // 2] for names in (
    [n for n in FAMILY_MEMBERS if pywt.Wavelet(n).short_family_name == family]
    for family in {pywt.Wavelet(n).short_family_name for n in FAMILY_MEMBERS})} | {"coif17"}
FAMILY_PARAMS = [pytest.param(name, marks=() if name in DEFAULT_MEMBERS else pytest.mark.slow)
                 for name in FAMILY_MEMBERS]


def _even(x):
  """x with its last row / column repeated where H / W is odd (as dwt2 and pywt do)."""
  if x.shape[1] % 2:
    x = np.concatenate([x, x[:, -1:]], axis=1)
  if x.shape[2] % 2:
    x = np.concatenate([x, x[:, :, -1:]], axis=2)
  return x


def _reference_bands(x, wavelet, mode):
  """float64 bands of pywt: periodization itself; zero mode as pywt's periodization of
  the (even) input embedded in zeros with an even margin q >= p, cropped."""
  if mode == "periodization":
    return _pywt_bands(x, wavelet)
  x = _even(x)
  q = 2 * (pywt.Wavelet(wavelet).dec_len // 4 + 1)
  embedded = _pywt_bands(np.pad(x, ((0, 0), (q, q), (q, q), (0, 0))), wavelet)
  h, w = x.shape[1] // 2, x.shape[2] // 2
  return [b[:, q // 2:q // 2 + h, q // 2:q // 2 + w] for b in embedded]


def _reference_gradient(shape, wavelet, mode, cotangents):
  """float64 VJP of the DWT from its matrix: the bands of every basis image by pywt
  (`_reference_bands`), contracted with the cotangents."""
  _, h, w, c = shape
  basis = np.eye(h * w).reshape(h * w, h, w, 1)
  columns = _reference_bands(basis, wavelet, mode)  # per band (h * w, h', w', 1)
  return sum(np.einsum("kij,nijc->nkc", col[..., 0], np.asarray(g, np.float64))
             for col, g in zip(columns, cotangents)).reshape(shape[0], h, w, c)


def test_family_members_cover_every_family():
  family = lambda names: {pywt.Wavelet(name).short_family_name for name in names}
  assert family(FAMILY_MEMBERS) == family(pywt.wavelist(kind="discrete"))
  assert max(pywt.Wavelet(w).dec_len for w in FAMILY_MEMBERS) == 102


@pytest.mark.parametrize("mode", wavelets.MODES)
@pytest.mark.parametrize("wavelet", FAMILY_PARAMS)
def test_separable_matches_pywt_for_every_family(wavelet, mode):
  """Bands (float32) and their VJP against float64 references from pywt, odd height
  included, filters longer than the input included (coif17: 102 taps)."""
  x = _random((2, 13, 10, 3), seed=13)
  shapes = jax.eval_shape(lambda v: wavelets.dwt2_separable(v, wavelet, mode),
                          jax.ShapeDtypeStruct(x.shape, jnp.float32))
  cotangents = tuple(jnp.asarray(_random(b.shape, seed=14 + i), jnp.float32)
                     for i, b in enumerate(shapes))

  @jax.jit  # one compilation, not one per operation
  def bands_and_vjp(v, cotangents):
    bands, vjp = jax.vjp(lambda u: wavelets.dwt2_separable(u, wavelet, mode), v)
    return bands, vjp(cotangents)[0]

  got, gradient = bands_and_vjp(jnp.asarray(x, jnp.float32), cotangents)
  _assert_bands_close(got, _reference_bands(x, wavelet, mode), atol=2e-5, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(gradient, np.float64),
                             _reference_gradient(x.shape, wavelet, mode, cotangents),
                             atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("wavelet", FAMILY_PARAMS)
def test_idwt2_separable_matches_pywt_for_every_family(wavelet):
  bands = [_random((2, 3, 4, 2), seed=20 + i) for i in range(4)]
  expected = pywt.idwt2((bands[0], tuple(bands[1:])), wavelet, mode="periodization",
                        axes=(1, 2))
  got = jax.jit(lambda b: wavelets.idwt2_separable(b, wavelet))(
      [jnp.asarray(b, jnp.float32) for b in bands])
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(got), expected, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", wavelets.MODES)
@pytest.mark.parametrize("wavelet", ("db2", "sym4", "coif1", "bior2.2", "rbio3.1"))
def test_separable_equals_conv_path_forward_and_gradients(wavelet, mode):
  """dwt2_separable / idwt2_separable against autodiff of the convolution paths, float32,
  with all four bands used and with hh unused (as Wavelet Attention leaves it)."""
  x = jnp.asarray(_random((2, 9, 12, 3), seed=15), jnp.float32)
  weights = [jnp.asarray(_random((2, 5, 6, 3), seed=16 + i), jnp.float32) for i in range(4)]

  @jax.jit
  def results(x):
    out = {}
    for name in ("separable", "conv"):
      dwt = getattr(wavelets, f"dwt2_{name}")
      idwt = getattr(wavelets, f"idwt2_{name}")
      bands = dwt(x, wavelet, mode)
      out[name] = (
          bands,
          jax.grad(lambda v: sum((b * m).sum() for b, m in zip(dwt(v, wavelet, mode), weights)))(x),
          jax.grad(lambda v: sum((b * m).sum()
                                 for b, m in zip(dwt(v, wavelet, mode)[:3], weights)))(x),
          idwt(bands, wavelet, mode),
          jax.grad(lambda b: (idwt(b, wavelet, mode) * x[:, :8]).sum())(
              [w[:, :4] for w in weights]))
    return out

  out = results(x)
  for got, want in zip(jax.tree.leaves(out["separable"]), jax.tree.leaves(out["conv"])):
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", wavelets.MODES)
def test_separable_gradients_against_finite_differences(mode):
  """float64 reverse-mode gradients of both separable paths (their custom VJPs) against
  finite differences, odd sizes included."""
  with jax.enable_x64(True):
    x = jnp.asarray(_random((1, 5, 6, 2), seed=17), jnp.float64)
    for wavelet in ("db2", "sym4", "bior2.2"):
      check_grads(jax.jit(lambda v: wavelets.dwt2_separable(v, wavelet, mode)), (x,), order=1,
                  modes=["rev"])
      bands = tuple(jnp.asarray(_random((1, 3, 2, 2), seed=18 + i)) for i in range(4))
      check_grads(jax.jit(lambda *b: wavelets.idwt2_separable(b, wavelet, mode)), bands,
                  order=1, modes=["rev"])
    # Second order: the VJP of the VJP (each map's VJP is the other map's custom VJP).
    check_grads(jax.jit(lambda v: wavelets.dwt2_separable(v, "db2", mode)), (x,), order=2,
                modes=["rev"])


def test_dwt2_picks_the_implementation_per_backend(monkeypatch):
  """dwt2 and idwt2 follow DWT_IMPLEMENTATION (haar keeps its two-tap path); the separable
  graph has no convolution and takes the filters as constants."""
  x = jnp.asarray(_random((2, 8, 8, 3), seed=19), jnp.float32)
  backend = jax.default_backend()

  def convolutions(fn, *args):
    jaxpr = jax.make_jaxpr(fn)(*args)
    assert len(jaxpr.jaxpr.invars) == len(jax.tree.leaves(args))  # filters are constants
    return sum(e.primitive.name == "conv_general_dilated" for e in jaxpr.jaxpr.eqns)

  monkeypatch.setitem(wavelets.DWT_IMPLEMENTATION, backend, "separable")
  assert convolutions(lambda v: wavelets.dwt2(v, "sym4"), x) == 0
  assert convolutions(lambda b: wavelets.idwt2(b, "sym4"), wavelets.dwt2(x, "sym4")) == 0
  for a, b in zip(wavelets.dwt2(x, "db2"), wavelets.dwt2_separable(x, "db2")):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  monkeypatch.setitem(wavelets.DWT_IMPLEMENTATION, backend, "conv")
  assert convolutions(lambda b: wavelets.idwt2(b, "sym4"), wavelets.dwt2(x, "sym4")) == 1
  for a, b in zip(wavelets.dwt2(x, "db2"), wavelets.dwt2_conv(x, "db2")):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  for implementation in ("separable", "conv"):
    for a, b in zip(wavelets.dwt2(x, "haar", implementation=implementation),
                    wavelets.dwt2_two_tap(x, "haar")):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with pytest.raises(ValueError, match="'fft' is not one of 'separable', 'conv'"):
    wavelets.dwt2(x, "db2", implementation="fft")
  with pytest.raises(ValueError, match="'fft' is not one of"):
    wavelets.idwt2(wavelets.dwt2(x, "db2"), "db2", implementation="fft")


def test_separable_bfloat16():
  """bfloat16 in and out, accumulated in float32: the error is bfloat16 rounding."""
  x = _random((2, 16, 16, 3), seed=21)
  bands = wavelets.dwt2_separable(jnp.asarray(x, jnp.bfloat16), "sym4")
  for b, e in zip(bands, _pywt_bands(x, "sym4")):
    assert b.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(b, np.float64), e, atol=3e-2, rtol=1e-2)
  rec = wavelets.idwt2_separable(bands, "sym4")
  assert rec.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(rec, np.float64), x, atol=5e-2)
