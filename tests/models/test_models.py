"""Model registry: parameter counts derived by hand, forward passes, WA placement, dtypes.

Parameter counts come from docs/parameter_counts.md (arithmetic there) and are
compared with `jax.eval_shape(model.init, ...)`. Forward passes use random
parameters of the right shapes (real initialisation of every deep network
would dominate the run time on CPU); real initialisation and its
distributions are tested in tests/models/test_init.py.
"""

import functools
import os
import pickle
import subprocess
import sys

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import pywt

from wacnn_jax import models
from wacnn_jax.models import registry
from wacnn_jax.models import resnet
from wacnn_jax.nn import attention
from wacnn_jax.nn import attention_spec
from wacnn_jax.nn.attention_spec import AttentionSpec
from wacnn_jax.nn import depthwise
from wacnn_jax.training import steps

ATTENTIONS = ("none", "se", "cbam", "eca", "gc", "wa")
WA = AttentionSpec("wa")

# One row per model, (arch, block, attention spec): its parameters at 10 classes
# (docs/parameter_counts.md).
PARAMS_10 = {
    ("resnet18", "basic", "none"): 272474,
    ("resnet18", "basic", "se"): 280538,
    ("resnet18", "basic", "cbam"): 281858,
    ("resnet18", "basic", "eca"): 272501,
    ("resnet18", "basic", "gc"): 281471,
    ("resnet18", "basic", "wa"): 272474,
    ("resnet34", "basic", "none"): 466906,
    ("resnet34", "basic", "se"): 480346,
    ("resnet34", "basic", "cbam"): 482546,
    ("resnet34", "basic", "eca"): 466951,
    ("resnet34", "basic", "gc"): 481901,
    ("resnet34", "basic", "wa"): 466906,
    ("resnet50", "basic", "none"): 855770,
    ("resnet50", "basic", "se"): 879962,
    ("resnet50", "basic", "cbam"): 883922,
    ("resnet50", "basic", "eca"): 855851,
    ("resnet50", "basic", "gc"): 882761,
    ("resnet50", "basic", "wa"): 855770,
    ("resnet110", "basic", "none"): 1730714,
    ("resnet110", "basic", "se"): 1779098,
    ("resnet110", "basic", "cbam"): 1787018,
    ("resnet110", "basic", "eca"): 1730876,
    ("resnet110", "basic", "gc"): 1784696,
    ("resnet110", "basic", "wa"): 1730714,
    ("resnet164", "basic", "none"): 2605658,
    ("resnet164", "basic", "se"): 2678234,
    ("resnet164", "basic", "cbam"): 2690114,
    ("resnet164", "basic", "eca"): 2605901,
    ("resnet164", "basic", "gc"): 2686631,
    ("resnet164", "basic", "wa"): 2605658,
    ("resnet50", "bottleneck", "none"): 591322,
    ("resnet50", "bottleneck", "se"): 849370,
    ("resnet50", "bottleneck", "cbam"): 854530,
    ("resnet50", "bottleneck", "eca"): 591376,
    ("resnet50", "bottleneck", "gc"): 856780,
    ("resnet50", "bottleneck", "wa"): 591322,
    ("resnet110", "bottleneck", "none"): 1147738,
    ("resnet110", "bottleneck", "se"): 1663834,
    ("resnet110", "bottleneck", "cbam"): 1674154,
    ("resnet110", "bottleneck", "eca"): 1147846,
    ("resnet110", "bottleneck", "gc"): 1678654,
    ("resnet110", "bottleneck", "wa"): 1147738,
    ("resnet164", "bottleneck", "none"): 1704154,
    ("resnet164", "bottleneck", "se"): 2478298,
    ("resnet164", "bottleneck", "cbam"): 2493778,
    ("resnet164", "bottleneck", "eca"): 1704316,
    ("resnet164", "bottleneck", "gc"): 2500528,
    ("resnet164", "bottleneck", "wa"): 1704154,
    ("vgg11_bn", None, "none"): 28149514,
    ("vgg11_bn", None, "se"): 28749578,
    ("vgg11_bn", None, "cbam"): 28753818,
    ("vgg11_bn", None, "eca"): 28149538,
    ("vgg11_bn", None, "gc"): 28757154,
    ("vgg11_bn", None, "wa"): 28149514,
    ("vgg13_bn", None, "none"): 28334410,
    ("vgg13_bn", None, "se"): 28944714,
    ("vgg13_bn", None, "cbam"): 28949394,
    ("vgg13_bn", None, "eca"): 28334440,
    ("vgg13_bn", None, "gc"): 28952820,
    ("vgg13_bn", None, "wa"): 28334410,
    ("vgg16_bn", None, "none"): 33646666,
    ("vgg16_bn", None, "se"): 34551882,
    ("vgg16_bn", None, "cbam"): 34558462,
    ("vgg16_bn", None, "eca"): 33646705,
    ("vgg16_bn", None, "gc"): 34563511,
    ("vgg16_bn", None, "wa"): 33646666,
    ("vgg19_bn", None, "none"): 38958922,
    ("vgg19_bn", None, "se"): 40159050,
    ("vgg19_bn", None, "cbam"): 40167530,
    ("vgg19_bn", None, "eca"): 38958970,
    ("vgg19_bn", None, "gc"): 40174202,
    ("vgg19_bn", None, "wa"): 38958922,
    ("mobilenetv2", None, "none"): 2296922,
    ("mobilenetv2", None, "se"): 2410778,
    ("mobilenetv2", None, "cbam"): 2414358,
    ("mobilenetv2", None, "eca"): 2296973,
    ("mobilenetv2", None, "gc"): 2414931,
    ("mobilenetv2", None, "wa"): 2296922,
    # Options other than the defaults: se and gc at r = 8 (C // 8 hidden units),
    # ECA with 5 taps per block; WA has no parameters wherever it goes.
    ("resnet18", "basic", "se(reduction=8)"): 276506,
    ("resnet18", "basic", "gc(reduction=8)"): 277313,
    ("resnet18", "basic", "eca(kernel_size=5)"): 272519,
    ("resnet18", "basic", "wa(wavelet='db2', stages='all')"): 272474,
    ("vgg11_bn", None, "wa(wavelet='db2', stages='all')"): 28149514,
}
# 90 more classes: 90 * (classifier input width + 1).
EXTRA_FOR_100 = {"basic": 90 * 65, "bottleneck": 90 * 257, "vgg": 90 * 4097,
                 "mobilenetv2": 90 * 1281}
