"""Fixtures: real CIFAR-10 images (committed tests/data/cifar10-mini.tar.gz), smoke runs on them.

The full CIFAR-10 archive is looked up in `$WACNN_JAX_SHARED_DATA` (default
`<repo>/../shared/data`); only tests marked `full_cifar10` use it, and they
skip when it is absent.
"""

import contextlib
import io
import os
import sys

import numpy as np
from PIL import Image
import pytest

from tests import helpers
from wacnn_jax.tools import evaluate

# Triton (the GPU kernel compiler that CUDA builds of torch install) crashes the process
# (SIGSEGV in its LLVM's initialisers) when it is loaded after TensorFlow, which tfds tests
# import; torch, which the tests use on the CPU, imports it only if it can. Kept out.
sys.modules.setdefault("triton", None)

SHARED_DATA = os.environ.get("WACNN_JAX_SHARED_DATA",
                             os.path.join(helpers.REPO_ROOT, "..", "shared", "data"))


@pytest.fixture(scope="session", autouse=True)
def user_cache_folder(tmp_path_factory):
  """XDG_CACHE_HOME of the session and its child processes: decoded datasets (the default
  `data.cache_dir`) are cached in a session folder, not in the user's ~/.cache."""
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache_home")))
    yield


@pytest.fixture(scope="session")
def subprocess_env(tmp_path_factory):
  """Environment for tests' child processes: one persistent XLA compile cache per test session."""
  return dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("xla_cache")),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


@pytest.fixture(scope="session")
def cifar10_archive():
  """Path of the full CIFAR-10 JPEG archive (50,000 / 10,000); skips when it is absent."""
  path = os.path.abspath(os.path.join(SHARED_DATA, "cifar10-jpeg.tar.gz"))
  if not os.path.exists(path):
    pytest.skip(f"full CIFAR-10 archive not found at {path} (set WACNN_JAX_SHARED_DATA)")
  return path


@pytest.fixture(scope="session")
def cifar10_mini():
  """Path of tests/data/cifar10-mini.tar.gz: real CIFAR-10 JPEGs, 52 train and 26 test per class.

  520 / 260 images in 10 classes, enough for configs/cifar.py:smoke's 512 / 256.
  """
  return helpers.CIFAR10_MINI


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
# Smoke-config runs on cifar10_mini, each trained once per session (helpers.SmokeRun).
# Tests must not write into these workdirs; copy one first (`helpers.copy_run`).
# ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def smoke_wa_run(cifar10_mini, tmp_path_factory):
  """ResNet18 + WA, seed 0: configs/cifar.py:smoke (2 epochs, 512 / 256 real CIFAR-10 images)."""
  return helpers.train_smoke_run(cifar10_mini, tmp_path_factory.mktemp("wa_seed0", numbered=False))


@pytest.fixture(scope="session")
def smoke_baseline_run(cifar10_mini, tmp_path_factory):
  """ResNet18 without attention, seed 0 (otherwise as smoke_wa_run)."""
  return helpers.train_smoke_run(cifar10_mini,
                                 tmp_path_factory.mktemp("baseline_seed0", numbered=False),
                                 **{"model.attention": "none"})


@pytest.fixture(scope="session")
def smoke_wa_seed1_run(cifar10_mini, tmp_path_factory):
  """smoke_wa_run's config with seed 1: a second repetition of the same configuration."""
  return helpers.train_smoke_run(cifar10_mini, tmp_path_factory.mktemp("wa_seed1", numbered=False),
                                 seed=1)


@pytest.fixture(scope="session")
def evaluated_wa_run(smoke_wa_run, tmp_path_factory):
  """A copy of smoke_wa_run evaluated with a noise sweep (writes eval.json there).

  Returns (run, eval result, printed text).
  """
  run = helpers.copy_run(smoke_wa_run, tmp_path_factory.mktemp("evaluated") / "wa_seed0")
  options = evaluate.default_options()
  options.noise = True
  options.gaussian_stddevs, options.salt_pepper_amounts, options.blur_sigmas = (
      (0.0, 0.5), (0.3,), (2.0,))
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    result = evaluate.evaluate_checkpoint(run.config, run.workdir, options)
  return run, result, printed.getvalue()
