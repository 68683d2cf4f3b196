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
def subprocess_env(tmp_path_factory):
  """Environment for tests' child processes: one persistent XLA compile cache per test session."""
  return dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("xla_cache")),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


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
def random_image_folder(tmp_path_factory):
  """Factory: `make(train, test)` writes a folder of random 32x32 images, 3 classes.

  `train` / `test` images per class, alternately JPEG and PNG; no shared data needed.
  """

  def make(train: int, test: int) -> str:
    root = tmp_path_factory.mktemp("random_images")
    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("test", test)):
      for label in ("cat", "ant", "bee"):
        os.makedirs(root / split / label)
        for i in range(n):
          pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
          ext = "png" if i % 2 else "jpg"
          Image.fromarray(pixels).save(root / split / label / f"{i:03d}.{ext}")
    return str(root)

  return make


@pytest.fixture(scope="session")
def synthetic_folder(random_image_folder):
  """A tiny folder of random PNG/JPEG images: 6 train and 4 test per class, 3 classes."""
  return random_image_folder(6, 4)


# ---------------------------------------------------------------------------
# Post-training tools (tests/test_evaluate.py, test_report.py, test_visualize.py):
# smoke-config runs on the cifar10_small folder, each trained once per session.
# Tests must not write into these workdirs; copy one first (`copy_run`).
# ---------------------------------------------------------------------------


class SmokeRun:
  """A finished smoke training run: its config and workdir."""

  def __init__(self, config, workdir):
    self.config = config
    self.workdir = workdir


def smoke_run_config(image_folder, **overrides):
  """configs/cifar.py:smoke on `image_folder`, with dotted-key overrides."""
  from configs import cifar  # pylint: disable=g-import-not-at-top
  config = cifar.get_config("smoke")
  config.data.image_folder = image_folder
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    target = config
    for parent in parents:
      target = target[parent]
    target[leaf] = value
  return config


def _train_smoke_run(image_folder, tmp_path_factory, name, **overrides) -> SmokeRun:
  from wacnn_jax import train  # pylint: disable=g-import-not-at-top
  config = smoke_run_config(image_folder, **overrides)
  workdir = str(tmp_path_factory.mktemp(name, numbered=False))
  train.train_and_evaluate(config, workdir)
  return SmokeRun(config, workdir)


def copy_run(run: SmokeRun, destination) -> SmokeRun:
  """A copy of `run`'s workdir at `destination` (for tests that write into it)."""
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.copytree(run.workdir, str(destination))
  return SmokeRun(run.config, str(destination))


@pytest.fixture(scope="session")
def smoke_wa_run(cifar10_small, tmp_path_factory):
  """ResNet18 + WA, seed 0: 2 epochs on 512 real CIFAR-10 images."""
  return _train_smoke_run(cifar10_small, tmp_path_factory, "wa_seed0")


@pytest.fixture(scope="session")
def smoke_baseline_run(cifar10_small, tmp_path_factory):
  """ResNet18 without attention, seed 0 (otherwise as smoke_wa_run)."""
  return _train_smoke_run(cifar10_small, tmp_path_factory, "baseline_seed0",
                          **{"model.attention": "none"})


@pytest.fixture(scope="session")
def smoke_wa_seed1_run(cifar10_small, tmp_path_factory):
  """smoke_wa_run's config with seed 1: a second repetition of the same configuration."""
  return _train_smoke_run(cifar10_small, tmp_path_factory, "wa_seed1", seed=1)


@pytest.fixture(scope="session")
def evaluated_wa_run(smoke_wa_run, tmp_path_factory):
  """A copy of smoke_wa_run evaluated with a noise sweep (writes eval.json there).

  Returns (run, eval result, printed text).
  """
  import contextlib  # pylint: disable=g-import-not-at-top
  from wacnn_jax import evaluate  # pylint: disable=g-import-not-at-top
  run = copy_run(smoke_wa_run, tmp_path_factory.mktemp("evaluated") / "wa_seed0")
  options = evaluate.default_options()
  options.noise = True
  options.gaussian_stddevs, options.salt_pepper_amounts, options.blur_sigmas = (
      (0.0, 0.5), (0.3,), (2.0,))
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    result = evaluate.evaluate_checkpoint(run.config, run.workdir, options)
  return run, result, printed.getvalue()
