"""Datasets as in-memory uint8 arrays, and the reference augmentation on device.

CIFAR-sized datasets fit in accelerator memory, so the pipeline is two steps:

1. `load_dataset(data_config)` reads every split once, on the host, into
   `Split(images uint8 (N, H, W, 3), labels int32 (N,))`, from either
   - tensorflow-datasets by name (`cifar10`, `cifar100`, any tfds dataset with
     `image`/`label` features), or
   - an image folder `root/{train,test}/<label>/*.jpg|jpeg|png` (the layout of
     `tfds.folder_dataset.ImageFolder`), or a `.tar`/`.tar.gz` archive of one.
     A run never trains on a silently smaller or other dataset: a file that
     Pillow cannot decode, a file in a split folder that is not a class
     folder's image, and a damaged or cut archive are refused by name (hidden
     and system files are skipped and counted); every image is converted to
     8-bit RGB without clipping (`_to_rgb`; the conversions are logged).
   - an official CIFAR-10/100 archive as downloaded (`cifar_archives`:
     python or binary version, exact pixels), also through `image_folder`.
   An image folder or archive is decoded once and then read from a cache
   (`dataset_cache`, `data.cache_dir`). Then every source is checked and
   summarised alike (`dataset_checks`).
2. `augment_batch` / `normalize` run inside the jitted train and eval steps:
   zero-pad 4, random crop, random horizontal flip, then per-channel
   normalisation with the CIFAR mean and standard deviation (the reference's).

TensorFlow is needed only where tfds itself needs it: preparing a tfds dataset,
or reading one stored as tfrecord. Image folders are decoded with Pillow, and a
tfds dataset prepared as array_record is read through tfds's TF-free
`as_data_source`.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import io
import os
import socket
from typing import Iterable, Sequence
import unicodedata

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import PIL
from PIL import Image

from wacnn_jax import cifar_archives
from wacnn_jax import dataset_cache
from wacnn_jax import dataset_checks
from wacnn_jax import tar_archives
from wacnn_jax.dataset_checks import DatasetError  # pylint: disable=unused-import

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")  # in any case
# Skipped wherever they are in an image folder (and counted in the log): hidden
# files and folders (".DS_Store", macOS's "._<name>" AppleDouble files), the
# "__MACOSX" folder of archives made on a Mac, Windows' Thumbs.db and desktop.ini.
SYSTEM_FILE_NAMES = ("__macosx", "thumbs.db", "desktop.ini")
# What converting a Pillow mode to 8-bit RGB does, where it loses something.
MODE_CONVERSIONS = {"RGBA": " (alpha dropped)", "RGBa": " (alpha dropped)",
                    "LA": " (alpha dropped)", "PA": " (alpha dropped)",
                    "I;16": " (high byte)", "I;16B": " (high byte)", "I;16L": " (high byte)",
                    "I;16N": " (high byte)", "CMYK": " (Pillow's CMYK to RGB)"}
CROP_PADDING = 4
_ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")


@dataclasses.dataclass(frozen=True)
class Split:
  """One split held in host memory: images uint8 (N, H, W, 3), labels int32 (N,)."""

  images: np.ndarray
  labels: np.ndarray

  def __post_init__(self):
    if self.images.ndim != 4 or self.images.shape[-1] != 3:
      raise DatasetError(f"images must be (N, H, W, 3), got {self.images.shape}")
    if self.images.shape[0] != self.labels.shape[0]:
      raise DatasetError(
          f"{self.images.shape[0]} images but {self.labels.shape[0]} labels")

  def __len__(self) -> int:
    return int(self.labels.shape[0])

  def subset(self, max_examples: int | None) -> "Split":
    """The first `max_examples` of a fixed (seed 0) permutation, in index order.

    Deterministic, and close to class-balanced for a shuffled source.
    """
    if not max_examples or max_examples >= len(self):
      return self
    keep = np.sort(np.random.default_rng(0).permutation(len(self))[:max_examples])
    return Split(self.images[keep], self.labels[keep])


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Train and test splits plus class metadata; `summary` as `load_dataset` returns it."""

  name: str
  train: Split
  test: Split
  class_names: tuple[str, ...]
  summary: dataset_checks.DatasetSummary | None = None

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.train.images.shape[1:])


