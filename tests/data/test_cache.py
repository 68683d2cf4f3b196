"""The dataset cache (wacnn_jax.data.cache): image folders and archives decoded once.

Real images throughout: the committed mini CIFAR-10 archive and small folders
copied from it. "Decoding" is counted (or forbidden) by wrapping
`image_decoding.decode_image`, which every image of a folder or archive
goes through.
"""

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import time

import ml_collections
import numpy as np
import pytest

from configs import default
from tests import helpers
from wacnn_jax.data import cache as data_cache
from wacnn_jax.data import cache_folder
from wacnn_jax.data.dataset import Dataset
from wacnn_jax.data import image_decoding
from wacnn_jax.data import image_folders
from wacnn_jax.data import pipeline


SPLITS = ("train", "test")


def data_config(image_folder, cache_dir, **fields) -> ml_collections.ConfigDict:
  """configs/default.py's data section on `image_folder`, caching in `cache_dir`."""
  config = default.get_config().data
  config.image_folder = str(image_folder)
  config.cache_dir = None if cache_dir is None else str(cache_dir)
  config.update(fields)
  return config


@pytest.fixture
def decodes(monkeypatch):
  """How many images have been decoded since the test started (a list of one count)."""
  count = [0]
  decode = image_decoding.decode_image

  def counting(data):
    count[0] += 1
    return decode(data)

  monkeypatch.setattr(image_decoding, "decode_image", counting)
  return count


@pytest.fixture
def mini_folder(tmp_path):
  """An image folder of real CIFAR-10 JPEGs: 3 train and 2 test images per class."""
  return helpers.write_cifar_subset(helpers.CIFAR10_MINI, str(tmp_path / "mini"),
                                    {"train": 3, "test": 2})


def assert_same(a: Dataset, b: Dataset):
  assert (a.name, a.class_names) == (b.name, b.class_names)
  for split_a, split_b in ((a.train, b.train), (a.test, b.test)):
    np.testing.assert_array_equal(split_a.images, split_b.images)
    np.testing.assert_array_equal(split_a.labels, split_b.labels)
    assert (split_a.images.dtype, split_a.labels.dtype) == (np.uint8, np.int32)


def the_cache_file(cache_dir) -> str:
  """The one data file of `cache_dir` (beside one index per source)."""
  names = [n for n in os.listdir(cache_dir) if n.endswith(data_cache.SUFFIX)]
  assert len(names) == 1, os.listdir(cache_dir)
  return os.path.join(cache_dir, names[0])


def test_second_load_reads_the_cache_and_decodes_nothing(tmp_path, cifar10_mini, monkeypatch,
                                                         caplog):
  uncached = image_folders.read_image_folder(cifar10_mini)
  config = data_config(cifar10_mini, tmp_path / "cache")
  first = pipeline.load(config)
  assert_same(first, uncached)

  def no_decoding(data):
    raise AssertionError("decoded an image although the cache is current")

  monkeypatch.setattr(image_decoding, "decode_image", no_decoding)
  with caplog.at_level(logging.INFO, logger="absl"):
    second = pipeline.load(config)
  assert_same(second, uncached)
  assert "from the dataset cache" in caplog.text
  # The cache holds the whole splits: subsets are taken after reading it.
  subset = pipeline.load(data_config(cifar10_mini, tmp_path / "cache",
                                                   max_train_examples=100))
  np.testing.assert_array_equal(subset.train.images, uncached.train.subset(100).images)
  assert len(subset.test) == len(uncached.test)


