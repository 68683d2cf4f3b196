"""PyTorch peers of WA-ResNet18 (CIFAR, 10 classes) for the throughput benchmark.

"resnet18" here is the reference's name for the 20-layer CIFAR ResNet of He et
al. (BasicBlock x [3, 3, 3], 16/32/64 channels) with `attention=wa`: the
Wavelet-Attention (WA) block replaces the stride of the first block of stage 2
only (the stage-3 downsampling keeps its strided convolution). Layout NCHW.

Two peers with the same parameters (state_dicts have identical keys/shapes):

* `FaithfulWAResNet18`: the reference's algorithm. Its DWT multiplies by dense
  analysis matrices built from pywt's `rec_lo/rec_hi` with zero-padded borders,
  REBUILT on every forward call (numpy loops -> torch tensor -> device), with
  the reference's custom autograd Function. fp32, NCHW, eager.
* `TunedWAResNet18`: the same network with the DWT as one fixed depthwise
  stride-2 convolution whose kernels are a buffer registered once (LL and the
  summed cH + cV, the only bands WA uses). Intended to run channels_last, under
  bf16 autocast, torch.compile'd, with the data on the GPU.

Training steps (`make_torch_train_step`) include the reference augmentation
(zero-pad 4, random 32x32 crop, random horizontal flip, normalise):
the faithful step does it per image on the CPU like a torchvision DataLoader
user, the tuned step does it batched on the device from a uint8 training set
kept there.

torch.compile and bf16 autocast are used only on CUDA: on CPU the tuned peer
runs eager fp32 (channels_last, batched on-device augmentation), so that a
--quick CPU run takes seconds. The package wacnn_jax never imports torch.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np
import pywt
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "CIFAR_MEAN", "CIFAR_STD", "EXPECTED_PARAMETERS", "FaithfulWAResNet18",
    "TunedWAResNet18", "ReferenceDWT2D", "FaithfulWaveletAttention",
    "TunedWaveletAttention", "CifarTrainTransform", "count_parameters",
    "reference_dwt_matrices", "make_torch_train_step", "time_torch_training",
    "PEERS",
]

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)

# Trainable parameters, by hand (convs have no bias; BN = 2 x channels; the
# WA block has none, and its stride-1 1x1 shortcut has the same shape as the
# baseline's stride-2 one, so WA-ResNet18 == baseline 20-layer ResNet with
# 1x1-conv+BN projection shortcuts at stages 2 and 3):
#   stem     conv 3*16*9 = 432            + BN 32                      =     464
#   stage 1  3 x (2 * 16*16*9 = 4,608     + 2 BN 64 = 4,672)           =  14,016
#   stage 2  block 1: 16*32*9 = 4,608 + 32*32*9 = 9,216 + 2 BN 128
#                     + shortcut 16*32 = 512 + BN 64                   =  14,528
#            2 x (2 * 32*32*9 = 18,432    + 2 BN 128 = 18,560)         =  37,120
#   stage 3  block 1: 32*64*9 = 18,432 + 64*64*9 = 36,864 + 2 BN 256
#                     + shortcut 32*64 = 2,048 + BN 128                =  57,728
#            2 x (2 * 64*64*9 = 73,728    + 2 BN 256 = 73,984)         = 147,968
#   linear   64*10 + 10                                                =     650
#   total    464 + 14,016 + 14,528 + 37,120 + 57,728 + 147,968 + 650   = 272,474
# (= 269,722 of the option-A ResNet-20 + 576 + 2,176 for the two projections.)
EXPECTED_PARAMETERS = 272_474


def count_parameters(model: nn.Module) -> int:
  """Number of trainable parameters (BN running statistics and buffers excluded)."""
  return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ---------------------------------------------------------------------------
# Faithful: the reference's matrix DWT (a port of WaveCNet's DWT_2D).


def reference_dwt_matrices(height: int, width: int, wavename: str = "haar"):
  """(low_0, low_1, high_0, high_1) float64 numpy matrices, as the reference's get_matrix.

  low_0/high_0: (height/2, height), multiplied from the left; low_1/high_1:
  (width, width/2), multiplied from the right. Rows hold rec_lo / rec_hi
  shifted by 2; the cut columns mean zero padding of F/2 - 1 on each side.
  """
  wavelet = pywt.Wavelet(wavename)
  band_low, band_high = wavelet.rec_lo, wavelet.rec_hi
  band_length = len(band_low)
  assert band_length % 2 == 0 and len(band_high) == band_length
  band_length_half = math.floor(band_length / 2)
  l1 = np.max((height, width))
  l = math.floor(l1 / 2)
  matrix_h = np.zeros((l, l1 + band_length - 2))
  matrix_g = np.zeros((l1 - l, l1 + band_length - 2))
  end = None if band_length_half == 1 else (-band_length_half + 1)
  index = 0
  for i in range(l):
    for j in range(band_length):
      matrix_h[i, index + j] = band_low[j]
    index += 2
  matrix_h_0 = matrix_h[0:math.floor(height / 2), 0:height + band_length - 2]
  matrix_h_1 = matrix_h[0:math.floor(width / 2), 0:width + band_length - 2]
  index = 0
  for i in range(l1 - l):
    for j in range(band_length):
      matrix_g[i, index + j] = band_high[j]
    index += 2
  matrix_g_0 = matrix_g[0:height - math.floor(height / 2), 0:height + band_length - 2]
  matrix_g_1 = matrix_g[0:width - math.floor(width / 2), 0:width + band_length - 2]
  matrix_h_0 = matrix_h_0[:, (band_length_half - 1):end]
  matrix_h_1 = np.transpose(matrix_h_1[:, (band_length_half - 1):end])
  matrix_g_0 = matrix_g_0[:, (band_length_half - 1):end]
  matrix_g_1 = np.transpose(matrix_g_1[:, (band_length_half - 1):end])
  return matrix_h_0, matrix_h_1, matrix_g_0, matrix_g_1


class _DWTFunction2D(torch.autograd.Function):
  """The reference's DWTFunction_2D: four matrix products and their transposes."""

  @staticmethod
  def forward(ctx, input, matrix_low_0, matrix_low_1, matrix_high_0, matrix_high_1):
    ctx.save_for_backward(matrix_low_0, matrix_low_1, matrix_high_0, matrix_high_1)
    l = torch.matmul(matrix_low_0, input)
    h = torch.matmul(matrix_high_0, input)
    ll = torch.matmul(l, matrix_low_1)
    lh = torch.matmul(l, matrix_high_1)
    hl = torch.matmul(h, matrix_low_1)
    hh = torch.matmul(h, matrix_high_1)
    return ll, lh, hl, hh

  @staticmethod
  def backward(ctx, grad_ll, grad_lh, grad_hl, grad_hh):
    matrix_low_0, matrix_low_1, matrix_high_0, matrix_high_1 = ctx.saved_tensors
    grad_l = torch.add(torch.matmul(grad_ll, matrix_low_1.t()),
                       torch.matmul(grad_lh, matrix_high_1.t()))
    grad_h = torch.add(torch.matmul(grad_hl, matrix_low_1.t()),
                       torch.matmul(grad_hh, matrix_high_1.t()))
    grad_input = torch.add(torch.matmul(matrix_low_0.t(), grad_l),
                           torch.matmul(matrix_high_0.t(), grad_h))
    return grad_input, None, None, None, None


