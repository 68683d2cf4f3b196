"""Tests of the benchmark peers: benchmarks/torch_peers.py and benchmarks/matrix_dwt.py.

The torch tests skip when torch is absent (benchmarks/requirements.txt).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import pywt

from benchmarks.matrix_dwt import matrix_dwt2
from wacnn_jax import models
from wacnn_jax.nn import attention

# Trainable parameters of WA-ResNet18 (convolutions without bias, BN 2 per
# channel, WA none): stem 464, stage 1 14,016, stage 2 14,528 + 37,120, stage 3
# 57,728 + 147,968, linear 650. WA's stride-1 1x1 shortcut has the shape of the
# baseline's stride-2 one, so this is also the baseline with 1x1-conv + BN
# projection shortcuts (269,722 of the option-A ResNet-20 + 576 + 2,176).
EXPECTED_PARAMETERS = 272_474


@pytest.fixture(scope="module")
def tp():
  pytest.importorskip("torch")
  from benchmarks import torch_peers
  return torch_peers


def _pixels(n, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
          rng.integers(0, 10, (n,), dtype=np.int64))


@pytest.mark.parametrize("shape", [(2, 8, 12, 3), (1, 32, 32, 16)])
def test_jax_matrix_dwt_equals_pywt_haar(shape):
  x = np.random.default_rng(1).normal(size=shape)
  ca, (ch, cv, cd) = pywt.dwt2(x, "haar", axes=(1, 2))
  bands = matrix_dwt2(x.astype(np.float32), "haar")
  for got, want in zip(bands, (ca, ch, cv, cd)):
    assert got.shape == want.shape
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape", [(2, 3, 8, 12), (1, 16, 32, 32)])
def test_faithful_torch_dwt_equals_pywt_haar(tp, shape):
  import torch
  x = np.random.default_rng(2).normal(size=shape)
  ll, lh, hl, hh = tp.reference_dwt2(torch.tensor(x, dtype=torch.float32), "haar")
  ca, (ch, cv, cd) = pywt.dwt2(x, "haar")  # axes (-2, -1) = (H, W) of NCHW
  # Reference naming: LH = pywt cV, HL = pywt cH.
  for got, want in zip((ll, hl, lh, hh), (ca, ch, cv, cd)):
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("wavelet", ["haar", "db2", "bior2.2"])
def test_tuned_wa_block_equals_faithful(tp, wavelet):
  import torch
  x = torch.randn(2, 16, 32, 32, generator=torch.Generator().manual_seed(0))
  out_f, ll_f = tp.WaveletAttention(16, wavelet)(x)
  out_t, ll_t = tp.WaveletAttention(16, wavelet, tuned=True)(x)
  torch.testing.assert_close(out_t, out_f, atol=1e-5, rtol=0)
  torch.testing.assert_close(ll_t, ll_f, atol=1e-5, rtol=0)


def test_wa_block_equals_the_jax_block(tp):
  """Both peers' WA (NCHW) against wacnn_jax.nn.attention.WaveletAttention (NHWC), haar."""
  import torch
  x = np.random.default_rng(4).normal(size=(2, 16, 32, 32)).astype(np.float32)
  want_out, want_ll = attention.WaveletAttention(wavelet="haar").apply(
      {}, x.transpose(0, 2, 3, 1), False)
  for tuned in (False, True):
    out, ll = tp.WaveletAttention(16, "haar", tuned)(torch.from_numpy(x))
    np.testing.assert_allclose(out.numpy().transpose(0, 2, 3, 1), want_out, atol=1e-5)
    np.testing.assert_allclose(ll.numpy().transpose(0, 2, 3, 1), want_ll, atol=1e-5)


def _jax_resnet18_wa():
  model = models.create_model("resnet18", num_classes=10, attention="wa")
  variables = jax.eval_shape(lambda: model.init(
      {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(0)},
      jnp.zeros((1, 32, 32, 3)), train=False))
  return model, variables


def test_parameter_counts(tp):
  _, variables = _jax_resnet18_wa()
  jax_count = sum(p.size for p in jax.tree_util.tree_leaves(variables["params"]))
  assert jax_count == EXPECTED_PARAMETERS
  for tuned in (False, True):
    model = tp.WAResNet18(tuned=tuned)
    assert sum(p.numel() for p in model.parameters()) == EXPECTED_PARAMETERS
  # WA sits only in stage 2's first block; stage 3 keeps the strided conv.
  model = tp.WAResNet18()
  assert [b.wa is not None for layer in (model.layer1, model.layer2, model.layer3)
          for b in layer] == [False] * 3 + [True] + [False] * 5
  assert model.layer2[0].conv1.stride == (1, 1)
  assert model.layer2[0].shortcut[0].stride == (1, 1)
  assert model.layer3[0].conv1.stride == (2, 2)
  assert model.layer3[0].shortcut[0].stride == (2, 2)


