"""The stream pipeline's splits (wacnn_jax.data.streaming) against the memory pipeline's.

Every source the memory pipeline decodes into memory is listed here and read
image by image: the committed mini CIFAR-10 archive (.tar.gz, decompressed
once into the cache), the same as an uncompressed .tar and as a folder, an
official CIFAR-10 archive built in its python format, and a tfds dataset
prepared as array_record. Each must give the memory pipeline's classes,
labels and decoded pixels exactly, and refuse what it refuses, by name.
"""

import gzip
import io
import os
import pickle
import shutil
import tarfile

import numpy as np
from PIL import Image
import pytest

from configs import default
from tests import helpers
from wacnn_jax.data import pipeline
from wacnn_jax.data import pipeline_choice
from wacnn_jax.data.dataset import DatasetError


def data_config(folder, cache_dir, **fields):
  config = default.get_config().data
  config.image_folder = str(folder)
  config.cache_dir = str(cache_dir)
  for key, value in fields.items():
    config[key] = value
  return config


def decoded(split) -> np.ndarray:
  return np.stack([split.read(i) for i in range(len(split))])


def assert_same_dataset(streamed, memory):
  assert streamed.streamed and not memory.streamed
  assert streamed.class_names == memory.class_names
  assert streamed.image_shape == memory.image_shape
  for name in ("train", "test"):
    stream_split, memory_split = getattr(streamed, name), getattr(memory, name)
    np.testing.assert_array_equal(stream_split.labels, memory_split.labels)
    np.testing.assert_array_equal(decoded(stream_split), memory_split.images)
  assert streamed.preprocessing == memory.preprocessing
  assert streamed.summary.pipeline == "stream" and memory.summary.pipeline == "memory"
  assert streamed.summary.to_json()["splits"]["train"]["per_class"] == (
      memory.summary.to_json()["splits"]["train"]["per_class"])


@pytest.fixture(scope="module")
def mini_sources(tmp_path_factory):
  """The mini archive as .tar.gz, as .tar and extracted (a folder)."""
  root = tmp_path_factory.mktemp("sources")
  tar = root / "cifar10-mini.tar"
  with gzip.open(helpers.CIFAR10_MINI) as compressed, open(tar, "wb") as out:
    shutil.copyfileobj(compressed, out)
  with tarfile.open(helpers.CIFAR10_MINI) as archive:
    archive.extractall(root / "extracted", filter="data")
  folder = root / "extracted" / "cifar10-mini"
  return {"tar.gz": helpers.CIFAR10_MINI, "tar": str(tar), "folder": str(folder)}


@pytest.mark.parametrize("kind", ["tar.gz", "tar", "folder"])
def test_streamed_images_equal_the_memory_pipelines(mini_sources, tmp_path, kind):
  streamed = pipeline.load(data_config(mini_sources[kind], tmp_path / "cache",
                                       pipeline="stream"))
  memory = pipeline.load(data_config(mini_sources[kind], tmp_path / "cache",
                                     pipeline="memory"))
  assert_same_dataset(streamed, memory)
  if kind == "tar.gz":  # decompressed once into the cache, then read from there
    assert [name for name in os.listdir(tmp_path / "cache") if name.endswith(".tar")]


def test_subsets_and_a_resized_stream_equal_the_memory_pipelines(mini_sources, tmp_path):
  fields = dict(max_train_examples=100, max_test_examples=30, image_size=24, resize="pad")
  streamed = pipeline.load(data_config(mini_sources["folder"], tmp_path, pipeline="stream",
                                       **fields))
  memory = pipeline.load(data_config(mini_sources["folder"], tmp_path, pipeline="memory",
                                     **fields))
  assert len(streamed.train) == 100 and streamed.image_shape == (24, 24, 3)
  assert_same_dataset(streamed, memory)
  # The listing's checksum follows the subset: another subset is another identity.
  other = pipeline.load(data_config(mini_sources["folder"], tmp_path, pipeline="stream",
                                    **dict(fields, max_train_examples=101)))
  assert other.summary.splits["train"].sha256 != streamed.summary.splits["train"].sha256


def write_official_cifar10(path, images, labels):
  """A cifar-10-python.tar.gz as the official one is laid out: pickled batches of rows."""
  names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse",
           b"ship", b"truck"]
  with tarfile.open(path, "w:gz") as archive:
    def add(name, payload):
      data = pickle.dumps(payload)
      info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
      info.size = len(data)
      archive.addfile(info, io.BytesIO(data))
    rows = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    for k in range(1, 6):
      part = slice((k - 1) * 20, k * 20)
      add(f"data_batch_{k}", {b"data": rows[part], b"labels": labels[part].tolist()})
    add("test_batch", {b"data": rows[:30], b"labels": labels[:30].tolist()})
    add("batches.meta", {b"label_names": names})


def test_an_official_cifar_archive_streams_from_memory(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (100, 32, 32, 3), dtype=np.uint8)
  labels = np.arange(100) % 10
  archive = tmp_path / "cifar-10-python.tar.gz"
  write_official_cifar10(archive, images, labels)
  streamed = pipeline.load(data_config(archive, tmp_path / "cache", pipeline="stream"))
  memory = pipeline.load(data_config(archive, tmp_path / "cache", pipeline="memory"))
  assert_same_dataset(streamed, memory)
  np.testing.assert_array_equal(decoded(streamed.train), images)
  # Decoded pixels: the same checksum as the memory pipeline's.
  assert streamed.summary.splits == memory.summary.splits


