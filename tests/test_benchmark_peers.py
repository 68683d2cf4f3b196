"""Tests of the benchmark peers: benchmarks/torch_peers.py and benchmarks/matrix_dwt.py.

The torch tests skip when torch is absent (benchmarks/requirements.txt).
"""

import numpy as np
import pytest
import pywt

from benchmarks.matrix_dwt import matrix_dwt2


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
  ll, lh, hl, hh = tp.ReferenceDWT2D("haar")(torch.tensor(x, dtype=torch.float32))
  ca, (ch, cv, cd) = pywt.dwt2(x, "haar")  # axes (-2, -1) = (H, W) of NCHW
  # Reference naming: LH = pywt cV, HL = pywt cH.
  for got, want in zip((ll, hl, lh, hh), (ca, ch, cv, cd)):
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("wavelet", ["haar", "db2", "bior2.2"])
def test_tuned_wa_block_equals_faithful(tp, wavelet):
  import torch
  x = torch.randn(2, 16, 32, 32, generator=torch.Generator().manual_seed(0))
  out_f, ll_f = tp.FaithfulWaveletAttention(16, wavelet)(x)
  out_t, ll_t = tp.TunedWaveletAttention(16, wavelet)(x)
  torch.testing.assert_close(out_t, out_f, atol=1e-5, rtol=0)
  torch.testing.assert_close(ll_t, ll_f, atol=1e-5, rtol=0)


def test_parameter_counts(tp):
  assert tp.EXPECTED_PARAMETERS == 272_474
  for cls in (tp.FaithfulWAResNet18, tp.TunedWAResNet18):
    assert tp.count_parameters(cls()) == tp.EXPECTED_PARAMETERS
  # WA sits only in stage 2's first block; stage 3 keeps the strided conv.
  model = tp.FaithfulWAResNet18()
  assert [b.wa is not None for layer in (model.layer1, model.layer2, model.layer3)
          for b in layer] == [False] * 3 + [True] + [False] * 5
  assert model.layer2[0].conv1.stride == (1, 1)
  assert model.layer2[0].shortcut[0].stride == (1, 1)
  assert model.layer3[0].conv1.stride == (2, 2)
  assert model.layer3[0].shortcut[0].stride == (2, 2)


def test_faithful_and_tuned_compute_the_same_function(tp):
  import torch
  torch.manual_seed(0)
  faithful = tp.FaithfulWAResNet18()
  tuned = tp.TunedWAResNet18()
  assert faithful.state_dict().keys() == tuned.state_dict().keys()
  # Non-trivial BN statistics, so that eval mode is not an identity.
  with torch.no_grad():
    for module in faithful.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.running_mean.uniform_(-0.5, 0.5)
        module.running_var.uniform_(0.5, 1.5)
        module.weight.uniform_(0.5, 1.5)
        module.bias.uniform_(-0.5, 0.5)
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
  cls = tp.TunedWAResNet18 if tuned else tp.FaithfulWAResNet18
  model = cls()
  with torch.no_grad():
    logits = model(torch.randn(3, 3, 32, 32))
  assert logits.shape == (3, 10)
  before = {k: v.detach().clone() for k, v in model.named_parameters()}
  step = tp.make_torch_train_step(model, tuned=tuned, device="cpu",
                                  images=images, labels=labels)
  loss = float(step(torch.arange(8)))
  assert np.isfinite(loss)
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


def test_augmentations_are_pad_crop_flip(tp):
  import torch
  images, labels = _pixels(6, seed=3)
  faithful = tp.CifarTrainTransform(torch.Generator().manual_seed(0))
  tuned = tp.make_torch_train_step(tp.TunedWAResNet18(), tuned=True, device="cpu",
                                   images=images, labels=labels)
  x_tuned, y_tuned = tuned.augment(torch.arange(6))
  assert x_tuned.shape == (6, 3, 32, 32) and x_tuned.dtype == torch.float32
  assert x_tuned.is_contiguous(memory_format=torch.channels_last)
  np.testing.assert_array_equal(y_tuned.numpy(), labels)
  for k in range(6):
    for got in (_denormalise(tp, faithful(images[k]).double().numpy()),
                _denormalise(tp, x_tuned[k].double().numpy())):
      assert any(np.array_equal(got, c) for c in _candidate_crops(images[k]))
