"""On-device preprocessing inside the jitted train and eval steps: augmentation, normalisation.

    preprocessing = dataset.preprocessing     # how the model sees its images (`Preprocessing`)
    images = augment(images, key, preprocessing.augmentation)          # train only
    x = normalize(images, preprocessing.normalization, jnp.bfloat16)   # train and eval

Images arrive as uint8 NHWC, already of the dataset's one size (`resizing`,
on the host). The train augmentation goes by that size (`data.augmentation`
'auto', `augmentation_settings`): the reference's pad-4 random crop and horizontal flip
(`pad_crop_flip`) up to 32x32, torchvision's RandomResizedCrop (scale 0.08-1,
aspect ratio 3/4-4/3) and flip (`random_resized_crop_flip`) for larger
images. Evaluation sees the images as stored (resized and centre-cropped
when loaded: torchvision's evaluation transform). `normalize` scales to
[0, 1] and standardises each channel (`normalization`).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from wacnn_jax.data.augmentation_settings import (CROP_PADDING, CROP_RATIO, CROP_SCALE,
                                                   CROP_TRIES, fallback_crop)
from wacnn_jax.data import normalization as normalizations
from wacnn_jax.data.normalization import Normalization



@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """How a model sees its images: their size (H, W), the normalisation, the train augmentation
  ("pad_crop", "random_resized_crop" or "none") and how other sizes were brought to it
  ("crop" or "pad", `resizing`). Recorded in dataset.json, checkpoints and exported weights."""

  image_size: tuple[int, int]
  normalization: Normalization
  augmentation: str
  resize: str = "crop"

  def to_json(self) -> dict:
    return {"image_size": list(self.image_size), "normalization": self.normalization.to_json(),
            "augmentation": self.augmentation, "resize": self.resize}

  @classmethod
  def from_json(cls, fields: dict) -> "Preprocessing":
    return cls(tuple(fields["image_size"]), Normalization.from_json(fields["normalization"]),
               fields["augmentation"], fields.get("resize", "crop"))

  @classmethod
  def reference(cls, image_size=(32, 32)) -> "Preprocessing":
    """The reference recipe's: CIFAR normalisation and pad-crop (models saved before either
    was recorded were trained so)."""
    return cls(tuple(image_size), normalizations.CIFAR, "pad_crop")


def normalize(images: jax.Array, normalization: Normalization, dtype=jnp.float32) -> jax.Array:
  """uint8 or float pixels (N, H, W, 3) in [0, 255] -> `dtype`, scaled to [0, 1] and
  standardised per channel."""
  mean = jnp.asarray(normalization.mean, jnp.float32)
  std = jnp.asarray(normalization.std, jnp.float32)
  return ((images.astype(jnp.float32) / 255.0 - mean) / std).astype(dtype)


def augment(images: jax.Array, key: jax.Array, augmentation: str) -> jax.Array:
  """The train augmentation `augmentation` of (N, H, W, C) images (see `Preprocessing`)."""
  if augmentation == "pad_crop":
    return pad_crop_flip(images, key)
  if augmentation == "random_resized_crop":
    return random_resized_crop_flip(images, key)
  if augmentation == "none":
    return images
  raise ValueError(f"unknown augmentation {augmentation!r}.")


def _flip(images: jax.Array, key: jax.Array) -> jax.Array:
  """Each image flipped horizontally with probability 1/2."""
  flip = jax.random.bernoulli(key, 0.5, (images.shape[0],))
  return jnp.where(flip[:, None, None, None], images[:, :, ::-1, :], images)


def pad_crop_flip(images: jax.Array, key: jax.Array) -> jax.Array:
  """Reference train augmentation on uint8 (N, H, W, C) -> uint8 (N, H, W, C).

  Zero-pads `CROP_PADDING` pixels on each side, takes a random HxW crop
  (offsets uniform in [0, 2 * CROP_PADDING]) and flips horizontally with
  probability 1/2, independently per image.
  """
  n, h, w, c = images.shape
  crop_key, flip_key = jax.random.split(key)
  p = CROP_PADDING
  padded = jnp.pad(images, ((0, 0), (p, p), (p, p), (0, 0)))
  offsets = jax.random.randint(crop_key, (n, 2), 0, 2 * p + 1)
  crops = jax.vmap(
      lambda image, o: jax.lax.dynamic_slice(image, (o[0], o[1], 0), (h, w, c))
  )(padded, offsets)
  return _flip(crops, flip_key)


def crop_boxes(key: jax.Array, n: int, h: int, w: int) -> tuple[jax.Array, ...]:
  """torchvision's RandomResizedCrop boxes for `n` images of H x W: (top, left, height,
  width), each int32 (n,).

  Per image, up to CROP_TRIES crops of area scale x H x W (scale uniform in
  CROP_SCALE) and aspect ratio log-uniform in CROP_RATIO; the first that fits
  is taken at a uniform position, or else the centred `fallback_crop`.
  """
  scale_key, ratio_key, top_key, left_key = jax.random.split(key, 4)
  area = h * w * jax.random.uniform(scale_key, (n, CROP_TRIES), minval=CROP_SCALE[0],
                                    maxval=CROP_SCALE[1])
  ratio = jnp.exp(jax.random.uniform(ratio_key, (n, CROP_TRIES),
                                     minval=math.log(CROP_RATIO[0]),
                                     maxval=math.log(CROP_RATIO[1])))
  crop_w = jnp.round(jnp.sqrt(area * ratio)).astype(jnp.int32)
  crop_h = jnp.round(jnp.sqrt(area / ratio)).astype(jnp.int32)
  fits = (crop_w > 0) & (crop_w <= w) & (crop_h > 0) & (crop_h <= h)
  first = jnp.argmax(fits, axis=1)
  found = fits.any(axis=1)
  fallback_h, fallback_w = fallback_crop(h, w)
  pick = lambda values: jnp.take_along_axis(values, first[:, None], axis=1)[:, 0]
  crop_h = jnp.where(found, pick(crop_h), fallback_h)
  crop_w = jnp.where(found, pick(crop_w), fallback_w)
  top = jnp.where(found, jnp.floor(jax.random.uniform(top_key, (n,)) * (h - crop_h + 1)),
                  (h - crop_h) // 2)
  left = jnp.where(found, jnp.floor(jax.random.uniform(left_key, (n,)) * (w - crop_w + 1)),
                   (w - crop_w) // 2)
  return top.astype(jnp.int32), left.astype(jnp.int32), crop_h, crop_w


def _resize_weights(out_size: int, in_size: int, start, length) -> jax.Array:
  """(out_size, in_size) weights that resize the window [start, start + length) of an axis of
  `in_size` to `out_size`: PyTorch's antialiased bilinear (PIL's): a triangle filter
  stretched by the scale where it shrinks, renormalised at the window's edges."""
  scale = jnp.asarray(length, jnp.float32) / out_size
  invscale = jnp.where(scale >= 1.0, 1.0 / scale, 1.0)
  center = scale * (jnp.arange(out_size, dtype=jnp.float32) + 0.5)
  x = jnp.arange(in_size, dtype=jnp.float32) - jnp.asarray(start, jnp.float32)
  weights = jnp.maximum(0.0, 1.0 - jnp.abs((x[None, :] - center[:, None] + 0.5) * invscale))
  weights = weights * ((x >= 0) & (x < length))[None, :]
  return weights / weights.sum(axis=1, keepdims=True)


