"""The official CIFAR archives (wacnn_jax/cifar_archives.py), built here in their documented formats.

https://www.cs.toronto.edu/~kriz/cifar.html: a python batch is a pickled dict
with b"data" uint8 (N, 3072), each row the red, green and blue 32x32 planes in
row-major order, and b"labels" (CIFAR-10) or b"fine_labels"/b"coarse_labels"
(CIFAR-100); class names in batches.meta / meta. A binary batch is records of
1 label byte (CIFAR-10) or 2 (coarse, fine: CIFAR-100) and the same 3072
bytes; class names one per line in batches.meta.txt / *_label_names.txt.
The tests write tiny archives of random images in these formats and compare
what `data.image_folder` reads with the images, pixel for pixel, through the
documented indexing (red of pixel (i, j) is byte i * 32 + j of the row).
"""

import io
import pickle
import tarfile

import ml_collections
import numpy as np
import pytest

from wacnn_jax.data import cifar_archives
from wacnn_jax.data.dataset import DatasetError
from wacnn_jax.data import image_folders
from wacnn_jax.data import pipeline


CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                 "ship", "truck"]
COARSE_NAMES = [f"super{k}" for k in range(20)]
FINE_NAMES = [f"class{k}" for k in range(100)]


def _images(rng, n):
  return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def _rows(images):
  """The documented row layout, written out: R plane, G plane, B plane, each row-major."""
  n = len(images)
  rows = np.empty((n, 3072), np.uint8)
  for c in range(3):
    for i in range(32):
      rows[:, c * 1024 + i * 32:c * 1024 + i * 32 + 32] = images[:, i, :, c]
  return rows


def _tar(path, top, files):
  """A .tar.gz of `top/<name>` for {name: bytes}, a directory entry first as in the originals."""
  with tarfile.open(path, "w:gz") as archive:
    info = tarfile.TarInfo(top)
    info.type = tarfile.DIRTYPE
    archive.addfile(info)
    for name, data in files.items():
      info = tarfile.TarInfo(f"{top}/{name}")
      info.size = len(data)
      archive.addfile(info, io.BytesIO(data))
  return str(path)


def make_archive(tmp_path, kind, *, train_per_file=3, test=4, seed=0, drop=(), corrupt=None,
                 file_name=None):
  """Writes one official archive `kind` (e.g. 'cifar-10-python'); returns (path, expected).

  expected: {split: (images NHWC, fine labels, coarse labels or None)}, class names.
  `drop`: member names to leave out; `corrupt`: {member name: function(bytes) -> bytes}.
  """
  rng = np.random.default_rng(seed)
  cifar100 = kind.startswith("cifar-100")
  train_files = ["train"] if cifar100 else [f"data_batch_{i}" for i in range(1, 6)]
  split_files = {"train": train_files, "test": ["test"] if cifar100 else ["test_batch"]}
  files, expected = {}, {}
  for split, names in split_files.items():
    parts = []
    for name in names:
      n = train_per_file * (5 if cifar100 and split == "train" else 1) if split == "train" else test
      images = _images(rng, n)
      fine = rng.integers(0, 100 if cifar100 else 10, n)
      coarse = rng.integers(0, 20, n) if cifar100 else None
      parts.append((images, fine, coarse))
      if kind.endswith("python"):
        batch = {b"batch_label": b"training batch", b"data": _rows(images),
                 b"filenames": [f"img{k}.png".encode() for k in range(n)]}
        if cifar100:
          batch[b"fine_labels"], batch[b"coarse_labels"] = fine.tolist(), coarse.tolist()
        else:
          batch[b"labels"] = fine.tolist()
        files[name] = pickle.dumps(batch, protocol=2)
      else:
        labels = [coarse, fine] if cifar100 else [fine]
        records = np.concatenate([np.stack(labels, 1).astype(np.uint8), _rows(images)], 1)
        files[name + ".bin"] = records.tobytes()
    expected[split] = tuple(None if parts[0][k] is None else np.concatenate([p[k] for p in parts])
                            for k in range(3))
  if kind == "cifar-10-python":
    files["batches.meta"] = pickle.dumps(
        {b"label_names": [n.encode() for n in CIFAR10_NAMES], b"num_vis": 3072}, protocol=2)
    top = "cifar-10-batches-py"
  elif kind == "cifar-10-binary":
    files["batches.meta.txt"] = ("\n".join(CIFAR10_NAMES) + "\n\n").encode()
    top = "cifar-10-batches-bin"
  elif kind == "cifar-100-python":
    files["meta"] = pickle.dumps({b"fine_label_names": [n.encode() for n in FINE_NAMES],
                                  b"coarse_label_names": [n.encode() for n in COARSE_NAMES]},
                                 protocol=2)
    top = "cifar-100-python"
  else:
    files["fine_label_names.txt"] = ("\n".join(FINE_NAMES) + "\n").encode()
    files["coarse_label_names.txt"] = ("\n".join(COARSE_NAMES) + "\n").encode()
    top = "cifar-100-binary"
  for name in drop:
    del files[name]
  for name, change in (corrupt or {}).items():
    files[name] = change(files[name])
  path = _tar(tmp_path / (file_name or f"{kind}.tar.gz"), top, files)
  return path, expected


