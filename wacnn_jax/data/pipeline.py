"""The data layer's one entry: `load(config.data) -> Dataset`, whatever the source.

    dataset = pipeline.load(config.data)   # "loaded 50000 train + 10000 test images in 26.1 s"

Which pipeline the images take is chosen once (`pipeline_choice`,
`data.pipeline`). CIFAR-sized datasets fit in accelerator memory, so the
memory pipeline reads every split once, on the host, into
`Split(images uint8 (N, H, W, 3), labels int32 (N,))` (`dataset`), from either
- tensorflow-datasets by name (`tfds_datasets`: `cifar10`, `cifar100`, any
  tfds dataset with `image`/`label` features), or
- an image folder `root/{train,test}/<label>/*.jpg|jpeg|png`, or a
  `.tar`/`.tar.gz` archive of one (`image_folders`), or an official
  CIFAR-10/100 archive as downloaded (`cifar_archives`), through
  `data.image_folder`; decoded once, then read from the cache (`cache`,
  `data.cache_dir`).
The stream pipeline lists the same sources instead and reads each image when
a batch needs it (`streaming`: `StreamSplit`s). Every source is then checked
and summarised alike (`checks`).
"""

from __future__ import annotations

import dataclasses
import os
import time

from absl import logging

from wacnn_jax.data import augmentation_settings
from wacnn_jax.data import cache
from wacnn_jax.data import checks
from wacnn_jax.data.dataset import Dataset, DatasetError
from wacnn_jax.data import folder_listings
from wacnn_jax.data import image_folders
from wacnn_jax.data import normalization
from wacnn_jax.data import pipeline_choice
from wacnn_jax.data import resizing
from wacnn_jax.data import streaming
from wacnn_jax.data import tfds_datasets
from wacnn_jax.data import transforms


def describe_source(data_config) -> str:
  """What `data_config` reads: the image folder / archive, or the tfds name and folder."""
  if data_config.get("image_folder"):
    return str(data_config.image_folder)
  data_dir = data_config.get("data_dir")
  return f"tfds {data_config.dataset}" + (f" from {data_dir}" if data_dir else "")


def check_source(data_config) -> None:
  """DatasetError when `data.image_folder` is set but empty or does not exist: checked before
  a run makes its workdir, so that a mistyped path leaves nothing behind."""
  folder = data_config.image_folder
  if folder is None:
    return
  if not str(folder).strip():
    raise DatasetError(
        "data.image_folder is set but empty (an unset shell variable?): give the "
        "folder or archive, or leave the field out to read data.dataset through tfds.")
  folder_listings.check_exists(os.path.expanduser(str(folder)))


def load(data_config, test_in_memory: bool = False) -> Dataset:
  """The dataset that `data_config` names (see `configs/default.py`), checked and summarised.

  Fields read: `dataset`, `data_dir`, `image_folder`, `cifar100_labels`, `cache_dir`,
  `cache_max_gb`, `download`, `train_split`, `test_split`, `max_train_examples`,
  `max_test_examples`,
  `allow_missing_classes`, `image_size`, `resize`, `normalization`, `augment`,
  `augmentation`, `pipeline`, `memory_share`. `test_in_memory` (evaluation
  tools): a streamed dataset's test split is decoded into memory. Whatever
  the source, the whole dataset is checked
  (`checks.check_dataset`: every class in every split, one image size,
  labels in range), and the subsets as trained on are summarised
  (`Dataset.summary`, logged) and given their `Dataset.preprocessing` (the
  image size, the normalisation, of the training images' own statistics
  where they are not CIFAR's, and the train augmentation). A line says when
  loading starts and one when it is done. In a run of several processes
  every process lists (stream) or reads (memory) the whole dataset.
  """
  check_source(data_config)
  folder = data_config.image_folder
  size = resizing.target_size(data_config.get("image_size"))
  resize = data_config.get("resize", "crop")
  resizing.check_mode(resize)
  kind = pipeline_choice.choose(data_config, size)
  logging.info("%s %s ...", "listing" if kind == "stream" else "loading",
               describe_source(data_config))
  start = time.perf_counter()
  cifar100_labels = data_config.get("cifar100_labels", "fine")
  if not folder and cifar100_labels != "fine":
    raise ValueError(f"data.cifar100_labels={cifar100_labels!r} applies to the official "
                     "CIFAR-100 archive (data.image_folder=cifar-100-python.tar.gz or "
                     "cifar-100-binary.tar.gz); tfds datasets give their 'label'.")
  if kind == "stream":
    dataset = streaming.open_streams(data_config, size, resize)
  elif folder:
    options = {"cifar100_labels": cifar100_labels}
    if size is not None:  # (not in the options, and so the cache key, of unresized data)
      options.update(image_size=size, resize=resize)
    dataset = cache.read_cached(  # decoded once, then read from data.cache_dir
        image_folders.read_image_folder, folder,
        splits=(data_config.train_split, data_config.test_split),
        cache_dir=data_config.get("cache_dir"), options=options,
        max_gb=data_config.get("cache_max_gb"))
  else:
    dataset = tfds_datasets.read_tfds(
        data_config.dataset,
        data_dir=data_config.data_dir,
        splits=(data_config.train_split, data_config.test_split),
        download=data_config.download, image_size=size, resize=resize)
  source = os.path.expanduser(str(folder)) if folder else f"tfds:{data_config.dataset}"
  checks.check_dataset(dataset, source, data_config.get("allow_missing_classes", False))
  dataset = dataclasses.replace(
      dataset,
      train=dataset.train.subset(data_config.max_train_examples),
      test=dataset.test.subset(data_config.max_test_examples))
  checks.warn_of_classes_left_out(dataset)
  preprocessing = transforms.Preprocessing(
      tuple(dataset.image_shape[:2]),
      normalization.choose(data_config.get("normalization", "auto"), dataset),
      augmentation_settings.choose_augmentation(data_config.get("augmentation", "auto"),
                                     data_config.get("augment", True), dataset.image_shape[:2]),
      resize)
  summary = checks.summarize(dataset, source, preprocessing)
  logging.info("%s", summary.line())
  logging.info("%s %d train + %d test images in %.1f s",
               "listed" if kind == "stream" else "loaded", len(dataset.train),
               len(dataset.test), time.perf_counter() - start)
  if test_in_memory and dataset.streamed:
    logging.info("decoding the %d test images into memory ...", len(dataset.test))
    dataset = dataclasses.replace(dataset, test=dataset.test.in_memory())
  return dataclasses.replace(dataset, summary=summary, preprocessing=preprocessing)
