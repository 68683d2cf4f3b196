"""The train augmentations by image size: the reference's pad-crop at 32x32, torchvision's
RandomResizedCrop above (its boxes and its resizing)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wacnn_jax.data import augmentation_settings
from wacnn_jax.data import transforms


@pytest.mark.parametrize("size, expected", [((32, 32), "pad_crop"), ((30, 30), "pad_crop"),
                                            ((48, 40), "random_resized_crop"),
                                            ((64, 64), "random_resized_crop")])
def test_auto_augmentation_goes_by_size(size, expected):
  assert augmentation_settings.choose_augmentation("auto", True, size) == expected
  assert augmentation_settings.choose_augmentation("auto", False, size) == "none"
  assert augmentation_settings.choose_augmentation("pad_crop", True, size) == "pad_crop"


def test_crop_boxes_follow_torchvisions_ranges():
  top, left, h, w = jax.jit(transforms.crop_boxes, static_argnums=(1, 2, 3))(
      jax.random.PRNGKey(0), 4000, 64, 48)
  top, left, h, w = map(np.asarray, (top, left, h, w))
  assert (top >= 0).all() and (left >= 0).all()
  assert (top + h <= 64).all() and (left + w <= 48).all()
  area = h * w / (64 * 48)
  assert area.min() >= 0.08 - 0.02 and area.max() <= 1.0
  ratio = w / h
  inside = (ratio > 3 / 4 - 0.05) & (ratio < 4 / 3 + 0.05)
  assert inside.mean() > 0.99  # the fallback (whole image, 48/64 = 3/4) included
  assert len(np.unique(top)) > 30 and len(np.unique(left)) > 20


@pytest.mark.parametrize("box", [(3, 5, 40, 30), (10, 2, 20, 16), (0, 0, 64, 48),
                                 (5, 7, 50, 40)])
def test_resized_crop_is_torchvisions(box):
  torch = pytest.importorskip("torch")
  functional = pytest.importorskip("torchvision.transforms.v2.functional")
  image = np.random.default_rng(0).integers(0, 256, (64, 48, 3)).astype(np.float32)
  ours = np.asarray(jax.jit(transforms.resized_crop)(jnp.asarray(image), *box))
  theirs = functional.resized_crop(torch.from_numpy(image.transpose(2, 0, 1)), *box,
                                   size=[64, 48], antialias=True).numpy().transpose(1, 2, 0)
  np.testing.assert_allclose(ours, theirs, atol=5e-3)  # on the 0-255 scale


def test_random_resized_crop_flip_is_seeded_and_in_range():
  images = jnp.asarray(np.random.default_rng(1).integers(0, 256, (8, 64, 64, 3)), jnp.uint8)
  a = transforms.augment(images, jax.random.PRNGKey(2), "random_resized_crop")
  b = transforms.augment(images, jax.random.PRNGKey(2), "random_resized_crop")
  c = transforms.augment(images, jax.random.PRNGKey(3), "random_resized_crop")
  assert a.shape == images.shape and a.dtype == jnp.uint8
  assert jnp.array_equal(a, b) and not jnp.array_equal(a, c)
  assert float(a.min()) >= 0 and float(a.max()) <= 255