BACKBONES = tuple(dict.fromkeys((arch, block) for arch, block, _ in PARAMS_10))

KEY = jax.random.key(0)
# Real initialisation runs jitted with the rbg PRNG: threefry's kernels are slow to compile on CPU.
FAST_KEY = jax.random.key(0, impl="rbg")
IMAGES = jax.random.normal(jax.random.key(1), (2, 32, 32, 3), jnp.float32)


def _family(arch, block):
  return block or ("vgg" if arch.startswith("vgg") else arch)


def _model(arch, block, spec="none", num_classes=10, **kwargs):
  return models.create_model(arch, num_classes=num_classes, attention=spec,
                             block=None if block == "basic" else block, **kwargs)


@functools.lru_cache(maxsize=None)
def _shapes(arch, block, spec="none", num_classes=10):
  model = _model(arch, block, spec, num_classes)
  return jax.eval_shape(
      lambda: model.init({"params": KEY, "dropout": KEY}, IMAGES, train=False))


def _count(tree):
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def _random_variables(shapes, seed=0):
  """Variables of the given shapes: kernels ~ N(0, 1/fan_in), BN identity, biases 0."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name == "kernel":
      fan_in = int(np.prod(leaf.shape[:-1]))
      kernel = rng.standard_normal(leaf.shape, dtype=np.float32) / np.float32(np.sqrt(fan_in))
      return jnp.asarray(kernel)
    if name in ("scale", "var"):
      return jnp.ones(leaf.shape, jnp.float32)
    return jnp.zeros(leaf.shape, jnp.float32)

  return jax.tree_util.tree_map_with_path(fill, flax.core.unfreeze(shapes))


def _with_classes(variables, num_classes, seed=0):
  """The same variables with a fresh `classifier` for `num_classes` classes."""
  params = dict(variables["params"])
  width = params["classifier"]["kernel"].shape[0]
  kernel = np.random.default_rng(seed).standard_normal((width, num_classes), dtype=np.float32)
  params["classifier"] = {"kernel": jnp.asarray(kernel / np.sqrt(width)),
                          "bias": jnp.zeros((num_classes,), jnp.float32)}
  return {"params": params, "batch_stats": variables["batch_stats"]}


# --------------------------------------------------------------------------- counts


def _count_cases():
  """Every row of PARAMS_10. The in-block attentions on the two deepest ResNets (16 cases,
  ~2/3 of this test's time: tracing 54-81 blocks) are marked slow; run them with
  `pytest -m slow`. Their counts are linear in the depth, which the default run checks at
  n = 3, 5, 9 (basic) and 6 (bottleneck)."""
  for arch, block, spec in PARAMS_10:
    deep = arch in ("resnet110", "resnet164") and AttentionSpec.parse(spec).in_blocks
    yield pytest.param(arch, block, spec, marks=[pytest.mark.slow] if deep else [])


@pytest.mark.parametrize("arch, block, spec", list(_count_cases()))
def test_parameter_count(arch, block, spec):
  variables = _shapes(arch, block, spec)
  assert set(variables) == {"params", "batch_stats"}
  assert _count(variables["params"]) == PARAMS_10[(arch, block, spec)]
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))


@pytest.mark.parametrize("arch, block", [
    ("resnet18", "basic"), ("resnet50", "bottleneck"), ("vgg11_bn", None), ("mobilenetv2", None)])
def test_parameter_count_100_classes(arch, block):
  expected = PARAMS_10[(arch, block, "none")] + EXTRA_FOR_100[_family(arch, block)]
  assert _count(_shapes(arch, block, "none", 100)["params"]) == expected


def test_wa_all_stages_keeps_the_count():
  shapes = _shapes("resnet18", "basic", "wa(stages='all')")
  assert _count(shapes["params"]) == PARAMS_10[("resnet18", "basic", "none")]
  # Stage 3's downsampling block now has a stride-1 shortcut on LL: same shapes.
  assert shapes["params"]["stage3_block0"]["shortcut_conv"]["kernel"].shape == (1, 1, 32, 64)


def test_comparison_attention_sits_in_every_block():
  blocks = lambda p: [k for k in p if k.startswith("stage")]
  params = _shapes("resnet18", "basic", "se")["params"]
  assert len(blocks(params)) == 9 and all("attention" in params[b] for b in blocks(params))
  params = _shapes("mobilenetv2", None, "gc")["params"]
  assert len(blocks(params)) == 17 and all("attention" in params[b] for b in blocks(params))
  params = _shapes("vgg11_bn", None, "cbam")["params"]
  assert sorted(k for k in params if k.startswith("attention")) == [
      f"attention{i}" for i in range(8)]
  assert params["attention7"]["spatial_conv"]["kernel"].shape == (7, 7, 2, 1)


# --------------------------------------------------------------------------- forward


WA_SITES = {  # where WA sits with stages='reference' (module paths)
    "basic": {"stage2_block0"},
    "bottleneck": {"stage2_block0", "stage3_block0"},
    "vgg": {f"wavelet_attention{i}" for i in range(5)},
    "mobilenetv2": {"stage3_block0", "stage4_block0", "stage6_block0"},
}


def _wa_sites(intermediates):
  """Module paths holding a WaveletAttention's sown maps."""
  sites = set()
  for path, _ in jax.tree_util.tree_flatten_with_path(intermediates)[0]:
    keys = [p.key for p in path if hasattr(p, "key")]
    if "attention" in keys:
      i = keys.index("attention")
      site = keys[i - 2] if keys[i - 1] == "wavelet_attention" else keys[i - 1]
      sites.add(site)
  return sites


def _run(model, variables, num_classes, expect_wa, jit=False):
  """Eval and train mode on two images: float32 (N, num_classes) logits, BN updates, WA sites.

  Eager by default: the ResNets and VGGs repeat a few op shapes, which eager
  mode compiles once for all of them; MobileNetV2 has many shapes of its own
  and costs a little less as one jitted function.
  """

  def both(variables):
    logits, state = model.apply(variables, IMAGES, train=False, mutable=["intermediates"])
    train_logits, updates = model.apply(variables, IMAGES, train=True,
                                        rngs={"dropout": jax.random.key(2)},
                                        mutable=["batch_stats"])
    return logits, state.get("intermediates", {}), train_logits, updates

  logits, intermediates, train_logits, updates = (jax.jit(both) if jit else both)(variables)
  for out in (logits, train_logits):
    assert out.shape == (2, num_classes) and out.dtype == jnp.float32
    assert np.isfinite(np.asarray(out)).all()
  assert _wa_sites(intermediates) == expect_wa
  assert jax.tree.structure(updates["batch_stats"]) == jax.tree.structure(
      variables["batch_stats"])
  # Training uses batch statistics: the first BN's running mean moves away from 0.
  first_bn = "bn0" if "bn0" in updates["batch_stats"] else "stem_bn"
  assert np.abs(np.asarray(updates["batch_stats"][first_bn]["mean"])).max() > 0


@pytest.mark.parametrize("arch, block", BACKBONES)
def test_forward_baseline_and_wa(arch, block):
  """Baseline at 10 classes, WA at 100, both in eval and train mode."""
  shapes = _shapes(arch, block, "none")
  # WA adds no parameters and changes no shape.
  assert jax.tree.map(lambda a: a.shape, shapes) == jax.tree.map(
      lambda a: a.shape, _shapes(arch, block, "wa"))
  variables = _random_variables(shapes)
  jit = arch == "mobilenetv2"
  _run(_model(arch, block, "none", 10), variables, 10, expect_wa=set(), jit=jit)
  _run(_model(arch, block, "wa", 100), _with_classes(variables, 100), 100,
       expect_wa=WA_SITES[_family(arch, block)], jit=jit)


def test_forward_wa_all_stages_and_alias():
  model = _model("resnet18", "basic", "wa(stages='all')")
  variables = _random_variables(_shapes("resnet18", "basic", "wa(stages='all')"))
  _run(model, variables, 10, expect_wa={"stage2_block0", "stage3_block0"})
  alias = models.create_model("resnet18", num_classes=10, attention="wad")
  assert alias == _model("resnet18", "basic", "wa")
  # VGG: 'all' is 'reference', the same computation.
  shapes = _shapes("vgg11_bn", None, "wa")
  jaxpr = lambda spec: str(jax.make_jaxpr(
      lambda v: _model("vgg11_bn", None, spec).apply(v, IMAGES, train=False))(shapes))
  assert jaxpr("wa(stages='all')") == jaxpr("wa")


@pytest.mark.parametrize("arch, spec", [
    ("resnet18", "se"), ("resnet18", "cbam"), ("resnet18", "eca"), ("resnet18", "gc"),
    ("vgg11_bn", "se"), ("mobilenetv2", "eca"),
])
def test_forward_comparison_attention(arch, spec):
  block = "basic" if arch.startswith("resnet") else None
  variables = _random_variables(_shapes(arch, block, spec))
  num_classes = 10 if spec in ("se", "eca") else 100
  _run(_model(arch, block, spec, num_classes), _with_classes(variables, num_classes),
       num_classes, expect_wa=set(), jit=arch == "mobilenetv2")


def test_vgg_dropout_only_in_training():
  model = _model("vgg11_bn", None)
  variables = _random_variables(_shapes("vgg11_bn", None))
  run = lambda key: model.apply(variables, IMAGES, train=True, rngs={"dropout": key},
                                mutable=["batch_stats"])[0]
  assert not np.allclose(np.asarray(run(jax.random.key(3))), np.asarray(run(jax.random.key(4))))
  eval_logits = [model.apply(variables, IMAGES, train=False) for _ in range(2)]
  np.testing.assert_array_equal(np.asarray(eval_logits[0]), np.asarray(eval_logits[1]))


# --------------------------------------------------------------------------- WA wiring


def _conv_nhwc(x, kernel):
  """Stride-1 'same' correlation with zero padding, explicit loops (numpy, float64)."""
  k = kernel.shape[0]
  p = k // 2
  padded = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  out = np.zeros(x.shape[:3] + (kernel.shape[-1],))
  for i in range(x.shape[1]):
    for j in range(x.shape[2]):
      out[:, i, j] = np.einsum("nabc,abco->no", padded[:, i:i + k, j:j + k], kernel)
  return out


def test_wa_basic_block_wiring():
  """WA block: conv1 (stride 1) sees `out`, the stride-1 1x1 shortcut sees `ll`."""
  x = np.random.default_rng(0).normal(size=(2, 8, 8, 4)).astype(np.float32)
  block = resnet.BasicBlock(6, strides=2, attention=AttentionSpec.parse("wa(wavelet='db2')"))
  variables = _random_variables(jax.eval_shape(lambda: block.init(KEY, x, train=False)))
  y, state = block.apply(variables, x, train=False, capture_intermediates=True,
                         mutable=["intermediates"])
  inter = state["intermediates"]
  assert y.shape == (2, 4, 4, 6)
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), flax.core.unfreeze(variables["params"]))
  ca, (ch, cv, _) = pywt.dwt2(x.astype(np.float64), "db2", mode="periodization", axes=(1, 2))
  att = np.exp(ch + cv) / np.exp(ch + cv).sum(-1, keepdims=True)
  out = ca + ca * att
  np.testing.assert_allclose(np.asarray(inter["conv1"]["__call__"][0]),
                             _conv_nhwc(out, p["conv1"]["kernel"]), atol=1e-4)
  np.testing.assert_allclose(np.asarray(inter["shortcut_conv"]["__call__"][0]),
                             _conv_nhwc(ca, p["shortcut_conv"]["kernel"]), atol=1e-4)
  assert p["shortcut_conv"]["kernel"].shape == (1, 1, 4, 6)


