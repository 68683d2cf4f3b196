"""The stream workers' augmentation (wacnn_jax.data.host_augmentation) against torchvision and
against the memory pipeline's on-device augmentation (wacnn_jax.data.transforms).

References: torchvision's RandomResizedCrop computation for PIL images
(`F.resized_crop` on the same boxes: bit for bit), the on-device
`transforms.resized_crop` on the same boxes (rounded: within 2 levels, the
rounding of Pillow's two 8-bit passes), and the distributions the device
draws (crop offsets, flips, box scales and ratios) over many draws.
"""

import math

import jax
import numpy as np
from PIL import Image
import pytest

from tests import helpers
from wacnn_jax.data import host_augmentation
from wacnn_jax.data import image_folders
from wacnn_jax.data import transforms


@pytest.fixture(scope="module")
def cifar_images():
  return image_folders.read_image_folder(helpers.CIFAR10_MINI).train.images[:64]


def test_pad_crop_flip_is_a_crop_of_the_padded_image(cifar_images):
  rng = np.random.default_rng(0)
  out = host_augmentation.pad_crop_flip(cifar_images, rng)
  assert out.dtype == np.uint8 and out.shape == cifar_images.shape
  padded = np.pad(cifar_images, ((0, 0), (4, 4), (4, 4), (0, 0)))
  offsets, flips = [], []
  for image, result in zip(padded, out):
    found = [(top, left, flip) for top in range(9) for left in range(9) for flip in (0, 1)
             if np.array_equal(result, (lambda c: c[:, ::-1] if flip else c)(
                 image[top:top + 32, left:left + 32]))]
    assert found
    offsets.append(found[0][:2])
    flips.append(found[0][2])
  # Offsets and flips vary (81 offsets x 2 flips are possible).
  assert len(set(offsets)) > 20 and 0.3 < np.mean(flips) < 0.7
  many = host_augmentation.pad_crop_flip(np.repeat(cifar_images[:1], 2000, 0), rng)
  assert len({image.tobytes() for image in many}) > 100


def test_resized_crop_equals_torchvision_on_pil_images(cifar_images):
  torchvision_functional = pytest.importorskip("torchvision.transforms.functional")
  rng = np.random.default_rng(1)
  larger = np.stack([np.asarray(Image.fromarray(image).resize((64, 48), Image.BILINEAR))
                     for image in cifar_images[:16]])
  boxes = host_augmentation.crop_boxes(rng, 16, 48, 64)
  for image, (top, left, height, width) in zip(larger, boxes):
    ours = host_augmentation.resized_crop(image, int(top), int(left), int(height), int(width))
    theirs = torchvision_functional.resized_crop(
        Image.fromarray(image), int(top), int(left), int(height), int(width), [48, 64],
        interpolation=torchvision_functional.InterpolationMode.BILINEAR)
    np.testing.assert_array_equal(ours, np.asarray(theirs))


def test_resized_crop_is_the_devices_on_the_same_boxes(cifar_images):
  rng = np.random.default_rng(2)
  boxes = host_augmentation.crop_boxes(rng, len(cifar_images), 32, 32)
  device = jax.vmap(transforms.resized_crop)(cifar_images, *boxes.T.astype(np.int32))
  device = np.clip(np.round(np.asarray(device)), 0, 255)
  host = np.stack([host_augmentation.resized_crop(image, *map(int, box))
                   for image, box in zip(cifar_images, boxes)])
  difference = np.abs(host.astype(int) - device.astype(int))
  assert difference.max() <= 2 and difference.mean() < 0.3, (difference.max(), difference.mean())


def test_crop_boxes_are_drawn_as_on_the_device():
  n, h, w = 20000, 48, 64
  host = host_augmentation.crop_boxes(np.random.default_rng(3), n, h, w)
  device = np.stack(transforms.crop_boxes(jax.random.PRNGKey(3), n, h, w), axis=1)
  for boxes in (host, device):
    top, left, height, width = boxes.T
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + height <= h).all() and (left + width <= w).all()
  def summary(boxes):
    area = boxes[:, 2] * boxes[:, 3] / (h * w)
    ratio = np.log(boxes[:, 3] / boxes[:, 2])
    return np.array([area.mean(), area.std(), ratio.mean(), ratio.std(),
                     (boxes[:, 0] / (h - boxes[:, 2] + 1)).mean()])
  # Means and spreads agree within ~5 standard errors of 20,000 draws.
  np.testing.assert_allclose(summary(host), summary(device), atol=0.02)
  assert summary(host)[3] < math.log(4 / 3)  # log-ratios spread within [log 3/4, log 4/3]


def test_augment_dispatches_and_refuses_unknown(cifar_images):
  rng = np.random.default_rng(4)
  assert host_augmentation.augment(cifar_images, rng, "none") is cifar_images
  assert host_augmentation.augment(cifar_images, rng, "random_resized_crop").shape == (
      cifar_images.shape)
  with pytest.raises(ValueError, match="unknown augmentation 'mixup'"):
    host_augmentation.augment(cifar_images, rng, "mixup")