@pytest.mark.parametrize("change", ["touched", "rewritten", "image added", "image removed"])
def test_a_changed_folder_is_decoded_again(tmp_path, mini_folder, decodes, change, caplog):
  cache = tmp_path / "cache"
  pipeline.load(data_config(mini_folder, cache))
  assert decodes[0] == 50
  image = os.path.join(mini_folder, "train", "cat", sorted(os.listdir(
      os.path.join(mini_folder, "train", "cat")))[0])
  if change == "touched":
    os.utime(image, ns=(time.time_ns(), os.stat(image).st_mtime_ns + 10**9))
  elif change == "rewritten":  # another real image in its place
    shutil.copy(os.path.join(mini_folder, "train", "dog", os.listdir(
        os.path.join(mini_folder, "train", "dog"))[0]), image)
  elif change == "image added":
    shutil.copy(image, os.path.join(os.path.dirname(image), "added.jpg"))
  else:
    os.remove(image)
  with caplog.at_level(logging.INFO, logger="absl"):
    dataset = pipeline.load(data_config(mini_folder, cache))
  assert "is stale: the source changed since it was cached" in caplog.text
  assert decodes[0] > 50
  assert_same(dataset, image_folders.read_image_folder(mini_folder))
  assert len(dataset.train) == {"image added": 31, "image removed": 29}.get(change, 30)
  the_cache_file(cache)  # replaced, not added to


def test_a_changed_archive_is_decoded_again(tmp_path, cifar10_mini, decodes, caplog):
  archive = str(tmp_path / "cifar10-mini.tar.gz")
  shutil.copy(cifar10_mini, archive)
  pipeline.load(data_config(archive, tmp_path / "cache"))
  before = decodes[0]
  os.utime(archive, ns=(time.time_ns(), os.stat(archive).st_mtime_ns + 10**9))
  with caplog.at_level(logging.INFO, logger="absl"):
    pipeline.load(data_config(archive, tmp_path / "cache"))
  assert "is stale: the source changed since it was cached (mtime_ns)" in caplog.text
  assert decodes[0] == 2 * before


def test_archive_identity_has_its_checksum(tmp_path):
  """Same size and modification time, other bytes: another identity."""
  archive = tmp_path / "data.tar"
  archive.write_bytes(b"a" * 1000)
  first = data_cache.source_identity(str(archive), SPLITS)
  stat = os.stat(archive)
  archive.write_bytes(b"a" * 999 + b"b")
  os.utime(archive, ns=(stat.st_atime_ns, stat.st_mtime_ns))
  second = data_cache.source_identity(str(archive), SPLITS)
  assert (first["size"], first["mtime_ns"]) == (second["size"], second["mtime_ns"])
  assert first["sha256"] != second["sha256"]
  assert first != second


def _cut_short(path):
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) - 1000)


def _flip_a_pixel_bit(path):
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)  # inside the train images
    byte = f.read(1)
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte[0] ^ 1]))


def _cut_in_the_header(path):
  with open(path, "r+b") as f:
    f.truncate(50)


@pytest.mark.parametrize("damage", [_cut_short, _flip_a_pixel_bit, _cut_in_the_header],
                         ids=["truncated", "one bit flipped", "truncated in its header"])
def test_a_damaged_cache_is_rebuilt_with_a_log_line(tmp_path, mini_folder, decodes, damage,
                                                    caplog):
  config = data_config(mini_folder, tmp_path / "cache")
  original = pipeline.load(config)
  cache_file = the_cache_file(tmp_path / "cache")
  damage(cache_file)
  with caplog.at_level(logging.INFO, logger="absl"):
    rebuilt = pipeline.load(config)
  assert f"The dataset cache {cache_file} is damaged" in caplog.text
  assert "decoding" in caplog.text and decodes[0] == 100
  assert_same(rebuilt, original)
  assert_same(pipeline.load(config), original)  # the rebuilt cache is sound
  assert decodes[0] == 100


def test_empty_cache_dir_writes_nothing(tmp_path, mini_folder, decodes, monkeypatch):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  for _ in range(2):
    pipeline.load(data_config(mini_folder, ""))
  assert decodes[0] == 100
  assert not os.path.exists(tmp_path / "xdg")
  assert sorted(os.listdir(tmp_path)) == ["mini"]