class ReferenceDWT2D(nn.Module):
  """The reference's DWT_2D: matrices rebuilt (numpy -> torch -> device) every call.

  forward(x) on NCHW returns (LL, LH, HL, HH) in the reference's naming:
  LH = pywt cV (low along height, high along width), HL = pywt cH, HH = cD.
  For haar on even sizes it equals pywt.dwt2(x, 'haar') exactly. Like the
  reference, fp32 only: its custom backward fails under bf16 autocast.
  """

  def __init__(self, wavename: str = "haar"):
    super().__init__()
    self.wavename = wavename

  def forward(self, input):
    assert input.dim() == 4
    height, width = input.size()[-2], input.size()[-1]
    mats = reference_dwt_matrices(height, width, self.wavename)  # not cached
    # The reference: torch.Tensor(matrix).cuda() (float32) on every forward.
    mats = [torch.Tensor(m).to(input.device) for m in mats]
    return _DWTFunction2D.apply(input, *mats)


class FaithfulWaveletAttention(nn.Module):
  """out = LL + LL * softmax_channels(LH + HL); returns (out, LL). No parameters."""

  def __init__(self, channels: int, wavename: str = "haar"):
    super().__init__()
    del channels  # shape-agnostic, as in the reference
    self.dwt = ReferenceDWT2D(wavename)
    self.softmax = nn.Softmax(dim=1)

  def forward(self, input):
    ll, lh, hl, _ = self.dwt(input)
    output = ll
    x_high = self.softmax(torch.add(lh, hl))
    att_map = torch.mul(output, x_high)
    output = torch.add(output, att_map)
    return output, ll