def test_wa_mobilenet_block_uses_stride_one_depthwise_after_wa():
  params = _shapes("mobilenetv2", None, "wa")["params"]["stage3_block0"]
  assert params["depthwise_conv"]["kernel"].shape == (3, 3, 1, 144)
  assert "shortcut_conv" not in params
  block = models.mobilenet_v2.InvertedResidual(32, 6, 2, attention=WA)
  x = jnp.ones((1, 8, 8, 24))
  shapes = jax.eval_shape(lambda: block.init(KEY, x, train=False))
  out = jax.eval_shape(lambda v: block.apply(v, x, train=False), shapes)
  assert out.shape == (1, 4, 4, 32)


def _mobilenet_step(implementation: str, compiler_options=None):
  """MobileNetV2's variable shapes, and (gradients, (logits, batch_stats)) of a training step on
  random variables, with `depthwise.depthwise_conv2d` as `implementation`."""
  depthwise.DEPTHWISE_IMPLEMENTATION[jax.default_backend()] = implementation
  model = _model("mobilenetv2", None, "none")
  shapes = jax.eval_shape(lambda: model.init({"params": KEY}, IMAGES, train=False))
  variables = _random_variables(shapes)

  def train_step(variables):
    def loss(params):
      logits, state = model.apply({**variables, "params": params}, IMAGES, train=True,
                                  mutable=["batch_stats"])
      return jnp.sum(logits * jnp.arange(10.0)), (logits, state["batch_stats"])
    return jax.grad(loss, has_aux=True)(variables["params"])

  compiled = jax.jit(train_step).lower(variables).compile(compiler_options=compiler_options)
  return shapes, jax.device_get(compiled(variables))


