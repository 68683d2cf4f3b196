"""Which images an image folder (or a tar archive of one) holds, and their classes: no decoding.

    listing = list_image_folder("path/to/root", ("train", "test"))
    listing.images            # ImageFile(split, label, path), by split, class, then path
    listing.class_names       # the class folders' names, sorted (their labels 0, 1, ...)

The layout of `tfds.folder_dataset.ImageFolder`:
`<root>/[<top>/]<split>/<label>/<name>` with an IMAGE_EXTENSIONS extension.
Both pipelines list a folder here: the memory pipeline then decodes every
listed image once (`image_folders`), the stream pipeline reads them batch by
batch (`streaming`). Hidden and system files and files that are not images
are skipped with a line that counts them; an image that is not in a class
folder, and a split without images, are refused (DatasetError naming them):
a run must not train on fewer images than the folder holds.
"""

from __future__ import annotations

import collections
import dataclasses
import os
from typing import Iterable, Sequence
import unicodedata

from absl import logging

from wacnn_jax.data import cifar_archives
from wacnn_jax.data.dataset import DatasetError

# What Pillow decodes; any case. Other files in a split folder are skipped (and counted).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# Skipped wherever they are in an image folder (and counted in the log): hidden
# files and folders (".DS_Store", macOS's "._<name>" AppleDouble files), the
# "__MACOSX" folder of archives made on a Mac, Windows' Thumbs.db and desktop.ini.
SYSTEM_FILE_NAMES = ("__macosx", "thumbs.db", "desktop.ini")
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")


@dataclasses.dataclass(frozen=True)
class ImageFile:
  """An image of an image folder: `<split>/<label>/<name>` (`path` as messages show it)."""

  split: str
  label: str  # the class folder's name, NFC-normalised
  path: str  # relative to the folder, or the archive member's name


@dataclasses.dataclass(frozen=True)
class FolderListing:
  """The images of a folder or archive's splits, in reading order, and the class names."""

  images: tuple[ImageFile, ...]
  class_names: tuple[str, ...]

  def split(self, split: str) -> list[ImageFile]:
    return [image for image in self.images if image.split == split]

  def labels(self, split: str) -> list[int]:
    index = {name: i for i, name in enumerate(self.class_names)}
    return [index[image.label] for image in self.split(split)]


def check_exists(path: str) -> None:
  """DatasetError naming `data.image_folder` and what it should be, if `path` does not exist."""
  if not os.path.exists(path):
    raise DatasetError(
        f"data.image_folder={path!r} does not exist. Point it at a folder "
        "<root>/{train,test}/<label>/*.jpg (or a .tar.gz of one), or at an official CIFAR "
        f"archive such as cifar-10-python.tar.gz ({cifar_archives.DOWNLOAD_PAGE}).")


def dataset_name(path: str) -> str:
  """The dataset's name: the folder's or archive's (an archive and its extracted folder: one)."""
  name = os.path.basename(path.rstrip("/"))
  for suffix in ARCHIVE_SUFFIXES:
    name = name.removesuffix(suffix)
  return name


def is_system_file(parts: Sequence[str]) -> bool:
  return any(part.startswith(".") or part.lower() in SYSTEM_FILE_NAMES for part in parts)


def layout(paths: Iterable[str], splits: Sequence[str], where: str) -> list[ImageFile]:
  """The images of `splits` among the files `paths` ('/'-separated, relative to the root).

  An image is `[<top>/]<split>/<label>/<name>` with an IMAGE_EXTENSIONS
  extension (any case). Files outside the split folders are ignored; hidden
  and system files and files that are not images (by their extension: notes,
  CSV files, ...) are skipped, with a line that counts them by kind. An image
  that is not in a class folder is refused (DatasetError naming it): a run
  must not train on fewer images than the folder holds.
  """
  images, misplaced = [], []
  skipped = collections.Counter()
  for path in paths:
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if not any(part in splits for part in parts[:-1]):
      continue  # outside the split folders: README, another split, ...
    extension = os.path.splitext(parts[-1])[1].lower()
    if is_system_file(parts):
      skipped["hidden or system"] += 1
    elif extension not in IMAGE_EXTENSIONS:
      skipped[extension or "without extension"] += 1
    elif len(parts) >= 3 and parts[-3] in splits:
      images.append(ImageFile(parts[-3], unicodedata.normalize("NFC", parts[-2]), path))
    else:
      misplaced.append(path)
  if misplaced:
    more = f" (and {len(misplaced) - 1} more)" if len(misplaced) > 1 else ""
    raise DatasetError(
        f"{where} holds images that are not in a class folder: {misplaced[0]}{more}. Images "
        "are read from <split>/<class>/<name>: move each into the folder of its class.")
  if skipped:
    logging.info("%s: skipped %d file(s) that are not images: %s.", where,
                 sum(skipped.values()), ", ".join(f"{n} {kind}" for kind, n in
                                                 sorted(skipped.items())))
  return images


def check_splits(images: Sequence[ImageFile], splits, where) -> tuple[str, ...]:
  """The class names (sorted label folders of all splits); DatasetError for a split with no image."""
  found = sorted({image.split for image in images})
  missing = [s for s in splits if s not in found]
  if missing:
    raise DatasetError(
        f"image folder {where} has no split(s) {missing} (found "
        f"{found or 'no images'}). Expected the layout "
        "<root>/{train,test}/<label>/<image>.jpg|png, as "
        "tfds.folder_dataset.ImageFolder reads it; point "
        "data.image_folder at <root>.")
  return tuple(sorted({image.label for image in images}))


def folder_files(path: str, splits: Sequence[str]) -> list[str]:
  """Every file under `path`'s split folders, '/'-separated and relative to `path`."""
  files = []
  for split in dict.fromkeys(splits):
    for folder, _, names in os.walk(os.path.join(path, split), followlinks=True):
      relative = os.path.relpath(folder, path).replace(os.sep, "/")
      files += [f"{relative}/{name}" for name in names]
  return files


def list_images(paths: Iterable[str], splits: Sequence[str], where: str) -> FolderListing:
  """The listing of the files `paths` (of a folder or an archive `where`): images in
  reading order (by split as given, class, then path: ImageFolder's order) and classes."""
  images = layout(paths, splits, where)
  class_names = check_splits(images, splits, where)
  order = {split: i for i, split in enumerate(dict.fromkeys(splits))}
  images.sort(key=lambda image: (order[image.split], image.label, image.path))
  return FolderListing(tuple(images), class_names)