# ---------------------------------------------------------------------------
# Tuned: the DWT as a fixed depthwise strided convolution.


class TunedWaveletAttention(nn.Module):
  """The same function as FaithfulWaveletAttention via one grouped stride-2 conv.

  Kernels (correlation, first factor along height) from rec_lo/rec_hi with
  zero padding F/2 - 1 — exactly the reference's matrices: LL = lo x lo and,
  since WA only uses cH + cV, one summed kernel hi x lo + lo x hi. They form a
  non-persistent buffer registered once (not a parameter, not in state_dict).
  """

  def __init__(self, channels: int, wavename: str = "haar"):
    super().__init__()
    w = pywt.Wavelet(wavename)
    lo, hi = np.asarray(w.rec_lo), np.asarray(w.rec_hi)
    assert len(lo) % 2 == 0
    kernels = np.stack([np.outer(lo, lo), np.outer(hi, lo) + np.outer(lo, hi)])
    weight = np.tile(kernels[None], (channels, 1, 1, 1)).reshape(
        2 * channels, 1, len(lo), len(lo))
    self.register_buffer("weight", torch.tensor(weight, dtype=torch.float32),
                         persistent=False)
    self.channels = channels
    self.padding = len(lo) // 2 - 1

  def forward(self, x):
    y = F.conv2d(x, self.weight, stride=2, padding=self.padding, groups=self.channels)
    ll, high = y[:, 0::2], y[:, 1::2]  # groups interleave (LL_c, cH_c + cV_c)
    return ll + ll * torch.softmax(high, dim=1), ll


# ---------------------------------------------------------------------------
# The 20-layer CIFAR ResNet ("resnet18") with WA in stage 2's first block.


def _conv3x3(in_planes, out_planes, stride=1):
  return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
  """conv3x3 -> BN -> ReLU -> conv3x3 -> BN -> + shortcut -> ReLU.

  With `wa`: out, LL = wa(x); conv1 runs stride 1 on out; the shortcut is a
  stride-1 conv1x1 + BN on LL.
  """

  def __init__(self, in_planes, planes, stride=1, wa: nn.Module | None = None):
    super().__init__()
    self.wa = wa
    self.conv1 = _conv3x3(in_planes, planes, 1 if wa is not None else stride)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = _conv3x3(planes, planes)
    self.bn2 = nn.BatchNorm2d(planes)
    self.shortcut = nn.Sequential()
    if stride != 1 or in_planes != planes:
      self.shortcut = nn.Sequential(
          nn.Conv2d(in_planes, planes, 1, stride=1 if wa is not None else stride,
                    bias=False),
          nn.BatchNorm2d(planes))

  def forward(self, x):
    if self.wa is not None:
      out, ll = self.wa(x)
      short = self.shortcut(ll)
    else:
      out, short = x, self.shortcut(x)
    out = F.relu(self.bn1(self.conv1(out)))
    out = self.bn2(self.conv2(out))
    return F.relu(out + short)


