"""Initial parameters against the reference's initialisers, layer by layer.

The reference (PyTorch) leaves its ResNets and MobileNetV2 at PyTorch's
defaults: Conv2d and Linear weights U(-b, b) with b = 1/sqrt(fan_in) (kaiming
uniform, a = sqrt(5)), Linear and Conv2d biases U(-b, b) too, BatchNorm scale 1
and bias 0 (running mean 0, var 1). Its GC module re-initialises itself
(GCNet): mask conv kaiming-normal fan_in (relu) with bias 0, last transform
conv weight and bias 0. Its VGG then re-initialises every layer inside the
network, attention modules included: Conv2d weights kaiming-normal fan_out
(relu), their biases 0; Linear weights N(0, 0.01) (biases untouched);
BatchNorm 1 / 0. ECA's Conv1d and GC's LayerNorm are not Conv2d/BatchNorm2d
layers and keep their own init.

`_reference_rule` writes these rules out by layer name and kernel shape; every
parameter of a model must have one. Fans as PyTorch computes them: fan_in =
input channels per group x kernel area, fan_out = output channels x kernel
area (a Dense kernel (in, out) has fan_in = in, fan_out = out).

The statistical checks (`_check_sample`) standardise each parameter array by
its rule (w / b for uniform, w / std for normal) and test every array and the
pool of each parameter group (layer name, parameter) with tolerances from the
sample size n: K = 5 standard errors for the mean (sd sqrt(Var z / n)) and the
second moment E z^2 (sd sqrt((E z^4 - (E z^2)^2) / n): 1/3 and sqrt(4/45n)
for U(-1, 1), 1 and sqrt(2/n) for N(0, 1)); uniform: |z| <= 1 everywhere;
normal: the fraction beyond 2 standard deviations is 4.55 % within K binomial
standard errors (a normal truncated at 2 std has none), and for n >= 5000
some |z| > 3 (P(none) = 0.9973^n < 2e-6; flax's truncated normal never
exceeds 2.28); both: the largest |z| is not implausibly small
(P(max |z| < t) = 1e-6 for the t used), which rejects arrays of zeros.
"""

import math
import re

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from wacnn_jax import models
from wacnn_jax.models import mobilenet_v2
from wacnn_jax.models import resnet
from wacnn_jax.models import vgg
from wacnn_jax.nn import attention
from wacnn_jax.nn import attention_spec

K = 5.0
FLOOR_PROBABILITY = 1e-6
# Real initialisation runs jitted with the rbg PRNG: threefry's kernels are slow to compile on CPU.
KEY = jax.random.key(0, impl="rbg")
IMAGES = jnp.zeros((2, 32, 32, 3), jnp.float32)

BACKBONE_CONVS = re.compile(
    r"(stem|shortcut|expand|depthwise|project|head)_conv|conv\d*")
NORMALISATIONS = re.compile(r".*bn\d*|transform_norm")


def _reference_rule(vgg_init: bool, layer: str, name: str, kernel_shape):
  """('const', value), ('uniform', bound) or ('normal', std) for `name` of `layer`."""
  if NORMALISATIONS.fullmatch(layer):
    return ("const", {"scale": 1.0, "bias": 0.0}[name])
  fan_in = math.prod(kernel_shape[:-1])
  fan_out = math.prod(kernel_shape[:-2]) * kernel_shape[-1]
  torch_default = ("uniform", 1 / math.sqrt(fan_in))
  kaiming_fan_out = ("normal", math.sqrt(2 / fan_out))
  if BACKBONE_CONVS.fullmatch(layer) or layer == "spatial_conv":
    rules = (kaiming_fan_out, ("const", 0.0)) if vgg_init else (torch_default, None)
  elif layer in ("fc1", "fc2", "classifier", "squeeze", "excite", "mlp_hidden",
                 "mlp_output"):
    rules = (("normal", 0.01) if vgg_init else torch_default, torch_default)
  elif layer == "channel_conv":  # ECA's Conv1d
    rules = (torch_default, None)
  elif layer in ("context_mask", "transform_reduce", "transform_expand") and vgg_init:
    rules = (kaiming_fan_out, ("const", 0.0))
  elif layer == "context_mask":
    rules = (("normal", math.sqrt(2 / fan_in)), ("const", 0.0))
  elif layer == "transform_reduce":
    rules = (torch_default, torch_default)
  elif layer == "transform_expand":
    rules = (("const", 0.0), ("const", 0.0))
  else:
    raise AssertionError(f"no reference rule for layer {layer!r}")
  rule = rules[("kernel", "bias").index(name)]
  assert rule is not None, f"{layer} should have no {name}"
  return rule


def _layers(params, path=()):
  """(path, {param name: array}) of every layer (a dict holding arrays)."""
  arrays = {k: v for k, v in params.items() if not isinstance(v, dict)}
  if arrays:
    yield path, arrays
  for k, v in params.items():
    if isinstance(v, dict):
      yield from _layers(v, path + (k,))


