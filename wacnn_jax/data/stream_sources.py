"""Random-access record sources of the stream pipeline: record i of a split, read on demand.

    records = FileRecords(root, paths)       # an image folder's files
    records = TarRecords(tar_path, index)    # an uncompressed tar's members, by byte offset
    records = ArrayRecords(images)           # decoded uint8 images (an official CIFAR archive)
    records = TfdsRecords(name, split, dir)  # a tfds dataset prepared as array_record
    len(records); records[i]                 # encoded bytes, uint8 (H, W, 3), or why not (str)
    records.name(i)                          # how messages name record i

Grain's `RandomAccessDataSource` protocol (`__len__`, `__getitem__`). The
sources are pickled into Grain's worker processes: they hold no open file
(a tar is opened once in each process that reads it) and keep their names
packed in one byte string, so that a worker's copy of a large listing
stays small.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np


class PackedNames:
  """Many strings in one UTF-8 byte string and an offset array (a few bytes per name)."""

  def __init__(self, names: Sequence[str]):
    encoded = [name.encode() for name in names]
    self._blob = b"".join(encoded)
    self._ends = np.cumsum([len(e) for e in encoded], dtype=np.int64)

  def __len__(self) -> int:
    return len(self._ends)

  def __getitem__(self, i: int) -> str:
    start = int(self._ends[i - 1]) if i else 0
    return self._blob[start:int(self._ends[i])].decode()


class FileRecords:
  """The files `root/<path>` of an image folder: record i is the bytes of file i."""

  def __init__(self, root: str, paths: Sequence[str]):
    self.root, self._paths = root, PackedNames(paths)

  def __len__(self) -> int:
    return len(self._paths)

  def __getitem__(self, i: int) -> bytes | str:
    try:
      with open(os.path.join(self.root, self._paths[int(i)]), "rb") as f:
        return f.read()
    except OSError as e:
      return f"cannot read it ({e.strerror or e})"

  def name(self, i: int) -> str:
    return self._paths[int(i)]

  def __repr__(self) -> str:
    return f"FileRecords({self.root!r}, {len(self)} files)"


class TarRecords:
  """Members of an uncompressed tar archive: record i is the bytes at (offset, size) i."""

  def __init__(self, tar_path: str, names: Sequence[str],
               entries: Sequence[tuple[int, int] | str], display_path: str | None = None):
    self.tar_path, self.display_path = tar_path, display_path or tar_path
    self._names = PackedNames(names)
    self._offsets = np.array([e[0] if isinstance(e, tuple) else -1 for e in entries], np.int64)
    self._sizes = np.array([e[1] if isinstance(e, tuple) else -1 for e in entries], np.int64)
    self._problems = {i: e for i, e in enumerate(entries) if isinstance(e, str)}
    self._file, self._pid = None, None

  def __getstate__(self) -> dict:
    return dict(self.__dict__, _file=None, _pid=None)

  def __len__(self) -> int:
    return len(self._names)

  def __getitem__(self, i: int) -> bytes | str:
    i = int(i)
    if i in self._problems:
      return self._problems[i]
    if self._pid != os.getpid():  # opened once per process (a forked copy does not share it)
      self._file, self._pid = open(self.tar_path, "rb"), os.getpid()  # pylint: disable=consider-using-with
    size = int(self._sizes[i])
    data = os.pread(self._file.fileno(), size, int(self._offsets[i]))
    return data if len(data) == size else f"the archive ends inside it ({len(data)} of {size} bytes)"

  def name(self, i: int) -> str:
    return self._names[int(i)]

  def __repr__(self) -> str:
    return f"TarRecords({self.display_path!r}, {len(self)} members)"


class ArrayRecords:
  """Decoded uint8 images (N, H, W, 3): record i is image i (an official CIFAR archive's)."""

  def __init__(self, images: np.ndarray, where: str):
    self.images, self.where = images, where

  def __len__(self) -> int:
    return len(self.images)

  def __getitem__(self, i: int) -> np.ndarray:
    return self.images[int(i)]

  def name(self, i: int) -> str:
    return f"image {int(i)} of {self.where}"

  def __repr__(self) -> str:
    return f"ArrayRecords({self.where!r}, {len(self)} images)"


class TfdsRecords:
  """A split of a tfds dataset prepared as array_record, through tfds's TF-free data source:
  record i is example i's encoded image (decoded as a folder's images are)."""

  def __init__(self, name: str, split: str, data_dir: str | None, length: int):
    self.dataset, self.split, self.data_dir, self._length = name, split, data_dir, length
    self._source, self._pid = None, None

  def __getstate__(self) -> dict:
    return dict(self.__dict__, _source=None, _pid=None)

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, i: int) -> bytes:
    if self._pid != os.getpid():  # opened once per process
      import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
      self._source = tfds.data_source(self.dataset, split=self.split, data_dir=self.data_dir,
                                      decoders={"image": tfds.decode.SkipDecoding()})
      self._pid = os.getpid()
    return bytes(self._source[int(i)]["image"])

  def name(self, i: int) -> str:
    return f"example {int(i)} of tfds {self.dataset} {self.split}"

  def __repr__(self) -> str:
    return f"TfdsRecords({self.dataset!r}, {self.split!r}, {len(self)} examples)"


class SubsetRecords:
  """Records `keep` (sorted indices) of `records`: a split's `data.max_*_examples` subset."""

  def __init__(self, records, keep: np.ndarray):
    self.records, self.keep = records, np.asarray(keep, np.int64)

  def __len__(self) -> int:
    return len(self.keep)

  def __getitem__(self, i: int):
    return self.records[int(self.keep[int(i)])]

  def name(self, i: int) -> str:
    return self.records.name(int(self.keep[int(i)]))

  def __repr__(self) -> str:
    return f"SubsetRecords({self.records!r}, {len(self)} kept)"
