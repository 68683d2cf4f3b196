"""Attention modules against plain numpy computations with the modules' own parameters,
and the attention specs."""

import copy
import pickle

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import pywt

from wacnn_jax.nn import attention
from wacnn_jax.nn.attention_spec import AttentionSpec

KEY = jax.random.key(0)


def _x(shape=(2, 6, 6, 8), seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _count(params):
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))


def _randomise(params, seed=1):
  """Replaces every parameter by a random normal, so that zero biases / unit scales hide nothing."""
  leaves, tree = jax.tree.flatten(params)
  rng = np.random.default_rng(seed)
  return jax.tree.unflatten(tree, [jnp.asarray(rng.normal(size=l.shape) * 0.5, jnp.float32)
                                   for l in leaves])


def _sigmoid(v):
  return 1 / (1 + np.exp(-v))


def _softmax(v, axis):
  e = np.exp(v - v.max(axis=axis, keepdims=True))
  return e / e.sum(axis=axis, keepdims=True)


def _np(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), flax.core.unfreeze(tree))


# --------------------------------------------------------------------------- WA


@pytest.mark.parametrize("wavelet", ("haar", "db2"))
def test_wavelet_attention_matches_numpy(wavelet):
  x = _x((2, 8, 6, 5))
  module = attention.WaveletAttention(wavelet)
  variables = module.init(KEY, x, train=False)
  assert "params" not in variables and _count(variables) == 0
  out, ll = module.apply(variables, x, train=False)
  assert out.shape == ll.shape == (2, 4, 3, 5)
  ca, (ch, cv, _) = pywt.dwt2(x.astype(np.float64), wavelet, mode="periodization",
                              axes=(1, 2))
  expected = ca + ca * _softmax(ch + cv, axis=-1)
  np.testing.assert_allclose(np.asarray(ll), ca, atol=1e-5)
  np.testing.assert_allclose(np.asarray(out), expected, atol=1e-5, rtol=1e-5)


def test_wavelet_attention_sows_intermediates():
  x = _x((2, 8, 8, 4), seed=2)
  (out, ll), state = attention.WaveletAttention().apply({}, x, train=False,
                                                       mutable=["intermediates"])
  inter = state["intermediates"]
  att = np.asarray(inter["attention"][0])
  assert att.shape == (2, 4, 4, 4)
  np.testing.assert_allclose(att.sum(-1), 1.0, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(inter["ll"][0]), np.asarray(ll))
  np.testing.assert_array_equal(np.asarray(inter["out"][0]), np.asarray(out))
  np.testing.assert_allclose(np.asarray(out), np.asarray(ll) * (1 + att), atol=1e-6)


def test_wavelet_attention_bfloat16():
  x = _x((2, 8, 8, 4), seed=3)
  out, ll = attention.WaveletAttention(dtype=jnp.bfloat16).apply({}, x, train=False)
  assert out.dtype == ll.dtype == jnp.bfloat16
  ref, _ = attention.WaveletAttention().apply({}, x, train=False)
  np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref), atol=5e-2,
                             rtol=2e-2)


# --------------------------------------------------------------------------- SE


def test_squeeze_excitation():
  x = _x()
  module = attention.SqueezeExcitation(reduction=4)
  params = module.init(KEY, x, train=False)["params"]
  assert _count(params) == 2 * 8 * 2  # C * C/r + C/r * C, no biases
  params = _randomise(params)
  y = module.apply({"params": params}, x, train=False)
  p = _np(params)
  s = x.mean(axis=(1, 2))
  s = _sigmoid(np.maximum(s @ p["squeeze"]["kernel"], 0) @ p["excite"]["kernel"])
  np.testing.assert_allclose(np.asarray(y), x * s[:, None, None], rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- CBAM


def _conv7x7_zero_pad(maps, kernel):
  """(N, H, W, 2) * (7, 7, 2, 1) correlation with zero padding 3, explicit loops."""
  n, h, w, _ = maps.shape
  padded = np.pad(maps, ((0, 0), (3, 3), (3, 3), (0, 0)))
  out = np.zeros((n, h, w, 1))
  for i in range(h):
    for j in range(w):
      out[:, i, j, 0] = np.einsum("nabc,abc->n", padded[:, i:i + 7, j:j + 7, :],
                                  kernel[..., 0])
  return out


def _cbam_numpy(x, p, batch_stats, train):
  mlp = lambda v: (np.maximum(v @ p["mlp_hidden"]["kernel"] + p["mlp_hidden"]["bias"], 0)
                   @ p["mlp_output"]["kernel"] + p["mlp_output"]["bias"])
  gate = _sigmoid(mlp(x.mean(axis=(1, 2))) + mlp(x.max(axis=(1, 2))))
  x = x * gate[:, None, None]
  maps = np.concatenate([x.max(-1, keepdims=True), x.mean(-1, keepdims=True)], -1)
  conv = _conv7x7_zero_pad(maps, p["spatial_conv"]["kernel"])
  if train:
    mean, var = conv.mean(), conv.var()
  else:
    mean, var = batch_stats["spatial_bn"]["mean"], batch_stats["spatial_bn"]["var"]
  s = (conv - mean) / np.sqrt(var + 1e-5) * p["spatial_bn"]["scale"] + p["spatial_bn"]["bias"]
  return x * _sigmoid(s), conv


@pytest.mark.parametrize("train", (False, True))
def test_cbam(train):
  x = _x((2, 5, 5, 8), seed=4)
  module = attention.CBAM(reduction=4)
  variables = module.init(KEY, x, train=False)
  # MLP 8*2 + 2 + 2*8 + 8; conv 7*7*2; BN scale + bias.
  assert _count(variables["params"]) == 16 + 2 + 16 + 8 + 98 + 2 == 142
  params = _randomise(variables["params"])
  stats = {"spatial_bn": {"mean": jnp.full((1,), 0.3), "var": jnp.full((1,), 2.0)}}
  y, updates = module.apply({"params": params, "batch_stats": stats}, x, train=train,
                            mutable=["batch_stats"])
  expected, conv = _cbam_numpy(x.astype(np.float64), _np(params), _np(stats), train)
  np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-4, atol=1e-5)
  new = updates["batch_stats"]["spatial_bn"]
  # The reference's CBAM BatchNorm has PyTorch momentum 0.01: the running averages move by
  # 0.01 towards the batch mean and unbiased variance, only in training.
  np.testing.assert_allclose(np.asarray(new["mean"]),
                             0.99 * 0.3 + 0.01 * conv.mean() if train else 0.3, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(new["var"]),
                             0.99 * 2.0 + 0.01 * conv.var(ddof=1) if train else 2.0, rtol=1e-5)