def load_dataset(data_config) -> Dataset:
  """Loads the dataset that `data_config` names (see `configs/default.py`).

  Fields read: `dataset`, `data_dir`, `image_folder`, `cifar100_labels`, `cache_dir`,
  `download`, `train_split`, `test_split`, `max_train_examples`, `max_test_examples`,
  `allow_missing_classes`. Whatever the source, the whole dataset is checked
  (`dataset_checks.check_dataset`: every class in every split, one image
  size, labels in range) and the subsets as trained on are summarised
  (`Dataset.summary`, logged). In a run of several processes every process
  reads the whole dataset.
  """
  folder = data_config.image_folder
  if folder is not None and not str(folder).strip():
    raise DatasetError(
        "data.image_folder is set but empty (an unset shell variable?): give the "
        "folder or archive, or leave the field out to read data.dataset through tfds.")
  cifar100_labels = data_config.get("cifar100_labels", "fine")
  if folder:
    dataset = dataset_cache.read_cached(  # decoded once, then read from data.cache_dir
        read_image_folder, folder,
        splits=(data_config.train_split, data_config.test_split),
        cache_dir=data_config.get("cache_dir"),
        options={"cifar100_labels": cifar100_labels})
  elif cifar100_labels != "fine":
    raise ValueError(f"data.cifar100_labels={cifar100_labels!r} applies to the official "
                     "CIFAR-100 archive (data.image_folder=cifar-100-python.tar.gz or "
                     "cifar-100-binary.tar.gz); tfds datasets give their 'label'.")
  else:
    dataset = read_tfds(
        data_config.dataset,
        data_dir=data_config.data_dir,
        splits=(data_config.train_split, data_config.test_split),
        download=data_config.download)
  source = os.path.expanduser(str(folder)) if folder else f"tfds:{data_config.dataset}"
  dataset_checks.check_dataset(dataset, source,
                               data_config.get("allow_missing_classes", False))
  dataset = dataclasses.replace(
      dataset,
      train=dataset.train.subset(data_config.max_train_examples),
      test=dataset.test.subset(data_config.max_test_examples))
  dataset_checks.warn_of_classes_left_out(dataset)
  summary = dataset_checks.summarize(dataset, source)
  logging.info("%s", summary.line())
  return dataclasses.replace(dataset, summary=summary)


# ---------------------------------------------------------------------------
# Image folders (and archives of them), decoded with Pillow.
# ---------------------------------------------------------------------------


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

  An image is `[<top>/]<split>/<label>/<name>.jpg|jpeg|png` (extension in any
  case). Files outside the split folders are ignored and system files
  skipped (counted in the log); any other file inside a split folder is
  refused (DatasetError naming it): a run must not train on fewer images
  than the folder holds.
  """
  images, strays, skipped = [], [], 0
  for path in paths:
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if not any(part in splits for part in parts[:-1]):
      continue  # outside the split folders: README, another split, ...
    if _is_system_file(parts):
      skipped += 1
    elif (len(parts) >= 3 and parts[-3] in splits
          and os.path.splitext(parts[-1])[1].lower() in IMAGE_EXTENSIONS):
      images.append(_ImageFile(parts[-3], unicodedata.normalize("NFC", parts[-2]), path))
    else:
      strays.append(path)
  if strays:
    more = f" (and {len(strays) - 1} more)" if len(strays) > 1 else ""
    raise DatasetError(
        f"{where} holds files that are not images of a class folder: {strays[0]}{more}. "
        f"Only <split>/<class>/<name>{'|'.join(IMAGE_EXTENSIONS)} files are read (any "
        "case; hidden files, __MACOSX, Thumbs.db and desktop.ini are skipped): move the "
        "others out of the split folders, or convert them to JPEG or PNG.")
  if skipped:
    logging.info("%s: skipped %d hidden or system file(s) (.DS_Store, ._*, __MACOSX, "
                 "Thumbs.db, desktop.ini).", where, skipped)
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
  return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _source_mode(image: Image.Image) -> str:
  """The image's mode, with ' 16-bit' for a 16-bit PNG (Pillow opens 16-bit colour as 8-bit)."""
  depth16 = image.format == "PNG" and image.tile and ";16" in str(image.tile[0][3])
  return f"{image.mode}{' 16-bit' if depth16 and not image.mode.startswith('I;16') else ''}"