# Both implementations' steps computed in a process on one CPU core (see below).
ONE_CORE_STEPS = """
import os, pickle, sys
os.sched_setaffinity(0, [min(os.sched_getaffinity(0))])
from tests.models import test_models
with open(sys.argv[1], "wb") as f:
  pickle.dump({i: test_models._mobilenet_step(i) for i in ("grouped", "shifted")}, f)
"""


def _assert_close(kind_a, kind_b):
  """Each array's max difference at most 1e-3 x its largest value, floored at 1e-3 of the
  largest value of its kind (some BatchNorm biases have gradients of ~0 that are rounding)."""
  scale = max(float(np.max(np.abs(a))) for a in jax.tree.leaves(kind_a))

  def check(path, a, b):
    error = float(np.max(np.abs(a - b)))
    assert error <= 1e-3 * max(float(np.max(np.abs(a))), 1e-3 * scale), (
        jax.tree_util.keystr(path), error)

  jax.tree_util.tree_map_with_path(check, kind_a, kind_b)


def test_mobilenet_is_the_same_network_with_either_depthwise_implementation(
    monkeypatch, tmp_path):
  """MobileNetV2 with `depthwise.depthwise_conv2d` as shifted multiply-adds or as lax's grouped
  convolution: the same variables (so checkpoints and trained weights load either way), and
  the same logits, BatchNorm statistics and parameter gradients of a training step to float32
  rounding (`_assert_close`); against float64, either implementation errs by <= 1.7e-4 on that
  scale. (The DWT's use of it is pinned to pywt in tests/nn/test_wavelets.py. With WA the
  random network below is ill-conditioned: float32 gradients differ from float64 ones by 2 %
  of the largest, with either implementation, so a comparison would measure only that.)

  The two are computed in a process on one CPU core: with several threads, the XLA:CPU of
  JAX 0.10.2 computes some of these gradients wrong on an AVX-512 AMD EPYC (Zen 4), by up to
  40 % of a parameter's largest, the grouped or the shifted variant depending on the compile
  options (JAX 0.12.1 does not; docs/benchmarks.md). The trainer's own configuration, the
  shifted variant compiled with `steps.compiler_options()`, is then checked on every core
  against the one-core result.
  """
  path = tmp_path / "steps.pickle"
  subprocess.run([sys.executable, "-c", ONE_CORE_STEPS, str(path)], check=True,
                 cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
                     __file__)))))
  with open(path, "rb") as f:
    results = pickle.load(f)
  (shapes_a, outputs_a), (shapes_b, outputs_b) = results["grouped"], results["shifted"]
  assert shapes_a == shapes_b
  assert "layers" not in str(shapes_a)  # the kernel sits where nn.Conv put it
  assert shapes_a["params"]["stage3_block0"]["depthwise_conv"]["kernel"].shape == (3, 3, 1, 144)
  (gradients_a, (logits_a, stats_a)), (gradients_b, (logits_b, stats_b)) = outputs_a, outputs_b
  for kind_a, kind_b in ((gradients_a, gradients_b), (logits_a, logits_b), (stats_a, stats_b)):
    _assert_close(kind_a, kind_b)
  monkeypatch.setitem(depthwise.DEPTHWISE_IMPLEMENTATION, jax.default_backend(), "shifted")
  _, (gradients, (logits, stats)) = _mobilenet_step("shifted", steps.compiler_options())
  for kind_a, kind_b in ((gradients_b, gradients), (logits_b, logits), (stats_b, stats)):
    _assert_close(kind_a, kind_b)