class _WAResNet18(nn.Module):
  wa_class: type = None

  def __init__(self, num_classes: int = 10, wavename: str = "haar"):
    super().__init__()
    self.wavename = wavename
    self.in_planes = 16
    self.conv1 = _conv3x3(3, 16)
    self.bn1 = nn.BatchNorm2d(16)
    self.layer1 = self._make_layer(16, 3, 1)
    self.layer2 = self._make_layer(32, 3, 2)
    self.layer3 = self._make_layer(64, 3, 2)
    self.linear = nn.Linear(64, num_classes)

  def _make_layer(self, planes, num_blocks, stride):
    layers = []
    for s in [stride] + [1] * (num_blocks - 1):
      # The reference's condition: WA only where stride != 1 and 16 input channels.
      wa = (self.wa_class(self.in_planes, self.wavename)
            if s != 1 and self.in_planes == 16 else None)
      layers.append(BasicBlock(self.in_planes, planes, s, wa))
      self.in_planes = planes
    return nn.Sequential(*layers)

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.layer3(self.layer2(self.layer1(out)))
    out = F.adaptive_avg_pool2d(out, 1).flatten(1)
    return self.linear(out)


class FaithfulWAResNet18(_WAResNet18):
  """WA-ResNet18 with the reference's matrix DWT (rebuilt per forward), fp32 NCHW."""
  wa_class = FaithfulWaveletAttention


class TunedWAResNet18(_WAResNet18):
  """WA-ResNet18 with the DWT as a fixed depthwise strided conv buffer.

  Same parameters and state_dict keys as FaithfulWAResNet18. Meant to run
  channels_last + bf16 autocast + torch.compile on CUDA (see make_torch_train_step).
  """
  wa_class = TunedWaveletAttention


PEERS = {"faithful": FaithfulWAResNet18, "tuned": TunedWAResNet18}


# ---------------------------------------------------------------------------
# Training steps with the reference augmentation.


class CifarTrainTransform:
  """Per-image RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor + Normalize.

  Mirrors torchvision's transforms on one uint8 HWC image (numpy): random
  numbers from torch (as torchvision draws them), ToTensor's
  permute/contiguous/float/div(255), Normalize's sub_/div_ with fresh tensors.
  """

  def __init__(self, generator: torch.Generator | None = None):
    # generator None: torch's global RNG (as torchvision; per-worker seeded).
    self.generator = generator

  def __call__(self, img: np.ndarray) -> torch.Tensor:
    img = np.pad(img, ((4, 4), (4, 4), (0, 0)))  # RandomCrop(padding=4), fill 0
    i = int(torch.randint(0, 9, size=(1,), generator=self.generator).item())
    j = int(torch.randint(0, 9, size=(1,), generator=self.generator).item())
    img = img[i:i + 32, j:j + 32]
    if torch.rand(1, generator=self.generator) < 0.5:  # RandomHorizontalFlip
      img = img[:, ::-1]
    img = np.ascontiguousarray(img)
    tensor = torch.from_numpy(img.transpose((2, 0, 1))).contiguous()  # ToTensor
    tensor = tensor.to(dtype=torch.get_default_dtype()).div(255)
    mean = torch.as_tensor(CIFAR_MEAN, dtype=tensor.dtype)  # Normalize
    std = torch.as_tensor(CIFAR_STD, dtype=tensor.dtype)
    return tensor.sub_(mean[:, None, None]).div_(std[:, None, None])


class _CifarDataset(torch.utils.data.Dataset):
  def __init__(self, images, labels, transform):
    self.images, self.labels, self.transform = images, labels, transform

  def __len__(self):
    return len(self.images)

  def __getitem__(self, index):
    return self.transform(self.images[index]), int(self.labels[index])


def _sgd(model, device, fused):
  kwargs = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)
  if fused:
    kwargs["fused"] = True
  return torch.optim.SGD(model.parameters(), **kwargs)


