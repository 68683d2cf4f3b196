"""PyTorch peers of the WA-ResNet18 and MobileNetV2 train steps, for the speed comparisons.

The peers of throughput.py (WA-ResNet18) and depthwise.py (MobileNetV2 with
and without WA, WA-ResNet18 with a long wavelet).

"resnet18" is the reference's 20-layer CIFAR ResNet (BasicBlock x [3, 3, 3],
16/32/64 channels) with Wavelet-Attention (WA) in place of stage 2's first
stride. Images NCHW; the training set (N, 32, 32, 3) uint8 HWC. Both peers
have the same parameters and state_dict keys and train with SGD (lr 0.1,
momentum 0.9, weight decay 5e-4), cross-entropy and the reference's
augmentation (zero-pad 4, random 32x32 crop, random flip, normalise):

* faithful, as the reference runs: the DWT multiplies by the matrices of
  `benchmarks.matrix_dwt.reference_dwt_matrices`, rebuilt on every forward,
  through the reference's autograd Function; per-image augmentation on the
  CPU, batches collated by a DataLoader and copied over; fp32 eager.
* tuned: the DWT as one fixed depthwise stride-2 convolution; the uint8 set
  on the device, augmented there in batches; channels_last; on CUDA also bf16
  autocast, torch.compile and fused SGD (a CPU runs it eager fp32, quickly).
* tuned-fp32: tuned without the bf16 autocast, beside an fp32 wacnn_jax step.
"""

from __future__ import annotations

import itertools
import statistics
import time

import numpy as np
import pywt
import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmarks.matrix_dwt import reference_dwt_matrices

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)


class _ReferenceDWTFunction(torch.autograd.Function):
  """The reference's DWTFunction_2D: four matrix products forward, their transposes back."""

  @staticmethod
  def forward(ctx, x, low_h, low_w, high_h, high_w):
    ctx.save_for_backward(low_h, low_w, high_h, high_w)
    low, high = torch.matmul(low_h, x), torch.matmul(high_h, x)
    return (torch.matmul(low, low_w), torch.matmul(low, high_w),
            torch.matmul(high, low_w), torch.matmul(high, high_w))

  @staticmethod
  def backward(ctx, grad_ll, grad_lh, grad_hl, grad_hh):
    low_h, low_w, high_h, high_w = ctx.saved_tensors
    grad_low = torch.add(torch.matmul(grad_ll, low_w.t()), torch.matmul(grad_lh, high_w.t()))
    grad_high = torch.add(torch.matmul(grad_hl, low_w.t()), torch.matmul(grad_hh, high_w.t()))
    grad_x = torch.add(torch.matmul(low_h.t(), grad_low), torch.matmul(high_h.t(), grad_high))
    return grad_x, None, None, None, None


def reference_dwt2(x: torch.Tensor, wavelet: str = "haar"):
  """The reference's DWT_2D of NCHW `x`: (LL, LH, HL, HH), each (N, C, H/2, W/2).

  Reference naming: LH = pywt's cV, HL = cH, HH = cD. As in the reference,
  the matrices are rebuilt (numpy -> float32 tensor -> x's device) on every
  call, and only fp32 works (the backward fails under bf16 autocast).
  """
  matrices = reference_dwt_matrices(x.shape[-2], x.shape[-1], wavelet)
  return _ReferenceDWTFunction.apply(x, *(torch.Tensor(m).to(x.device) for m in matrices))


class WaveletAttention(nn.Module):
  """WA on NCHW x: returns (LL + LL * softmax_channels(LH + HL), LL), each (N, C, H/2, W/2).

  No parameters. tuned=False: `reference_dwt2`. tuned=True: one grouped
  stride-2 correlation, zero padding F/2 - 1 as in the reference's matrices,
  with the fixed kernels LL = lo x lo and cH + cV = hi x lo + lo x hi (from
  rec_lo / rec_hi) in a non-persistent buffer (no state_dict key).
  """

  def __init__(self, channels: int, wavelet: str = "haar", tuned: bool = False):
    super().__init__()
    self.channels, self.wavelet, self.tuned = channels, wavelet, tuned
    if tuned:
      w = pywt.Wavelet(wavelet)
      lo, hi = np.asarray(w.rec_lo), np.asarray(w.rec_hi)
      kernels = np.stack([np.outer(lo, lo), np.outer(hi, lo) + np.outer(lo, hi)])
      weight = np.tile(kernels, (channels, 1, 1))[:, None]  # (2C, 1, F, F)
      self.register_buffer("weight", torch.tensor(weight, dtype=torch.float32),
                           persistent=False)
      self.padding = len(lo) // 2 - 1

  def forward(self, x):
    if self.tuned:
      y = F.conv2d(x, self.weight, stride=2, padding=self.padding, groups=self.channels)
      ll, high = y[:, 0::2], y[:, 1::2]  # the groups interleave (LL_c, cH_c + cV_c)
    else:
      ll, lh, hl, _ = reference_dwt2(x, self.wavelet)
      high = lh + hl
    return ll + ll * torch.softmax(high, dim=1), ll


