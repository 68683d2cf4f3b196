"""The official CIFAR-10 and CIFAR-100 archives, read as downloaded: exact pixels, no TensorFlow.

    cifar = read_cifar_archive("cifar-10-python.tar.gz")      # or the folder it extracts to
    cifar = read_cifar_archive("cifar-100-binary.tar.gz", labels="coarse")
    cifar.train_images    # uint8 (50000, 32, 32, 3)

The four archives of https://www.cs.toronto.edu/~kriz/cifar.html, read from
the gzip stream (nothing is extracted), or the folder that extracting one
gives; `image_folders.read_image_folder` (`data.image_folder`) dispatches
here:

- `cifar-10-python.tar.gz`: `cifar-10-batches-py/data_batch_1..5`,
  `test_batch` (labels `b"labels"`), `batches.meta` (`b"label_names"`);
- `cifar-10-binary.tar.gz`: `cifar-10-batches-bin/data_batch_1..5.bin`,
  `test_batch.bin` (1 label byte per record), `batches.meta.txt` (a name a line);
- `cifar-100-python.tar.gz`: `cifar-100-python/train`, `test` (`b"fine_labels"`,
  `b"coarse_labels"`), `meta` (`b"fine_label_names"`, `b"coarse_label_names"`);
- `cifar-100-binary.tar.gz`: `cifar-100-binary/train.bin`, `test.bin` (2 label
  bytes per record: coarse, then fine), `fine_label_names.txt`,
  `coarse_label_names.txt`.

A python batch is a pickled dict whose `b"data"` is uint8 (N, 3072): each row
the 1024 red, then green, then blue values of a 32x32 image in row-major
order; a binary record is its label byte(s) and the same 3072 bytes. Images
come out as uint8 (N, 32, 32, 3) NHWC, in file order (train: batches 1 to 5),
labels int32, class names from the archive's own meta file. CIFAR-100 gives
its 100 fine labels, or with `labels="coarse"` its 20 superclasses.

The format is recognised by the member names (`detect`), whatever the
archive's file name. What is read is checked: every batch file present, 3072
bytes per image and whole records, as many labels as images, labels below
the number of class names; a damaged or partial archive is refused, naming
the file and what is wrong with it.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import tarfile
import zlib

import numpy as np

from wacnn_jax.data.dataset import DatasetError
from wacnn_jax.data import tar_archives

IMAGE_BYTES = 32 * 32 * 3
LABEL_MODES = ("fine", "coarse")
DOWNLOAD_PAGE = "https://www.cs.toronto.edu/~kriz/cifar.html"


class CifarArchiveError(RuntimeError):
  """An official CIFAR archive is damaged, partial or not one; the message names the file.

  (`image_folders` reports it as a DatasetError.)
  """


@dataclasses.dataclass(frozen=True)
class Layout:
  """One of the four official formats: its files, and how to read them."""

  name: str  # e.g. "cifar-10-python"
  dataset: str  # cifar10 | cifar100
  encoding: str  # python | binary
  train_files: tuple[str, ...]
  test_files: tuple[str, ...]
  meta_files: tuple[str, ...]

  @property
  def files(self) -> tuple[str, ...]:
    return self.train_files + self.test_files + self.meta_files


LAYOUTS = (
    Layout("cifar-10-python", "cifar10", "python",
           tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), ("batches.meta",)),
    Layout("cifar-10-binary", "cifar10", "binary",
           tuple(f"data_batch_{i}.bin" for i in range(1, 6)), ("test_batch.bin",),
           ("batches.meta.txt",)),
    Layout("cifar-100-python", "cifar100", "python", ("train",), ("test",), ("meta",)),
    Layout("cifar-100-binary", "cifar100", "binary", ("train.bin",), ("test.bin",),
           ("fine_label_names.txt", "coarse_label_names.txt")),
)


def _basenames(names) -> set[str]:
  return {os.path.basename(n.rstrip("/")) for n in names}


def _layout_of(names) -> Layout | None:
  """The format whose marker files (first test file and meta files) are among `names`.

  A format is recognised by its test and meta files, so that an archive
  missing a train batch is still recognised, and refused by name.
  """
  present = _basenames(names)
  for layout in LAYOUTS:
    if set(layout.test_files + layout.meta_files) <= present:
      return layout
  return None


def detect(path: str) -> Layout | None:
  """The official format of the archive or folder at `path`, or None if it is not one.

  Reads only member names (a pass through the gzip stream for an archive).
  """
  path = os.path.expanduser(str(path))
  if os.path.isdir(path):
    names = [name for _, _, files in os.walk(path) for name in files]
  elif os.path.isfile(path) and tarfile.is_tarfile(path):
    names = []
    try:
      with tarfile.open(path) as archive:
        names.extend(m.name for m in archive if m.isfile())
    except (tarfile.TarError, OSError, EOFError, zlib.error):
      pass  # cut short: recognised by the names before the break (then refused as damaged)
  else:
    return None
  return _layout_of(names)


def _read_files(path: str, wanted: set[str]) -> dict[str, bytes]:
  """{basename: bytes} of the members (or files below the folder) named in `wanted`."""
  found: dict[str, bytes] = {}
  if os.path.isdir(path):
    for root, _, files in os.walk(path):
      for name in files:
        if name in wanted and name not in found:
          with open(os.path.join(root, name), "rb") as f:
            found[name] = f.read()
    return found
  try:
    members = tar_archives.read_whole(path)  # refused unless whole (checksum, end marker)
  except DatasetError as e:
    raise CifarArchiveError(f"{e} Download it again from {DOWNLOAD_PAGE}.") from e
  for member, content in sorted(members.items()):
    name = os.path.basename(member)
    if name in wanted and name not in found and isinstance(content, bytes):
      found[name] = content
  return found


def _to_nhwc(data: np.ndarray) -> np.ndarray:
  """uint8 (N, 3072) rows of R, G, B planes -> uint8 (N, 32, 32, 3)."""
  return np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def _unpickle(data: bytes, where: str) -> dict:
  try:
    loaded = pickle.loads(data, encoding="bytes")
  except Exception as e:  # pylint: disable=broad-except
    raise CifarArchiveError(f"{where} is not a readable CIFAR python batch "
                            f"({type(e).__name__}: {e}).") from e
  if not isinstance(loaded, dict):
    raise CifarArchiveError(f"{where} is not a CIFAR python batch (a {type(loaded).__name__}, "
                            "not a dict).")
  return loaded


def _field(batch: dict, key: bytes, where: str):
  if key not in batch:
    keys = sorted(k.decode() if isinstance(k, bytes) else str(k) for k in batch)
    raise CifarArchiveError(f"{where} has no {key.decode()!r} entry (it has {keys}).")
  return batch[key]


def _python_batch(data: bytes, where: str, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
  batch = _unpickle(data, where)
  pixels = np.asarray(_field(batch, b"data", where))
  labels = np.asarray(_field(batch, label_key, where))
  if pixels.dtype != np.uint8 or pixels.ndim != 2 or pixels.shape[1] != IMAGE_BYTES:
    raise CifarArchiveError(f"{where}: its data is {pixels.dtype} {pixels.shape}, not uint8 "
                            f"(N, {IMAGE_BYTES}) (32x32 RGB images).")
  if labels.shape != (pixels.shape[0],):
    raise CifarArchiveError(f"{where} holds {pixels.shape[0]} images but {labels.size} "
                            f"{label_key.decode()}.")
  return _to_nhwc(pixels), labels.astype(np.int32)


def _binary_batch(data: bytes, where: str, label_bytes: int,
                  label_index: int) -> tuple[np.ndarray, np.ndarray]:
  record = label_bytes + IMAGE_BYTES
  if not data or len(data) % record:
    raise CifarArchiveError(
        f"{where} has {len(data):,} bytes, not a whole number of {record}-byte records "
        f"({label_bytes} label byte(s) + {IMAGE_BYTES} pixel bytes): it is cut short or "
        "not a CIFAR binary batch.")
  records = np.frombuffer(data, np.uint8).reshape(-1, record)
  return _to_nhwc(records[:, label_bytes:]), records[:, label_index].astype(np.int32)


def _names_from_text(data: bytes) -> tuple[str, ...]:
  return tuple(line.strip() for line in data.decode("utf-8").splitlines() if line.strip())


@dataclasses.dataclass(frozen=True)
class CifarSplits:
  """What `read_cifar_archive` returns: uint8 (N, 32, 32, 3) images and int32 (N,) labels."""

  name: str  # cifar10, cifar100 or cifar100-coarse
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  class_names: tuple[str, ...]


def read_cifar_archive(path: str, labels: str = "fine", layout: Layout | None = None
                       ) -> CifarSplits:
  """Reads an official CIFAR archive (or its extracted folder) at `path`; see the module doc.

  `labels`: CIFAR-100's "fine" (100 classes) or "coarse" (20); CIFAR-10 has
  only one kind, and "coarse" is refused for it. `layout`: the format if
  already known (`detect`). Raises CifarArchiveError for a damaged, partial
  or unrecognised archive and ValueError for a bad `labels`.
  """
  path = os.path.expanduser(str(path))
  check_label_mode(labels)
  layout = layout or detect(path)
  if layout is None:
    raise CifarArchiveError(
        f"{path} is not an official CIFAR archive: none of "
        f"{', '.join(l.name for l in LAYOUTS)} (see {DOWNLOAD_PAGE}).")
  if labels == "coarse" and layout.dataset != "cifar100":
    raise ValueError(f"data.cifar100_labels='coarse' needs CIFAR-100; {path} is "
                     f"{layout.name}. Remove the setting, or use cifar-100-python.tar.gz.")
  files = _read_files(path, set(layout.files))
  missing = [f for f in layout.files if f not in files]
  if missing:
    raise CifarArchiveError(
        f"{path} ({layout.name}) lacks {', '.join(missing)}: it is partial. Download it "
        f"again from {DOWNLOAD_PAGE}.")
  where = lambda name: f"{name} in {path}"

  if layout.encoding == "python":
    meta = _unpickle(files[layout.meta_files[0]], where(layout.meta_files[0]))
    names_key = b"label_names" if layout.dataset == "cifar10" else f"{labels}_label_names".encode()
    class_names = tuple(n.decode() if isinstance(n, bytes) else str(n)
                        for n in _field(meta, names_key, where(layout.meta_files[0])))
    label_key = b"labels" if layout.dataset == "cifar10" else f"{labels}_labels".encode()
    read = lambda name: _python_batch(files[name], where(name), label_key)
  else:
    names_file = ("batches.meta.txt" if layout.dataset == "cifar10"
                  else f"{labels}_label_names.txt")
    class_names = _names_from_text(files[names_file])
    label_bytes = 1 if layout.dataset == "cifar10" else 2
    label_index = 1 if labels == "fine" and layout.dataset == "cifar100" else 0
    read = lambda name: _binary_batch(files[name], where(name), label_bytes, label_index)

  splits = {}
  for split, names in (("train", layout.train_files), ("test", layout.test_files)):
    batches = [read(name) for name in names]
    for name, (_, batch_labels) in zip(names, batches):
      if batch_labels.size and (batch_labels.min() < 0 or batch_labels.max() >= len(class_names)):
        raise CifarArchiveError(
            f"{where(name)} has label {int(batch_labels.max())}, but the archive names "
            f"{len(class_names)} classes: it is damaged.")
    splits[split] = (np.concatenate([images for images, _ in batches]),
                     np.concatenate([batch_labels for _, batch_labels in batches]))
  name = layout.dataset + ("-coarse" if labels == "coarse" else "")
  return CifarSplits(name, *splits["train"], *splits["test"], class_names)


def check_label_mode(labels) -> None:
  """Raises ValueError unless `labels` (`data.cifar100_labels`) is 'fine' or 'coarse'."""
  if labels not in LABEL_MODES:
    raise ValueError(f"data.cifar100_labels={labels!r} is not one of {', '.join(LABEL_MODES)}.")
