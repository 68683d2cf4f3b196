"""Corruptions of test images for the noise-robustness evaluation: pure, jittable, uint8 -> uint8.

    transform = corruption("gaussian", 0.05)   # (images uint8 (b, H, W, C), key) -> uint8
    steps.make_eval_fn(..., transform=transform)

They run inside the jitted evaluation, before normalisation. Convention
(NOISE_CONVENTION): they act on the 8-bit image and return an 8-bit image,
rounded half to even and clipped to [0, 255], as a corrupted image saved to
disk would be (the convention of CIFAR-10-C). Strength 0 is the identity, so
it reproduces the clean accuracy exactly.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

NOISE_CONVENTION = (
    "Corruptions act on the uint8 test images before normalisation and return "
    "uint8 images (rounded half to even, clipped to [0, 255]). gaussian: adds "
    "N(0, (stddev * 255)^2) to every pixel and channel (stddev in [0, 1] pixel "
    "units). salt_pepper: sets a fraction `amount` of pixel positions (all "
    "channels) to 0 or 255 with equal probability. blur: Gaussian blur of "
    "standard deviation sigma pixels per channel, truncated at 4 sigma, "
    "symmetric borders (scipy.ndimage.gaussian_filter's 'reflect'). Strength 0 "
    "is the identity.")

def _to_uint8(x: jax.Array) -> jax.Array:
  return jnp.clip(jnp.round(x), 0, 255).astype(jnp.uint8)


def gaussian_noise(images: jax.Array, key: jax.Array, stddev: float) -> jax.Array:
  """Additive Gaussian noise of `stddev` in [0, 1] pixel units (x255 on the uint8 scale)."""
  noise = jax.random.normal(key, images.shape, jnp.float32)
  return _to_uint8(images.astype(jnp.float32) + jnp.float32(stddev * 255.0) * noise)


def salt_and_pepper(images: jax.Array, key: jax.Array, amount: float) -> jax.Array:
  """Sets a fraction `amount` of pixel positions to white (u < amount/2) or black.

  u ~ U[0, 1) is drawn once per pixel position (N, H, W, 1); the channels of a
  pixel change together.
  """
  u = jax.random.uniform(key, images.shape[:-1] + (1,), jnp.float32)
  salt = u < amount / 2
  pepper = (u >= amount / 2) & (u < amount)
  out = jnp.where(salt, jnp.uint8(255), images)
  return jnp.where(pepper, jnp.uint8(0), out)


def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> np.ndarray:
  """Normalised 1-D Gaussian weights, radius int(truncate * sigma + 0.5) (as scipy.ndimage)."""
  radius = int(truncate * sigma + 0.5)
  x = np.arange(-radius, radius + 1, dtype=np.float64)
  weights = np.exp(-0.5 * (x / sigma) ** 2)
  return weights / weights.sum()


def gaussian_blur(images: jax.Array, key: jax.Array, sigma: float) -> jax.Array:
  """Separable Gaussian blur of each channel (height, then width); `key` is unused."""
  del key
  if sigma <= 0:
    return images
  weights = gaussian_kernel1d(sigma)
  radius = len(weights) // 2
  x = images.astype(jnp.float32)
  for axis in (1, 2):
    pad = [(0, 0)] * x.ndim
    pad[axis] = (radius, radius)
    padded = jnp.pad(x, pad, mode="symmetric")
    size = x.shape[axis]
    x = sum(jnp.float32(w) * jax.lax.slice_in_dim(padded, k, k + size, axis=axis)
            for k, w in enumerate(weights))
  return _to_uint8(x)


CORRUPTIONS = {
    "gaussian": (gaussian_noise, "gaussian_stddevs"),
    "salt_pepper": (salt_and_pepper, "salt_pepper_amounts"),
    "blur": (gaussian_blur, "blur_sigmas"),
}


def corruption(name: str, strength: float) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """The transform `(images, key) -> images` of corruption `name` at `strength`."""
  if name not in CORRUPTIONS:
    raise ValueError(f"unknown corruption {name!r}; valid: {', '.join(CORRUPTIONS)}.")
  strength = float(strength)
  if not math.isfinite(strength) or strength < 0 or (name == "salt_pepper" and strength > 1):
    field = CORRUPTIONS[name][1]
    raise ValueError(f"eval.{field} must hold numbers >= 0"
                     f"{' and <= 1' if name == 'salt_pepper' else ''}, got {strength}.")
  return functools.partial(CORRUPTIONS[name][0], **{
      "gaussian": {"stddev": strength}, "salt_pepper": {"amount": strength},
      "blur": {"sigma": strength}}[name])
