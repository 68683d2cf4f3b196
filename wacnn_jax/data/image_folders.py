"""Image folders `<root>/<split>/<label>/*.jpg|png` (or a tar archive of one), decoded by Pillow.

    dataset = read_image_folder("path/to/root", splits=("train", "test"))

The layout of `tfds.folder_dataset.ImageFolder`. A run never trains on a
silently smaller or other dataset: a file that Pillow cannot decode, a file
in a split folder that is not a class folder's image, and a damaged or cut
archive are refused by name (hidden and system files are skipped and
counted); every image is converted to 8-bit RGB without clipping (`_to_rgb`;
the conversions are logged). An official CIFAR-10/100 archive given as the
folder is recognised by its content and read by `cifar_archives`.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import io
import os
from typing import Iterable, Sequence
import unicodedata

from absl import logging
import numpy as np
import PIL
from PIL import Image

from wacnn_jax.data import cifar_archives
from wacnn_jax.data import resizing
from wacnn_jax.data.dataset import Dataset, DatasetError, Split
from wacnn_jax.data import tar_archives

# What Pillow decodes; any case. Other files in a split folder are skipped (and counted).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# Skipped wherever they are in an image folder (and counted in the log): hidden
# files and folders (".DS_Store", macOS's "._<name>" AppleDouble files), the
# "__MACOSX" folder of archives made on a Mac, Windows' Thumbs.db and desktop.ini.
SYSTEM_FILE_NAMES = ("__macosx", "thumbs.db", "desktop.ini")
# What converting a Pillow mode to 8-bit RGB does, where it loses something.
MODE_CONVERSIONS = {"RGBA": " (alpha dropped)", "RGBa": " (alpha dropped)",
                    "LA": " (alpha dropped)", "PA": " (alpha dropped)",
                    "I;16": " (high byte)", "I;16B": " (high byte)", "I;16L": " (high byte)",
                    "I;16N": " (high byte)", "CMYK": " (Pillow's CMYK to RGB)"}
_ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")

@dataclasses.dataclass(frozen=True)
class _ImageFile:
  """An image of an image folder: `<split>/<label>/<name>` (`path` as messages show it)."""

  split: str
  label: str  # the class folder's name, NFC-normalised
  path: str  # relative to the folder, or the archive member's name


def _is_system_file(parts: Sequence[str]) -> bool:
  return any(part.startswith(".") or part.lower() in SYSTEM_FILE_NAMES for part in parts)


def _layout(paths: Iterable[str], splits: Sequence[str], where: str) -> list[_ImageFile]:
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
    if _is_system_file(parts):
      skipped["hidden or system"] += 1
    elif extension not in IMAGE_EXTENSIONS:
      skipped[extension or "without extension"] += 1
    elif len(parts) >= 3 and parts[-3] in splits:
      images.append(_ImageFile(parts[-3], unicodedata.normalize("NFC", parts[-2]), path))
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


def _check_splits(images: Sequence[_ImageFile], splits, where) -> tuple[str, ...]:
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


def _to_rgb(image: Image.Image) -> np.ndarray | str:
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


def _source_mode(image: Image.Image) -> str:
  """The image's mode, with ' 16-bit' for a 16-bit PNG (Pillow opens 16-bit colour as 8-bit)."""
  depth16 = image.format == "PNG" and image.tile and ";16" in str(image.tile[0][3])
  return f"{image.mode}{' 16-bit' if depth16 and not image.mode.startswith('I;16') else ''}"


def _decode_image(content: bytes | str) -> tuple[np.ndarray, str] | str:
  """(uint8 (H, W, 3) pixels, source mode), or why `content` (bytes, or a read error) is
  refused."""
  if isinstance(content, str):
    return content
  if not content:
    return "empty file"
  try:
    with Image.open(io.BytesIO(content)) as image:
      mode = _source_mode(image)
      pixels = _to_rgb(image)
      return pixels if isinstance(pixels, str) else (pixels, mode)
  except PIL.UnidentifiedImageError:
    return "not an image format Pillow reads"
  except Exception as e:  # pylint: disable=broad-except
    return f"{type(e).__name__}: {e}"


def read_image(source) -> np.ndarray:
  """uint8 (H, W, 3) pixels of one image: a file's path, or a Pillow image, converted to 8-bit
  RGB as the folders' images are (`_to_rgb`); DatasetError naming it otherwise."""
  if isinstance(source, Image.Image):
    pixels = _to_rgb(source)
    if isinstance(pixels, str):
      raise DatasetError(f"the image cannot be read: {pixels}.")
    return pixels
  decoded = _decode_image(_read_file(os.fspath(source)))
  if isinstance(decoded, str):
    raise DatasetError(f"cannot read the image {os.fspath(source)}: {decoded}.")
  return decoded[0]


def _stack_splits(images: Sequence[_ImageFile], contents: Sequence[bytes | str],
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
    decoded = _decode_image(content)
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
    logging.info("%s: converted to 8-bit RGB: %s.", where, ", ".join(
        f"{n} {mode}{MODE_CONVERSIONS.get(mode.split(' ')[0], '')}"
        f"{' (high byte)' if mode.endswith('16-bit') else ''}"
        for mode, n in sorted(modes.items())))
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
  if not os.path.exists(path):
    raise DatasetError(
        f"data.image_folder={path!r} does not exist. Point it at a folder "
        "<root>/{train,test}/<label>/*.jpg (or a .tar.gz of one), or at an official CIFAR "
        f"archive such as cifar-10-python.tar.gz ({cifar_archives.DOWNLOAD_PAGE}).")
  cifar = cifar_archives.detect(path)
  if cifar is not None:
    return resized(_read_cifar_archive(path, cifar, splits, cifar100_labels), image_size, resize)
  if cifar100_labels != "fine":
    raise ValueError(f"data.cifar100_labels={cifar100_labels!r} applies to the official "
                     f"CIFAR-100 archive; {path} is an image folder.")
  if os.path.isdir(path):
    files = []
    for split in dict.fromkeys(splits):
      for folder, _, names in os.walk(os.path.join(path, split), followlinks=True):
        relative = os.path.relpath(folder, path).replace(os.sep, "/")
        files += [f"{relative}/{name}" for name in names]
    images = sorted(_layout(files, splits, path), key=_label_then_path)
    contents = [_read_file(os.path.join(path, image.path)) for image in images]
  elif path.endswith(_ARCHIVE_SUFFIXES):
    members = tar_archives.read_whole(path)
    images = sorted(_layout(members, splits, path), key=_label_then_path)
    contents = [members[image.path] for image in images]
  else:
    raise DatasetError(
        f"data.image_folder={path!r} is neither a folder nor a "
        f"{'/'.join(_ARCHIVE_SUFFIXES)} archive.")
  class_names = _check_splits(images, splits, path)
  result = _stack_splits(images, contents, splits, class_names, path, image_size, resize)
  name = os.path.basename(path.rstrip("/"))
  for suffix in _ARCHIVE_SUFFIXES:  # an archive and its extracted folder: one name
    name = name.removesuffix(suffix)
  return Dataset(name=name, train=result[splits[0]], test=result[splits[1]],
                 class_names=class_names)


def _label_then_path(image: _ImageFile) -> tuple[str, str]:
  """The order of a split's images: by class, then by path (the order ImageFolder reads)."""
  return image.label, image.path


def _read_file(path: str) -> bytes | str:
  """The file's bytes, or why it cannot be read."""
  try:
    with open(path, "rb") as f:
      return f.read()
  except OSError as e:
    return f"cannot read it ({e.strerror or e})"


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
