"""Shared fixtures: small real image folders cut from the shared CIFAR-10 archive."""

import io
import os
import tarfile

import numpy as np
from PIL import Image
import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_ARCHIVE = os.path.join(REPO_ROOT, "..", "shared", "data", "cifar10-jpeg.tar.gz")



@pytest.fixture(scope="session")
def cifar10_archive():
  """Path of the shared CIFAR-10 JPEG archive; skips when ../shared is absent."""
  if not os.path.exists(SHARED_ARCHIVE):
    pytest.skip("../shared/data/cifar10-jpeg.tar.gz not available")
  return os.path.abspath(SHARED_ARCHIVE)


def write_cifar_subset(archive: str, root: str, per_class: dict) -> str:
  """Copies the first `per_class[split]` images of each class into root/split/label/."""
  counts = {}
  with tarfile.open(archive) as tar:
    for member in tar:
      parts = member.name.split("/")
      if not member.isfile() or len(parts) < 3:
        continue
      split, label = parts[-3], parts[-2]
      if split not in per_class or counts.get((split, label), 0) >= per_class[split]:
        continue
      counts[(split, label)] = counts.get((split, label), 0) + 1
      os.makedirs(os.path.join(root, split, label), exist_ok=True)
      with open(os.path.join(root, split, label, parts[-1]), "wb") as f:
        f.write(tar.extractfile(member).read())
  return root


@pytest.fixture(scope="session")
def cifar10_small(cifar10_archive, tmp_path_factory):
  """A real image folder: 300 train and 60 test images per class (3,000 / 600)."""
  root = str(tmp_path_factory.mktemp("cifar10_small"))
  return write_cifar_subset(cifar10_archive, root, {"train": 300, "test": 60})


@pytest.fixture(scope="session")
def synthetic_folder(tmp_path_factory):
  """A tiny folder of random PNG/JPEG images, 3 classes; no shared data needed."""
  root = tmp_path_factory.mktemp("synthetic")
  rng = np.random.default_rng(0)
  for split, n in (("train", 6), ("test", 4)):
    for label in ("cat", "ant", "bee"):
      os.makedirs(root / split / label)
      for i in range(n):
        pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        ext = "png" if i % 2 else "jpg"
        Image.fromarray(pixels).save(root / split / label / f"{i:03d}.{ext}")
  return str(root)
