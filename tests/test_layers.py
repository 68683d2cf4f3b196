"""The PyTorch-equivalent layers: BatchNorm against torch.nn.BatchNorm2d."""

import functools

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wacnn_jax import attention
from wacnn_jax import layers
from wacnn_jax import steps

KEY = jax.random.key(0)


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
    ((4, 3, 3, 6), layers.BN_MOMENTUM, 1, jnp.float32),
    ((3, 1, 1, 6), layers.BN_MOMENTUM, 1, jnp.float32),  # VGG's 1x1 maps: n = 3
    ((4, 2, 2, 6), attention.CBAM_BN_MOMENTUM, 1, jnp.float32),
    ((4, 1, 1, 6), layers.BN_MOMENTUM, 2, jnp.float32),  # 2 devices x 2 images
    ((4, 2, 2, 6), layers.BN_MOMENTUM, 1, jnp.bfloat16),
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
  module = layers.BatchNorm(use_running_average=False, momentum=momentum, dtype=dtype,
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
  module = layers.BatchNorm(use_running_average=False)
  x = jnp.ones((1, 1, 1, 4))
  variables = module.init(KEY, x)
  with pytest.raises(ValueError, match="more than 1 value per channel"):
    module.apply(variables, x, mutable=["batch_stats"])


def test_conv_input_barrier_survives_cpu_compilation_and_changes_no_gradient():
  """`layers.Conv`'s CPU barrier is kept when compiled with `steps.compiler_options()`
  (so the CPU lever of docs/benchmarks.md is in effect: if XLA renames the pass
  this fails) and the gradients equal those of XLA's default compilation,
  which drops the barrier (float32 rounding: rtol 1e-5, atol 1e-6)."""
  if jax.default_backend() != "cpu":
    pytest.skip("the barrier is CPU-only")

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      y = layers.conv(8, 3, name="a")(x)
      y = nn.relu(layers.batch_norm(True, name="bn")(y)) + y
      return layers.conv(8, 3, name="b")(y)

  x = jax.random.normal(KEY, (4, 8, 8, 3))
  variables = Net().init(KEY, x)

  def loss(params):
    y, _ = Net().apply({**variables, "params": params}, x, mutable=["batch_stats"])
    return jnp.sum(y ** 2)

  grad = jax.jit(jax.grad(loss)).lower(variables["params"])
  kept = grad.compile(compiler_options=steps.compiler_options())
  default = grad.compile()
  assert "opt-barrier" in kept.as_text() and "opt-barrier" not in default.as_text()
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               kept(variables["params"]), default(variables["params"]))


def _lax_depthwise(x, kernel, strides, padding):
  """The reference: lax's grouped convolution (feature_group_count = C), float32, HIGHEST."""
  return jax.lax.conv_general_dilated(
      jnp.asarray(x, jnp.float32), jnp.asarray(kernel, jnp.float32), (strides, strides),
      layers._pairs(padding), dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=x.shape[-1], precision=jax.lax.Precision.HIGHEST)


def _depthwise_cases():
  """Fixed cases (the backbones' and the DWT's) and random ones, odd sizes included."""
  yield (2, 32, 32, 16, 1, 3, 1, 1)  # MobileNetV2 stride 1
  yield (2, 15, 15, 24, 1, 3, 2, 1)  # stride 2 on an odd size
  yield (2, 9, 9, 3, 4, 4, 2, 0)  # the DWT of db2 (padded beforehand): 4 bands per channel
  yield (1, 13, 10, 2, 4, 8, 2, 0)  # sym4
  rng = np.random.default_rng(7)
  for _ in range(8):
    k = int(rng.integers(1, 6))
    h, w = (int(v) for v in rng.integers(k, 13, 2))
    pads = tuple(tuple(int(p) for p in rng.integers(0, k, 2)) for _ in range(2))
    yield (int(rng.integers(1, 4)), h, w, int(rng.integers(1, 7)), int(rng.choice([1, 2, 4])),
           k, int(rng.integers(1, 3)), pads)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("n, h, w, c, m, k, strides, padding", list(_depthwise_cases()))