@pytest.mark.parametrize("arch, block, expected", [
    ("resnet18", None, {"stage2_block0": (2, 16, 16, 16)}),
    ("resnet50", "bottleneck", {"stage2_block0": (2, 16, 16, 64),
                                "stage3_block0": (2, 8, 8, 128)}),
    ("vgg11_bn", None, {"wavelet_attention0": (2, 16, 16, 64),
                        "wavelet_attention4": (2, 1, 1, 512)}),
    # MobileNetV2: WA runs on the expanded features (6 x input channels).
    ("mobilenetv2", None, {"stage3_block0": (2, 16, 16, 144), "stage4_block0": (2, 8, 8, 192),
                           "stage6_block0": (2, 4, 4, 576)}),
])
def test_wa_input_shapes(arch, block, expected):
  model = _model(arch, block, "wa")
  shapes = _shapes(arch, block, "wa")
  _, state = jax.eval_shape(
      lambda v: model.apply(v, IMAGES, train=False, mutable=["intermediates"]), shapes)
  inter = state["intermediates"]
  for site, shape in expected.items():
    maps = inter[site] if site.startswith("wavelet") else inter[site]["wavelet_attention"]
    assert maps["ll"][0].shape == shape, site


# --------------------------------------------------------------------------- init, dtype, BN


