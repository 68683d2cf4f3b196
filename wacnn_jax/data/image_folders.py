"""Image folders `<root>/<split>/<label>/*.jpg|png` (or a tar archive of one) decoded into memory.

    dataset = read_image_folder("path/to/root", splits=("train", "test"))

The layout of `tfds.folder_dataset.ImageFolder`, listed by
`folder_listings`. A run never trains on a silently smaller or other
dataset: a file that Pillow cannot decode, a file in a split folder that is
not a class folder's image, and a damaged or cut archive are refused by name
(hidden and system files are skipped and counted); every image is converted
to 8-bit RGB without clipping (`image_decoding`; the conversions are logged). An official CIFAR-10/100 archive given as the
folder is recognised by its content and read by `cifar_archives`.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import os
from typing import Sequence

from absl import logging
import numpy as np

from wacnn_jax.data import cifar_archives
from wacnn_jax.data import folder_listings
from wacnn_jax.data.dataset import Dataset, DatasetError, Split
from wacnn_jax.data import image_decoding
from wacnn_jax.data import resizing
from wacnn_jax.data import tar_archives


def _stack_splits(images: Sequence[folder_listings.ImageFile], contents: Sequence[bytes | str],
                  splits: Sequence[str], class_names: Sequence[str], where: str,
                  size: tuple[int, int] | None = None, resize: str = "crop") -> dict[str, Split]:
  """Decodes the images (file bytes, or why they could not be read) into {split: Split},
  each brought to `size` when given.

  Raises DatasetError naming the first file (in split order) that does not
  read or decode, and counting the others, and for a split of mixed sizes
  without `size`; logs the modes converted to RGB.
  """
  class_index = {c: i for i, c in enumerate(class_names)}

  def decode(content):  # in the pool's threads: decoded, then brought to `size`
    decoded = image_decoding.decode_image(content)
    if size is None or isinstance(decoded, str):
      return decoded
    return resizing.resize(decoded[0], size, resize), decoded[1]

  with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
    decoded = list(pool.map(decode, contents))
  order = {split: i for i, split in enumerate(splits)}
  bad = sorted(((order[image.split], image.path, reason)
                for image, reason in zip(images, decoded) if isinstance(reason, str)))
  if bad:
    more = f" (and {len(bad) - 1} more bad file(s))" if len(bad) > 1 else ""
    raise DatasetError(
        f"cannot decode {bad[0][1]} in {where}: {bad[0][2]}{more}. Remove or "
        "replace the file(s); an image folder must hold only readable JPEG/PNG images.")
  modes = collections.Counter(mode for _, mode in decoded if mode != "RGB")
  if modes:
    logging.info("%s: converted to 8-bit RGB: %s.", where,
                 image_decoding.describe_conversions(modes))
  result = {}
  for split in dict.fromkeys(splits):
    rows = [(image, pixels) for image, (pixels, _) in zip(images, decoded)
            if image.split == split]
    if len({pixels.shape for _, pixels in rows}) != 1:
      raise DatasetError(
          f"the images of split {split!r} in {where} have different sizes: "
          f"{resizing.describe_sizes([i.path for i, _ in rows], [p.shape for _, p in rows])}. "
          "Set data.image_size (e.g. --config.data.image_size=64) to resize them all to one "
          "size (aspect kept, the centre cut out; data.resize='pad' pads instead).")
    result[split] = Split(np.stack([pixels for _, pixels in rows]),
                          np.array([class_index[image.label] for image, _ in rows], np.int32))
  return result


def read_image_folder(path: str, splits=("train", "test"), cifar100_labels: str = "fine",
                      image_size: tuple[int, int] | None = None, resize: str = "crop"
                      ) -> Dataset:
  """Reads `path/<split>/<label>/<file>` (or an archive holding one such root), or an
  official CIFAR archive (`cifar_archives`, recognised by its content).

  Labels are the sub-folder names (NFC-normalised) in sorted order (as
  ImageFolder assigns them); each split holds its images by label, then in
  sorted order of their paths, so the result is deterministic. See `_layout`
  for which files are read. `cifar100_labels`: 'fine' or 'coarse' (official
  CIFAR-100 archives only). `image_size` (height, width): every image is
  brought to it (`resizing`, `resize` 'crop' or 'pad'); None: the images
  must all have one size. The same split may be given twice (train and test
  both from "test"): it is read once.
  """
  path = os.path.expanduser(str(path))
  folder_listings.check_exists(path)
  cifar = cifar_archives.detect(path)
  if cifar is not None:
    return resized(_read_cifar_archive(path, cifar, splits, cifar100_labels), image_size, resize)
  if cifar100_labels != "fine":
    raise ValueError(f"data.cifar100_labels={cifar100_labels!r} applies to the official "
                     f"CIFAR-100 archive; {path} is an image folder.")
  if os.path.isdir(path):
    listing = folder_listings.list_images(folder_listings.folder_files(path, splits), splits,
                                          path)
    contents = [image_decoding.read_file(os.path.join(path, image.path))
                for image in listing.images]
  elif path.endswith(folder_listings.ARCHIVE_SUFFIXES):
    members = tar_archives.read_whole(path)
    listing = folder_listings.list_images(members, splits, path)
    contents = [members[image.path] for image in listing.images]
  else:
    raise DatasetError(
        f"data.image_folder={path!r} is neither a folder nor a "
        f"{'/'.join(folder_listings.ARCHIVE_SUFFIXES)} archive.")
  result = _stack_splits(listing.images, contents, splits, listing.class_names, path,
                         image_size, resize)
  return Dataset(name=folder_listings.dataset_name(path), train=result[splits[0]],
                 test=result[splits[1]], class_names=listing.class_names)


def _read_cifar_archive(path: str, layout, splits, labels: str) -> Dataset:
  """An official CIFAR archive (`cifar_archives`) as a Dataset of the `splits` (each 'train'
  or 'test')."""
  if not set(splits) <= {"train", "test"}:
    raise DatasetError(f"{path} is {layout.name}, whose splits are train and test; leave "
                       f"data.train_split/test_split at train/test (not {list(splits)}).")
  try:
    cifar = cifar_archives.read_cifar_archive(path, labels, layout)
  except cifar_archives.CifarArchiveError as e:
    raise DatasetError(str(e)) from e
  split = {"train": Split(cifar.train_images, cifar.train_labels),
           "test": Split(cifar.test_images, cifar.test_labels)}
  return Dataset(name=cifar.name, train=split[splits[0]], test=split[splits[1]],
                 class_names=cifar.class_names)


def resized(dataset: Dataset, size: tuple[int, int] | None, resize: str = "crop") -> Dataset:
  """`dataset` with every image brought to `size` (`resizing.resize`; as it is for None or
  its own size)."""
  if size is None or dataset.image_shape[:2] == tuple(size):
    return dataset
  split = lambda s: Split(np.stack([resizing.resize(image, size, resize) for image in s.images]),
                          s.labels)
  return dataclasses.replace(dataset, train=split(dataset.train), test=split(dataset.test))
