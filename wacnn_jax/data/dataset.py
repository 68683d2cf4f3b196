"""What every reader returns: a `Dataset` of two `Split`s held in host memory, or a `DatasetError`.

    dataset.train.images   uint8 (N, H, W, 3) NHWC
    dataset.train.labels   int32 (N,)
    dataset.class_names    label k's name; dataset.num_classes, dataset.image_shape (H, W, 3)
"""

from __future__ import annotations

import dataclasses
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

  def subset(self, max_examples: int | None) -> "Split":
    """The first `max_examples` of a fixed (seed 0) permutation, in index order.

    Deterministic, and close to class-balanced for a shuffled source.
    """
    if not max_examples or max_examples >= len(self):
      return self
    keep = np.sort(np.random.default_rng(0).permutation(len(self))[:max_examples])
    return Split(self.images[keep], self.labels[keep])


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Train and test splits plus class metadata; `summary` as `load_dataset` returns it."""

  name: str
  train: Split
  test: Split
  class_names: tuple[str, ...]
  summary: Any = None  # checks.DatasetSummary, as `pipeline.load` returns it
  preprocessing: Any = None  # transforms.Preprocessing, as `pipeline.load` returns it

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.train.images.shape[1:])