def _tiny_resnet(**kwargs):
  """A CIFAR ResNet with one block per stage: every code path of the deep ones, few ops."""
  return resnet.CifarResNet((1, 1, 1), resnet.BasicBlock, num_classes=10, **kwargs)


def test_real_init_and_forward():
  """Real initialisation (its distributions: tests/models/test_init.py) and a forward pass."""
  model = _tiny_resnet(attention=WA)
  variables = jax.jit(lambda k: model.init({"params": k}, IMAGES, train=False))(FAST_KEY)
  # 464 + 4,672 + 14,528 + 57,728 + 650 (docs/parameter_counts.md, n = 1)
  assert _count(variables["params"]) == 78042
  np.testing.assert_array_equal(np.asarray(variables["batch_stats"]["stem_bn"]["var"]), 1.0)
  logits = jax.jit(lambda v: model.apply(v, IMAGES, train=False))(variables)
  assert logits.shape == (2, 10) and np.isfinite(np.asarray(logits)).all()


def test_bfloat16_compute_keeps_float32_params_and_logits():
  model = models.create_model("resnet18", num_classes=10, attention="wa", dtype=jnp.bfloat16)
  shapes = jax.eval_shape(
      lambda: model.init({"params": KEY, "dropout": KEY}, IMAGES, train=False))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(shapes))
  # The same code paths on one block per stage, jitted (bf16 ops are all new to compile).
  tiny = _tiny_resnet(attention=WA, dtype=jnp.bfloat16)
  variables = _random_variables(jax.eval_shape(
      lambda: tiny.init({"params": KEY}, IMAGES, train=False)))

  @jax.jit
  def forward(variables):
    logits, state = tiny.apply(variables, IMAGES, train=False, capture_intermediates=True,
                               mutable=["intermediates"])
    inter = state["intermediates"]
    reference = tiny.clone(dtype=jnp.float32).apply(variables, IMAGES, train=False)
    return (logits, inter["stem_conv"]["__call__"][0],
            inter["stage2_block0"]["wavelet_attention"]["out"][0], reference)

  logits, stem, wa_out, reference = forward(variables)
  assert logits.dtype == jnp.float32 and reference.dtype == jnp.float32
  assert stem.dtype == jnp.bfloat16 and wa_out.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(logits), np.asarray(reference), atol=0.1, rtol=0.1)


