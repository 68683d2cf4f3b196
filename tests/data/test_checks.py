"""A run trains and evaluates on exactly what its source holds, or refuses by name.

Faults are injected for real into copies of the committed mini archive and of
small image folders: bytes overwritten inside the gzip stream, a tar cut at a
member boundary, a damaged member header, a second archive appended; class
folders emptied or added in one split; test images of another size; image
files in every mode Pillow opens, compared with numpy references.
"""

import gzip
import hashlib
import io
import logging
import os
import shutil
import struct
import tarfile
import unicodedata
import zlib

import numpy as np
from PIL import Image
import pytest

from configs import default
from tests.helpers import CIFAR10_MINI
from wacnn_jax.data import checks
from wacnn_jax.data.dataset import DatasetError
from wacnn_jax.data import image_decoding
from wacnn_jax.data import image_folders
from wacnn_jax.data import pipeline
from wacnn_jax.data import tfds_datasets



def data_config(**overrides):
  config = default.get_config().data
  for key, value in overrides.items():
    config[key] = value
  return config


@pytest.fixture(scope="module")
def mini_tar():
  """The mini archive's tar stream (uncompressed) and its members' header offsets."""
  with gzip.open(CIFAR10_MINI) as f:
    tar = f.read()
  with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
    offsets = [member.offset for member in archive]
  return tar, offsets