def test_a_tfds_dataset_prepared_as_array_record_streams(tmp_path, cifar10_mini):
  tfds = pytest.importorskip("tensorflow_datasets")
  folder = helpers.write_cifar_subset(cifar10_mini, str(tmp_path / "images"),
                                      {"train": 4, "test": 2})

  class MiniImages(tfds.core.GeneratorBasedBuilder):
    """Real CIFAR-10 images as a tfds dataset, PNG-encoded (lossless)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(32, 32, 3), encoding_format="png"),
          "label": tfds.features.ClassLabel(names=sorted(os.listdir(f"{folder}/train")))}))

    def _split_generators(self, dl_manager):
      return {split: self._generate_examples(split) for split in ("train", "test")}

    def _generate_examples(self, split):
      for label in sorted(os.listdir(f"{folder}/{split}")):
        for name in sorted(os.listdir(f"{folder}/{split}/{label}")):
          path = f"{folder}/{split}/{label}/{name}"
          yield path, {"image": np.asarray(Image.open(path).convert("RGB")), "label": label}

  data_dir = str(tmp_path / "tfds")
  MiniImages(data_dir=data_dir).download_and_prepare(file_format="array_record")
  config = default.get_config().data
  config.dataset, config.data_dir, config.download = "mini_images", data_dir, False
  streamed = pipeline.load(dict_with(config, pipeline="stream"))
  memory = pipeline.load(dict_with(config, pipeline="memory"))
  assert_same_dataset(streamed, memory)
  assert len(streamed.train) == 40 and len(streamed.test) == 20


def dict_with(config, **fields):
  config = config.copy_and_resolve_references()
  for key, value in fields.items():
    config[key] = value
  return config


def test_a_cut_archive_is_refused_by_name(tmp_path):
  with open(helpers.CIFAR10_MINI, "rb") as f:
    data = f.read()
  cut = tmp_path / "cut.tar.gz"
  cut.write_bytes(data[:len(data) // 2])
  with pytest.raises(DatasetError, match=r"archive .*cut.tar.gz cannot be read whole"):
    pipeline.load(data_config(cut, tmp_path / "cache", pipeline="stream"))
  assert not [name for name in os.listdir(tmp_path / "cache") if not name.startswith(".")]


def test_a_missing_class_is_refused_as_in_memory(mini_sources, tmp_path):
  folder = tmp_path / "folder"
  shutil.copytree(mini_sources["folder"], folder)
  shutil.rmtree(folder / "test" / "cat")
  for kind in ("stream", "memory"):
    with pytest.raises(DatasetError, match=r"classes missing from a split \(test has no image "
                                           r"of 'cat'\)"):
      pipeline.load(data_config(folder, tmp_path / "cache", pipeline=kind))


def test_an_undecodable_image_is_named_when_it_is_read(mini_sources, tmp_path):
  folder = tmp_path / "folder"
  shutil.copytree(mini_sources["folder"], folder)
  (folder / "train" / "dog" / "broken.jpg").write_bytes(b"not a JPEG")
  dataset = pipeline.load(data_config(folder, tmp_path / "cache", pipeline="stream"))
  index = [dataset.train.records.name(i) for i in range(len(dataset.train))].index(
      "train/dog/broken.jpg")
  with pytest.raises(DatasetError, match=r"cannot decode train/dog/broken.jpg: not an image "
                                         r"format Pillow reads\. Remove or replace the file"):
    dataset.train.read(index)


def test_an_image_of_another_size_is_named_unless_image_size_is_set(mini_sources, tmp_path):
  folder = tmp_path / "folder"
  shutil.copytree(mini_sources["folder"], folder)
  Image.new("RGB", (40, 30)).save(folder / "test" / "dog" / "wide.png")
  dataset = pipeline.load(data_config(folder, tmp_path / "cache", pipeline="stream"))
  index = [dataset.test.records.name(i) for i in range(len(dataset.test))].index(
      "test/dog/wide.png")
  with pytest.raises(DatasetError, match=r"test/dog/wide.png is 30x40, but the dataset's images "
                                         r"are 32x32 .* set data.image_size"):
    dataset.test.read(index)
  resized = pipeline.load(data_config(folder, tmp_path / "cache", pipeline="stream",
                                      image_size=32))
  assert resized.test.read(index).shape == (32, 32, 3)


def test_auto_streams_what_does_not_fit_and_says_why(mini_sources, tmp_path, caplog):
  folder = mini_sources["folder"]
  decoded_bytes = 780 * 32 * 32 * 3
  assert pipeline_choice.estimate_decoded_bytes(data_config(folder, tmp_path), None) == (
      decoded_bytes)
  assert pipeline_choice.estimate_decoded_bytes(data_config(mini_sources["tar"], tmp_path),
                                                (64, 64)) == 780 * 64 * 64 * 3
  assert not pipeline.load(data_config(folder, tmp_path)).streamed  # fits: memory
  budget, _ = pipeline_choice.memory_budget(1.0)
  share = decoded_bytes / budget / 2  # half the decoded size fits
  with caplog.at_level("WARNING"):
    dataset = pipeline.load(data_config(folder, tmp_path, memory_share=share))
  assert dataset.streamed
  assert "streaming the data (data.pipeline='auto')" in caplog.text
  assert "Set data.pipeline='memory'" in caplog.text
  assert not pipeline.load(data_config(folder, tmp_path, memory_share=share,
                                       pipeline="memory")).streamed


@pytest.mark.parametrize("setting, share, message", [
    ("disk", 0.5, r"data.pipeline='disk': use 'memory'"),
    ("auto", 0.0, r"data.memory_share=0.0 is out of range"),
    ("auto", 1.5, r"data.memory_share=1.5 is out of range")])
def test_bad_pipeline_settings_are_one_line(setting, share, message):
  with pytest.raises(ValueError, match=message):
    pipeline_choice.check_setting(setting, share)