def test_batch_norm_axis_name_reaches_every_batch_norm():
  """Two 'devices' of one image under vmap(axis_name) == one batch of two images."""
  cbam = AttentionSpec.parse("cbam(reduction=4)")
  shapes = jax.eval_shape(lambda: _tiny_resnet(attention=cbam).init(
      {"params": KEY}, IMAGES, train=False))
  variables = _random_variables(shapes, seed=1)
  whole, whole_stats = jax.jit(
      lambda v, x: _tiny_resnet(attention=cbam).apply(
          v, x, train=True, mutable=["batch_stats"]))(variables, IMAGES)
  model = _tiny_resnet(attention=cbam, axis_name="devices")
  split, split_stats = jax.jit(jax.vmap(
      lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]),
      in_axes=(None, 0), axis_name="devices"))(variables, IMAGES[:, None])
  np.testing.assert_allclose(np.asarray(split[:, 0]), np.asarray(whole), rtol=1e-4, atol=1e-4)
  for a, b in zip(jax.tree.leaves(split_stats), jax.tree.leaves(whole_stats)):
    np.testing.assert_allclose(np.asarray(a[0]), np.asarray(b), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(a[1]), np.asarray(b), rtol=1e-4, atol=1e-5)
  # create_model hands axis_name down.
  assert models.create_model("mobilenetv2", num_classes=10, axis_name="devices").axis_name == (
      "devices")


