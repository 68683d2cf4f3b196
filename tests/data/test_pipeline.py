"""Dataset loading (image folders, archives, tfds) and on-device augmentation."""

import collections
import gzip
import os
import tarfile

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from configs import default
from tests.data import make_cifar10_mini
from tests.helpers import write_cifar_subset
from wacnn_jax.data.dataset import DatasetError
from wacnn_jax.data import image_folders
from wacnn_jax.data import normalization
from wacnn_jax.data import pipeline
from wacnn_jax.data import tfds_datasets
from wacnn_jax.data import transforms

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")


def data_config(**overrides):
  config = default.get_config().data
  for key, value in overrides.items():
    config[key] = value
  return config


# ---------------------------------------------------------------------------
# Image folders.
# ---------------------------------------------------------------------------


def test_image_folder_matches_pillow_decoding(synthetic_folder):
  dataset = image_folders.read_image_folder(synthetic_folder)
  assert dataset.class_names == ("ant", "bee", "cat")  # sorted, as ImageFolder
  assert dataset.train.images.shape == (18, 32, 32, 3)
  assert dataset.test.images.dtype == np.uint8 and len(dataset.test) == 12
  # Independent decode of one file per class; labels follow sorted folder names.
  for label_index, label in enumerate(dataset.class_names):
    path = os.path.join(synthetic_folder, "train", label, "001.png")
    expected = np.asarray(Image.open(path).convert("RGB"))
    matches = [i for i in range(len(dataset.train))
               if np.array_equal(dataset.train.images[i], expected)]
    assert matches and all(dataset.train.labels[i] == label_index for i in matches)


def test_archive_equals_folder(synthetic_folder, tmp_path):
  archive = tmp_path / "data.tar.gz"
  with tarfile.open(archive, "w:gz") as tar:
    tar.add(synthetic_folder, arcname="mydata")
  from_folder = image_folders.read_image_folder(synthetic_folder)
  from_archive = image_folders.read_image_folder(str(archive))
  assert from_archive.class_names == from_folder.class_names
  for split in ("train", "test"):
    a, b = getattr(from_folder, split), getattr(from_archive, split)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)


def test_cifar10_jpegs_match_tfds_image_folder(cifar10_mini, tmp_path):
  """Our Pillow reader agrees with tfds.folder_dataset.ImageFolder (needs TF)."""
  pytest.importorskip("tensorflow")
  import tensorflow_datasets as tfds
  root = write_cifar_subset(cifar10_mini, str(tmp_path), {"train": 3, "test": 5})
  ours = image_folders.read_image_folder(root)
  builder = tfds.folder_dataset.ImageFolder(root)
  assert tuple(builder.info.features["label"].names) == ours.class_names
  assert ours.class_names[0] == "airplane" and ours.class_names[-1] == "truck"
  theirs = list(tfds.as_numpy(builder.as_dataset(split="test", shuffle_files=False)))
  assert len(theirs) == len(ours.test) == 50
  # TensorFlow's and Pillow's JPEG decoders round differently (a few levels at
  # most); match each of our images to its nearest tfds image.
  for image, label in zip(ours.test.images.astype(int), ours.test.labels):
    diffs = [np.abs(ex["image"].astype(int) - image) for ex in theirs]
    nearest = int(np.argmin([d.mean() for d in diffs]))
    assert diffs[nearest].mean() < 2.5 and diffs[nearest].max() <= 32  # unrelated: ~80
    assert int(theirs[nearest]["label"]) == label


def test_cifar10_mini_holds_52_train_and_26_test_images_per_class(cifar10_mini):
  """The committed archive: 52 train and 26 test JPEGs of each CIFAR-10 class, nothing else."""
  with tarfile.open(cifar10_mini) as tar:
    names = [m.name for m in tar if m.isfile()]
  assert names == sorted(names) and all(n.startswith("cifar10-mini/") for n in names)
  counts = collections.Counter(tuple(n.split("/")[1:3]) for n in names)
  dataset = image_folders.read_image_folder(cifar10_mini)
  assert dataset.name == "cifar10-mini" and dataset.class_names == CIFAR10_CLASSES
  assert counts == {**{("train", c): 52 for c in CIFAR10_CLASSES},
                    **{("test", c): 26 for c in CIFAR10_CLASSES}}
  assert dataset.train.images.shape == (520, 32, 32, 3) and len(dataset.test) == 260


