"""Images brought to one size on the host, as they are decoded: `data.image_size` and `data.resize`.

    size = target_size(config.data.image_size)      # 64 -> (64, 64); (48, 40); None: unset
    pixels = resize(pixels, size, "crop")            # uint8 (H, W, 3) -> uint8 (64, 64, 3)

"crop" (the default) is torchvision's `Resize(n)` + `CenterCrop(n)`, timm's
and torchvision's evaluation transform: the image is scaled, aspect kept, so
that it covers the target (the shorter side to the target's; bilinear, with
Pillow's antialiasing when it shrinks), then its centre is cut out. "pad"
scales it to fit inside the target instead and pads the rest with black
(nothing of the image is lost, the borders carry nothing). An image already
of the target size is returned as it is (bit for bit).

Without `data.image_size` a dataset must come in one size: `describe_sizes`
names the files that differ, for the one-line refusal.
"""

from __future__ import annotations

import collections
from typing import Sequence

import numpy as np
from PIL import Image

MODES = ("crop", "pad")


def target_size(image_size) -> tuple[int, int] | None:
  """`data.image_size` as (height, width): an int n is (n, n), a pair is (h, w); None or 0:
  unset. ValueError for anything else."""
  if image_size in (None, 0, ()):
    return None
  if isinstance(image_size, bool):
    raise ValueError(f"data.image_size={image_size!r}: give a number of pixels, e.g. 64, "
                     "or (height, width).")
  if isinstance(image_size, int):
    size = (image_size, image_size)
  elif (isinstance(image_size, (tuple, list)) and len(image_size) == 2
        and all(isinstance(n, int) and not isinstance(n, bool) for n in image_size)):
    size = tuple(image_size)
  else:
    raise ValueError(f"data.image_size={image_size!r}: give a number of pixels, e.g. 64, "
                     "or (height, width).")
  if min(size) < 1:
    raise ValueError(f"data.image_size={image_size!r} must be positive.")
  return size


def check_mode(mode: str) -> None:
  if mode not in MODES:
    raise ValueError(f"data.resize={mode!r}: use 'crop' (scale to cover, cut the centre out) "
                     "or 'pad' (scale to fit, pad with black).")


def _scaled(height: int, width: int, size: tuple[int, int], mode: str) -> tuple[int, int]:
  """The (height, width) an image is scaled to before it is cropped or padded to `size`."""
  target_h, target_w = size
  if mode == "crop" and target_h == target_w:
    # torchvision's Resize(n): the shorter side to n, the longer int(n * long / short).
    if height <= width:
      return target_h, int(target_h * width / height)
    return int(target_w * height / width), target_w
  scale = (max if mode == "crop" else min)(target_h / height, target_w / width)
  new_h, new_w = max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))
  if mode == "crop":
    return max(new_h, target_h), max(new_w, target_w)
  return min(new_h, target_h), min(new_w, target_w)


def resize(pixels: np.ndarray, size: tuple[int, int], mode: str = "crop") -> np.ndarray:
  """uint8 (H, W, 3) -> uint8 (size[0], size[1], 3); see the module docstring."""
  height, width = pixels.shape[:2]
  if (height, width) == tuple(size):
    return pixels
  new_h, new_w = _scaled(height, width, size, mode)
  scaled = np.asarray(Image.fromarray(pixels).resize((new_w, new_h), Image.BILINEAR))
  target_h, target_w = size
  if mode == "crop":  # torchvision's CenterCrop: the offsets rounded
    top = int(round((new_h - target_h) / 2.0))
    left = int(round((new_w - target_w) / 2.0))
    return np.ascontiguousarray(scaled[top:top + target_h, left:left + target_w])
  out = np.zeros((target_h, target_w, 3), np.uint8)
  top, left = (target_h - new_h) // 2, (target_w - new_w) // 2
  out[top:top + new_h, left:left + new_w] = scaled
  return out


def describe_sizes(names: Sequence[str], shapes: Sequence[tuple[int, ...]], shown: int = 3) -> str:
  """E.g. "most are 64x64 (120 files); a.jpg is 48x40, b.png is 30x30 (and 2 more)": the
  files whose size is not the most common one."""
  counts = collections.Counter(shape[:2] for shape in shapes)
  common, number = counts.most_common(1)[0]
  others = [(name, shape[:2]) for name, shape in zip(names, shapes) if shape[:2] != common]
  listed = ", ".join(f"{name} is {h}x{w}" for name, (h, w) in others[:shown])
  more = f" (and {len(others) - shown} more)" if len(others) > shown else ""
  return f"most are {common[0]}x{common[1]} ({number} files); {listed}{more}"