def _check_sample(values, rule, label):
  """Asserts that the float64 array `values` was drawn by `rule` (see the module docstring)."""
  family, scale = rule
  values = np.asarray(values, np.float64).ravel()
  n = values.size
  if family == "const":
    np.testing.assert_array_equal(values, scale, err_msg=label)
    return
  z = values / scale
  m2_expected, m2_sd, var = {"uniform": (1 / 3, math.sqrt(4 / 45 / n), 1 / 3),
                             "normal": (1.0, math.sqrt(2 / n), 1.0)}[family]
  assert abs(z.mean()) <= K * math.sqrt(var / n), f"{label}: mean {z.mean()}"
  m2 = np.mean(z * z)
  assert abs(m2 - m2_expected) <= K * m2_sd, f"{label}: E z^2 {m2} vs {m2_expected}"
  largest = np.abs(z).max()
  if family == "uniform":
    assert largest <= 1 + 1e-6, f"{label}: |w| up to {largest} x bound"
    floor = FLOOR_PROBABILITY ** (1 / n)  # P(max |z| < t) = t^n
  else:
    p = 2 * special.ndtr(-2.0)  # 4.55 %
    tail = np.mean(np.abs(z) > 2)
    assert abs(tail - p) <= K * math.sqrt(p * (1 - p) / n), f"{label}: {tail} beyond 2 std"
    if n >= 5000:
      assert largest > 3, f"{label}: no |w| beyond 3 std in {n} (truncated?)"
    floor = math.sqrt(2) * special.erfinv(FLOOR_PROBABILITY ** (1 / n))  # erf(t/sqrt2)^n
  assert largest >= floor, f"{label}: max |z| {largest} < {floor}"


def _check_model_init(model, x, vgg_init, **kwargs):
  """Initialises `model` on `x` and checks every parameter, per array and per group."""
  variables = jax.jit(lambda k: model.init({"params": k}, x, **kwargs))(KEY)
  variables = jax.tree.map(np.asarray, flax.core.unfreeze(variables))
  for _, stats in _layers(variables.get("batch_stats", {})):
    np.testing.assert_array_equal(stats["mean"], 0.0)
    np.testing.assert_array_equal(stats["var"], 1.0)
  groups = {}
  checked = 0
  for path, arrays in _layers(variables["params"]):
    kernel_shape = arrays["kernel"].shape if "kernel" in arrays else None
    for name, values in arrays.items():
      rule = _reference_rule(vgg_init, path[-1], name, kernel_shape)
      label = "/".join(path + (name,))
      _check_sample(values, rule, label)
      if rule[0] != "const":
        groups.setdefault((path[-1], name, rule[0]), []).append((values / rule[1]).ravel())
      checked += values.size
  for (layer, name, family), standardised in groups.items():
    if len(standardised) > 1:
      _check_sample(np.concatenate(standardised), (family, 1.0), f"all {layer}/{name}")
  assert checked == sum(v.size for v in jax.tree.leaves(variables["params"]))
  return variables


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["resnet18", "vgg16_bn", "mobilenetv2"])
@pytest.mark.parametrize("attention_kind", attention_spec.attention_names())
def test_every_model_is_initialised_as_the_reference(arch, attention_kind):
  model = models.create_model(arch, num_classes=10, attention=attention_kind)
  _check_model_init(model, IMAGES[:1], arch.startswith("vgg"), train=False)


@pytest.mark.slow
@pytest.mark.parametrize("attention_kind", ["none", "gc", "wa"])
def test_bottleneck_resnet_is_initialised_as_the_reference(attention_kind):
  model = models.create_model("resnet50", num_classes=100, attention=attention_kind,
                              block="bottleneck")
  _check_model_init(model, IMAGES[:1], False, train=False)


# The default run: a ResNet with one block per stage, a one-conv VGG, a MobileNetV2 block
# and the attention modules with their own and with VGG's initialisers carry every rule.


def test_small_resnet_is_initialised_as_the_reference():
  model = resnet.CifarResNet((1, 1, 1), resnet.BasicBlock, num_classes=10)
  _check_model_init(model, IMAGES[:1], False, train=False)


def test_small_vgg_is_initialised_as_the_reference():
  model = vgg.VGG((64, "M"), num_classes=10)
  _check_model_init(model, jnp.zeros((1, 2, 2, 3)), True, train=False)


def test_mobilenet_block_is_initialised_as_the_reference():
  """Depthwise conv3x3: fan_in = 9 (one input channel per group), as PyTorch."""
  block = mobilenet_v2.InvertedResidual(24, 6, 1)
  variables = _check_model_init(block, jnp.zeros((1, 4, 4, 16)), False, train=False)
  assert variables["params"]["depthwise_conv"]["kernel"].shape == (3, 3, 1, 96)


VGG_INITS = dict(linear_init=vgg.linear_init, conv_init=vgg.conv_init)


@pytest.mark.parametrize("make, vgg_init", [
    (lambda: attention.SqueezeExcitation(), False),
    (lambda: attention.SqueezeExcitation(linear_init=vgg.linear_init), True),
    (lambda: attention.CBAM(), False),
    (lambda: attention.CBAM(**VGG_INITS), True),
    (lambda: attention.ECA(), False),
    (lambda: attention.GlobalContext(), False),
    (lambda: attention.GlobalContext(conv_init=vgg.conv_init), True),
], ids=["se", "se-vgg", "cbam", "cbam-vgg", "eca", "gc", "gc-vgg"])
def test_attention_modules_are_initialised_as_the_reference(make, vgg_init):
  variables = _check_model_init(make(), jnp.zeros((1, 2, 2, 64)), vgg_init, train=False)
  if isinstance(make(), attention.GlobalContext) and not vgg_init:
    # GCNet's block starts as the identity: its last transform conv is zero.
    assert not variables["params"]["transform_expand"]["kernel"].any()