@pytest.mark.full_cifar10
def test_cifar10_mini_is_reproducible_from_the_full_archive(cifar10_archive, cifar10_mini):
  """tests/data/make_cifar10_mini.py rewrites the committed archive's tar byte for byte.

  The full archive holds 5,000 train and 1,000 test images per class.
  """
  with tarfile.open(cifar10_archive) as tar:
    counts = collections.Counter(tuple(m.name.split("/")[-3:-1]) for m in tar if m.isfile())
  assert counts == {**{("train", c): 5000 for c in CIFAR10_CLASSES},
                    **{("test", c): 1000 for c in CIFAR10_CLASSES}}
  with gzip.open(cifar10_mini) as f:
    assert f.read() == make_cifar10_mini.mini_tar(cifar10_archive)


def test_load_dataset_subsets_are_deterministic(synthetic_folder):
  config = data_config(image_folder=synthetic_folder, max_train_examples=7,
                       max_test_examples=5)
  a = pipeline.load(config)
  b = pipeline.load(config)
  assert len(a.train) == 7 and len(a.test) == 5
  np.testing.assert_array_equal(a.train.images, b.train.images)
  full = pipeline.load(data_config(image_folder=synthetic_folder))
  # A subset is made of real rows of the full split.
  rows = {im.tobytes() for im in full.train.images}
  assert all(im.tobytes() in rows for im in a.train.images)


@pytest.mark.parametrize("problem, match", [
    ("missing", "does not exist"),
    ("no_test_split", "no split"),
    ("not_archive", "neither a folder nor"),
])
def test_image_folder_errors_name_the_fix(problem, match, tmp_path):
  if problem == "missing":
    path = tmp_path / "nope"
  elif problem == "no_test_split":
    path = tmp_path / "root"
    os.makedirs(path / "train" / "cat")
    Image.new("RGB", (32, 32)).save(path / "train" / "cat" / "a.png")
  else:
    path = tmp_path / "file.txt"
    path.write_text("x")
  with pytest.raises(DatasetError, match=match):
    image_folders.read_image_folder(str(path))


def test_mixed_image_sizes_are_refused(tmp_path):
  for split in ("train", "test"):
    os.makedirs(tmp_path / split / "a")
    Image.new("RGB", (32, 32)).save(tmp_path / split / "a" / "1.png")
    Image.new("RGB", (16, 16)).save(tmp_path / split / "a" / "2.png")
  with pytest.raises(DatasetError, match="different sizes"):
    image_folders.read_image_folder(str(tmp_path))


