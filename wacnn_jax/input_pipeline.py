"""Datasets as in-memory uint8 arrays, and the reference augmentation on device.

CIFAR-sized datasets fit in accelerator memory, so the pipeline is two steps:

1. `load_dataset(data_config)` reads every split once, on the host, into
   `Split(images uint8 (N, H, W, 3), labels int32 (N,))`, from either
   - tensorflow-datasets by name (`cifar10`, `cifar100`, any tfds dataset with
     `image`/`label` features), or
   - an image folder `root/{train,test}/<label>/*.jpg|jpeg|png` (the layout of
     `tfds.folder_dataset.ImageFolder`), or a `.tar`/`.tar.gz` archive of one.
     A file that Pillow cannot decode is refused, not skipped (the error names
     it and counts the others), so that a run never trains on a silently
     smaller dataset; or
   - an official CIFAR-10/100 archive as downloaded (`cifar_archives`:
     python or binary version, exact pixels), also through `image_folder`.
2. `augment_batch` / `normalize` run inside the jitted train and eval steps:
   zero-pad 4, random crop, random horizontal flip, then per-channel
   normalisation with the CIFAR mean and standard deviation (the reference's).

TensorFlow is needed only where tfds itself needs it: preparing a tfds dataset,
or reading one stored as tfrecord. Image folders are decoded with Pillow, and a
tfds dataset prepared as array_record is read through tfds's TF-free
`as_data_source`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import os
import socket
import tarfile
from typing import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import PIL
from PIL import Image

from wacnn_jax import cifar_archives

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
CROP_PADDING = 4
_ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")


class DatasetError(RuntimeError):
  """A dataset could not be found or read; the message says how to fix it."""


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
  """Train and test splits plus class metadata."""

  name: str
  train: Split
  test: Split
  class_names: tuple[str, ...]

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.train.images.shape[1:])


def load_dataset(data_config) -> Dataset:
  """Loads the dataset that `data_config` names (see `configs/default.py`).

  Fields read: `dataset`, `data_dir`, `image_folder`, `cifar100_labels`,
  `download`, `train_split`, `test_split`, `max_train_examples`,
  `max_test_examples`. In a run of several processes every process reads the
  whole dataset.
  """
  cifar100_labels = data_config.get("cifar100_labels", "fine")
  if data_config.image_folder:
    dataset = read_image_folder(
        data_config.image_folder,
        splits=(data_config.train_split, data_config.test_split),
        cifar100_labels=cifar100_labels)
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
  return dataclasses.replace(
      dataset,
      train=dataset.train.subset(data_config.max_train_examples),
      test=dataset.test.subset(data_config.max_test_examples))


# ---------------------------------------------------------------------------
# Image folders (and archives of them), decoded with Pillow.
# ---------------------------------------------------------------------------


def _decode_image(data: bytes) -> np.ndarray | str:
  """uint8 (H, W, 3) pixels, or why `data` is not a readable image."""
  if not data:
    return "empty file"
  try:
    with Image.open(io.BytesIO(data)) as image:
      return np.asarray(image.convert("RGB"), dtype=np.uint8)
  except PIL.UnidentifiedImageError:
    return "not an image format Pillow reads"
  except Exception as e:  # pylint: disable=broad-except
    return f"{type(e).__name__}: {e}"


def _stack_splits(items: dict[str, Sequence[tuple[str, str, bytes]]],
                  class_names: Sequence[str], where: str) -> dict[str, Split]:
  """Decodes {split: [(label_name, file name, encoded bytes)]} into {split: Split}.

  Raises DatasetError naming the first file (in split order) that does not
  decode, and counting the others.
  """
  class_index = {c: i for i, c in enumerate(class_names)}
  with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
    images = {split: list(pool.map(_decode_image, [data for _, _, data in triples]))
              for split, triples in items.items()}
  bad = [(file_name, image) for split, triples in items.items()
         for (_, file_name, _), image in zip(triples, images[split]) if isinstance(image, str)]
  if bad:
    more = f" (and {len(bad) - 1} more bad file(s))" if len(bad) > 1 else ""
    raise DatasetError(
        f"cannot decode {bad[0][0]} in {where}: {bad[0][1]}{more}. Remove or "
        "replace the file(s); an image folder must hold only readable JPEG/PNG images.")
  result = {}
  for split, triples in items.items():
    shapes = {im.shape for im in images[split]}
    if len(shapes) != 1:
      raise DatasetError(
          f"images of split {split!r} in {where} have different sizes "
          f"{sorted(shapes)[:4]}; resize them all to one size (32x32 for the "
          "CIFAR models) first.")
    labels = np.array([class_index[label] for label, _, _ in triples], np.int32)
    result[split] = Split(np.stack(images[split]), labels)
  return result


def _group_by_split(entries: Iterable[tuple[str, str, str]]):
  """Groups (split, label, path) triples into {split: {label: [paths]}}."""
  tree: dict[str, dict[str, list[str]]] = {}
  for split, label, path in entries:
    if os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS:
      tree.setdefault(split, {}).setdefault(label, []).append(path)
  return tree


def _check_splits(tree, splits, where) -> tuple[str, ...]:
  missing = [s for s in splits if s not in tree]
  if missing:
    raise DatasetError(
        f"image folder {where} has no split(s) {missing} (found "
        f"{sorted(tree) or 'no images'}). Expected the layout "
        "<root>/{train,test}/<label>/<image>.jpg|png, as "
        "tfds.folder_dataset.ImageFolder reads it; point "
        "data.image_folder at <root>.")
  class_names = tuple(sorted({c for s in splits for c in tree[s]}))
  return class_names


def read_image_folder(path: str, splits=("train", "test"), cifar100_labels: str = "fine"
                      ) -> Dataset:
  """Reads `path/<split>/<label>/<file>` (or an archive holding one such root), or an
  official CIFAR archive (`cifar_archives`, recognised by its content).

  Labels are the sub-folder names in sorted order (as ImageFolder assigns them);
  files are read in sorted order, so the result is deterministic.
  `cifar100_labels`: 'fine' or 'coarse' (official CIFAR-100 archives only).
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
    entries = []
    for split in sorted(os.listdir(path)):
      split_dir = os.path.join(path, split)
      if not os.path.isdir(split_dir):
        continue
      for label in sorted(os.listdir(split_dir)):
        label_dir = os.path.join(split_dir, label)
        if os.path.isdir(label_dir):
          entries += [(split, label, os.path.join(label_dir, f))
                      for f in sorted(os.listdir(label_dir))]
    tree = _group_by_split(entries)
    class_names = _check_splits(tree, splits, path)

    def read(file_path):
      with open(file_path, "rb") as f:
        return f.read()

    result = _stack_splits(
        {split: [(label, os.path.relpath(p, path), read(p)) for label in sorted(tree[split])
                 for p in tree[split][label]] for split in splits},
        class_names, path)
  elif path.endswith(_ARCHIVE_SUFFIXES):
    result, class_names = _read_image_archive(path, splits)
  else:
    raise DatasetError(
        f"data.image_folder={path!r} is neither a folder nor a "
        f"{'/'.join(_ARCHIVE_SUFFIXES)} archive.")
  name = os.path.basename(path.rstrip("/"))
  for suffix in _ARCHIVE_SUFFIXES:  # an archive and its extracted folder: one name
    name = name.removesuffix(suffix)
  return Dataset(name=name, train=result[splits[0]], test=result[splits[1]],
                 class_names=class_names)


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


def _read_image_archive(path: str, splits):
  """Reads an archive of `[<top>/]<split>/<label>/<file>` in one pass."""
  data: dict[str, bytes] = {}
  try:
    with tarfile.open(path) as archive:
      for member in archive:
        if member.isfile():
          data[member.name] = archive.extractfile(member).read()
  except (tarfile.TarError, OSError, EOFError) as e:
    raise DatasetError(f"cannot read archive {path!r}: {e}") from e
  split_set = set(splits)
  entries = []
  for name in data:
    parts = name.split("/")
    # The split folder is the first path component that names a split.
    for i, part in enumerate(parts[:-2]):
      if part in split_set and len(parts) - i == 3:
        entries.append((part, parts[i + 1], name))
        break
  tree = _group_by_split(entries)
  class_names = _check_splits(tree, splits, path)
  result = _stack_splits(
      {split: [(label, p, data[p]) for label in sorted(tree[split])
               for p in sorted(tree[split][label])] for split in splits},
      class_names, path)
  return result, class_names


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
    images.append(np.asarray(example["image"], np.uint8))
    labels.append(np.asarray(example["label"]))
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