def resized_crop(image: jax.Array, top, left, crop_h, crop_w) -> jax.Array:
  """The box (top, left, crop_h, crop_w) of one (H, W, C) image resized to H x W: float32,
  as torchvision's `resized_crop(..., antialias=True)` computes it (bilinear, antialiased
  where it shrinks, only the box's pixels), as two matrix products."""
  h, w, _ = image.shape
  rows = _resize_weights(h, h, top, crop_h)
  columns = _resize_weights(w, w, left, crop_w)
  return jnp.einsum("oh,hwc,pw->opc", rows, image.astype(jnp.float32), columns,
                    precision=jax.lax.Precision.HIGHEST)


def random_resized_crop_flip(images: jax.Array, key: jax.Array) -> jax.Array:
  """torchvision's RandomResizedCrop(H, W) then a horizontal flip on uint8 (N, H, W, C) ->
  uint8 (N, H, W, C): a box per image (`crop_boxes`) resized back to H x W
  (`resized_crop`) and rounded, as torchvision rounds uint8 images, then
  flipped with probability 1/2."""
  n, h, w, _ = images.shape
  box_key, flip_key = jax.random.split(key)
  crops = jax.vmap(resized_crop)(images, *crop_boxes(box_key, n, h, w))
  return _flip(jnp.clip(jnp.round(crops), 0, 255).astype(jnp.uint8), flip_key)