@pytest.mark.parametrize("archived", [False, True])
def test_undecodable_files_are_refused_by_name(archived, synthetic_folder, tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top
  folder = tmp_path / "images"
  shutil.copytree(synthetic_folder, folder)
  jpeg = (folder / "train" / "ant" / "000.jpg").read_bytes()
  (folder / "train" / "bee" / "zero.jpg").write_bytes(b"")
  (folder / "test" / "ant" / "random.jpg").write_bytes(np.random.default_rng(1).bytes(300))
  (folder / "test" / "cat" / "cut.jpg").write_bytes(jpeg[:len(jpeg) // 2])
  path = str(folder)
  if archived:
    path = str(tmp_path / "images.tar.gz")
    with tarfile.open(path, "w:gz") as tar:
      tar.add(folder, arcname="images")
  with pytest.raises(DatasetError) as error:
    image_folders.read_image_folder(path)
  prefix = "images/" if archived else ""
  assert str(error.value).startswith(
      f"cannot decode {prefix}train/bee/zero.jpg in {path}: empty file (and 2 more bad file(s)).")
  with pytest.raises(DatasetError, match="random.jpg.*not an image.*2 more"):
    image_folders.read_image_folder(path, splits=("test", "train"))
  (folder / "test" / "ant" / "random.jpg").unlink()
  (folder / "train" / "bee" / "zero.jpg").unlink()
  with pytest.raises(DatasetError, match="(?i)cut.jpg.*truncated"):
    image_folders.read_image_folder(str(folder))


# ---------------------------------------------------------------------------
# tfds.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name, classes", [("cifar10", 10), ("cifar100", 100)])
def test_tfds_mock_data(name, classes):
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=12):  # random labels: some classes are missing
    dataset = pipeline.load(data_config(dataset=name, allow_missing_classes=True))
  assert dataset.num_classes == classes
  assert dataset.train.images.shape == (12, 32, 32, 3)
  assert dataset.train.images.dtype == np.uint8
  assert dataset.train.labels.min() >= 0 and dataset.train.labels.max() < classes


def test_tfds_unknown_name_is_a_clear_error():
  pytest.importorskip("tensorflow_datasets")
  with pytest.raises(DatasetError, match="no dataset named 'cifar1O'"):
    pipeline.load(data_config(dataset="cifar1O"))


def test_tfds_missing_without_download_says_how_to_fix(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  with pytest.raises(DatasetError) as info:
    pipeline.load(data_config(dataset="cifar10", data_dir=str(tmp_path),
                                            download=False))
  assert "data.image_folder" in str(info.value) and "data_dir" in str(info.value)


def test_tfds_missing_without_network_fails_fast(tmp_path, monkeypatch):
  pytest.importorskip("tensorflow_datasets")
  monkeypatch.setattr(tfds_datasets, "_network_reachable", lambda: False)
  with pytest.raises(DatasetError, match="no network"):
    pipeline.load(data_config(dataset="cifar10", data_dir=str(tmp_path)))


def test_preparing_without_tensorflow_is_one_line_naming_the_install(tmp_path, monkeypatch):
  """tfds prepares CIFAR only with TensorFlow (its extractor, its CIFAR reader and its PNG
  encoder call TensorFlow): without it, a line says so before any download."""
  pytest.importorskip("tensorflow_datasets")
  import importlib.util  # pylint: disable=g-import-not-at-top
  find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "tensorflow" else find_spec(name, *a))
  monkeypatch.setattr(tfds_datasets, "_network_reachable", lambda: True)
  with pytest.raises(DatasetError) as info:
    pipeline.load(data_config(dataset="cifar10", data_dir=str(tmp_path)))
  message = str(info.value)
  assert message.startswith("tfds needs TensorFlow to download and prepare 'cifar10' (once; "
                            "reading it later does not): pip install tensorflow-cpu")
  assert "data.image_folder" in message and "\n" not in message
  assert os.listdir(tmp_path) == [] or "downloads" not in os.listdir(tmp_path)


# ---------------------------------------------------------------------------
# Augmentation and normalisation.
# ---------------------------------------------------------------------------


def _random_images(n=16, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def test_augment_is_a_padded_crop_or_its_mirror():
  images = _random_images()
  out = np.asarray(transforms.pad_crop_flip(jnp.asarray(images), jax.random.PRNGKey(1)))
  assert out.shape == images.shape and out.dtype == np.uint8
  padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
  flips = 0
  for i in range(len(images)):
    windows = [(dy, dx, flip) for dy in range(9) for dx in range(9) for flip in (0, 1)
               if np.array_equal(out[i], (lambda w: w[:, ::-1] if flip else w)(
                   padded[i, dy:dy + 32, dx:dx + 32]))]
    assert windows, f"image {i} is not a crop of the padded input"
    flips += windows[0][2]
  assert 0 < flips < len(images)  # both flipped and unflipped images occur


def test_augment_offsets_cover_the_padding_range():
  # Single-pixel images: the bright pixel's position reveals the crop offset.
  images = np.zeros((512, 32, 32, 3), np.uint8)
  images[:, 16, 16] = 255
  out = np.asarray(transforms.pad_crop_flip(jnp.asarray(images), jax.random.PRNGKey(3)))
  ys, xs = np.nonzero(out[..., 0] == 255)[1:]
  dy = 20 - ys  # pixel at padded row 20 lands at row 20 - dy
  assert set(dy.tolist()) == set(range(9))
  assert np.all((xs >= 16 - 4 - 1) & (xs <= 16 + 4))


def test_augment_is_deterministic_per_key_and_differs_across_keys():
  images = jnp.asarray(_random_images())
  key = jax.random.PRNGKey(7)
  a = transforms.pad_crop_flip(images, key)
  b = transforms.pad_crop_flip(images, key)
  np.testing.assert_array_equal(a, b)
  # Per-device keys as the train step derives them (fold_in of the device index).
  c = transforms.pad_crop_flip(images, jax.random.fold_in(key, 1))
  assert not np.array_equal(a, c)


def test_normalize_matches_numpy():
  images = _random_images(4)
  expected = (images / 255.0 - np.array(normalization.CIFAR_MEAN)) / np.array(
      normalization.CIFAR_STD)
  np.testing.assert_allclose(transforms.normalize(jnp.asarray(images), normalization.CIFAR),
                             expected, rtol=1e-5, atol=1e-5)
  half = transforms.normalize(jnp.asarray(images), normalization.CIFAR, jnp.bfloat16)
  assert half.dtype == jnp.bfloat16