def _damaged(fault, mini_tar, tmp_path) -> str:
  tar, offsets = mini_tar
  raw = bytearray(open(CIFAR10_MINI, "rb").read())
  if fault == "4 bytes overwritten in the gzip stream":  # the run trained on 130 of 520
    raw[len(raw) // 2:len(raw) // 2 + 4] = b"\xde\xad\xbe\xef"
    data, name = bytes(raw), "mini.tar.gz"
  elif fault == "4 bytes overwritten near the gzip end":  # all 520 decoded: other pixels
    raw[-100:-96] = b"\xde\xad\xbe\xef"
    data, name = bytes(raw), "mini.tar.gz"
  elif fault == "gzip cut mid-stream":
    data, name = bytes(raw[:len(raw) * 2 // 3]), "mini.tar.gz"
  elif fault == "tar cut at a member boundary":  # the run trained on 340 of 520
    data, name = gzip.compress(tar[:offsets[440]]), "mini.tar.gz"
  elif fault == "damaged member header":
    damaged = bytearray(tar)
    damaged[offsets[300] + 100:offsets[300] + 104] = b"\x01\x02\x03\x04"  # in its mode field
    data, name = bytes(damaged), "mini.tar"
  else:  # "second archive appended": tar reads the first only
    data, name = tar + tar, "mini.tar"
  path = tmp_path / name
  path.write_bytes(data)
  return str(path)


@pytest.mark.parametrize("fault, reason", [
    ("4 bytes overwritten in the gzip stream", r"CRC check failed|header .* is damaged|zlib"),
    ("4 bytes overwritten near the gzip end", "CRC check failed"),
    ("gzip cut mid-stream", "EOFError|end-of-stream"),
    ("tar cut at a member boundary", "without an end-of-archive marker .*440 members.*cut short"),
    ("damaged member header", "member header at byte .* is damaged"),
    ("second archive appended", "data after its end-of-archive marker"),
])
def test_an_archive_that_is_not_whole_is_refused_by_name(fault, reason, mini_tar, tmp_path):
  path = _damaged(fault, mini_tar, tmp_path)
  with pytest.raises(DatasetError,
                     match=f"^archive {path} cannot be read whole \\(.*({reason})"):
    image_folders.read_image_folder(path)


def test_links_in_an_archive_are_read_as_their_targets(synthetic_folder, tmp_path):
  """tar stores a second name of a hard-linked file as a link member; it is an image too."""
  folder = tmp_path / "images"
  shutil.copytree(synthetic_folder, folder)
  os.link(folder / "train" / "ant" / "000.jpg", folder / "train" / "ant" / "hard.jpg")
  os.symlink("001.png", folder / "train" / "bee" / "soft.png")
  path = tmp_path / "images.tar.gz"
  with tarfile.open(path, "w:gz") as tar:
    tar.add(folder, arcname="images")
  with tarfile.open(path) as tar:
    assert {m.name.rsplit("/", 1)[1] for m in tar if m.islnk() or m.issym()} == {
        "hard.jpg", "soft.png"}
  from_archive = image_folders.read_image_folder(str(path))
  from_folder = image_folders.read_image_folder(str(folder))
  assert len(from_archive.train) == len(from_folder.train) == 20
  np.testing.assert_array_equal(from_archive.train.images, from_folder.train.images)


# ---------------------------------------------------------------------------
# File names.
# ---------------------------------------------------------------------------


def _save(path, pixels=None, fmt=None):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  if pixels is None:
    pixels = np.random.default_rng(len(str(path))).integers(0, 256, (8, 8, 3), np.uint8)
  Image.fromarray(pixels).save(path, format=fmt)


@pytest.mark.parametrize("archived", [False, True])
def test_odd_file_names_are_read_and_system_files_skipped(archived, tmp_path, caplog):
  root = tmp_path / "odd"
  nfc, nfd = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
  for split, label in (("train", nfc), ("test", nfd), ("train", "sea lion"),
                       ("test", "sea lion")):
    _save(root / split / label / "Photo 1.JPG", fmt="JPEG")
    _save(root / split / label / "ünïcode.Png", fmt="PNG")
  for junk in ("train/.DS_Store", "train/sea lion/._Photo 1.JPG", "test/Thumbs.db",
               "test/.hidden/x.jpg", "__MACOSX/train/sea lion/._x.jpg", "README.txt"):
    os.makedirs(os.path.dirname(root / junk), exist_ok=True)
    (root / junk).write_bytes(b"\x00\x05\x16\x07 not an image")
  path = str(root)
  if archived:
    path = str(tmp_path / "odd.tar.gz")
    with tarfile.open(path, "w:gz") as tar:
      tar.add(root, arcname=".")  # member names ./train/...: as `tar czf x.tgz -C odd .`
  caplog.set_level(logging.INFO)
  dataset = image_folders.read_image_folder(path)
  assert dataset.class_names == (nfc, "sea lion")  # NFD and NFC spellings: one class
  assert len(dataset.train) == len(dataset.test) == 4
  assert np.bincount(dataset.test.labels).tolist() == [2, 2]
  # README.txt is outside the splits; the folder's __MACOSX is not read at all.
  assert (f"skipped {5 if archived else 4} file(s) that are not images: "
          f"{5 if archived else 4} hidden or system.") in caplog.text


@pytest.mark.parametrize("stray", ["train/ant/more/000.jpg", "train/000.jpg"])
def test_images_outside_a_class_folder_are_refused_by_name(stray, synthetic_folder, tmp_path):
  """They would otherwise be left out without a word (a nested folder, a split's own file)."""
  folder = tmp_path / "images"
  shutil.copytree(synthetic_folder, folder)
  os.makedirs(os.path.dirname(folder / stray), exist_ok=True)
  shutil.copy(folder / "train" / "ant" / "000.jpg", folder / stray)
  with pytest.raises(DatasetError,
                     match=f"holds images that are not in a class folder: {stray}\\."):
    image_folders.read_image_folder(str(folder))


def test_files_that_are_not_images_are_skipped_with_a_line(synthetic_folder, tmp_path, caplog):
  """Notes, tables and files without an extension beside the images, as people keep them."""
  folder = tmp_path / "images"
  shutil.copytree(synthetic_folder, folder)
  for name in ("train/ant/notes.txt", "train/bee/labels.csv", "test/cat/notes.txt",
               "train/ant/LICENSE", "train/.DS_Store"):
    (folder / name).write_text("not an image")
  caplog.set_level(logging.INFO)
  dataset = image_folders.read_image_folder(str(folder))
  assert (len(dataset.train), len(dataset.test)) == (18, 12)  # the images, all of them
  assert ("skipped 5 file(s) that are not images: 1 .csv, 2 .txt, 1 hidden or system, "
          "1 without extension.") in caplog.text


@pytest.mark.parametrize("fmt, extension", [("WEBP", ".webp"), ("BMP", ".bmp"),
                                            ("TIFF", ".tif"), ("GIF", ".gif")])
def test_every_format_pillow_reads_is_an_image(fmt, extension, synthetic_folder, tmp_path):
  folder = tmp_path / "images"
  shutil.copytree(synthetic_folder, folder)
  pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
  Image.fromarray(pixels).save(folder / "test" / "cat" / f"extra{extension.upper()}", format=fmt)
  dataset = image_folders.read_image_folder(str(folder))
  assert len(dataset.test) == 13
  if fmt in ("BMP", "TIFF"):  # lossless RGB: the pixels as saved
    assert any(np.array_equal(pixels, x) for x in dataset.test.images)


# ---------------------------------------------------------------------------
# Image modes: every one becomes 8-bit RGB without clipping.
# ---------------------------------------------------------------------------


def _png16(values: np.ndarray, color_type: int) -> bytes:
  """A 16-bit PNG written by hand (Pillow cannot write 16-bit colour): gray (0) or RGB (2)."""
  height, width = values.shape[:2]
  rows = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(height))

  def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

  header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
          + chunk(b"IEND", b""))


def test_every_image_mode_becomes_8_bit_rgb_without_clipping(tmp_path, caplog):
  """Each class holds one image in one mode; the decoded pixels against a numpy reference."""
  rng = np.random.default_rng(0)
  rgb = rng.integers(0, 256, (8, 8, 3), np.uint8)
  gray16 = rng.integers(0, 65536, (8, 8), np.uint16)
  rgb16 = rng.integers(0, 65536, (8, 8, 3), np.uint16)
  palette_image = Image.fromarray(rgb).quantize(16)
  palette = np.array(palette_image.getpalette()[:48], np.uint8).reshape(16, 3)
  cases = {  # class: (file bytes or Pillow image, expected RGB pixels)
      "gray": (Image.fromarray(rgb[..., 0]), np.repeat(rgb[..., :1], 3, axis=-1)),
      "gray16": (_png16(gray16, 0), np.repeat((gray16 >> 8).astype(np.uint8)[..., None], 3, -1)),
      "rgb16": (_png16(rgb16, 2), (rgb16 >> 8).astype(np.uint8)),
      "palette": (palette_image, palette[np.asarray(palette_image)]),
      "rgba": (Image.fromarray(np.dstack([rgb, rgb[..., :1]])), rgb),
      "gray_alpha": (Image.merge("LA", [Image.fromarray(rgb[..., 0]), Image.fromarray(rgb[..., 1])]),
                     np.repeat(rgb[..., :1], 3, axis=-1)),
      "bilevel": (Image.fromarray(rgb[..., 0] > 127),
                  np.repeat(np.where(rgb[..., :1] > 127, 255, 0).astype(np.uint8), 3, -1)),
  }
  for split in ("train", "test"):
    for label, (image, _) in cases.items():
      os.makedirs(tmp_path / split / label)
      path = tmp_path / split / label / "image.png"
      if isinstance(image, bytes):
        path.write_bytes(image)
      else:
        image.save(path)
  caplog.set_level(logging.INFO)
  dataset = image_folders.read_image_folder(str(tmp_path))
  assert dataset.train.images.dtype == np.uint8 and dataset.train.images.shape[1:] == (8, 8, 3)
  for index, label in enumerate(dataset.class_names):
    np.testing.assert_array_equal(dataset.train.images[dataset.train.labels == index][0],
                                  cases[label][1], err_msg=label)
  assert (gray16 >> 8).max() > 250  # the values Pillow's convert("RGB") clips to 255
  assert "converted to 8-bit RGB:" in caplog.text
  for note in ("2 I;16 (high byte)", "2 RGB 16-bit (high byte)", "2 RGBA (alpha dropped)",
               "2 LA (alpha dropped)", "2 P,", "2 L,", "2 1,"):
    assert note in caplog.text


def test_cmyk_jpeg_and_pixels_without_range(tmp_path):
  rgb = np.random.default_rng(1).integers(0, 256, (8, 8, 3), np.uint8)
  for split in ("train", "test"):
    os.makedirs(tmp_path / split / "cmyk")
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / split / "cmyk" / "a.jpg", quality=100)
  dataset = image_folders.read_image_folder(str(tmp_path))
  assert np.abs(dataset.train.images[0].astype(int) - rgb).max() <= 3  # JPEG's rounding
  # 32-bit integer pixels (a TIFF behind a .png name) have no fixed range: refused.
  Image.fromarray(rgb[..., 0].astype(np.int32) * 1000).save(
      tmp_path / "train" / "cmyk" / "b.png", format="TIFF")
  with pytest.raises(DatasetError, match="b.png.*mode I .*no fixed range"):
    image_folders.read_image_folder(str(tmp_path))


