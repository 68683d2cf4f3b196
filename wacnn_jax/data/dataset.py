"""What every reader returns: a `Dataset` of two splits, or a `DatasetError`.

    dataset.train.images   uint8 (N, H, W, 3) NHWC (a `Split`, held in host memory)
    dataset.train.labels   int32 (N,)
    dataset.class_names    label k's name; dataset.num_classes, dataset.image_shape (H, W, 3)

The memory pipeline's splits are `Split`s; the stream pipeline's are
`streaming.StreamSplit`s, read on demand. Both have `len`, `labels`,
`image_shape`, `checksum()`, `subset(n)` and `statistics_sample()`.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import numpy as np


class DatasetError(RuntimeError):
  """A dataset could not be found or read, or is not what it promises; the message says how to fix it."""


@dataclasses.dataclass(frozen=True)
class Split:
  """One split held in host memory: images uint8 (N, H, W, 3), labels int32 (N,)."""

  images: np.ndarray
  labels: np.ndarray

  def __post_init__(self):
    if self.images.ndim != 4 or self.images.shape[-1] != 3:
      raise DatasetError(f"images must be (N, H, W, 3), got {self.images.shape}")
    if self.images.shape[0] != self.labels.shape[0]:
      raise DatasetError(
          f"{self.images.shape[0]} images but {self.labels.shape[0]} labels")

  def __len__(self) -> int:
    return int(self.labels.shape[0])

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.images.shape[1:])

  def checksum(self) -> str:
    """sha256 of the split's decoded images and labels (`content_sha256`)."""
    return content_sha256(self.images, self.labels)

  def statistics_sample(self) -> np.ndarray:
    """The images the normalisation statistics are computed on: all of them."""
    return self.images

  def subset(self, max_examples: int | None) -> "Split":
    """The first `max_examples` of a fixed (seed 0) permutation, in index order.

    Deterministic, and close to class-balanced for a shuffled source.
    """
    if not max_examples or max_examples >= len(self):
      return self
    keep = np.sort(np.random.default_rng(0).permutation(len(self))[:max_examples])
    return Split(self.images[keep], self.labels[keep])


def content_sha256(images: np.ndarray, labels: np.ndarray) -> str:
  """sha256 of a split as trained on: its shape, then its uint8 images and int32 labels (little
  endian)."""
  digest = hashlib.sha256(f"{images.shape}".encode())
  digest.update(np.ascontiguousarray(images, np.uint8).data)
  digest.update(np.ascontiguousarray(labels, "<i4").data)
  return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Train and test splits plus class metadata; `summary` as `load_dataset` returns it."""

  name: str
  train: Any  # Split, or streaming.StreamSplit
  test: Any
  class_names: tuple[str, ...]
  summary: Any = None  # checks.DatasetSummary, as `pipeline.load` returns it
  preprocessing: Any = None  # transforms.Preprocessing, as `pipeline.load` returns it

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.train.image_shape)

  @property
  def streamed(self) -> bool:
    """Whether the splits are read on demand (the stream pipeline), not held in memory."""
    return not isinstance(self.train, Split)
