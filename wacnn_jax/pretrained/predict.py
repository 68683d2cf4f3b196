"""A trained model's top classes for images of any size: files, Pillow images or arrays.

    net = pretrained.load("weights/resnet18-wa.json")
    net.predict(["cat.jpg", "dog.png"], top_k=3)
    # [[("cat", 0.91), ("dog", 0.05), ("deer", 0.02)], [("dog", 0.88), ...]]

Each image is brought to the model's size and normalised as in training
(`transforms.Preprocessing` of its weights: `resizing.resize` with its
resize mode, its normalisation); logits become probabilities by a softmax.
`images` is one image or a sequence of them, or a uint8 NHWC batch: a
path, a Pillow image (any mode `image_decoding` reads) or a uint8 array
(H, W), (H, W, 1), (H, W, 3) or (H, W, 4) (alpha dropped).
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from wacnn_jax.data import image_decoding
from wacnn_jax.data import resizing
from wacnn_jax.data import transforms
from wacnn_jax.data.dataset import DatasetError

BATCH = 64  # images per forward pass


def _pixels(image) -> np.ndarray:
  """uint8 (H, W, 3) of one image (see the module docstring)."""
  if isinstance(image, (str, os.PathLike, Image.Image)):
    return image_decoding.read_image(image)
  array = np.asarray(image)
  if array.dtype != np.uint8:
    raise DatasetError(f"an image array must hold uint8 pixels (0-255), got {array.dtype}; "
                       "e.g. (255 * x).round().astype(np.uint8) for values in [0, 1].")
  if array.ndim == 2:
    array = array[..., None]
  if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
    raise DatasetError(f"an image array is (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); got "
                       f"{array.shape}.")
  if array.shape[-1] == 1:
    return np.repeat(array, 3, axis=-1)
  return array[..., :3]


def as_batch(images, preprocessing: transforms.Preprocessing) -> np.ndarray:
  """uint8 (N, H, W, 3) at the model's size, from `images` (see the module docstring)."""
  if isinstance(images, np.ndarray) and images.ndim == 4:
    images = list(images)
  elif isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)):
    images = [images]
  size = tuple(preprocessing.image_size)
  return np.stack([resizing.resize(_pixels(image), size, preprocessing.resize)
                   for image in images])


def top_classes(model: nn.Module, variables: Any, preprocessing: transforms.Preprocessing,
                class_names: Sequence[str], images, top_k: int = 5
                ) -> list[list[tuple[str, float]]]:
  """Per image, the `top_k` classes and their probabilities, most probable first."""
  batch = as_batch(images, preprocessing)
  forward = jax.jit(lambda variables, x: jax.nn.softmax(model.apply(
      variables, transforms.normalize(x, preprocessing.normalization), train=False)))
  probabilities = np.concatenate([np.asarray(forward(variables, jnp.asarray(batch[i:i + BATCH])))
                                  for i in range(0, len(batch), BATCH)])
  k = max(1, min(top_k, len(class_names)))
  order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
  return [[(class_names[c], float(row[c])) for c in top] for row, top in
          zip(probabilities, order)]