class BasicBlock(nn.Module):
  """NCHW conv3x3 -> BN -> ReLU -> conv3x3 -> BN -> + shortcut -> ReLU.

  With `wa`, conv1 runs at stride 1 on wa's out and the shortcut (conv1x1 + BN) on its LL.
  """

  def __init__(self, in_planes, planes, stride=1, wa: nn.Module | None = None):
    super().__init__()
    self.wa = wa
    stride_here = 1 if wa is not None else stride
    self.conv1 = nn.Conv2d(in_planes, planes, 3, stride_here, padding=1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.shortcut = nn.Sequential(
        nn.Conv2d(in_planes, planes, 1, stride=stride_here, bias=False),
        nn.BatchNorm2d(planes)) if stride != 1 or in_planes != planes else nn.Sequential()

  def forward(self, x):
    out, short = self.wa(x) if self.wa is not None else (x, x)
    out = F.relu(self.bn1(self.conv1(out)))
    out = self.bn2(self.conv2(out))
    return F.relu(out + self.shortcut(short))


class WAResNet18(nn.Module):
  """WA-ResNet18: NCHW (N, 3, 32, 32) -> logits (N, num_classes); `tuned` picks WA's DWT."""

  def __init__(self, num_classes: int = 10, wavelet: str = "haar", tuned: bool = False):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
    self.bn1 = nn.BatchNorm2d(16)
    stages, in_planes = [], 16
    for planes, stride in ((16, 1), (32, 2), (64, 2)):
      blocks = []
      for s in (stride, 1, 1):
        # The reference's condition: WA where the stride is not 1 and 16 channels come in.
        wa = WaveletAttention(in_planes, wavelet, tuned) if s != 1 and in_planes == 16 else None
        blocks.append(BasicBlock(in_planes, planes, s, wa))
        in_planes = planes
      stages.append(nn.Sequential(*blocks))
    self.layer1, self.layer2, self.layer3 = stages
    self.linear = nn.Linear(64, num_classes)

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.layer3(self.layer2(self.layer1(out)))
    return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


class InvertedResidual(nn.Module):
  """The reference's CIFAR MobileNetV2 block on NCHW: expand 1x1, depthwise 3x3, project 1x1.

  conv1x1 -> BN -> ReLU -> depthwise conv3x3 (groups = channels) -> BN -> ReLU
  -> conv1x1 -> BN; + shortcut at stride 1 (identity, or conv1x1 + BN). With
  `wa` a stride-2 block runs WA (its `out`) on the expanded features and the
  depthwise conv at stride 1.
  """

  def __init__(self, in_planes, planes, expansion, stride, wa: nn.Module | None = None):
    super().__init__()
    hidden = expansion * in_planes
    self.stride, self.wa = stride, wa
    self.conv1 = nn.Conv2d(in_planes, hidden, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(hidden)
    self.conv2 = nn.Conv2d(hidden, hidden, 3, 1 if wa is not None else stride, padding=1,
                           groups=hidden, bias=False)
    self.bn2 = nn.BatchNorm2d(hidden)
    self.conv3 = nn.Conv2d(hidden, planes, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes)
    self.shortcut = nn.Sequential(
        nn.Conv2d(in_planes, planes, 1, bias=False),
        nn.BatchNorm2d(planes)) if stride == 1 and in_planes != planes else nn.Sequential()

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    if self.wa is not None:
      out = self.wa(out)[0]
    out = F.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    return out + self.shortcut(x) if self.stride == 1 else out


class MobileNetV2(nn.Module):
  """The reference's CIFAR MobileNetV2 (stride-1 stem and second stage, plain ReLU), NCHW.

  (N, 3, 32, 32) -> logits (N, num_classes); `wa`: WA in every stride-2 block
  (`tuned` picks its DWT, as WAResNet18's). The stages of
  wacnn_jax.models.mobilenet_v2.STAGES.
  """

  STAGES = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
            (6, 160, 3, 2), (6, 320, 1, 1))

  def __init__(self, num_classes: int = 10, wa: bool = False, wavelet: str = "haar",
               tuned: bool = False):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 32, 3, padding=1, bias=False)
    self.bn1 = nn.BatchNorm2d(32)
    blocks, in_planes = [], 32
    for expansion, planes, repeats, stride in self.STAGES:
      for s in [stride] + [1] * (repeats - 1):
        attention = (WaveletAttention(expansion * in_planes, wavelet, tuned)
                     if wa and s == 2 else None)
        blocks.append(InvertedResidual(in_planes, planes, expansion, s, attention))
        in_planes = planes
    self.layers = nn.Sequential(*blocks)
    self.conv2 = nn.Conv2d(320, 1280, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(1280)
    self.linear = nn.Linear(1280, num_classes)

  def forward(self, x):
    out = self.layers(F.relu(self.bn1(self.conv1(x))))
    out = F.relu(self.bn2(self.conv2(out)))
    return self.linear(F.avg_pool2d(out, 4).flatten(1))


# The peers' networks by name: (tuned, wavelet) -> module.
MODELS = {
    "resnet18-wa": lambda tuned, wavelet: WAResNet18(wavelet=wavelet, tuned=tuned),
    "mobilenetv2": lambda tuned, wavelet: MobileNetV2(tuned=tuned),
    "mobilenetv2-wa": lambda tuned, wavelet: MobileNetV2(wa=True, wavelet=wavelet, tuned=tuned),
}


def augment_one(image: np.ndarray, generator: torch.Generator) -> torch.Tensor:
  """(32, 32, 3) uint8 HWC -> (3, 32, 32) float32: the reference's per-image transforms.

  torchvision's RandomCrop(32, padding=4), RandomHorizontalFlip(), ToTensor(),
  Normalize(CIFAR_MEAN, CIFAR_STD): the same operations and random draws, on a
  numpy array, so that torchvision (its wheel must match torch's build) is no dependency.
  """
  image = np.pad(image, ((4, 4), (4, 4), (0, 0)))
  i, j = (int(torch.randint(0, 9, (1,), generator=generator)) for _ in range(2))
  image = image[i:i + 32, j:j + 32]
  if torch.rand(1, generator=generator) < 0.5:
    image = image[:, ::-1]
  tensor = torch.from_numpy(np.ascontiguousarray(image).transpose(2, 0, 1)).contiguous()
  tensor = tensor.float().div(255)
  mean, std = torch.as_tensor(CIFAR_MEAN), torch.as_tensor(CIFAR_STD)
  return tensor.sub_(mean[:, None, None]).div_(std[:, None, None])


class TrainStep:
  """A peer's SGD step on `images` (N, 32, 32, 3) uint8 and `labels` (N,); moves `model`.

  `augment(indices)` -> (inputs (n, 3, 32, 32) float32 NCHW, targets (n,)):
  faithful per image on the CPU, tuned batched on the device, channels_last.
  `train_on_batch(inputs, targets)` returns `loss.item()` (faithful: a sync
  each step, as in the reference) or the detached loss on the device (tuned).
  """

  def __init__(self, model, device, images, labels, *, tuned: bool, seed: int = 0,
               bf16: bool = True):
    self.device, self.tuned = torch.device(device), tuned
    if self.device.type == "cuda":
      torch.backends.cudnn.benchmark = True  # the reference sets it too
    self.tuned_on_cuda = tuned and self.device.type == "cuda"  # compile, fused SGD
    self.autocast = self.tuned_on_cuda and bf16  # bf16 autocast of the forward pass
    self.images, self.labels = np.asarray(images, np.uint8), np.asarray(labels, np.int64)
    self.generator = torch.Generator(self.device if tuned else "cpu").manual_seed(seed)
    if tuned:  # the training set on the device, the model channels_last
      self.images, self.labels = (torch.as_tensor(a, device=self.device)
                                  for a in (self.images, self.labels))
      self.mean, self.std = (torch.tensor(v, device=self.device).view(1, 3, 1, 1) * 255
                             for v in (CIFAR_MEAN, CIFAR_STD))
      self.model = model.to(self.device, memory_format=torch.channels_last).train()
    else:
      self.model = model.to(self.device).train()
    self.forward = torch.compile(self.model) if self.tuned_on_cuda else self.model
    self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9,
                                     weight_decay=5e-4,
                                     **({"fused": True} if self.tuned_on_cuda else {}))

  def augment(self, indices):
    if not self.tuned:  # as a DataLoader over torchvision's CIFAR10 collates a batch
      indices = [int(i) for i in indices]
      inputs = torch.stack([augment_one(self.images[i], self.generator) for i in indices])
      return inputs, torch.as_tensor(self.labels[indices])
    indices = indices.to(self.device)
    n = indices.numel()
    x = F.pad(self.images[indices], (0, 0, 4, 4, 4, 4))  # (n, 40, 40, 3) uint8
    offsets = torch.randint(0, 9, (n, 2), device=self.device, generator=self.generator)
    flip = torch.rand(n, device=self.device, generator=self.generator) < 0.5
    span = torch.arange(32, device=self.device)
    rows, cols = offsets[:, :1] + span, offsets[:, 1:] + span  # (n, 32) each
    cols = torch.where(flip[:, None], cols.flip(1), cols)  # flip after the crop
    x = x[torch.arange(n, device=self.device)[:, None, None], rows[:, :, None], cols[:, None]]
    x = (x.permute(0, 3, 1, 2).float() - self.mean) / self.std
    return x.contiguous(memory_format=torch.channels_last), self.labels[indices]

  def train_on_batch(self, inputs, targets):
    inputs, targets = inputs.to(self.device), targets.to(self.device)
    with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
      loss = F.cross_entropy(self.forward(inputs), targets)
    self.optimizer.zero_grad()
    loss.backward()
    self.optimizer.step()
    return loss.detach() if self.tuned else loss.item()


