"""The stream pipeline's splits: listed up front, each image read and decoded when a batch needs it.

    dataset = open_streams(data_config, size, resize)    # Dataset of two StreamSplits
    split = dataset.train
    len(split), split.labels                # int32 (N,), known up front
    pixels = split.read(i)                  # uint8 (H, W, 3) at the dataset's one size

What `data.pipeline = "stream"` reads instead of decoding a whole dataset
into memory (`pipeline`): an image folder (`folder_listings`), a tar archive
of one (a `.tar.gz` decompressed once into the cache folder,
`uncompressed_archives`), an official CIFAR archive (decoded in memory: it is
150 MB), or a tfds dataset prepared as array_record (`tfds.data_source`).
Up front, only what needs no decoding: the listing (the layout and the
archive refused as the memory pipeline refuses them), the labels, the first
training image's size and the splits' checksums, of their listings (each
record's name, size and label; `StreamSplit.checksum`). Each image is
decoded where a batch is made (`stream_loaders`'s worker processes); one
that cannot be decoded, or is not of the dataset's size (without
`data.image_size`), ends the run with a DatasetError naming it.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import os

from absl import logging
import numpy as np

from wacnn_jax.data import cache_folder
from wacnn_jax.data import cifar_archives
from wacnn_jax.data.dataset import Dataset, DatasetError, Split
from wacnn_jax.data import folder_listings
from wacnn_jax.data import image_decoding
from wacnn_jax.data import image_folders
from wacnn_jax.data import resizing
from wacnn_jax.data import stream_sources
from wacnn_jax.data import tar_archives
from wacnn_jax.data import uncompressed_archives

# The normalisation statistics of a streamed training split come from this many of its images
# (a fixed random sample; all of them in a smaller split).
STATISTICS_IMAGES = 5000


@dataclasses.dataclass(frozen=True)
class StreamSplit:
  """One split read on demand: `records` (a `stream_sources` source), int32 (N,) `labels`.

  `read(i)` decodes record i and brings it to `image_size` (with `resize`),
  or, without one, checks that it is of `image_shape`. `checksum` is the
  sha256 of the listing (`listing_sha256`).
  """

  records: object
  labels: np.ndarray
  image_shape: tuple[int, int, int]
  image_size: tuple[int, int] | None
  resize: str
  checksum_value: str

  def __len__(self) -> int:
    return int(self.labels.shape[0])

  def checksum(self) -> str:
    return self.checksum_value

  def read(self, i: int, check_shape: bool = True) -> np.ndarray:
    """uint8 (H, W, 3) pixels of record `i`; DatasetError naming it if it cannot be."""
    record = self.records[i]
    if isinstance(record, np.ndarray):
      pixels = to_rgb_array(record)
    else:
      decoded = image_decoding.decode_image(record)
      if isinstance(decoded, str):
        raise DatasetError(
            f"cannot decode {self.records.name(i)}: {decoded}. Remove or replace the file; "
            "the run stopped without training on less (resume after the fix: a changed "
            "listing starts a new run).")
      pixels = decoded[0]
    if self.image_size is not None and check_shape:
      return resizing.resize(pixels, self.image_size, self.resize)
    if check_shape and pixels.shape != self.image_shape:
      raise DatasetError(
          f"{self.records.name(i)} is {pixels.shape[0]}x{pixels.shape[1]}, but the dataset's "
          f"images are {self.image_shape[0]}x{self.image_shape[1]} (its first training "
          "image's size): set data.image_size (e.g. --config.data.image_size=64) to bring "
          "every image to one size.")
    return pixels

  def subset(self, max_examples: int | None) -> "StreamSplit":
    """The subset `Split.subset` takes: the first `max_examples` of a fixed permutation."""
    if not max_examples or max_examples >= len(self):
      return self
    keep = np.sort(np.random.default_rng(0).permutation(len(self))[:max_examples])
    return dataclasses.replace(
        self, records=stream_sources.SubsetRecords(self.records, keep), labels=self.labels[keep],
        checksum_value=_sha256(self.checksum_value, keep.astype("<i8").tobytes()))

  def in_memory(self) -> Split:
    """The split decoded into memory (for evaluation tools: a test split)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
      images = list(pool.map(self.read, range(len(self))))
    return Split(np.stack(images) if images else np.zeros((0, *self.image_shape), np.uint8),
                 self.labels)

  def statistics_sample(self) -> np.ndarray:
    """uint8 (n, H, W, 3): up to STATISTICS_IMAGES images (a fixed sample), for the
    normalisation statistics."""
    count = min(len(self), STATISTICS_IMAGES)
    picked = np.sort(np.random.default_rng(0).permutation(len(self))[:count])
    return np.stack([self.read(int(i)) for i in picked])


def to_rgb_array(image: np.ndarray) -> np.ndarray:
  """uint8 (H, W, 3) of a decoded uint8 image (H, W), (H, W, 1) or (H, W, 3)."""
  if image.dtype != np.uint8:
    raise DatasetError(f"the dataset's images are {image.dtype}, not uint8; wacnn_jax trains on "
                       "8-bit images.")
  if image.ndim == 2:
    image = image[..., None]
  return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image


def _sha256(*parts: str | bytes) -> str:
  digest = hashlib.sha256()
  for part in parts:
    digest.update(part.encode() if isinstance(part, str) else part)
  return digest.hexdigest()


def listing_sha256(names, sizes, labels) -> str:
  """sha256 of a split's listing: each record's name, size in bytes and label, in order."""
  digest = hashlib.sha256()
  for name, size, label in zip(names, sizes, labels):
    digest.update(f"{name}\0{size}\0{int(label)}\n".encode())
  return digest.hexdigest()


