"""Attention modules against plain numpy computations with the modules' own parameters."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import pywt

from wacnn_jax import attention

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
  variables = module.init(KEY, x)
  assert "params" not in variables and _count(variables) == 0
  out, ll = module.apply(variables, x)
  assert out.shape == ll.shape == (2, 4, 3, 5)
  ca, (ch, cv, _) = pywt.dwt2(x.astype(np.float64), wavelet, mode="periodization",
                              axes=(1, 2))
  expected = ca + ca * _softmax(ch + cv, axis=-1)
  np.testing.assert_allclose(np.asarray(ll), ca, atol=1e-5)
  np.testing.assert_allclose(np.asarray(out), expected, atol=1e-5, rtol=1e-5)


def test_wavelet_attention_sows_intermediates():
  x = _x((2, 8, 8, 4), seed=2)
  (out, ll), state = attention.WaveletAttention().apply({}, x, mutable=["intermediates"])
  inter = state["intermediates"]
  att = np.asarray(inter["attention"][0])
  assert att.shape == (2, 4, 4, 4)
  np.testing.assert_allclose(att.sum(-1), 1.0, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(inter["ll"][0]), np.asarray(ll))
  np.testing.assert_array_equal(np.asarray(inter["out"][0]), np.asarray(out))
  np.testing.assert_allclose(np.asarray(out), np.asarray(ll) * (1 + att), atol=1e-6)


def test_wavelet_attention_bfloat16():
  x = _x((2, 8, 8, 4), seed=3)
  out, ll = attention.WaveletAttention(dtype=jnp.bfloat16).apply({}, x)
  assert out.dtype == ll.dtype == jnp.bfloat16
  ref, _ = attention.WaveletAttention().apply({}, x)
  np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref), atol=5e-2,
                             rtol=2e-2)


# --------------------------------------------------------------------------- SE


def test_squeeze_excitation():
  x = _x()
  module = attention.SqueezeExcitation(reduction=4)
  params = module.init(KEY, x)["params"]
  assert _count(params) == 2 * 8 * 2  # C * C/r + C/r * C, no biases
  params = _randomise(params)
  y = module.apply({"params": params}, x)
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
  params = module.init(KEY, x)["params"]
  assert _count(params) == k
  params = _randomise(params)
  y = module.apply({"params": params}, x)
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
  params = module.init(KEY, x)["params"]
  # mask (8 + 1) + reduce (8*2 + 2) + LayerNorm 2*2 + expand (2*8 + 8)
  assert _count(params) == 9 + 18 + 4 + 24 == 55
  params = _randomise(params)
  y = module.apply({"params": params}, x)
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


@pytest.mark.parametrize("make, needs_train", [
    (lambda: attention.SqueezeExcitation(dtype=jnp.bfloat16), False),
    (lambda: attention.CBAM(dtype=jnp.bfloat16), True),
    (lambda: attention.ECA(dtype=jnp.bfloat16), False),
    (lambda: attention.GlobalContext(dtype=jnp.bfloat16), False),
])
def test_bfloat16_compute_float32_params(make, needs_train):
  x = jnp.asarray(_x(seed=8), jnp.bfloat16)
  module = make()
  kwargs = {"train": False} if needs_train else {}
  variables = module.init(KEY, x, **kwargs)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
  y = module.apply(variables, x, **kwargs)
  assert y.shape == x.shape and y.dtype == jnp.bfloat16
  ref = module.clone(dtype=jnp.float32).apply(variables, x.astype(jnp.float32), **kwargs)
  np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(ref), atol=5e-2, rtol=5e-2)


# --------------------------------------------------------------------------- BatchNorm


def _torch_batch_norm_steps(steps, scale, bias, momentum):
  """torch.nn.BatchNorm2d in float64 on NHWC `steps`: train outputs, running stats, module."""
  torch = pytest.importorskip("torch")
  bn = torch.nn.BatchNorm2d(scale.shape[0], eps=1e-5, momentum=momentum).double()
  with torch.no_grad():
    bn.weight.copy_(torch.from_numpy(scale.astype(np.float64)))
    bn.bias.copy_(torch.from_numpy(bias.astype(np.float64)))
  bn.train()
  outputs, stats = [], []
  for x in steps:
    nchw = torch.from_numpy(np.asarray(x, np.float64).transpose(0, 3, 1, 2))
    with torch.no_grad():
      outputs.append(bn(nchw).numpy().transpose(0, 2, 3, 1))
    stats.append((bn.running_mean.numpy().copy(), bn.running_var.numpy().copy()))
  return outputs, stats, bn


def _torch_eval(bn, x):
  import torch  # pylint: disable=g-import-not-at-top
  bn.eval()
  with torch.no_grad():
    nchw = torch.from_numpy(np.asarray(x, np.float64).transpose(0, 3, 1, 2))
    return bn(nchw).numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize("shape, momentum, devices, dtype", [
    ((4, 3, 3, 6), attention.BN_MOMENTUM, 1, jnp.float32),
    ((3, 1, 1, 6), attention.BN_MOMENTUM, 1, jnp.float32),  # VGG's 1x1 maps: n = 3
    ((4, 2, 2, 6), attention.CBAM_BN_MOMENTUM, 1, jnp.float32),
    ((4, 1, 1, 6), attention.BN_MOMENTUM, 2, jnp.float32),  # 2 devices x 2 images
    ((4, 2, 2, 6), attention.BN_MOMENTUM, 1, jnp.bfloat16),
])
def test_batch_norm_matches_torch(shape, momentum, devices, dtype):
  """Three training steps then evaluation, against torch.nn.BatchNorm2d in float64.

  Running mean/var (PyTorch: unbiased batch variance, n = values per channel in
  the whole cross-device batch) agree to float32 rounding: rtol 1e-5. Outputs
  (O(1)) agree to 1e-5 in float32 and to bfloat16 rounding (2^-8 relative,
  tolerance 2e-2) with bfloat16 compute, whose statistics stay float32 and are
  computed from the bfloat16 inputs that torch receives too.
  """
  rng = np.random.default_rng(9)
  c = shape[-1]
  steps = [jnp.asarray(rng.normal(2.0, 3.0, size=shape), dtype) for _ in range(3)]
  scale = rng.uniform(0.5, 1.5, c).astype(np.float32)
  bias = rng.uniform(-0.5, 0.5, c).astype(np.float32)
  want_outputs, want_stats, torch_bn = _torch_batch_norm_steps(
      [np.asarray(x, np.float32) for x in steps], scale, bias, 1 - momentum)

  axis_name = "devices" if devices > 1 else None
  module = attention.BatchNorm(use_running_average=False, momentum=momentum, dtype=dtype,
                               axis_name=axis_name)
  variables = module.init(KEY, steps[0])
  assert jax.tree.map(lambda a: (a.shape, a.dtype), flax.core.unfreeze(variables)) == {
      "params": {"scale": ((c,), jnp.float32), "bias": ((c,), jnp.float32)},
      "batch_stats": {"mean": ((c,), jnp.float32), "var": ((c,), jnp.float32)}}
  params = {"scale": jnp.asarray(scale), "bias": jnp.asarray(bias)}
  stats = variables["batch_stats"]

  def train_step(stats, x):
    y, updates = module.apply({"params": params, "batch_stats": stats}, x,
                              mutable=["batch_stats"])
    return y, updates["batch_stats"]

  if devices > 1:
    split = jax.vmap(train_step, in_axes=(None, 0), out_axes=(0, None), axis_name="devices")
    train_step = lambda stats, x: (lambda y, s: (y.reshape(shape), s))(
        *split(stats, x.reshape((devices, -1) + shape[1:])))
  output_tol = dict(rtol=2e-2, atol=2e-2) if dtype == jnp.bfloat16 else dict(rtol=1e-5,
                                                                              atol=1e-5)
  for x, want_y, (want_mean, want_var) in zip(steps, want_outputs, want_stats):
    y, stats = train_step(stats, x)
    assert y.dtype == dtype and stats["var"].dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(y, np.float64), want_y, **output_tol)
    np.testing.assert_allclose(np.asarray(stats["mean"]), want_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(stats["var"]), want_var, rtol=1e-5)

  x = jnp.asarray(rng.normal(2.0, 3.0, size=shape), dtype)
  y = module.clone(use_running_average=True, axis_name=None).apply(
      {"params": params, "batch_stats": stats}, x)
  np.testing.assert_allclose(np.asarray(y, np.float64),
                             _torch_eval(torch_bn, np.asarray(x, np.float32)), **output_tol)


def test_batch_norm_refuses_one_value_per_channel():
  """As torch.nn.BatchNorm2d: training needs n > 1 (the unbiased variance divides by n - 1)."""
  module = attention.BatchNorm(use_running_average=False)
  x = jnp.ones((1, 1, 1, 4))
  variables = module.init(KEY, x)
  with pytest.raises(ValueError, match="more than 1 value per channel"):
    module.apply(variables, x, mutable=["batch_stats"])