def test_default_cache_dir_is_under_the_user_cache_folder(tmp_path, mini_folder, monkeypatch):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  pipeline.load(data_config(mini_folder, None))
  the_cache_file(tmp_path / "xdg" / "wacnn_jax" / "datasets")
  monkeypatch.delenv("XDG_CACHE_HOME")
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert cache_folder.default_cache_dir() == str(
      tmp_path / "home" / ".cache" / "wacnn_jax" / "datasets")


def test_an_unwritable_cache_dir_is_a_warning(tmp_path, mini_folder, caplog):
  not_a_folder = tmp_path / "file"
  not_a_folder.write_text("")
  with caplog.at_level(logging.INFO, logger="absl"):
    dataset = pipeline.load(data_config(mini_folder, not_a_folder))
  assert "Could not write the dataset cache" in caplog.text
  assert len(dataset.train) == 30


def test_caches_of_sources_that_are_gone_are_removed(tmp_path, mini_folder):
  cache = tmp_path / "cache"
  gone = shutil.copytree(mini_folder, tmp_path / "gone")
  other = helpers.write_cifar_subset(helpers.CIFAR10_MINI, str(tmp_path / "other"),
                                     {"train": 4, "test": 2})
  pipeline.load(data_config(gone, cache))
  pipeline.load(data_config(other, cache))
  assert len(cache_folder.entries(str(cache))) == 2
  shutil.rmtree(gone)
  shutil.rmtree(other)
  abandoned = cache / "x.npys.123.tmp"
  abandoned.write_bytes(b"partial")
  old = time.time() - cache_folder.ABANDONED_SECONDS - 10
  os.utime(abandoned, (old, old))
  pipeline.load(data_config(mini_folder, cache))
  # gone's images are mini_folder's (a copy): their file stays, now serving mini_folder only;
  # other's file, which no source uses any more, and the abandoned write are removed.
  (entry,) = cache_folder.entries(str(cache))
  assert entry.sources == (mini_folder,)
  assert sorted(os.listdir(cache)) == sorted([os.path.basename(entry.path),
                                              os.path.basename(entry.indexes[0])])


RACER = """
import os, sys, time, hashlib
from wacnn_jax.data import cache as data_cache, image_decoding, image_folders
folder, cache, barrier, index = sys.argv[1:]

def wait_for_both(stage):
  open(f"{barrier}.{stage}{index}", "w").close()
  while not all(os.path.exists(f"{barrier}.{stage}{i}") for i in "01"):
    time.sleep(0.01)

decoded = [0]
decode, write = image_decoding.decode_image, data_cache.write
image_decoding.decode_image = lambda data: decoded.__setitem__(0, decoded[0] + 1) or decode(data)
data_cache.write = lambda *args: wait_for_both("decoded") or write(*args)
wait_for_both("started")
dataset = data_cache.read_cached(image_folders.read_image_folder, folder,
                                 ("train", "test"), cache, {"cifar100_labels": "fine"})
print(decoded[0], hashlib.sha256(dataset.train.images.tobytes()).hexdigest())
"""


