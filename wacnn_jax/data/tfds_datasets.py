"""tensorflow-datasets by name: `read_tfds("cifar10", data_dir=None)`, prepared on first use.

TensorFlow is needed only where tfds itself needs it: preparing a dataset,
or reading one stored as tfrecord. A dataset prepared as array_record (how
`read_tfds` prepares it) is read through tfds's TF-free `as_data_source`.
"""

from __future__ import annotations

import importlib.util
import socket
from typing import Iterable

import numpy as np

from wacnn_jax.data import cifar_archives
from wacnn_jax.data import resizing
from wacnn_jax.data.dataset import Dataset, DatasetError, Split


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


def _rgb(image: np.ndarray) -> np.ndarray:
  """uint8 (H, W, 3) of a tfds image (H, W), (H, W, 1) or (H, W, 3)."""
  if image.dtype != np.uint8:  # a cast would wrap 16-bit values around
    raise DatasetError(f"the dataset's images are {image.dtype}, not uint8; wacnn_jax "
                       "trains on 8-bit images.")
  if image.ndim == 2:  # grayscale datasets (mnist-like) have no channel axis
    image = image[..., None]
  return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image


def _split_from_examples(examples: Iterable[dict], size: tuple[int, int] | None = None,
                         resize: str = "crop") -> Split:
  """The examples' images (brought to `size` when given) and labels."""
  images, labels = [], []
  for example in examples:
    image = _rgb(np.asarray(example["image"]))
    images.append(image if size is None else resizing.resize(image, size, resize))
    labels.append(np.asarray(example["label"]))
  if len({image.shape for image in images}) > 1:
    names = [f"example {k}" for k in range(len(images))]
    raise DatasetError(
        f"the dataset's images have different sizes: "
        f"{resizing.describe_sizes(names, [i.shape for i in images])}. Set data.image_size "
        "(e.g. --config.data.image_size=64) to resize them all to one size.")
  return Split(np.stack(images), np.asarray(labels, np.int32).reshape(-1))


def _read_tfds_split(builder, split: str, size: tuple[int, int] | None = None,
                     resize: str = "crop") -> Split:
  """Reads one split: array_record via `as_data_source` (no TensorFlow), else tf.data."""
  try:
    source = builder.as_data_source(split=split)
  except NotImplementedError:
    source = None  # stored as tfrecord: only tf.data can read it
  if source is not None:
    return _split_from_examples((source[i] for i in range(len(source))), size, resize)
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
  return _split_from_examples(tfds.as_numpy(dataset), size, resize)


def read_tfds(name: str, *, data_dir: str | None, splits=("train", "test"),
              download: bool = True, image_size: tuple[int, int] | None = None,
              resize: str = "crop") -> Dataset:
  """Reads a tfds image-classification dataset into memory.

  Downloads and prepares it (as array_record, so that later runs read it
  without TensorFlow) when it is not in `data_dir` yet and `download` is set.
  `image_size` (height, width): every image is brought to it (`resizing`);
  None: the images must all have one size.
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
    return {s: _read_tfds_split(builder, s, image_size, resize) for s in dict.fromkeys(splits)}

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
    if importlib.util.find_spec("tensorflow") is None:
      raise DatasetError(
          f"tfds needs TensorFlow to download and prepare {name!r} (once; reading it later "
          "does not): pip install tensorflow-cpu (requirements.txt has it; "
          "requirements-core.txt leaves it out). " + _offline_hint(name)) from read_error
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