def test_tfds_images_that_are_not_uint8_are_refused():
  examples = [{"image": np.full((4, 4, 3), 300, np.uint16), "label": 0}]
  with pytest.raises(DatasetError, match="uint16, not uint8"):
    tfds_datasets._split_from_examples(examples)  # pylint: disable=protected-access


# ---------------------------------------------------------------------------
# Dataset checks, on every source.
# ---------------------------------------------------------------------------


@pytest.fixture
def folder_copy(synthetic_folder, tmp_path):
  folder = tmp_path / "images"
  shutil.copytree(synthetic_folder, folder)
  return folder


@pytest.mark.parametrize("change, message", [
    ("empty train class folder", "train has no image of 'bee'"),
    ("test class absent from train", "train has no image of 'dog'"),
])
def test_every_class_must_be_in_every_split(change, message, folder_copy, caplog):
  if change == "empty train class folder":
    for name in os.listdir(folder_copy / "train" / "bee"):
      os.remove(folder_copy / "train" / "bee" / name)
  else:
    shutil.copytree(folder_copy / "test" / "cat", folder_copy / "test" / "dog")
  with pytest.raises(DatasetError, match=f"classes missing from a split.*{message}"):
    pipeline.load(data_config(image_folder=str(folder_copy)))
  dataset = pipeline.load(data_config(image_folder=str(folder_copy),
                                                    allow_missing_classes=True))
  assert dataset.num_classes == 3 + (change != "empty train class folder")
  assert message in caplog.text and "allow_missing_classes is set" in caplog.text


