"""The PyTorch-equivalent layers: BatchNorm against torch.nn.BatchNorm2d."""

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wacnn_jax.nn import attention
from wacnn_jax.nn import layers
from wacnn_jax.training import steps



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


def test_cpu_convolutions_are_not_given_to_ynnpack_and_compute_the_same():
  """With `steps.compiler_options()` XLA:CPU keeps convolutions out of YNNPACK's library
  fusions (its default makes one of this convolution: the CPU lever of docs/benchmarks.md),
  and the gradients are the default compilation's to float32 rounding."""
  if jax.default_backend() != "cpu":
    pytest.skip("the options are CPU-only")

  def loss(x, kernel):
    y = jax.lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.sum(y ** 2)

  x, kernel = jax.random.normal(KEY, (32, 32, 32, 16)), jax.random.normal(KEY, (3, 3, 16, 16))
  grad = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, kernel)
  ours, default = grad.compile(compiler_options=steps.compiler_options()), grad.compile()
  assert "__ynn_fusion" not in ours.as_text()
  if "LIBRARY_FUSION_TYPE_REDUCE" in dict(steps._accepted_cpu_options()).values():
    assert "__ynn_fusion" in default.as_text()  # what the option takes away
  for a, b in zip(ours(x, kernel), default(x, kernel)):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6 * float(np.abs(b).max()))


def test_compiler_options_leave_out_what_this_xla_does_not_know(monkeypatch):
  if jax.default_backend() != "cpu":
    pytest.skip("the options are CPU-only")
  monkeypatch.setitem(steps.CPU_COMPILER_OPTIONS, "xla_cpu_no_such_option", "1")
  monkeypatch.setitem(steps.CPU_COMPILER_OPTIONS, "xla_cpu_experimental_ynn_fusion_type",
                      "LIBRARY_FUSION_TYPE_NOT_A_TYPE")
  steps._accepted_cpu_options.cache_clear()
  try:
    assert steps.compiler_options() == {"xla_disable_hlo_passes": "cse_barrier_expander"}
  finally:
    steps._accepted_cpu_options.cache_clear()


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
