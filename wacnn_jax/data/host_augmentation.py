"""The train augmentation on the host, in the stream pipeline's worker processes (NumPy, Pillow).

    images = augment(images, rng, "pad_crop")   # uint8 (n, H, W, 3) -> uint8 (n, H, W, 3)

The same augmentations as the memory pipeline's on-device `transforms`,
drawn from a NumPy Generator instead of a JAX key: the reference's zero-pad
by 4, random HxW crop and horizontal flip (`pad_crop_flip`), and
torchvision's RandomResizedCrop (scale 0.08-1, aspect ratio 3/4-4/3, up to
10 tries, else the centred fallback) and flip (`random_resized_crop_flip`),
whose boxes are drawn as `transforms.crop_boxes` draws them and resized as
torchvision resizes a PIL image (`crop`, then bilinear `resize`: Pillow's
antialiased filter).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from wacnn_jax.data.augmentation_settings import (CROP_PADDING, CROP_RATIO, CROP_SCALE,
                                                   CROP_TRIES, fallback_crop)



def augment(images: np.ndarray, rng: np.random.Generator, augmentation: str) -> np.ndarray:
  """The train augmentation `augmentation` ("pad_crop", "random_resized_crop", "none") of
  uint8 (n, H, W, 3) images."""
  if augmentation == "pad_crop":
    return pad_crop_flip(images, rng)
  if augmentation == "random_resized_crop":
    return random_resized_crop_flip(images, rng)
  if augmentation == "none":
    return images
  raise ValueError(f"unknown augmentation {augmentation!r}.")


def _flip(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Each image flipped horizontally with probability 1/2."""
  flip = rng.random(images.shape[0]) < 0.5
  return np.where(flip[:, None, None, None], images[:, :, ::-1], images)


def pad_crop_flip(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Zero-pad CROP_PADDING on each side, a random H x W crop (offsets uniform in
  [0, 2 * CROP_PADDING]) and a flip with probability 1/2, per image."""
  n, h, w, _ = images.shape
  p = CROP_PADDING
  padded = np.pad(images, ((0, 0), (p, p), (p, p), (0, 0)))
  offsets = rng.integers(0, 2 * p + 1, size=(n, 2))
  crops = np.stack([padded[k, top:top + h, left:left + w]
                    for k, (top, left) in enumerate(offsets)])
  return _flip(crops, rng)


def crop_boxes(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
  """int (n, 4) boxes (top, left, height, width): torchvision's RandomResizedCrop draw."""
  area = h * w * rng.uniform(CROP_SCALE[0], CROP_SCALE[1], size=(n, CROP_TRIES))
  ratio = np.exp(rng.uniform(math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]),
                             size=(n, CROP_TRIES)))
  crop_w = np.round(np.sqrt(area * ratio)).astype(np.int64)
  crop_h = np.round(np.sqrt(area / ratio)).astype(np.int64)
  fits = (crop_w > 0) & (crop_w <= w) & (crop_h > 0) & (crop_h <= h)
  first = np.argmax(fits, axis=1)
  found = fits.any(axis=1)
  fallback_h, fallback_w = fallback_crop(h, w)
  rows = np.arange(n)
  crop_h = np.where(found, crop_h[rows, first], fallback_h)
  crop_w = np.where(found, crop_w[rows, first], fallback_w)
  top = np.where(found, np.floor(rng.random(n) * (h - crop_h + 1)), (h - crop_h) // 2)
  left = np.where(found, np.floor(rng.random(n) * (w - crop_w + 1)), (w - crop_w) // 2)
  return np.stack([top, left, crop_h, crop_w], axis=1).astype(np.int64)


def resized_crop(image: np.ndarray, top: int, left: int, height: int, width: int) -> np.ndarray:
  """The box of one uint8 (H, W, 3) image resized back to H x W, as torchvision does for a
  PIL image: crop, then bilinear resize (Pillow's, antialiased where it shrinks)."""
  h, w, _ = image.shape
  crop = Image.fromarray(image).crop((left, top, left + width, top + height))
  return np.asarray(crop.resize((w, h), Image.BILINEAR))


def random_resized_crop_flip(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """torchvision's RandomResizedCrop(H, W), then a flip with probability 1/2, per image."""
  n, h, w, _ = images.shape
  boxes = crop_boxes(rng, n, h, w)
  crops = np.stack([resized_crop(image, *map(int, box)) for image, box in zip(images, boxes)])
  return _flip(crops, rng)