# Peer name -> (tuned, bf16 autocast on CUDA). "tuned-fp32": tuned without autocast,
# the like-for-like peer of an fp32 wacnn_jax step.
PEERS = {"faithful": (False, False), "tuned": (True, True), "tuned-fp32": (True, False)}


def training_runner(peer: str, batch_size: int, device: str = "cuda",
                    dataset_size: int = 50_000, seed: int = 0, model: str = "resnet18-wa",
                    wavelet: str = "haar"):
  """`seconds(count)`: the time of `count` train steps of `peer` (`PEERS`).

  `model`: a name of MODELS (WA with `wavelet`). `dataset_size` random images
  and labels in shuffled epochs of drop_last batches, augmentation included;
  the clock stops after a CUDA sync.
  """
  if peer not in PEERS:
    raise ValueError(f"unknown peer {peer!r}; one of {', '.join(PEERS)}")
  tuned, bf16 = PEERS[peer]
  if dataset_size < batch_size:
    raise ValueError(f"dataset_size {dataset_size} < batch_size {batch_size}")
  if model not in MODELS:
    raise ValueError(f"unknown peer model {model!r}; one of {', '.join(MODELS)}")
  torch.manual_seed(seed)
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (dataset_size, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, (dataset_size,))
  step = TrainStep(MODELS[model](tuned, wavelet), device, images, labels, tuned=tuned,
                   seed=seed, bf16=bf16)
  if tuned:  # permutations drawn on the device
    generator = torch.Generator(step.device).manual_seed(seed + 1)

    def epochs():
      while True:
        order = torch.randperm(dataset_size, device=step.device, generator=generator)
        yield from map(step.augment, order.split(batch_size)[:dataset_size // batch_size])
    batches = epochs()
  else:  # a DataLoader over the indices collating with `augment`, in this process
    loader = torch.utils.data.DataLoader(
        range(dataset_size), batch_size, shuffle=True, drop_last=True,
        collate_fn=step.augment, pin_memory=step.device.type == "cuda",
        generator=torch.Generator().manual_seed(seed + 1))
    batches = itertools.chain.from_iterable(itertools.repeat(loader))

  def seconds(count):
    start = time.perf_counter()
    for _ in range(count):
      step.train_on_batch(*next(batches))
    if step.device.type == "cuda":
      torch.cuda.synchronize()
    return time.perf_counter() - start

  return seconds


def time_training(peer: str, batch_size: int, device: str = "cuda", steps: int = 50,
                  warmup: int = 10, repeats: int = 3, dataset_size: int = 50_000,
                  seed: int = 0, model: str = "resnet18-wa", wavelet: str = "haar") -> float:
  """Training images/s of `peer`: the median over `repeats` timings of `steps` steps.

  `warmup` untimed steps first (where torch.compile compiles); the rest as
  `training_runner`.
  """
  seconds = training_runner(peer, batch_size, device, dataset_size, seed, model, wavelet)
  seconds(warmup)
  return statistics.median(steps * batch_size / seconds(steps) for _ in range(repeats))