def _with_random_batch_norms(model):
  """Non-trivial BN statistics and affine parameters, so that eval mode is no identity."""
  import torch
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.running_mean.uniform_(-0.5, 0.5)
        module.running_var.uniform_(0.5, 1.5)
        module.weight.uniform_(0.5, 1.5)
        module.bias.uniform_(-0.5, 0.5)
  return model


def _state_dict_as_variables(state_dict, module_names):
  """A torch state_dict as flax variables; `module_names(path)`: the flax module path (a list)
  of the torch module `path` (e.g. 'layer2.0.bn1')."""
  variables = {"params": {}, "batch_stats": {}}
  for key, value in state_dict.items():
    path, leaf = key.rsplit(".", 1)
    if leaf == "num_batches_tracked":
      continue
    value = value.numpy()
    collection, leaf = {"weight": ("params", "kernel" if value.ndim > 1 else "scale"),
                        "bias": ("params", "bias"), "running_mean": ("batch_stats", "mean"),
                        "running_var": ("batch_stats", "var")}[leaf]
    if value.ndim == 4:  # (Cout, Cin / groups, kH, kW) -> (kH, kW, Cin / groups, Cout)
      value = value.transpose(2, 3, 1, 0)
    elif value.ndim == 2:  # nn.Linear's (out, in) -> (in, out)
      value = value.T
    tree = variables[collection]
    for part in module_names(path):
      tree = tree.setdefault(part, {})
    tree[leaf] = value
  return variables


def _jax_variables(state_dict):
  """A torch WAResNet18 state_dict as the variables of wacnn_jax's resnet18-WA."""
  top = {"conv1": "stem_conv", "bn1": "stem_bn", "linear": "classifier"}
  shortcut = {"shortcut.0": "shortcut_conv", "shortcut.1": "shortcut_bn"}

  def module_names(path):
    if path.startswith("layer"):  # layer2.0.shortcut.1 -> stage2_block0/shortcut_bn
      stage, block, layer = path[5:].split(".", 2)
      return [f"stage{stage}_block{block}", shortcut.get(layer, layer)]
    return [top[path]]

  return _state_dict_as_variables(state_dict, module_names)