def _decode_image(content: bytes | str) -> tuple[np.ndarray, str] | str:
  """(uint8 (H, W, 3) pixels, source mode), or why `content` (bytes, or a read error) is refused."""
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


def _stack_splits(images: Sequence[_ImageFile], contents: Sequence[bytes | str],
                  splits: Sequence[str], class_names: Sequence[str],
                  where: str) -> dict[str, Split]:
  """Decodes the images (file bytes, or why they could not be read) into {split: Split}.

  Raises DatasetError naming the first file (in split order) that does not
  read or decode, and counting the others; logs the modes converted to RGB.
  """
  class_index = {c: i for i, c in enumerate(class_names)}
  with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
    decoded = list(pool.map(_decode_image, contents))
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
  for split in splits:
    rows = [(image, pixels) for image, (pixels, _) in zip(images, decoded)
            if image.split == split]
    shapes = sorted({pixels.shape for _, pixels in rows})
    if len(shapes) != 1:
      raise DatasetError(
          f"images of split {split!r} in {where} have different sizes "
          f"{shapes[:4]}; resize them all to one size (32x32 for the "
          "CIFAR models) first.")
    result[split] = Split(np.stack([pixels for _, pixels in rows]),
                          np.array([class_index[image.label] for image, _ in rows], np.int32))
  return result


def read_image_folder(path: str, splits=("train", "test"), cifar100_labels: str = "fine"
                      ) -> Dataset:
  """Reads `path/<split>/<label>/<file>` (or an archive holding one such root), or an
  official CIFAR archive (`cifar_archives`, recognised by its content).

  Labels are the sub-folder names (NFC-normalised) in sorted order (as
  ImageFolder assigns them); each split holds its images by label, then in
  sorted order of their paths, so the result is deterministic. See `_layout`
  for which files are read. `cifar100_labels`: 'fine' or 'coarse' (official
  CIFAR-100 archives only).
  """
  path = os.path.expanduser(str(path))
  if not os.path.exists(path):
    raise DatasetError(
        f"data.image_folder={path!r} does not exist. Point it at a folder "
        "<root>/{train,test}/<label>/*.jpg (or a .tar.gz of one), or at an official CIFAR "
        f"archive such as cifar-10-python.tar.gz ({cifar_archives.DOWNLOAD_PAGE}).")
  cifar = cifar_archives.detect(path)
  if cifar is not None:
    return _read_cifar_archive(path, cifar, splits, cifar100_labels)
  if cifar100_labels != "fine":
    raise ValueError(f"data.cifar100_labels={cifar100_labels!r} applies to the official "
                     f"CIFAR-100 archive; {path} is an image folder.")
  if os.path.isdir(path):
    files = []
    for split in splits:
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
  result = _stack_splits(images, contents, splits, class_names, path)
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
  """An official CIFAR archive (`cifar_archives`) as a Dataset of its train and test splits."""
  if tuple(splits) != ("train", "test"):
    raise DatasetError(f"{path} is {layout.name}, whose splits are train and test; leave "
                       f"data.train_split/test_split at train/test (not {list(splits)}).")
  try:
    cifar = cifar_archives.read_cifar_archive(path, labels, layout)
  except cifar_archives.CifarArchiveError as e:
    raise DatasetError(str(e)) from e
  return Dataset(name=cifar.name, train=Split(cifar.train_images, cifar.train_labels),
                 test=Split(cifar.test_images, cifar.test_labels), class_names=cifar.class_names)


# ---------------------------------------------------------------------------
# tensorflow-datasets.
# ---------------------------------------------------------------------------


def _network_reachable(host: str = "storage.googleapis.com", port: int = 443,
                       timeout: float = 5.0) -> bool:
  """Whether the tfds download mirror answers; tfds would retry for minutes."""
  try:
    socket.create_connection((host, port), timeout=timeout).close()
    return True
  except OSError:
    return False


def _offline_hint(name: str) -> str:
  return (
      f"To train without network, set data.image_folder to an official CIFAR archive "
      f"as downloaded from {cifar_archives.DOWNLOAD_PAGE} (e.g. "
      "--config.data.image_folder=cifar-10-python.tar.gz), to a folder "
      "<root>/{train,test}/<label>/*.jpg or a .tar.gz of one (a smoke run: "
      "--config.data.image_folder=tests/data/cifar10-mini.tar.gz), or point data.data_dir "
      f"at a folder where tfds has already prepared {name!r} (copied from "
      "~/tensorflow_datasets of a machine with network).")