def test_splits_with_other_image_sizes_are_refused(folder_copy):
  for name in os.listdir(folder_copy / "test" / "ant"):  # the whole test split at 64x64
    for label in ("ant", "bee", "cat"):
      path = folder_copy / "test" / label / name
      Image.open(path).resize((64, 64)).save(path)
  with pytest.raises(DatasetError, match="different sizes .*train 32x32, test 64x64"):
    pipeline.load(data_config(image_folder=str(folder_copy)))


def test_an_empty_image_folder_setting_is_refused():
  """An unset shell variable in --config.data.image_folder=$DATA would read tfds's cifar10."""
  with pytest.raises(DatasetError, match="data.image_folder is set but empty"):
    pipeline.load(data_config(image_folder=""))


def test_summary_counts_and_checksums_what_is_trained_on(folder_copy, tmp_path, caplog):
  archive = tmp_path / "images.tar.gz"
  with tarfile.open(archive, "w:gz") as tar:
    tar.add(folder_copy, arcname="images")
  caplog.set_level(logging.INFO)
  dataset = pipeline.load(data_config(image_folder=str(archive),
                                                    max_train_examples=10))
  summary = dataset.summary
  assert summary.source_sha256 == hashlib.sha256(archive.read_bytes()).hexdigest()
  for split, data in (("train", dataset.train), ("test", dataset.test)):
    expected = hashlib.sha256(str(data.images.shape).encode())
    expected.update(data.images.tobytes())
    expected.update(data.labels.astype("<i4").tobytes())
    assert summary.splits[split].sha256 == expected.hexdigest()
    assert summary.splits[split].per_class == tuple(np.bincount(data.labels, minlength=3))
  assert summary.splits["train"].examples == 10 and summary.splits["test"].examples == 12
  assert summary.line() in caplog.text
  record = summary.to_json()
  assert record["splits"]["test"]["per_class"] == {"ant": 4, "bee": 4, "cat": 4}

  # One pixel of one test image changed: the test checksum changes, the train one does not.
  image = folder_copy / "test" / "cat" / "001.png"
  pixels = np.asarray(Image.open(image)).copy()
  pixels[0, 0, 0] ^= 1
  Image.fromarray(pixels).save(image)
  other = pipeline.load(data_config(image_folder=str(folder_copy),
                                                  max_train_examples=10)).summary
  assert other.source_sha256 is None  # a folder
  assert other.splits["train"].sha256 == summary.splits["train"].sha256
  assert other.splits["test"].sha256 != summary.splits["test"].sha256


def test_a_subset_that_leaves_a_class_out_is_a_warning(synthetic_folder, caplog):
  dataset = pipeline.load(data_config(image_folder=synthetic_folder,
                                                    max_test_examples=2))
  assert len(dataset.test) == 2
  assert "The test subset (2 images, data.max_test_examples) has no image of" in caplog.text
  assert checks.missing_classes(dataset)["test"]


@pytest.mark.parametrize("mode", ["1", "L", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV",
                                  "I", "F", "LA", "PA", "RGBX", "RGBa", "La", "I;16",
                                  "I;16B"])
def test_every_pillow_mode_is_read_or_refused_by_name(mode):
  """A Pillow image of any mode gives 8-bit RGB or one DatasetError naming its mode."""
  image = Image.new(mode, (5, 4))
  try:
    pixels = image_decoding.read_image(image)
  except DatasetError as e:
    assert f"mode {mode}" in str(e) and "\n" not in str(e)
    assert mode in ("I", "F", "La")
  else:
    assert pixels.shape == (4, 5, 3) and pixels.dtype == np.uint8