def test_two_processes_building_the_cache_at_once_both_succeed(tmp_path, mini_folder,
                                                               monkeypatch):
  """Both find no cache and decode (a barrier holds each one's write until the other has
  decoded too), then both write it at once: one sound cache, nothing else, is left."""
  cache = tmp_path / "cache"
  racers = [subprocess.Popen(
      [sys.executable, "-c", RACER, mini_folder, str(cache), str(tmp_path / "barrier"), str(i)],
      cwd=helpers.REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  outputs = [r.communicate(timeout=300) for r in racers]
  assert [r.returncode for r in racers] == [0, 0], [err[-2000:] for _, err in outputs]
  (decoded_0, digest_0), (decoded_1, digest_1) = (out.split() for out, _ in outputs)
  assert decoded_0 == decoded_1 == "50" and digest_0 == digest_1
  index = os.path.basename(data_cache.index_path(str(cache), mini_folder, SPLITS,
                                                 {"cifar100_labels": "fine"}))
  assert sorted(os.listdir(cache)) == sorted([os.path.basename(the_cache_file(cache)), index])

  def no_decoding(data):
    raise AssertionError("decoded an image although the cache is current")

  monkeypatch.setattr(image_decoding, "decode_image", no_decoding)
  dataset = pipeline.load(data_config(mini_folder, cache))
  assert hashlib.sha256(dataset.train.images.tobytes()).hexdigest() == digest_0


def test_an_archive_and_the_same_images_unpacked_share_one_copy(tmp_path, cifar10_mini,
                                                                  decodes, caplog):
  """Two sources, one content: two indexes name one data file; each reads it back."""
  import tarfile  # pylint: disable=g-import-not-at-top
  unpacked = tmp_path / "unpacked"
  with tarfile.open(cifar10_mini) as archive:
    archive.extractall(unpacked, filter="data")
  (root,) = os.listdir(unpacked)
  cache = tmp_path / "cache"
  from_archive = pipeline.load(data_config(cifar10_mini, cache))
  with caplog.at_level(logging.INFO, logger="absl"):
    from_folder = pipeline.load(data_config(unpacked / root, cache))
  assert "one copy serves both" in caplog.text
  data_file = the_cache_file(cache)
  indexes = [n for n in os.listdir(cache) if n.endswith(cache_folder.INDEX_SUFFIX)]
  assert len(indexes) == 2
  (entry,) = cache_folder.entries(str(cache))
  assert entry.path == data_file and entry.size == os.path.getsize(data_file)
  assert entry.sources == tuple(sorted([os.path.abspath(cifar10_mini),
                                        str(unpacked / root)]))
  decoded = decodes[0]
  for source, expected in ((cifar10_mini, from_archive), (unpacked / root, from_folder)):
    np.testing.assert_array_equal(pipeline.load(data_config(source, cache)).train.images,
                                  expected.train.images)
  assert decodes[0] == decoded  # both read from the one file
  np.testing.assert_array_equal(from_archive.test.images, from_folder.test.images)


def test_a_file_of_the_earlier_cache_format_is_removed(tmp_path, mini_folder):
  cache = tmp_path / "cache"
  cache.mkdir()
  earlier = cache / "mini-0123456789abcdef.npys"  # format 1 kept no index beside it
  np.save(open(earlier, "wb"), np.array('{"identity": {}}'), allow_pickle=False)
  pipeline.load(data_config(mini_folder, cache))
  assert not earlier.exists() and the_cache_file(cache) != str(earlier)


def test_the_size_cap_removes_the_least_recently_used_first(tmp_path, cifar10_mini,
                                                             mini_folder, caplog):
  """Three sources under a cap that holds two: the one used longest ago goes, with a line."""
  cache = tmp_path / "cache"
  other = helpers.write_cifar_subset(helpers.CIFAR10_MINI, str(tmp_path / "other"),
                                     {"train": 4, "test": 2})
  sizes = {}
  for source in (mini_folder, other):
    pipeline.load(data_config(source, cache))
    sizes[source] = max(cache_folder.entries(str(cache)), key=lambda e: e.last_used).size
  # mini_folder used again, later than other: other is now the least recently used.
  time.sleep(0.05)
  pipeline.load(data_config(mini_folder, cache))
  archive_size = 2 * sum(sizes.values())  # the archive's file is much larger than both
  cap_gb = (sizes[mini_folder] + 4 * sizes[other] + 10 * archive_size) / 2**30
  with caplog.at_level(logging.INFO, logger="absl"):
    pipeline.load(data_config(cifar10_mini, cache, cache_max_gb=cap_gb / 100))
  # The cap (1 % of the above) is below even the newest file alone: both older ones go, the
  # one just written stays.
  assert "is over its cap" in caplog.text and "data.cache_max_gb" in caplog.text
  removed = [line for line in caplog.text.splitlines() if "is over its cap" in line]
  assert len(removed) == 2
  assert str(tmp_path / "other") in removed[0] and mini_folder in removed[1]
  (kept,) = cache_folder.entries(str(cache))
  assert kept.sources == (os.path.abspath(cifar10_mini),)