class FaithfulTrainStep:
  """One SGD step of the reference's loop; augmentation per image on the CPU.

  `step(indices)` loads images[indices] through CifarTrainTransform one by one,
  collates (torch.stack), `.to(device)`, forward/backward/SGD step, and
  returns `loss.item()` (the reference accumulates it every step; a sync).
  `train_on_batch(inputs, targets)` does the same from an already collated CPU
  batch (what a DataLoader yields).
  """

  def __init__(self, model, device, images, labels, seed=0):
    self.device = torch.device(device)
    self.model = model.to(self.device).train()
    self.images = np.asarray(images, np.uint8)
    self.labels = np.asarray(labels, np.int64)
    self.generator = torch.Generator().manual_seed(seed)
    self.transform = CifarTrainTransform(self.generator)
    self.dataset = _CifarDataset(self.images, self.labels, self.transform)
    self.criterion = nn.CrossEntropyLoss()
    self.optimizer = _sgd(self.model, self.device, fused=False)

  def load_batch(self, indices):
    items = [self.dataset[int(i)] for i in indices]
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])

  def train_on_batch(self, inputs, targets):
    inputs, targets = inputs.to(self.device), targets.to(self.device)
    self.optimizer.zero_grad()
    outputs = self.model(inputs)
    loss = self.criterion(outputs, targets)
    loss.backward()
    self.optimizer.step()
    return loss.detach().item()

  def __call__(self, indices):
    return self.train_on_batch(*self.load_batch(indices))


class TunedTrainStep:
  """One SGD step with batched on-device augmentation from a device-resident uint8 set.

  `step(indices)` (a LongTensor, best already on the device) gathers the uint8
  NHWC images, zero-pads 4, crops 32x32 at random offsets and flips at random
  with one gather, normalises, and views the result as channels_last NCHW;
  then forward (bf16 autocast if `amp`) / backward / SGD (fused on CUDA).
  Returns the detached loss tensor (no host sync).
  """

  def __init__(self, model, device, images, labels, *, amp, compile, compile_mode=None,
               seed=0):
    self.device = torch.device(device)
    self.model = model.to(self.device, memory_format=torch.channels_last).train()
    self.images = torch.as_tensor(np.asarray(images, np.uint8)).to(self.device)
    self.labels = torch.as_tensor(np.asarray(labels, np.int64)).to(self.device)
    self.amp = amp
    self.forward = (torch.compile(self.model, mode=compile_mode) if compile
                    else self.model)
    self.generator = torch.Generator(device=self.device).manual_seed(seed)
    self.mean = torch.tensor(CIFAR_MEAN, device=self.device).view(1, 3, 1, 1) * 255
    self.std = torch.tensor(CIFAR_STD, device=self.device).view(1, 3, 1, 1) * 255
    self.arange = torch.arange(32, device=self.device)
    self.optimizer = _sgd(self.model, self.device, fused=self.device.type == "cuda")

  def augment(self, indices):
    indices = indices.to(self.device)
    n = indices.numel()
    x = F.pad(self.images[indices], (0, 0, 4, 4, 4, 4))  # (n, 40, 40, 3) uint8
    offsets = torch.randint(0, 9, (n, 2), device=self.device, generator=self.generator)
    flip = torch.rand(n, device=self.device, generator=self.generator) < 0.5
    rows = offsets[:, :1] + self.arange                     # (n, 32)
    cols = offsets[:, 1:] + self.arange
    cols = torch.where(flip[:, None], cols.flip(1), cols)   # flip after the crop
    batch = torch.arange(n, device=self.device)[:, None, None]
    x = x[batch, rows[:, :, None], cols[:, None, :]]        # (n, 32, 32, 3)
    x = (x.permute(0, 3, 1, 2).float() - self.mean) / self.std
    return x.contiguous(memory_format=torch.channels_last), self.labels[indices]

  def train_on_batch(self, inputs, targets):
    with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
      loss = F.cross_entropy(self.forward(inputs), targets)
    self.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    self.optimizer.step()
    return loss.detach()

  def __call__(self, indices):
    return self.train_on_batch(*self.augment(indices))