def test_batch_norm_momentum_and_epsilon():
  """Running mean <- 0.9 mean + 0.1 batch mean (PyTorch momentum 0.1); eps 1e-5 in eval."""
  model = _model("resnet18", "basic")
  variables = _random_variables(_shapes("resnet18", "basic"))
  stats = flax.core.unfreeze(variables["batch_stats"])
  stats["stem_bn"]["mean"] = jnp.full((16,), 0.5)
  stats["stem_bn"]["var"] = jnp.full((16,), 3.0)
  variables = {"params": variables["params"], "batch_stats": stats}
  _, state = model.apply(variables, IMAGES, train=True, capture_intermediates=True,
                         mutable=["batch_stats", "intermediates"])
  conv = np.asarray(state["intermediates"]["stem_conv"]["__call__"][0], np.float64)
  np.testing.assert_allclose(np.asarray(state["batch_stats"]["stem_bn"]["mean"]),
                             0.9 * 0.5 + 0.1 * conv.mean(axis=(0, 1, 2)), rtol=1e-5)
  _, state = model.apply(variables, IMAGES, train=False, capture_intermediates=True,
                         mutable=["intermediates"])
  conv = np.asarray(state["intermediates"]["stem_conv"]["__call__"][0], np.float64)
  bn = np.asarray(state["intermediates"]["stem_bn"]["__call__"][0])
  np.testing.assert_allclose(bn, (conv - 0.5) / np.sqrt(3.0 + 1e-5), rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("kwargs, match", [
    (dict(arch="resnet20"), r"unknown arch 'resnet20'.*resnet18.*vgg16_bn.*mobilenetv2"),
    (dict(arch="resnet32"), r"The 32-layer CIFAR ResNet is 'resnet34'"),
    (dict(arch="resnet56"), r"The 56-layer CIFAR ResNet is 'resnet50'"),
    (dict(arch="vgg16"), r"unknown arch 'vgg16'\. Did you mean 'vgg16_bn'\?"),
    (dict(arch="resnet18", attention="sa"),
     r"unknown attention 'sa'; choose one of: none, se, cbam, eca, gc, wa \(alias wad\)\.$"),
    (dict(arch="resnet50", block="preact"), r"unknown block 'preact'.*basic, bottleneck"),
    (dict(arch="resnet18", attention="wa(stages='some')"),
     r"wa option stages='some' is invalid.*'reference', 'all'"),
    (dict(arch="resnet18", block="bottleneck"),
     r"resnet18 has no bottleneck.*resnet50, resnet110, resnet164"),
    (dict(arch="vgg16_bn", block="basic"),
     r"block='basic' applies to resnet18, resnet34, .*, resnet164 only, not vgg16_bn; "
     r"leave block=None"),
    (dict(arch="mobilenetv2", block="bottleneck"), r"applies to resnet18, .* only"),
    (dict(arch="resnet18", blok="basic"), r"unknown model option blok='basic'; .* block"),
    (dict(arch="resnet18", attention="wa(wavelet='morl')"), r"wavelet='morl'.*continuous"),
    (dict(arch="resnet18", attention="se(reduction='haar')"), r"positive integer"),
    (dict(arch="resnet18", attention="eca(kernel_size=0)"), r"positive integer"),
    (dict(arch="resnet18", attention="se(kernel_size=3)"),
     r"^se has no option 'kernel_size'; its options: reduction \(default 4\)\.$"),
    (dict(arch="resnet18", attention="se(8)"), r"options go by name"),
    (dict(arch="resnet18", attention="wa(wavelet=db2)"), r"wavelet must be a literal"),
    (dict(arch="resnet18", attention="se(reduction=8"), r"cannot read attention"),
    (dict(arch="resnet18", attention="__import__('os').getcwd()"), r"cannot read attention"),
    (dict(arch="resnet18", attention=None), r"must be a spec string"),
])
def test_bad_names(kwargs, match):
  with pytest.raises(ValueError, match=match):
    models.create_model(num_classes=10, **kwargs)


def test_registry_names():
  assert registry.arch_names() == (
      "resnet18", "resnet34", "resnet50", "resnet110", "resnet164",
      "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn", "mobilenetv2",
      "resnet18_imagenet", "resnet34_imagenet", "resnet50_imagenet", "mobilenetv2_imagenet")
  assert {name: registry.backbone(name).layout for name in registry.arch_names()
          if name.endswith("_imagenet")} == dict.fromkeys(
              ("resnet18_imagenet", "resnet34_imagenet", "resnet50_imagenet",
               "mobilenetv2_imagenet"), "imagenet")
  assert attention_spec.attention_names() == ATTENTIONS
  assert tuple(resnet.BLOCKS) == ("basic", "bottleneck")
  assert attention_spec.WA_STAGES == ("reference", "all")
  model = _model("resnet50", "bottleneck")
  assert model.block_cls is resnet.Bottleneck and tuple(model.stage_sizes) == (6, 6, 6)
  model = _model("resnet50", "basic", "wa(wavelet='db2')")
  assert model.block_cls is resnet.BasicBlock and tuple(model.stage_sizes) == (9, 9, 9)
  assert model.attention == AttentionSpec("wa", {"wavelet": "db2", "stages": "reference"})


# --------------------------------------------------------------------------- registration


def test_a_registered_attention_module_sits_in_every_block(monkeypatch):
  """One class and its registration: create_model builds it by name, with its options."""
  monkeypatch.setattr(attention_spec, "_KINDS", dict(attention_spec._KINDS))
  monkeypatch.setattr(attention_spec, "_NAMES", dict(attention_spec._NAMES))

  @attention_spec.register_attention("gain", options=[
      attention_spec.Option("init", attention_spec.positive_integer)])
  class Gain(attention.AttentionModule):  # pylint: disable=unused-variable
    init: int = 1

    @nn.compact
    def __call__(self, x, train: bool):
      del train
      gain = self.param("gain", nn.initializers.constant(self.init), (x.shape[-1],))
      return x * gain.astype(x.dtype)

  assert attention_spec.attention_names() == ATTENTIONS + ("gain",)
  model = models.create_model("resnet18", num_classes=10, attention="gain(init=3)")
  variables = jax.eval_shape(lambda: model.init({"params": KEY}, IMAGES, train=False))
  assert _count(variables["params"]) == PARAMS_10[("resnet18", "basic", "none")] + 3 * (
      16 + 32 + 64)
  assert variables["params"]["stage3_block2"]["attention"]["gain"].shape == (64,)
  with pytest.raises(ValueError, match=r"^gain has no option 'reduction'; its options: "
                     r"init \(default 1\)\.$"):
    AttentionSpec.parse("gain(reduction=2)")
  with pytest.raises(ValueError, match="'gain' is already registered"):
    attention_spec.register_attention("gain")(Gain)


def test_a_registered_backbone_is_created_by_name(monkeypatch):
  monkeypatch.setattr(registry, "_BACKBONES", dict(registry._BACKBONES))

  @registry.register_backbone("resnet_tiny")
  def build(arch, **fields):
    del arch
    return resnet.CifarResNet((1, 1, 1), resnet.BasicBlock, **fields)

  assert registry.arch_names()[-1] == "resnet_tiny"
  assert models.create_model("resnet_tiny", num_classes=10, attention="wa") == _tiny_resnet(
      attention=WA)
  with pytest.raises(ValueError, match=r"block='basic' applies to resnet18, .*, resnet164 "
                     r"only, not resnet_tiny"):
    models.create_model("resnet_tiny", num_classes=10, block="basic")
  with pytest.raises(ValueError, match="'resnet_tiny' is already registered"):
    registry.register_backbone("resnet_tiny")(build)


@pytest.mark.parametrize("arch", registry.arch_names())
def test_parameter_count_does_not_depend_on_the_image_size(arch):
  """Every backbone's classifier sees pooled features: the same parameters at 32x32 and 64x64
  (with WA, and for the ResNets' Bottleneck variants too)."""
  blocks = [None] + (["bottleneck"] if arch in resnet.BOTTLENECK_DEPTHS else [])
  for block in blocks:
    model = models.create_model(arch, num_classes=10, attention="wa", block=block)
    counts = {size: _count(jax.eval_shape(model.init, KEY, jnp.zeros((1, size, size, 3)))
                           ["params"]) for size in (32, 64)}
    assert counts[32] == counts[64], (arch, block, counts)
