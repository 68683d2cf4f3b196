"""The backbones under the idioms a Flax user relies on: jax.eval_shape(model.init, ...),
jax.jit(model.init), model.tabulate, bfloat16 compute and jax.vmap.

`model.init` is `batched_init.init` (one small program without the forward
pass); under these transformations it must give what Flax's own
`flax.linen.Module.init` gives. eval_shape runs for every registered arch with
and without WA and for every attention (shapes only); the concrete idioms run
for a BasicBlock ResNet with WA in the default run, and for the other
families (a Bottleneck ResNet, a VGG, MobileNetV2) in the slow one.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wacnn_jax import models
from wacnn_jax.models import registry
from wacnn_jax.nn import attention_spec

KEY = jax.random.PRNGKey(0)
X = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), jnp.float32)
FAMILIES = [("resnet18", None), ("resnet50", "bottleneck"), ("vgg11_bn", None),
            ("mobilenetv2", None)]


def _model(arch, block=None, attention="wa", **kwargs):
  return models.create_model(arch, num_classes=10, attention=attention, block=block, **kwargs)


def _cases():
  cases = [(arch, attention) for arch in registry.arch_names() for attention in ("none", "wa")]
  return cases + [("resnet18", name) for name in attention_spec.attention_names()
                  if name not in ("none", "wa")]


@pytest.mark.parametrize("arch, attention", _cases())
def test_eval_shape_of_init_is_flax_s(arch, attention):
  """`jax.eval_shape(model.init, key, x)`: Flax's shapes and dtypes, nothing computed."""
  model = _model(arch, attention=attention)
  ours = jax.eval_shape(model.init, KEY, X)
  flax_s = jax.eval_shape(functools.partial(nn.Module.init, model), KEY, X)
  assert jax.tree.map(lambda a: (a.shape, a.dtype), ours) == jax.tree.map(
      lambda a: (a.shape, a.dtype), flax_s)
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(ours))


def _equal(a, b):
  return jax.tree.all(jax.tree.map(lambda x, y: bool((x == y).all()), a, b))


@pytest.mark.parametrize("arch, block", [
    FAMILIES[0],
    pytest.param(*FAMILIES[3], marks=pytest.mark.slow),
    pytest.param(*FAMILIES[1], marks=pytest.mark.slow),
    pytest.param(*FAMILIES[2], marks=pytest.mark.slow)])
def test_jit_vmap_tabulate_and_bfloat16(arch, block):
  model = _model(arch, block)
  variables = model.init(KEY, X)
  # jax.jit(model.init): the same variables, bit for bit.
  assert _equal(variables, jax.jit(model.init)(KEY, X))
  # jax.vmap over keys: row k is key k's init (to an ulp: XLA may round a normal draw's
  # scaling differently in the batched program, as in Flax's own).
  keys = jax.random.split(KEY, 2)
  stacked = jax.vmap(model.init, in_axes=(0, None))(keys, X)
  second = model.init(keys[1], X)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a[1], b, rtol=1e-6, atol=1e-7),
               stacked, second)
  # model.tabulate: every layer, WA blocks included.
  table = model.tabulate(KEY, X, console_kwargs={"width": 240, "force_terminal": False})
  assert "wavelet_attention" in table and "classifier" in table
  # bfloat16 compute: float32 parameters (the same as float32's) and float32 logits, within
  # bfloat16's rounding of the float32 network's (8 bits of mantissa through ~20 layers).
  logits = jax.jit(model.apply)(variables, X)
  half = _model(arch, block, dtype=jnp.bfloat16)
  half_variables = half.init(KEY, X)
  assert _equal(variables, half_variables)
  half_logits = jax.jit(half.apply)(half_variables, X)
  assert half_logits.dtype == jnp.float32 and logits.dtype == jnp.float32
  scale = float(jnp.abs(logits).max())
  assert float(jnp.abs(half_logits - logits).max()) <= 0.1 * scale + 1e-3


def test_an_ensemble_under_vmap():
  """Several models' variables stacked (vmapped init) and applied at once (vmapped apply)."""
  model = _model("resnet18")
  keys = jax.random.split(KEY, 3)
  ensemble = jax.vmap(model.init, in_axes=(0, None))(keys, X)
  logits = jax.jit(jax.vmap(model.apply, in_axes=(0, None)))(ensemble, X)
  assert logits.shape == (3, 2, 10)
  for k in range(3):
    alone = jax.jit(model.apply)(jax.tree.map(lambda a, k=k: a[k], ensemble), X)
    np.testing.assert_allclose(logits[k], alone, rtol=1e-5, atol=1e-5)
