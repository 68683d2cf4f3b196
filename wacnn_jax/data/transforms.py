"""On-device preprocessing inside the jitted train and eval steps: augmentation, normalisation.

uint8 NHWC in; `augment_batch` gives uint8 back (the reference's pad-4 random
crop and horizontal flip), `normalize` the float input of the models
(scaled to [0, 1] and standardised per channel with the CIFAR mean and
standard deviation, the reference's constants).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
CROP_PADDING = 4


def normalize(images: jax.Array, dtype=jnp.float32) -> jax.Array:
  """uint8 (N, H, W, 3) -> `dtype`, scaled to [0, 1] and standardised per channel."""
  mean = jnp.asarray(CIFAR_MEAN, jnp.float32)
  std = jnp.asarray(CIFAR_STD, jnp.float32)
  return ((images.astype(jnp.float32) / 255.0 - mean) / std).astype(dtype)


def augment_batch(images: jax.Array, key: jax.Array) -> jax.Array:
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
  flip = jax.random.bernoulli(flip_key, 0.5, (n,))
  return jnp.where(flip[:, None, None, None], crops[:, :, ::-1, :], crops)