def make_torch_train_step(model: nn.Module, *, tuned: bool, device,
                          images: np.ndarray, labels: np.ndarray,
                          amp: bool | None = None, compile: bool | None = None,
                          compile_mode: str | None = None,
                          seed: int = 0) -> Callable:
  """A callable `step(indices)` running one SGD step on images[indices] (with augmentation).

  SGD lr 0.1, momentum 0.9, weight decay 5e-4 (coupled), cross-entropy.
  `images`: (N, 32, 32, 3) uint8 (HWC, like torchvision's CIFAR10.data);
  `labels`: (N,) ints. Moves `model` to `device` (in place).

  tuned=False -> FaithfulTrainStep: per-image CPU augmentation, `.to(device)`,
  fp32 NCHW eager; returns loss.item().
  tuned=True  -> TunedTrainStep: the training set kept on `device` as uint8,
  batched augmentation there, channels_last; `amp` (bf16 autocast) and
  `compile` (torch.compile of the model) default to True on CUDA and False
  on CPU (on CPU it runs eager fp32 so that quick runs take seconds);
  returns the loss as a device tensor.
  """
  device = torch.device(device)
  if not tuned:
    return FaithfulTrainStep(model, device, images, labels, seed=seed)
  on_cuda = device.type == "cuda"
  if on_cuda:
    torch.backends.cudnn.benchmark = True
  return TunedTrainStep(model, device, images, labels,
                        amp=on_cuda if amp is None else amp,
                        compile=on_cuda if compile is None else compile,
                        compile_mode=compile_mode, seed=seed)


def time_torch_training(peer: str, batch_size: int, device: str = "cuda",
                        steps: int = 50, warmup: int = 10, windows: int = 3, *,
                        dataset_size: int = 50_000, num_workers: int = 0,
                        amp: bool | None = None, compile: bool | None = None,
                        compile_mode: str | None = None,
                        seed: int = 0) -> list[float]:
  """Training throughput of a peer, in images/s, one value per timed window.

  peer: "faithful" or "tuned". Trains on a synthetic CIFAR-shaped uint8 set of
  `dataset_size` images (random pixels and labels), shuffled each epoch,
  drop_last batches of `batch_size`, augmentation included in the timing.
  Runs `warmup` untimed steps (torch.compile happens there), then `windows`
  windows of `steps` steps each; the clock stops after torch.cuda.synchronize
  when on CUDA (the faithful step also syncs every step via loss.item()).

  faithful: a torch.utils.data.DataLoader over per-image CPU transforms
  (`num_workers` as for any DataLoader; 0 = in the main process, the default),
  batches `.to(device)`, fp32 NCHW eager, cudnn.benchmark on CUDA.
  tuned: data on `device`, on-device batched augmentation, channels_last;
  torch.compile and bf16 autocast ONLY on CUDA by default (on CPU: eager fp32,
  so a --quick CPU run takes seconds); `amp`/`compile` override that.
  """
  if peer not in PEERS:
    raise ValueError(f"unknown peer {peer!r}; choose from {sorted(PEERS)}")
  device = torch.device(device)
  on_cuda = device.type == "cuda"
  if dataset_size < batch_size:
    raise ValueError(f"dataset_size {dataset_size} < batch_size {batch_size}")
  torch.manual_seed(seed)
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (dataset_size, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, (dataset_size,), dtype=np.int64)
  model = PEERS[peer]()
  tuned = peer == "tuned"
  if on_cuda:
    torch.backends.cudnn.benchmark = True  # the reference sets it too
  step = make_torch_train_step(model, tuned=tuned, device=device, images=images,
                               labels=labels, amp=amp, compile=compile,
                               compile_mode=compile_mode, seed=seed)

  if not tuned and num_workers > 0:
    step.transform.generator = None  # global RNG, seeded per worker by the DataLoader
  if tuned:
    def batches():
      g = torch.Generator(device=device).manual_seed(seed + 1)
      while True:
        perm = torch.randperm(dataset_size, device=device, generator=g)
        for k in range(dataset_size // batch_size):
          yield perm[k * batch_size:(k + 1) * batch_size]
    it = batches()
    run_one = lambda: step(next(it))
  else:
    loader = torch.utils.data.DataLoader(
        step.dataset, batch_size=batch_size, shuffle=True, drop_last=True,
        num_workers=num_workers, pin_memory=on_cuda,
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(seed + 1))

    def batches():
      while True:
        yield from loader
    it = batches()
    run_one = lambda: step.train_on_batch(*next(it))

  sync = torch.cuda.synchronize if on_cuda else (lambda: None)
  for _ in range(warmup):
    run_one()
  sync()
  rates = []
  for _ in range(windows):
    start = time.perf_counter()
    for _ in range(steps):
      run_one()
    sync()
    rates.append(steps * batch_size / (time.perf_counter() - start))
  return rates
