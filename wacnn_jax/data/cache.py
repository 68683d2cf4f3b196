"""Image folders decoded once: their uint8 splits kept in one file per content.

    dataset = cache.read_cached(image_folders.read_image_folder, path,
                                splits=("train", "test"), cache_dir=None,
                                options={"cifar100_labels": "fine"}, max_gb=20.0)

`pipeline.load` reads `data.image_folder` (a folder or an
archive of one) through `read_cached`. The first run decodes every JPEG/PNG
and writes the whole splits (before any `max_*_examples` subset, so a subset
and the whole source share one file) to `<cache_dir>/<name>-<16 hex
digits>.npys`, the digits those of the arrays' sha256: the same images from
another source (an archive and the same images unpacked into a folder) are
kept once. Each source has an index beside it (`cache_folder`:
`<name>-<16 hex>.source.json`, the digits a hash of the source's absolute
path, the splits and the reader's options) that names its data file; later
runs read that file instead of decoding (CIFAR-10's 60,000 images: 184 MB,
mapped into memory and checked in a fraction of a second).
`cache_dir` is `data.cache_dir`: None = `cache_folder.default_cache_dir()`, '' = no cache.

The data file is a sequence of `.npy` records (`numpy.lib.format`, no
pickles): first `meta`, a JSON string, then per split `images` uint8 (N, H,
W, 3) and `labels` int32 (N,). `meta` holds the format version, the class
names, the arrays' shapes and the sha256 of the class names and the arrays'
bytes.

A cache is used only when it is sound and current: the source's identity
(absolute path; an archive's size, modification time and sha256; a folder's
total size, newest modification time and the sha256 of its listing with
every file's size and modification time; the splits and the reader's options
(an official CIFAR-100 archive's label set); the Pillow version
that decodes) equals the one its index recorded, and the arrays' sha256
matches. A stale or damaged cache (changed source, a file cut short or
corrupted) is decoded again and replaced, saying why in the log.

Writing is atomic (a temporary file in the cache folder, then `os.replace`),
the index before its data file: runs that build the same cache at once each
write complete files and the last rename wins, so readers only ever see
complete files. A cache that cannot be written (a read-only folder, a full
disk) is a warning; the run goes on with the decoded images. Whenever a
cache is written, the folder is tidied (`cache_folder.remove_orphans`) and
kept under its size cap (`cache_folder.enforce_cap`, `data.cache_max_gb`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Callable, Sequence

from absl import logging
import numpy as np
import PIL

from wacnn_jax.data import cache_folder
from wacnn_jax.data import checks
from wacnn_jax.data.dataset import Dataset, Split
from wacnn_jax.files import atomic

FORMAT = 2  # bump when the file layout or what it holds changes
SUFFIX = ".npys"


def source_identity(path: str, splits: Sequence[str], options: dict | None = None) -> dict:
  """What a cache of `path`'s `splits` must match to be current (see the module docstring).

  `path` is an image folder or an archive of one, as `read_image_folder` takes it.
  """
  path = os.path.abspath(os.path.expanduser(str(path)))
  identity = {"format": FORMAT, "path": path, "splits": list(splits), "options": options or {},
              "decoder": f"Pillow {PIL.__version__}"}
  if os.path.isdir(path):
    listing, size, newest = hashlib.sha256(), 0, 0
    for root, dirs, files in os.walk(path, followlinks=True):  # as read_image_folder
      dirs.sort()
      for name in sorted(files):
        file_path = os.path.join(root, name)
        stat = os.stat(file_path)
        listing.update(f"{os.path.relpath(file_path, path)}\0{stat.st_size}\0"
                       f"{stat.st_mtime_ns}\n".encode())
        size, newest = size + stat.st_size, max(newest, stat.st_mtime_ns)
    return dict(identity, kind="folder", size=size, mtime_ns=newest,
                listing_sha256=listing.hexdigest())
  stat = os.stat(path)
  return dict(identity, kind="file", size=stat.st_size, mtime_ns=stat.st_mtime_ns,
              sha256=checks.file_sha256(path))


def index_path(cache_dir: str, path: str, splits: Sequence[str],
               options: dict | None = None) -> str:
  """The index of `path`'s `splits` (read with `options`) in `cache_dir`."""
  path = os.path.abspath(os.path.expanduser(str(path)))
  return os.path.join(cache_dir, cache_folder.file_name(
      path, [path, list(splits), options or {}], cache_folder.INDEX_SUFFIX))


def _arrays(dataset: Dataset) -> list[np.ndarray]:
  """What a cache file stores after its meta, in this order."""
  return [dataset.train.images, dataset.train.labels, dataset.test.images, dataset.test.labels]


def _payload_sha256(arrays: Sequence[np.ndarray], class_names: Sequence[str]) -> str:
  digest = hashlib.sha256(json.dumps(list(class_names)).encode())
  for array in arrays:
    digest.update(memoryview(np.ascontiguousarray(array)).cast("B"))
  return digest.hexdigest()


def _map_next_array(f, file_path: str) -> np.ndarray:
  """The `.npy` record at `f`'s position, mapped from `file_path` (copy-on-write), not read.

  Concurrent runs share the mapped pages; a run that writes to an array writes
  to its own copy of the pages, never to the file.
  """
  header = {(1, 0): np.lib.format.read_array_header_1_0,
            (2, 0): np.lib.format.read_array_header_2_0}[np.lib.format.read_magic(f)]
  shape, fortran_order, dtype = header(f)
  array = np.memmap(file_path, dtype=dtype, mode="c", offset=f.tell(), shape=shape,
                    order="F" if fortran_order else "C")
  f.seek(array.nbytes, os.SEEK_CUR)
  return np.asarray(array)


