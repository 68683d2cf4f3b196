"""Normalisation by the dataset's own statistics, the reference's CIFAR constants for CIFAR."""

import numpy as np
import pytest

from configs import default
from wacnn_jax.data import normalization
from wacnn_jax.data import pipeline


def test_own_statistics_are_numpys_in_float64():
  images = np.random.default_rng(0).integers(0, 256, (5000, 6, 7, 3), dtype=np.uint8)
  stats = normalization.of_images(images)
  pixels = images.reshape(-1, 3).astype(np.float64) / 255
  np.testing.assert_allclose(stats.mean, pixels.mean(0), rtol=1e-12)
  np.testing.assert_allclose(stats.std, pixels.std(0), rtol=1e-9)
  assert stats.source == "dataset"


def test_a_channel_without_variation_is_refused():
  with pytest.raises(ValueError, match="without any variation"):
    normalization.of_images(np.zeros((2, 4, 4, 3), np.uint8))


def test_cifar_is_recognised_by_its_names_and_size():
  assert normalization.is_cifar("cifar10-mini", normalization.CIFAR10_CLASSES, (32, 32, 3))
  assert normalization.is_cifar("cifar100", ["class0"] * 100, (32, 32, 3))
  assert normalization.is_cifar("my", normalization.CIFAR100_SUPERCLASSES, (32, 32, 3))
  assert not normalization.is_cifar("cifar10-mini", normalization.CIFAR10_CLASSES, (64, 64, 3))
  assert not normalization.is_cifar("pets", ("cat", "dog"), (32, 32, 3))
  assert len(set(normalization.CIFAR100_CLASSES)) == 100


def _config(folder, setting="auto"):
  config = default.get_config().data
  config.image_folder, config.cache_dir, config.normalization = folder, "", setting
  return config


def test_the_loaded_dataset_carries_its_normalization(cifar10_mini, synthetic_folder):
  assert pipeline.load(_config(cifar10_mini)).preprocessing.normalization == normalization.CIFAR
  own = pipeline.load(_config(synthetic_folder))
  assert own.preprocessing.normalization == normalization.of_images(own.train.images)
  forced = pipeline.load(_config(synthetic_folder, "cifar"))
  assert forced.preprocessing.normalization == normalization.CIFAR
  assert own.summary.to_json()["preprocessing"]["normalization"]["source"] == "dataset"
  with pytest.raises(ValueError, match="data.normalization='own'"):
    pipeline.load(_config(synthetic_folder, "own"))