@pytest.mark.parametrize("tuned", [False, True])
def test_peer_logits_equal_the_jax_model(tp, tuned):
  """With the same weights, each peer (NCHW) computes wacnn_jax's resnet18-WA (NHWC)."""
  import torch
  torch.manual_seed(0)
  peer = _with_random_batch_norms(tp.WAResNet18(tuned=tuned)).eval()
  model, shapes = _jax_resnet18_wa()
  variables = _jax_variables(peer.state_dict())
  assert (jax.tree_util.tree_map(np.shape, variables)
          == jax.tree_util.tree_map(lambda s: s.shape, shapes))
  x = np.random.default_rng(5).normal(size=(4, 32, 32, 3)).astype(np.float32)
  want = model.apply(variables, x, train=False)
  with torch.no_grad():
    got = peer(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
  np.testing.assert_allclose(got.numpy(), want, atol=1e-4, rtol=0)


def test_faithful_and_tuned_compute_the_same_function(tp):
  import torch
  torch.manual_seed(0)
  faithful = _with_random_batch_norms(tp.WAResNet18())
  tuned = tp.WAResNet18(tuned=True)
  assert faithful.state_dict().keys() == tuned.state_dict().keys()
  tuned.load_state_dict(faithful.state_dict())
  tuned = tuned.to(memory_format=torch.channels_last)
  faithful.eval()
  tuned.eval()
  x = torch.randn(4, 3, 32, 32)
  with torch.no_grad():
    want = faithful(x)
    got = tuned(x.contiguous(memory_format=torch.channels_last))
  assert want.shape == got.shape == (4, 10)
  torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("tuned", [False, True])
def test_train_step_runs_and_updates(tp, tuned):
  import torch
  torch.manual_seed(0)
  images, labels = _pixels(16)
  model = tp.WAResNet18(tuned=tuned)
  with torch.no_grad():
    logits = model(torch.randn(3, 3, 32, 32))
  assert logits.shape == (3, 10)
  before = {k: v.detach().clone() for k, v in model.named_parameters()}
  step = tp.TrainStep(model, "cpu", images, labels, tuned=tuned)
  loss = step.train_on_batch(*step.augment(torch.arange(8)))
  assert isinstance(loss, torch.Tensor if tuned else float) and np.isfinite(float(loss))
  changed = [not torch.equal(before[k], v) for k, v in model.named_parameters()]
  assert all(changed)


def _candidate_crops(image_u8):
  padded = np.pad(image_u8, ((4, 4), (4, 4), (0, 0)))
  for i in range(9):
    for j in range(9):
      crop = padded[i:i + 32, j:j + 32]
      yield crop
      yield crop[:, ::-1]


def _denormalise(tp, chw):
  mean = np.asarray(tp.CIFAR_MEAN)[:, None, None]
  std = np.asarray(tp.CIFAR_STD)[:, None, None]
  return np.round((chw * std + mean) * 255).transpose(1, 2, 0)


@pytest.mark.parametrize("tuned", [False, True])
def test_augmentations_are_pad_crop_flip(tp, tuned):
  import torch
  images, labels = _pixels(6, seed=3)
  step = tp.TrainStep(tp.WAResNet18(tuned=tuned), "cpu", images, labels, tuned=tuned)
  x, y = step.augment(torch.arange(6))
  assert x.shape == (6, 3, 32, 32) and x.dtype == torch.float32
  assert x.is_contiguous(memory_format=torch.channels_last) == tuned
  np.testing.assert_array_equal(y.numpy(), labels)
  for k in range(6):
    got = _denormalise(tp, x[k].double().numpy())
    assert any(np.array_equal(got, c) for c in _candidate_crops(images[k]))


@pytest.mark.parametrize("peer", ["faithful", "tuned", "tuned-fp32"])
def test_time_training_returns_a_rate(tp, peer):
  # 3 steps per timing on 2 batches per epoch: the epochs wrap around.
  assert tp.time_training(peer, 4, device="cpu", steps=3, warmup=1, repeats=2,
                          dataset_size=9) > 0


def test_time_training_refuses_an_unknown_peer(tp):
  with pytest.raises(ValueError, match="unknown peer 'other'; one of faithful, tuned, tuned-fp32"):
    tp.time_training("other", 4, device="cpu")


def _jax_mobilenet_variables(tp, state_dict):
  """A torch MobileNetV2 peer's state_dict as the variables of wacnn_jax's mobilenetv2."""
  names = [f"stage{stage}_block{block}"
           for stage, (_, _, repeats, _) in enumerate(tp.MobileNetV2.STAGES, start=1)
           for block in range(repeats)]
  in_block = {"conv1": "expand_conv", "bn1": "expand_bn", "conv2": "depthwise_conv",
              "bn2": "depthwise_bn", "conv3": "project_conv", "bn3": "project_bn",
              "shortcut.0": "shortcut_conv", "shortcut.1": "shortcut_bn"}
  top = {"conv1": "stem_conv", "bn1": "stem_bn", "conv2": "head_conv", "bn2": "head_bn",
         "linear": "classifier"}

  def module_names(path):
    if path.startswith("layers."):  # layers.4.bn2 -> stage3_block1/depthwise_bn
      _, index, layer = path.split(".", 2)
      return [names[int(index)], in_block[layer]]
    return [top[path]]

  return _state_dict_as_variables(state_dict, module_names)


@pytest.mark.parametrize("wa", [False, True])
def test_mobilenet_peer_is_the_jax_mobilenet(tp, wa):
  """The MobileNetV2 peer (faithful: the reference's matrix DWT) has wacnn_jax's parameter
  tree (2,296,922 parameters with or without WA) and, with the same weights, its logits;
  the tuned peer computes the same function."""
  import torch
  torch.manual_seed(0)
  peer = _with_random_batch_norms(tp.MobileNetV2(wa=wa)).eval()
  assert sum(p.numel() for p in peer.parameters()) == 2_296_922
  model = models.create_model("mobilenetv2", num_classes=10, attention="wa" if wa else "none")
  x = np.random.default_rng(5).normal(size=(2, 32, 32, 3)).astype(np.float32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  variables = _jax_mobilenet_variables(tp, peer.state_dict())
  assert (jax.tree_util.tree_map(np.shape, variables)
          == jax.tree_util.tree_map(lambda s: s.shape, shapes))
  want = jax.jit(lambda v: model.apply(v, x, train=False))(variables)
  nchw = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
  tuned = tp.MobileNetV2(wa=wa, tuned=True).eval()
  tuned.load_state_dict(peer.state_dict())
  with torch.no_grad():
    got, got_tuned = peer(nchw), tuned(nchw.contiguous(memory_format=torch.channels_last))
  np.testing.assert_allclose(got.numpy(), want, atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(got_tuned.numpy(), want, atol=1e-4, rtol=1e-4)


def test_time_training_of_each_peer_model(tp):
  for model in tp.MODELS:
    assert tp.time_training("tuned", 4, device="cpu", steps=1, warmup=1, repeats=1,
                            dataset_size=8, model=model, wavelet="db2") > 0
  with pytest.raises(ValueError, match="unknown peer model 'vgg'"):
    tp.time_training("tuned", 4, device="cpu", model="vgg")
