"""Images brought to one size (`data.image_size`): torchvision's Resize + CenterCrop, padding,
and mixed sizes refused by name when no size is set."""

import os

import numpy as np
from PIL import Image
import pytest

from wacnn_jax.data import image_folders
from wacnn_jax.data import resizing
from wacnn_jax.data.dataset import DatasetError


def _pixels(h, w, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("h, w, size", [(48, 40, 32), (40, 48, 32), (30, 30, 64),
                                        (100, 37, 64), (64, 64, 64), (17, 90, 24)])
def test_crop_is_torchvisions_resize_and_center_crop(h, w, size):
  transforms = pytest.importorskip("torchvision.transforms")
  image = Image.fromarray(_pixels(h, w))
  theirs = np.asarray(transforms.CenterCrop(size)(transforms.Resize(size)(image)))
  np.testing.assert_array_equal(resizing.resize(np.asarray(image), (size, size), "crop"), theirs)


def test_an_image_of_the_size_is_returned_as_it_is():
  pixels = _pixels(32, 32)
  assert resizing.resize(pixels, (32, 32), "crop") is pixels


def test_pad_keeps_the_whole_image_centred_on_black():
  pixels = np.full((20, 40, 3), 200, np.uint8)
  out = resizing.resize(pixels, (32, 32), "pad")
  assert out.shape == (32, 32, 3)
  assert (out[:8] == 0).all() and (out[-8:] == 0).all()  # 40 -> 32 wide, 20 -> 16 tall
  assert (out[8:24] == 200).all()


@pytest.mark.parametrize("value, expected", [(None, None), (0, None), (64, (64, 64)),
                                             ((48, 40), (48, 40))])
def test_target_size(value, expected):
  assert resizing.target_size(value) == expected


@pytest.mark.parametrize("value", [-3, True, "64", (64,), 2.5])
def test_a_bad_image_size_is_refused(value):
  with pytest.raises(ValueError, match="data.image_size"):
    resizing.target_size(value)


def _folder(root, sizes):
  """<root>/{train,test}/{a,b}/kNN.png with the (h, w) `sizes` in turn."""
  k = 0
  for split in ("train", "test"):
    for label in ("a", "b"):
      os.makedirs(os.path.join(root, split, label))
      for _ in range(3):
        h, w = sizes[k % len(sizes)]
        Image.fromarray(_pixels(h, w, k)).save(os.path.join(root, split, label, f"k{k:02d}.png"))
        k += 1
  return str(root)


def test_mixed_sizes_are_refused_naming_the_files(tmp_path):
  folder = _folder(tmp_path / "mixed", [(64, 64), (64, 64), (48, 40)])
  with pytest.raises(DatasetError) as error:
    image_folders.read_image_folder(folder)
  message = str(error.value)
  assert "most are 64x64" in message and "train/a/k02.png is 48x40" in message
  assert "--config.data.image_size=64" in message and "\n" not in message


def test_mixed_sizes_are_resized_with_an_image_size(tmp_path):
  folder = _folder(tmp_path / "mixed", [(64, 64), (30, 30), (48, 40)])
  dataset = image_folders.read_image_folder(folder, image_size=(32, 32))
  assert dataset.image_shape == (32, 32, 3) and len(dataset.train) == 6
  # The 48x40 image k02, as Resize(32) + CenterCrop(32) makes it.
  source = np.asarray(Image.open(os.path.join(folder, "train", "a", "k02.png")))
  np.testing.assert_array_equal(dataset.train.images[2], resizing.resize(source, (32, 32)))