def test_shifted_depthwise_equals_grouped_convolution(n, h, w, c, m, k, strides, padding, dtype):
  """Forward, input gradient and kernel gradient of `depthwise_conv2d_shifted` against lax's
  grouped convolution in float32. float32: max error <= 2e-6 x the largest value of each
  result (measured <= 4e-7). bfloat16 inputs: the reference runs in float32 on the same
  bfloat16 values, so the error is the rounding of the result to bfloat16: <= 2^-8 of the
  largest value."""
  rng = np.random.default_rng(n * 1000 + h * 100 + w * 10 + c + k)
  x = jnp.asarray(rng.normal(size=(n, h, w, c)), dtype)
  kernel = jnp.asarray(rng.normal(size=(k, k, 1, c * m)), dtype)
  g = jnp.asarray(rng.normal(size=_lax_depthwise(x, kernel, strides, padding).shape), dtype)

  @functools.partial(jax.jit, static_argnums=3)  # one compilation per case, not per operation
  def forward_and_gradients(x, kernel, g, conv):
    y, vjp = jax.vjp(conv, x, kernel)
    return (y, *vjp(g))

  got = forward_and_gradients(x, kernel, g, lambda a, b: layers.depthwise_conv2d_shifted(
      a, b, strides=strides, padding=padding))
  want = forward_and_gradients(*(jnp.asarray(v, jnp.float32) for v in (x, kernel, g)),
                               lambda a, b: _lax_depthwise(a, b, strides, padding))
  tolerance = 2e-6 if dtype == jnp.float32 else 2.0 ** -8
  for name, got, want in zip(("forward", "input gradient", "kernel gradient"), got, want):
    assert got.dtype == dtype and got.shape == want.shape, name
    error = float(jnp.max(jnp.abs(jnp.asarray(got, jnp.float32) - want)))
    assert error <= tolerance * float(jnp.max(jnp.abs(want))), (name, error)


def test_shifted_depthwise_equals_a_float64_loop():
  """An independent reference: the definition, summed in numpy float64 (rtol 1e-6)."""
  rng = np.random.default_rng(3)
  x, kernel = rng.normal(size=(2, 7, 6, 3)), rng.normal(size=(3, 3, 1, 6))
  xp = np.pad(x, ((0, 0), (1, 0), (2, 1), (0, 0)))
  want = np.zeros((2, 3, 4, 6))  # (7 + 1 - 3) // 2 + 1 rows, (6 + 3 - 3) // 2 + 1 columns
  for i in range(3):
    for j in range(4):
      window = xp[:, 2 * i:2 * i + 3, 2 * j:2 * j + 3, :]  # (N, 3, 3, C)
      want[:, i, j] = np.einsum("nuvc,uvcq->ncq", window,
                                kernel[:, :, 0].reshape(3, 3, 3, 2)).reshape(2, 6)
  got = layers.depthwise_conv2d_shifted(jnp.asarray(x, jnp.float32),
                                        jnp.asarray(kernel, jnp.float32), strides=2,
                                        padding=((1, 0), (2, 1)))
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-6)


def test_depthwise_module_keeps_nn_conv_parameters_and_outputs():
  """`DepthwiseConv` has nn.Conv(feature_group_count=C)'s parameter name, shape and
  initial values (same key), and the same output to float32 rounding, at both strides."""
  x = jax.random.normal(KEY, (2, 9, 9, 12))
  for strides in (1, 2):
    ours = layers.DepthwiseConv(3, strides)
    theirs = nn.Conv(12, (3, 3), strides=(strides, strides), padding=((1, 1), (1, 1)),
                     feature_group_count=12, use_bias=False, kernel_init=layers.torch_default_init)
    variables, reference = ours.init(KEY, x), theirs.init(KEY, x)
    assert jax.tree.structure(variables) == jax.tree.structure(reference)
    np.testing.assert_array_equal(variables["params"]["kernel"], reference["params"]["kernel"])
    bound = 1 / 3  # PyTorch's U(-1/sqrt(9), 1/sqrt(9))
    assert float(jnp.max(jnp.abs(variables["params"]["kernel"]))) <= bound
    np.testing.assert_allclose(ours.apply(variables, x), theirs.apply(reference, x),
                               rtol=1e-5, atol=1e-5)


def test_depthwise_implementation_is_checked():
  x, kernel = jnp.zeros((1, 4, 4, 3)), jnp.zeros((3, 3, 1, 3))
  with pytest.raises(ValueError, match="not one of 'shifted', 'grouped'"):
    layers.depthwise_conv2d(x, kernel, implementation="winograd")
  with pytest.raises(ValueError, match=r"is \(kh, kw, 1, 3 \* m\)"):
    layers.depthwise_conv2d(x, jnp.zeros((3, 3, 3, 3)))
  with pytest.raises(ValueError, match="does not fit"):
    layers.depthwise_conv2d(x, jnp.zeros((5, 5, 1, 3)))
