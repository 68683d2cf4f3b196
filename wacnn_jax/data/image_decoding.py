"""Image files decoded by Pillow into 8-bit RGB pixels, or refused with the reason.

    decoded = decode_image(file_bytes)     # (uint8 (H, W, 3), source mode) or why not (str)
    pixels = read_image("cat.jpg")         # uint8 (H, W, 3), or DatasetError naming the file

Every image of a folder or archive goes through `decode_image`, whether the
memory pipeline decodes a whole folder once (`image_folders`) or the stream
pipeline's worker processes decode each batch (`streaming`). Every Pillow
mode is converted to 8-bit RGB without clipping (`to_rgb`) or refused by
name; `describe_conversions` is the log line that counts the conversions.
"""

from __future__ import annotations

import collections
import io
import os

import numpy as np
import PIL
from PIL import Image

from wacnn_jax.data.dataset import DatasetError

# What converting a Pillow mode to 8-bit RGB does, where it loses something.
MODE_CONVERSIONS = {"RGBA": " (alpha dropped)", "RGBa": " (alpha dropped)",
                    "LA": " (alpha dropped)", "PA": " (alpha dropped)",
                    "I;16": " (high byte)", "I;16B": " (high byte)", "I;16L": " (high byte)",
                    "I;16N": " (high byte)", "CMYK": " (Pillow's CMYK to RGB)"}


def to_rgb(image: Image.Image) -> np.ndarray | str:
  """uint8 (H, W, 3) pixels of a Pillow image, or why it is refused.

  8-bit modes go through Pillow's `convert("RGB")`, which is exact for them
  (gray and palette expanded, alpha dropped, CMYK and YCbCr converted).
  16-bit gray (I;16*) keeps the high byte of each value, as Pillow itself
  reduces 16-bit colour PNGs (`convert("RGB")` would clip every value above
  255 to white). 32-bit integer and floating-point pixels have no fixed
  range and are refused.
  """
  if image.mode == "RGB":
    return np.asarray(image, dtype=np.uint8)
  if image.mode.startswith("I;16"):
    gray = (np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1)
  if image.mode in ("I", "F"):
    return (f"mode {image.mode} ({'32-bit integer' if image.mode == 'I' else 'floating-point'}"
            " pixels) has no fixed range; save it as 8-bit (or 16-bit PNG) RGB or gray")
  try:
    return np.asarray(image.convert("RGB"), dtype=np.uint8)
  except ValueError as e:  # a mode Pillow cannot convert (La, ...)
    return f"mode {image.mode} cannot be converted to RGB ({e}); save it as RGB or gray"


def source_mode(image: Image.Image) -> str:
  """The image's mode, with ' 16-bit' for a 16-bit PNG (Pillow opens 16-bit colour as 8-bit)."""
  depth16 = image.format == "PNG" and image.tile and ";16" in str(image.tile[0][3])
  return f"{image.mode}{' 16-bit' if depth16 and not image.mode.startswith('I;16') else ''}"


def decode_image(content: bytes | str) -> tuple[np.ndarray, str] | str:
  """(uint8 (H, W, 3) pixels, source mode), or why `content` (bytes, or a read error) is
  refused."""
  if isinstance(content, str):
    return content
  if not content:
    return "empty file"
  try:
    with Image.open(io.BytesIO(content)) as image:
      mode = source_mode(image)
      pixels = to_rgb(image)
      return pixels if isinstance(pixels, str) else (pixels, mode)
  except PIL.UnidentifiedImageError:
    return "not an image format Pillow reads"
  except Exception as e:  # pylint: disable=broad-except
    return f"{type(e).__name__}: {e}"


def read_file(path: str) -> bytes | str:
  """The file's bytes, or why it cannot be read."""
  try:
    with open(path, "rb") as f:
      return f.read()
  except OSError as e:
    return f"cannot read it ({e.strerror or e})"


def read_image(source) -> np.ndarray:
  """uint8 (H, W, 3) pixels of one image: a file's path, or a Pillow image, converted to 8-bit
  RGB as the folders' images are (`to_rgb`); DatasetError naming it otherwise."""
  if isinstance(source, Image.Image):
    pixels = to_rgb(source)
    if isinstance(pixels, str):
      raise DatasetError(f"the image cannot be read: {pixels}.")
    return pixels
  decoded = decode_image(read_file(os.fspath(source)))
  if isinstance(decoded, str):
    raise DatasetError(f"cannot read the image {os.fspath(source)}: {decoded}.")
  return decoded[0]


def describe_conversions(modes: collections.Counter) -> str:
  """E.g. "3 RGBA (alpha dropped), 1 L": the non-RGB source modes converted, counted."""
  return ", ".join(
      f"{n} {mode}{MODE_CONVERSIONS.get(mode.split(' ')[0], '')}"
      f"{' (high byte)' if mode.endswith('16-bit') else ''}"
      for mode, n in sorted(modes.items()))