def test_cbam_batch_norm_uses_axis_name():
  """Per-device batches of 2 under vmap(axis_name) give the statistics of the whole batch of 4."""
  x = _x((4, 5, 5, 8), seed=5)
  variables = attention.CBAM().init(KEY, x, train=False)
  variables = {"params": _randomise(variables["params"]),
               "batch_stats": variables["batch_stats"]}
  per_device = lambda module: jax.vmap(
      lambda v: module.apply(variables, v, train=True, mutable=["batch_stats"])[0],
      axis_name="devices")(x.reshape(2, 2, 5, 5, 8)).reshape(x.shape)
  whole, _ = attention.CBAM().apply(variables, x, train=True, mutable=["batch_stats"])
  split = per_device(attention.CBAM(axis_name="devices"))
  np.testing.assert_allclose(np.asarray(split), np.asarray(whole), rtol=1e-5, atol=1e-6)
  local = per_device(attention.CBAM())
  assert not np.allclose(np.asarray(local), np.asarray(whole), atol=1e-4)


# --------------------------------------------------------------------------- ECA


@pytest.mark.parametrize("k", (3, 5))
def test_eca(k):
  x = _x(seed=6)
  module = attention.ECA(kernel_size=k)
  params = module.init(KEY, x, train=False)["params"]
  assert _count(params) == k
  params = _randomise(params)
  y = module.apply({"params": params}, x, train=False)
  w = np.asarray(params["channel_conv"]["kernel"]).reshape(k)
  s = x.mean(axis=(1, 2))
  padded = np.pad(s, ((0, 0), ((k - 1) // 2, k // 2)))
  conv = np.stack([padded[:, c:c + k] @ w for c in range(8)], axis=-1)  # correlation
  np.testing.assert_allclose(np.asarray(y), x * _sigmoid(conv)[:, None, None], rtol=1e-5,
                             atol=1e-6)


# --------------------------------------------------------------------------- GC


def test_global_context():
  x = _x(seed=7)
  module = attention.GlobalContext(reduction=4)
  params = module.init(KEY, x, train=False)["params"]
  # mask (8 + 1) + reduce (8*2 + 2) + LayerNorm 2*2 + expand (2*8 + 8)
  assert _count(params) == 9 + 18 + 4 + 24 == 55
  params = _randomise(params)
  y = module.apply({"params": params}, x, train=False)
  p = _np(params)
  n, h, w, c = x.shape
  flat = x.reshape(n, h * w, c).astype(np.float64)
  weights = _softmax(flat @ p["context_mask"]["kernel"][:, 0] + p["context_mask"]["bias"][0],
                     axis=1)
  context = np.einsum("np,npc->nc", weights, flat)
  t = context @ p["transform_reduce"]["kernel"] + p["transform_reduce"]["bias"]
  t = (t - t.mean(-1, keepdims=True)) / np.sqrt(t.var(-1, keepdims=True) + 1e-5)
  t = np.maximum(t * p["transform_norm"]["scale"] + p["transform_norm"]["bias"], 0)
  t = t @ p["transform_expand"]["kernel"] + p["transform_expand"]["bias"]
  np.testing.assert_allclose(np.asarray(y), x + t[:, None, None], rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- dtype


@pytest.mark.parametrize("spec", ["se", "cbam", "eca", "gc"])
def test_bfloat16_compute_float32_params(spec):
  x = jnp.asarray(_x(seed=8), jnp.bfloat16)
  module = AttentionSpec.parse(spec).module(name=None, dtype=jnp.bfloat16)
  variables = module.init(KEY, x, train=False)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
  y = module.apply(variables, x, train=False)
  assert y.shape == x.shape and y.dtype == jnp.bfloat16
  ref = module.clone(dtype=jnp.float32).apply(variables, x.astype(jnp.float32), train=False)
  np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(ref), atol=5e-2, rtol=5e-2)


# --------------------------------------------------------------------------- spec


@pytest.mark.parametrize("text, name, options, canonical", [
    ("none", "none", {}, "none"),
    ("se", "se", {"reduction": 4}, "se"),
    ("se(reduction=4)", "se", {"reduction": 4}, "se"),
    (" se ( reduction = 8 ) ", "se", {"reduction": 8}, "se(reduction=8)"),
    ("cbam(reduction=2)", "cbam", {"reduction": 2}, "cbam(reduction=2)"),
    ("eca(kernel_size=5)", "eca", {"kernel_size": 5}, "eca(kernel_size=5)"),
    ("gc()", "gc", {"reduction": 4}, "gc"),
    ("wa", "wa", {"wavelet": "haar", "stages": "reference"}, "wa"),
    ("wad", "wa", {"wavelet": "haar", "stages": "reference"}, "wa"),
    ("wa(stages='all', wavelet='db2')", "wa", {"wavelet": "db2", "stages": "all"},
     "wa(wavelet='db2', stages='all')"),
    ('wad(wavelet="sym4")', "wa", {"wavelet": "sym4", "stages": "reference"},
     "wa(wavelet='sym4')"),
])
def test_spec_parse_and_canonical_string(text, name, options, canonical):
  spec = AttentionSpec.parse(text)
  assert spec.name == name and dict(spec.options) == options
  assert str(spec) == canonical and AttentionSpec.parse(canonical) == spec
  assert hash(AttentionSpec.parse(canonical)) == hash(spec)
  assert spec == AttentionSpec(name, options) and eval(repr(spec)) == spec  # pylint: disable=eval-used
  assert pickle.loads(pickle.dumps(spec)) == spec and copy.deepcopy(spec) == spec
  with pytest.raises(TypeError):
    spec.options["x"] = 1  # read-only


def test_spec_roles_and_modules():
  none, se, wa = (AttentionSpec.parse(t) for t in ("none", "se(reduction=2)", "wa(stages='all')"))
  assert not none.in_blocks and not none.replaces_downsampling
  assert se.in_blocks and not se.replaces_downsampling
  assert wa.replaces_downsampling and not wa.in_blocks
  module = se.module(name="attention", dtype=jnp.bfloat16, axis_name="devices")
  assert module == attention.SqueezeExcitation(2, dtype=jnp.bfloat16, axis_name="devices",
                                               name="attention")
  # `stages` places WA and is not a field of the module.
  assert wa.module(name="wa", dtype=jnp.float32) == attention.WaveletAttention("haar", name="wa")


@pytest.mark.parametrize("text, message", [
    ("sa", "unknown attention 'sa'; choose one of: none, se, cbam, eca, gc, wa (alias wad)."),
    ("se(kernel_size=3)", "se has no option 'kernel_size'; its options: reduction (default 4)."),
    ("none(reduction=2)", "none has no option 'reduction'; it has no options."),
    ("wa(level=2)", "wa has no option 'level'; its options: wavelet (default 'haar'), "
     "stages (default 'reference')."),
    ("se(reduction=0)", "se option reduction=0 is invalid: it must be a positive integer."),
    ("gc(reduction=2.0)", "gc option reduction=2.0 is invalid: it must be a positive integer."),
    ("cbam(reduction=True)", "cbam option reduction=True is invalid: it must be a positive "
     "integer."),
    ("wa(stages='some')", "wa option stages='some' is invalid: it must be one of 'reference', "
     "'all'."),
    ("wa(wavelet='nope')", "wa option wavelet='nope' is invalid: unknown wavelet 'nope'."),
    ("se(8)", "attention 'se(8)': options go by name, as se(option=value); its options: "
     "reduction (default 4)."),
    ("se(reduction=2, reduction=3)", "attention 'se(reduction=2, reduction=3)' sets reduction "
     "twice."),
    ("wa(wavelet=db2)", "attention 'wa(wavelet=db2)': the value of wavelet must be a literal "
     "(a number or a quoted string), got db2."),
    ("se(reduction=8", "cannot read attention 'se(reduction=8': write a name or"),
    ("os.system('x')", "cannot read attention \"os.system('x')\""),
    ("", "cannot read attention ''"),
])
def test_spec_errors_name_the_problem_and_the_choices(text, message):
  with pytest.raises(ValueError) as error:
    AttentionSpec.parse(text)
  assert str(error.value).startswith(message), str(error.value)
  assert "\n" not in str(error.value)
