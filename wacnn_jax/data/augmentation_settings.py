"""The train augmentations by name, and their parameters: shared by the device and the host.

    augmentation = choose_augmentation(config.data.augmentation, config.data.augment, (64, 64))

"pad_crop" (the reference's: zero-pad CROP_PADDING, random crop, flip),
"random_resized_crop" (torchvision's RandomResizedCrop with its defaults,
then a flip) or "none". The memory pipeline augments on the device
(`transforms`), the stream pipeline in its workers (`host_augmentation`),
both with these parameters.
"""

from __future__ import annotations

CROP_PADDING = 4
AUGMENTATIONS = ("auto", "pad_crop", "random_resized_crop")
# 'auto' pads and crops images up to this many pixels on a side, random-resized-crops larger ones.
PAD_CROP_MAX_SIZE = 32
# torchvision's RandomResizedCrop defaults.
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
CROP_TRIES = 10


def choose_augmentation(setting: str, enabled: bool, image_size) -> str:
  """The train augmentation for `data.augmentation` (`setting`) and `data.augment` (`enabled`)."""
  if setting not in AUGMENTATIONS:
    raise ValueError(f"data.augmentation={setting!r}: use 'auto' (pad-crop up to "
                     f"{PAD_CROP_MAX_SIZE}x{PAD_CROP_MAX_SIZE}, random-resized crop above), "
                     "'pad_crop' or 'random_resized_crop'.")
  if not enabled:
    return "none"
  if setting == "auto":
    return "pad_crop" if max(image_size) <= PAD_CROP_MAX_SIZE else "random_resized_crop"
  return setting


def fallback_crop(h: int, w: int) -> tuple[int, int]:
  """torchvision's crop (height, width) when no try fits: the whole image, its aspect ratio
  clamped to CROP_RATIO."""
  ratio = w / h
  if ratio < CROP_RATIO[0]:
    return int(round(w / CROP_RATIO[0])), w
  if ratio > CROP_RATIO[1]:
    return h, int(round(h * CROP_RATIO[1]))
  return h, w