def _split(records, labels, size, resize, checksum) -> StreamSplit:
  """A StreamSplit whose images are of `size`, or of its first record's size."""
  labels = np.asarray(labels, np.int32).reshape(-1)
  shape = (size[0], size[1], 3) if size is not None else None
  if shape is None and len(records):
    unchecked = StreamSplit(records, labels, None, (1, 1), "crop", checksum)
    shape = unchecked.read(0, check_shape=False).shape
  return StreamSplit(records, labels, shape or (0, 0, 3), size, resize, checksum)


def open_streams(data_config, size: tuple[int, int] | None, resize: str) -> Dataset:
  """The Dataset of `data_config`'s source as StreamSplits (see the module docstring)."""
  folder = data_config.image_folder
  splits = (data_config.train_split, data_config.test_split)
  if not folder:
    return _open_tfds(data_config, splits, size, resize)
  path = os.path.expanduser(str(folder))
  folder_listings.check_exists(path)
  if cifar_archives.detect(path) is not None:
    return _open_in_memory(path, splits, data_config, size, resize)
  if os.path.isdir(path):
    listing = folder_listings.list_images(folder_listings.folder_files(path, splits), splits,
                                          path)

    def split_of(name):
      images = listing.split(name)
      paths = [image.path for image in images]
      sizes = [os.path.getsize(os.path.join(path, p)) for p in paths]
      labels = listing.labels(name)
      return _split(stream_sources.FileRecords(path, paths), labels, size, resize,
                    listing_sha256(paths, sizes, labels))
  elif path.endswith(folder_listings.ARCHIVE_SUFFIXES):
    tar_path = uncompressed_archives.uncompressed(path, _cache_dir(data_config),
                                                   data_config.get("cache_max_gb"))
    index = tar_archives.member_index(tar_path)
    listing = folder_listings.list_images(index, splits, path)

    def split_of(name):
      images = listing.split(name)
      names = [image.path for image in images]
      entries = [index[n] for n in names]
      labels = listing.labels(name)
      return _split(stream_sources.TarRecords(tar_path, names, entries, path), labels, size,
                    resize, listing_sha256(names, [e[1] if isinstance(e, tuple) else e
                                                   for e in entries], labels))
  else:
    raise DatasetError(
        f"data.image_folder={path!r} is neither a folder nor a "
        f"{'/'.join(folder_listings.ARCHIVE_SUFFIXES)} archive.")
  train = split_of(splits[0])
  test = split_of(splits[1])
  return Dataset(name=folder_listings.dataset_name(path), train=train,
                 test=_same_shape(test, train), class_names=listing.class_names)


def _same_shape(test: StreamSplit, train: StreamSplit) -> StreamSplit:
  """The test split, held to the training images' size (checked as each image is read)."""
  return dataclasses.replace(test, image_shape=train.image_shape)


def _cache_dir(data_config) -> str:
  cache_dir = data_config.get("cache_dir")
  return cache_folder.default_cache_dir() if cache_dir is None else cache_dir


def _open_in_memory(path, splits, data_config, size, resize) -> Dataset:
  """An official CIFAR archive: decoded in memory (150 MB), streamed from there."""
  dataset = image_folders.read_image_folder(
      path, splits=splits, cifar100_labels=data_config.get("cifar100_labels", "fine"),
      image_size=size, resize=resize)

  def split_of(split: Split) -> StreamSplit:
    return StreamSplit(stream_sources.ArrayRecords(split.images, path), split.labels,
                       split.image_shape, None, resize, split.checksum())

  logging.info("%s is an official CIFAR archive: decoded in memory, streamed from there.", path)
  return dataclasses.replace(dataset, train=split_of(dataset.train), test=split_of(dataset.test))


def _open_tfds(data_config, splits, size, resize) -> Dataset:
  """A tfds dataset prepared as array_record, read through `tfds.data_source`."""
  try:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise DatasetError("tensorflow-datasets is not installed (pip install tensorflow-datasets), "
                       "or use data.image_folder.") from e
  name, data_dir = data_config.dataset, data_config.data_dir
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise DatasetError(f"tfds has no dataset named {name!r} (data.dataset).") from e
  if not builder.is_prepared():
    raise DatasetError(
        f"tfds dataset {name!r} is not prepared in data.data_dir={data_dir!r}; the stream "
        "pipeline reads prepared datasets only: run once with data.pipeline='memory' (it "
        "prepares it as array_record), or prepare it with "
        "builder.download_and_prepare(file_format='array_record').")
  if builder.info.file_format != tfds.core.FileFormat.ARRAY_RECORD:
    raise DatasetError(
        f"tfds dataset {name!r} in {builder.data_dir} is stored as "
        f"{builder.info.file_format.value}, which has no random access: prepare it as "
        "array_record (builder.download_and_prepare(file_format='array_record') into another "
        "data_dir) or use data.pipeline='memory'.")

  def split_of(split_name):
    source = tfds.data_source(name, split=split_name, data_dir=data_dir,
                              decoders={"image": tfds.decode.SkipDecoding()})
    labels = np.array([source[i]["label"] for i in range(len(source))], np.int32)
    records = stream_sources.TfdsRecords(name, split_name, data_dir, len(source))
    checksum = _sha256(f"tfds {name} {builder.info.version} {split_name} {len(source)}",
                       labels.astype("<i4").tobytes())
    return _split(records, labels, size, resize, checksum)

  train, test = split_of(splits[0]), split_of(splits[1])
  return Dataset(name=name, train=train, test=_same_shape(test, train),
                 class_names=tuple(builder.info.features["label"].names))