def _split_from_examples(examples: Iterable[dict]) -> Split:
  images, labels = [], []
  for example in examples:
    image = np.asarray(example["image"])
    if image.dtype != np.uint8:  # a cast would wrap 16-bit values around
      raise DatasetError(f"the dataset's images are {image.dtype}, not uint8; wacnn_jax "
                         "trains on 8-bit images.")
    images.append(image)
    labels.append(np.asarray(example["label"]))
  if len({image.shape for image in images}) > 1:
    raise DatasetError(
        f"the dataset's images have different shapes {sorted({i.shape for i in images})[:4]}; "
        "resize them all to one size (32x32 for the CIFAR models) first.")
  images = np.stack(images)
  if images.ndim == 3:  # grayscale datasets (mnist-like) have no channel axis
    images = images[..., None]
  if images.shape[-1] == 1:
    images = np.repeat(images, 3, axis=-1)
  return Split(images, np.asarray(labels, np.int32).reshape(-1))


def _read_tfds_split(builder, split: str) -> Split:
  """Reads one split: array_record via `as_data_source` (no TensorFlow), else tf.data."""
  try:
    source = builder.as_data_source(split=split)
  except NotImplementedError:
    source = None  # stored as tfrecord: only tf.data can read it
  if source is not None:
    return _split_from_examples(source[i] for i in range(len(source)))
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    dataset = builder.as_dataset(split=split)  # needs TensorFlow
  except ImportError as e:
    if not builder.is_prepared():
      raise  # not there yet: the caller downloads and prepares it
    raise DatasetError(
        f"{builder.name!r} is stored as tfrecord, which only TensorFlow can "
        "read. Install tensorflow-cpu, or prepare it as array_record "
        "(builder.download_and_prepare(file_format='array_record')).") from e
  # Iterating (not batch_size=-1) is what works inside tfds.testing.mock_data.
  return _split_from_examples(tfds.as_numpy(dataset))


def read_tfds(name: str, *, data_dir: str | None, splits=("train", "test"),
              download: bool = True) -> Dataset:
  """Reads a tfds image-classification dataset into memory.

  Downloads and prepares it (as array_record, so that later runs read it
  without TensorFlow) when it is not in `data_dir` yet and `download` is set.
  """
  try:  # optional: image folders are read without tensorflow-datasets
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise DatasetError(
        "tensorflow-datasets is not installed (pip install "
        "tensorflow-datasets), or use data.image_folder.") from e
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise DatasetError(
        f"tfds has no dataset named {name!r} (data.dataset). Use e.g. "
        "'cifar10' or 'cifar100', or set data.image_folder.") from e
  features = builder.info.features
  if "image" not in features or "label" not in features:
    raise DatasetError(
        f"tfds dataset {name!r} has features {list(features)}; wacnn_jax needs "
        "'image' and 'label'.")

  def read_all():
    return {s: _read_tfds_split(builder, s) for s in splits}

  try:
    # An unprepared builder raises here (AssertionError, ImportError without
    # TensorFlow); tfds.testing.mock_data serves unprepared builders too.
    result = read_all()
  except DatasetError:
    raise
  except Exception as read_error:  # pylint: disable=broad-except
    if not download:
      raise DatasetError(
          f"tfds dataset {name!r} is not prepared in data.data_dir="
          f"{data_dir!r} and data.download is False. " + _offline_hint(name)
      ) from read_error
    if not _network_reachable():
      raise DatasetError(
          f"tfds dataset {name!r} is not in data.data_dir={data_dir!r} and "
          "cannot be downloaded: no network. " + _offline_hint(name)
      ) from read_error
    try:
      builder.download_and_prepare(file_format="array_record")
      result = read_all()
    except Exception as e:  # pylint: disable=broad-except
      raise DatasetError(
          f"downloading/preparing tfds dataset {name!r} failed "
          f"({type(e).__name__}: {e}). " + _offline_hint(name)) from e
  class_names = tuple(features["label"].names)
  return Dataset(name=name, train=result[splits[0]], test=result[splits[1]],
                 class_names=class_names)


# ---------------------------------------------------------------------------
# On-device preprocessing, used inside the jitted steps.
# ---------------------------------------------------------------------------


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