class StaleCache(Exception):
  """The cache was written for another version of the source (the message says what changed)."""


def read(file_path: str, name: str, sha256: str | None = None) -> Dataset:
  """The dataset cached in `file_path`, named `name`.

  Raises ValueError when its arrays do not match their recorded shapes and
  sha256 (or `sha256`, when given), and any other exception when the file is
  missing or damaged.
  """
  with open(file_path, "rb") as f:
    meta = json.loads(str(np.load(f, allow_pickle=False)))
    if meta.get("format") != FORMAT:
      raise ValueError(f"it is of format {meta.get('format')}, not {FORMAT}")
    arrays = [_map_next_array(f, file_path) for _ in meta["arrays"]]
  shapes = [[list(a.shape), a.dtype.str] for a in arrays]
  digest = _payload_sha256(arrays, meta["class_names"])
  if shapes != meta["arrays"] or digest != meta["sha256"] or sha256 not in (None, digest):
    raise ValueError("its arrays do not match their recorded shapes and sha256")
  train_images, train_labels, test_images, test_labels = arrays
  return Dataset(
      name=name, train=Split(train_images, train_labels),
      test=Split(test_images, test_labels),
      class_names=tuple(meta["class_names"]))


def data_file(cache_dir: str, source: str, dataset: Dataset) -> tuple[str, str]:
  """(the path of `dataset`'s data file in `cache_dir`, the sha256 that names it): the file
  of that content already there (from another source), else `<source's name>-<16 hex>`."""
  digest = _payload_sha256(_arrays(dataset), dataset.class_names)
  name = cache_folder.file_name(source, digest, SUFFIX)
  same_content = sorted(n for n in os.listdir(cache_dir)
                        if n.endswith(name[name.rindex("-"):]))
  return os.path.join(cache_dir, same_content[0] if same_content else name), digest


def write(file_path: str, digest: str, dataset: Dataset) -> None:
  """Writes `dataset` as the data file `file_path` (its sha256 `digest`) atomically
  (temporary file, then rename), unless a sound one is there already (the same images
  from another source)."""
  try:
    read(file_path, dataset.name, digest)
    logging.info("%s holds these images already (the same content from another source): "
                 "one copy serves both.", file_path)
    return
  except Exception:  # pylint: disable=broad-except
    pass
  arrays = _arrays(dataset)
  meta = {"format": FORMAT, "class_names": list(dataset.class_names),
          "arrays": [[list(a.shape), a.dtype.str] for a in arrays], "sha256": digest}
  with atomic.atomic_writer(file_path) as f:
    np.save(f, np.array(json.dumps(meta)), allow_pickle=False)
    for array in arrays:
      np.save(f, array, allow_pickle=False)


def read_cached(decode: Callable[..., Dataset], path: str,
                splits: Sequence[str], cache_dir: str | None,
                options: dict | None = None, max_gb: float | None = None) -> Dataset:
  """`decode(path, splits=splits, **options)`, read from the cache in `cache_dir` when current.

  `cache_dir`: None = `cache_folder.default_cache_dir()`, '' = no cache (decode every time).
  `max_gb`: the folder's size cap (None or 0: none). Errors of `decode` (a
  missing folder, a bad image) pass through, and nothing is cached then.
  """
  if cache_dir == "":
    return decode(path, splits=splits, **(options or {}))
  if not os.path.exists(os.path.expanduser(str(path))):
    return decode(path, splits=splits, **(options or {}))  # its own error says what is wrong
  cache_dir = os.path.abspath(os.path.expanduser(cache_dir or cache_folder.default_cache_dir()))
  index = index_path(cache_dir, path, splits, options)
  identity = source_identity(path, splits, options)
  start = time.perf_counter()
  file_path = None
  try:
    record = cache_folder.read_index(index)
    if record["identity"] != identity:
      changed = sorted(k for k in set(identity) | set(record["identity"])
                       if identity.get(k) != record["identity"].get(k))
      raise StaleCache(f"the source changed since it was cached ({', '.join(changed)})")
    file_path = os.path.join(cache_dir, record["data"])
    dataset = read(file_path, record["name"], record["sha256"])
    cache_folder.touch(file_path, index)
    logging.info("Read %s from the dataset cache %s in %.2f s.", path, file_path,
                 time.perf_counter() - start)
    return dataset
  except (FileNotFoundError, NotADirectoryError):
    why = None  # not cached yet
  except StaleCache as e:
    why = f"is stale: {e}"
  except Exception as e:  # pylint: disable=broad-except
    why = f"is damaged ({type(e).__name__}: {e})"
  if why:
    logging.warning("The dataset cache %s %s; decoding %s again.", file_path or index, why,
                    path)
  start = time.perf_counter()
  dataset = decode(path, splits=splits, **(options or {}))
  decode_seconds = time.perf_counter() - start
  try:
    os.makedirs(cache_dir, exist_ok=True)
    file_path, digest = data_file(cache_dir, path, dataset)
    cache_folder.write_index(index, {  # first: a data file no index names is removed
        "source": os.path.abspath(os.path.expanduser(str(path))), "identity": identity,
        "data": os.path.basename(file_path), "name": dataset.name, "sha256": digest})
    write(file_path, digest, dataset)
    cache_folder.remove_orphans(cache_dir)
    cache_folder.enforce_cap(cache_dir, max_gb, keep=file_path)
  except OSError as e:
    logging.warning("Could not write the dataset cache in %s (%s); going on without it. "
                    "Set --config.data.cache_dir to a writable folder, or '' for none.",
                    cache_dir, e)
    return dataset
  logging.info("Decoded %s in %.1f s; cached it in %s (data.cache_dir).", path,
               decode_seconds, file_path)
  return dataset
