"""Which pipeline a run's images take: held in memory, or streamed. Chosen here, once.

    kind, reason = choose(data_config, size)    # ("memory" | "stream", why, for the log)

`data.pipeline`:
- "memory": every image decoded once into host memory and the training set
  put on every device (`pipeline`, `training.feeds.MemoryFeed`): the fastest
  way for CIFAR-sized data (CIFAR-10: 184 MB).
- "stream": images read, decoded and augmented batch by batch by worker
  processes (`streaming`, `stream_loaders`): host memory stays bounded
  whatever the dataset's size.
- "auto" (the default): "memory", unless the decoded images would take more
  than `data.memory_share` (0.5) of the host's memory or of one
  accelerator's (the memory pipeline puts the training set on every device);
  then "stream", with a line that says why. The estimate needs no decoding:
  the number of images (a folder's or tar's listing, tfds's split sizes)
  times the size of one (`data.image_size`, else the first image's, from its
  header); a `.tar.gz` is taken at its compressed size (a lower bound).
  Official CIFAR archives are always held in memory.
"""

from __future__ import annotations

import io
import os

from absl import logging
import jax
from PIL import Image

from wacnn_jax.data import cifar_archives
from wacnn_jax.data import folder_listings
from wacnn_jax.data import tar_archives

SETTINGS = ("auto", "memory", "stream")


def check_setting(setting: str, memory_share: float) -> None:
  """ValueError unless `data.pipeline` is one of SETTINGS and 0 < memory_share <= 1."""
  if setting not in SETTINGS:
    raise ValueError(f"data.pipeline={setting!r}: use 'memory' (decoded into memory), "
                     "'stream' (read batch by batch) or 'auto' (memory unless it does not fit).")
  if not 0 < memory_share <= 1:
    raise ValueError(f"data.memory_share={memory_share!r} is out of range: a fraction of "
                     "memory, 0 < memory_share <= 1.")


def memory_budget(share: float) -> tuple[int, str]:
  """(bytes, what limits them): `share` of the host's memory or of the smallest local
  accelerator's, whichever is less."""
  host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  budget, limit = int(host * share), "host memory"
  for device in jax.local_devices():
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and stats.get("bytes_limit") and stats["bytes_limit"] * share < budget:
      budget, limit = int(stats["bytes_limit"] * share), f"{device.device_kind} memory"
  return budget, limit


def _image_bytes(first_image, size) -> int:
  """Bytes of one decoded uint8 image: of `size`, or of `first_image` (a file object)."""
  if size is not None:
    return size[0] * size[1] * 3
  with Image.open(first_image) as image:
    return image.width * image.height * 3


def estimate_decoded_bytes(data_config, size: tuple[int, int] | None) -> int | None:
  """The decoded size of the dataset's splits, or None where it is small or unknown."""
  folder = data_config.image_folder
  splits = (data_config.train_split, data_config.test_split)
  if not folder:
    return _estimate_tfds(data_config, splits, size)
  path = os.path.expanduser(str(folder))
  if not os.path.exists(path) or cifar_archives.detect(path) is not None:
    return None
  if os.path.isdir(path):
    images = folder_listings.layout(folder_listings.folder_files(path, splits), splits, path)
    if not images:
      return None
    with open(os.path.join(path, images[0].path), "rb") as first:
      return len(images) * _image_bytes(first, size)
  if path.endswith((".tar.gz", ".tgz")):
    return os.path.getsize(path)
  if path.endswith(".tar"):
    index = tar_archives.member_index(path)
    images = folder_listings.layout(index, splits, path)
    if not images or not isinstance(index[images[0].path], tuple):
      return None
    offset, length = index[images[0].path]
    with open(path, "rb") as f:
      f.seek(offset)
      return len(images) * _image_bytes(io.BytesIO(f.read(length)), size)
  return None


def _estimate_tfds(data_config, splits, size) -> int | None:
  try:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    builder = tfds.builder(data_config.dataset, data_dir=data_config.data_dir)
    shape = builder.info.features["image"].shape
    count = sum(builder.info.splits[s].num_examples for s in dict.fromkeys(splits))
  except Exception:  # pylint: disable=broad-except  (unknown: the reader says what is wrong)
    return None
  height, width = size or shape[:2]
  if not count or height is None or width is None:
    return None
  return count * height * width * 3


def choose(data_config, size: tuple[int, int] | None) -> str:
  """The pipeline of `data_config` ("memory" or "stream"); see the module docstring."""
  setting = data_config.get("pipeline", "auto")
  share = data_config.get("memory_share", 0.5)
  check_setting(setting, share)
  if setting != "auto":
    return setting
  estimate = estimate_decoded_bytes(data_config, size)
  if estimate is None:
    return "memory"
  budget, limit = memory_budget(share)
  if estimate <= budget:
    return "memory"
  logging.warning(
      "streaming the data (data.pipeline='auto'): decoded, its images take about %.1f GB, "
      "more than data.memory_share=%g of the %s (%.1f GB). Set data.pipeline='memory' to "
      "hold them in memory anyway.", estimate / 1e9, share, limit, budget / 1e9)
  return "stream"
