"""`Network.init` (wacnn_jax/models/batched_init.py) against Flax's own init under jax.jit.

The default run checks a small network that uses every initialiser of the
backbones (PyTorch's uniform conv/linear weights and biases, kaiming-normal
fan_in, VGG's kaiming-normal fan_out and N(0, 0.01), BatchNorm's constants)
at several sizes, eagerly and inside an outer jit; the slow run checks every
registered backbone with WA, and each attention module in three of them. Equality is bit for bit:
checkpoints and seeds of runs initialised by `jax.jit(flax.linen.Module.init)`
must start from the same parameters.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wacnn_jax import models
from wacnn_jax.models import batched_init
from wacnn_jax.models import registry
from wacnn_jax.models import vgg
from wacnn_jax.nn import layers


class Mixed(registry.Network):
  """Every initialiser kind of the backbones, two of them twice (one batch), 4 to 216 values."""

  @nn.compact
  def __call__(self, x, train: bool):
    for k in range(2):
      x = layers.conv(8, 3, kernel_init=layers.torch_default_init, name=f"uniform_conv{k}")(x)
    x = layers.batch_norm(train, name="bn")(x)
    x = layers.conv(4, 1, kernel_init=layers.kaiming_normal_fan_in, name="kaiming_in")(x)
    x = layers.conv(4, 1, use_bias=True, kernel_init=vgg.conv_init, name="kaiming_out")(x)
    x = jnp.mean(x, axis=(1, 2))
    x = layers.linear(4, x, kernel_init=vgg.linear_init, dtype=jnp.float32, name="normal_dense")
    return layers.linear(self.num_classes, x, dtype=jnp.float32, name="classifier")


def _assert_same(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
    assert x.dtype == y.dtype and x.shape == y.shape, jax.tree_util.keystr(path)
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y),
                                  err_msg=jax.tree_util.keystr(path))


def _flax_jit_init(model, rngs, x):
  return jax.jit(functools.partial(nn.Module.init, model, train=False))(rngs, x)


RNGS = {"params": jax.random.PRNGKey(3), "dropout": jax.random.PRNGKey(4)}
X = jnp.zeros((1, 4, 4, 3), jnp.float32)
MODEL = Mixed(num_classes=3)


def test_init_equals_flax_jitted_init_bit_for_bit():
  expected = _flax_jit_init(MODEL, RNGS, X)
  variables = MODEL.init(RNGS, X, train=False)
  _assert_same(variables, expected)
  assert isinstance(jax.tree.leaves(variables)[0], jax.Array)
  # Inside a caller's jit, with `train` given positionally (a static value).
  _assert_same(jax.jit(lambda r, x: MODEL.init(r, x, False))(RNGS, X), expected)
  shapes = jax.eval_shape(functools.partial(MODEL.init, train=False), RNGS, X)
  assert jax.tree.map(lambda s: s.shape, shapes) == jax.tree.map(jnp.shape, expected)


def test_draws_and_keys_are_batched():
  """The point of it: fewer random-number kernels than parameters."""
  closed = jax.make_jaxpr(functools.partial(nn.Module.init, MODEL, train=False))(RNGS, X)
  draws = sum(batched_init._is_draw(eqn) for eqn in closed.jaxpr.eqns)
  traced = []
  jax.eval_shape(lambda *a: traced.append(batched_init.evaluate_batched(closed, *a)),
                 *jax.tree.leaves((RNGS, X)))
  outputs, batches = traced[0]
  assert len(batches) < draws, (draws, len(batches))
  assert sum(isinstance(o, batched_init.Rows) for o in outputs) == draws  # cut on the host


def _normal_as_erf_inv(key, shape, dtype=jnp.float32):
  """N(0, 0.5^2) as JAX >= 0.11 writes `jax.random.normal`: erf_inv of a uniform draw on (-1, 1)."""
  low = np.nextafter(np.float32(-1), np.float32(0))
  return jax.lax.erf_inv(jax.random.uniform(key, shape, dtype, low, 1.0)) * np.float32(
      np.sqrt(2) * 0.5)


class ErfInvNormal(registry.Network):
  """Three 1x1 convolutions (18, 48 and 64 values: one size class) initialised by `_normal_as_erf_inv`."""

  @nn.compact
  def __call__(self, x, train: bool):
    for k, features in enumerate((6, 8, self.num_classes)):
      x = layers.conv(features, 1, kernel_init=_normal_as_erf_inv, name=f"conv{k}")(x)
    return jnp.mean(x, axis=(1, 2))


def test_erf_inv_of_a_draw_is_batched_with_it():
  """The normal draws of newer JAX (and this initialiser in any JAX): one batched call, cut on the host."""
  model = ErfInvNormal(num_classes=8)
  _assert_same(model.init(RNGS, X, train=False), _flax_jit_init(model, RNGS, X))
  closed = jax.make_jaxpr(functools.partial(nn.Module.init, model, train=False))(RNGS, X)
  draws = sum(batched_init._is_draw(eqn) for eqn in closed.jaxpr.eqns)
  traced = []
  jax.eval_shape(lambda *a: traced.append(batched_init.evaluate_batched(closed, *a)),
                 *jax.tree.leaves((RNGS, X)))
  outputs, batches = traced[0]
  assert draws == 3 and len(batches) == 1, (draws, len(batches))
  assert sum(isinstance(o, batched_init.Rows) for o in outputs) == draws


# Every backbone with WA, and every attention module in a ResNet, a VGG (which
# re-initialises the attention modules inside it) and MobileNetV2.
BACKBONE_CASES = ([(arch, "wa", None) for arch in registry.arch_names()]
                  + [("resnet50", "wa", "bottleneck")]
                  + [(arch, attention, None) for arch in ("resnet18", "vgg11_bn", "mobilenetv2")
                     for attention in ("none", "se", "cbam", "eca", "gc")])


@pytest.mark.slow
@pytest.mark.parametrize("arch, attention, block", BACKBONE_CASES)
def test_every_backbone_init_equals_flax_jitted_init(arch, attention, block):
  model = models.create_model(arch, num_classes=10, attention=attention, block=block)
  x = jnp.zeros((1, 32, 32, 3), jnp.float32)
  _assert_same(model.init(RNGS, x, train=False), _flax_jit_init(model, RNGS, x))