def data_config(path, labels="fine", allow_missing_classes=True):
  """Reads `path`; the tiny archives here lack most classes, so that check is off by default."""
  return ml_collections.ConfigDict({
      "dataset": "ignored", "data_dir": None, "image_folder": path, "cifar100_labels": labels,
      "download": False, "train_split": "train", "test_split": "test",
      "max_train_examples": 0, "max_test_examples": 0,
      "allow_missing_classes": allow_missing_classes})


@pytest.mark.parametrize("kind", ["cifar-10-python", "cifar-10-binary", "cifar-100-python",
                                  "cifar-100-binary"])
def test_official_archives_are_read_exactly(kind, tmp_path):
  path, expected = make_archive(tmp_path, kind)
  dataset = pipeline.load(data_config(path))
  cifar100 = kind.startswith("cifar-100")
  assert dataset.name == ("cifar100" if cifar100 else "cifar10")
  assert dataset.class_names == tuple(FINE_NAMES if cifar100 else CIFAR10_NAMES)
  for split in ("train", "test"):
    images, fine, _ = expected[split]
    got = getattr(dataset, split)
    assert got.images.dtype == np.uint8 and got.images.shape == images.shape
    np.testing.assert_array_equal(got.images, images)
    np.testing.assert_array_equal(got.labels, fine)
    assert got.labels.dtype == np.int32
  assert len(dataset.train) == 15 and len(dataset.test) == 4


@pytest.mark.parametrize("kind", ["cifar-100-python", "cifar-100-binary"])
def test_cifar100_coarse_labels(kind, tmp_path):
  path, expected = make_archive(tmp_path, kind)
  dataset = pipeline.load(data_config(path, labels="coarse"))
  assert dataset.name == "cifar100-coarse"
  assert dataset.class_names == tuple(COARSE_NAMES) and dataset.num_classes == 20
  np.testing.assert_array_equal(dataset.train.labels, expected["train"][2])
  np.testing.assert_array_equal(dataset.test.labels, expected["test"][2])
  np.testing.assert_array_equal(dataset.test.images, expected["test"][0])


def test_format_is_detected_by_content_and_folders_are_read_too(tmp_path):
  path, expected = make_archive(tmp_path, "cifar-10-binary", file_name="my_data.tgz")
  assert cifar_archives.detect(path).name == "cifar-10-binary"
  with tarfile.open(path) as archive:
    archive.extractall(tmp_path / "extracted", filter="data")
  for source in (path, str(tmp_path / "extracted")):
    dataset = image_folders.read_image_folder(source)
    np.testing.assert_array_equal(dataset.train.images, expected["train"][0])
  assert cifar_archives.detect(str(tmp_path / "extracted" / "cifar-10-batches-bin")) is not None


def test_an_image_folder_archive_is_not_taken_for_cifar(cifar10_mini):
  assert cifar_archives.detect(cifar10_mini) is None


@pytest.mark.parametrize("kind, change, message", [
    ("cifar-10-python", dict(drop=["data_batch_3"]), "lacks data_batch_3"),
    ("cifar-10-binary", dict(drop=["data_batch_5.bin"]), "lacks data_batch_5.bin"),
    ("cifar-100-binary", dict(drop=["train.bin"]), "lacks train.bin"),
    ("cifar-10-binary", dict(corrupt={"test_batch.bin": lambda b: b[:-100]}),
     "test_batch.bin in"),
    ("cifar-100-python", dict(corrupt={"test": lambda b: b[:len(b) // 2]}), "test in"),
    ("cifar-10-python", dict(corrupt={"data_batch_2": lambda b: pickle.dumps(
        {b"data": np.zeros((3, 3072), np.uint8), b"labels": [1, 2]})}),
     "holds 3 images but 2 labels"),
    ("cifar-10-python", dict(corrupt={"data_batch_1": lambda b: pickle.dumps(
        {b"data": np.zeros((3, 3000), np.uint8), b"labels": [1, 2, 3]})}), "(N, 3072)"),
    ("cifar-10-binary", dict(corrupt={"batches.meta.txt": lambda b: b"cat\ndog\n"}),
     "names 2 classes"),
])
def test_damaged_or_partial_archives_are_refused_by_name(kind, change, message, tmp_path):
  path, _ = make_archive(tmp_path, kind, **change)
  with pytest.raises(DatasetError) as error:
    pipeline.load(data_config(path))
  assert message in str(error.value) and path in str(error.value), str(error.value)


def test_truncated_download_is_refused(tmp_path):
  path, _ = make_archive(tmp_path, "cifar-10-binary", train_per_file=40)
  data = open(path, "rb").read()
  with open(path, "wb") as f:
    f.write(data[:int(len(data) * 0.9)])
  with pytest.raises(DatasetError, match="cannot be read whole"):
    pipeline.load(data_config(path))


def test_an_archive_missing_classes_is_refused_by_default(tmp_path):
  path, _ = make_archive(tmp_path, "cifar-10-binary")
  with pytest.raises(DatasetError, match="classes missing from a split"):
    pipeline.load(data_config(path, allow_missing_classes=False))


def test_label_setting_is_checked(tmp_path, cifar10_mini):
  path, _ = make_archive(tmp_path, "cifar-10-python")
  with pytest.raises(ValueError, match="needs CIFAR-100"):
    pipeline.load(data_config(path, labels="coarse"))
  with pytest.raises(ValueError, match="image folder"):
    pipeline.load(data_config(cifar10_mini, labels="coarse"))
  with pytest.raises(ValueError, match="not one of fine, coarse"):
    pipeline.load(data_config(path, labels="superclass"))
