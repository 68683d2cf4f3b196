"""Image folders decoded once: their uint8 splits kept in one file per source.

    dataset = cache.read_cached(image_folders.read_image_folder, path,
                                splits=("train", "test"), cache_dir=None,
                                options={"cifar100_labels": "fine"})

`pipeline.load` reads `data.image_folder` (a folder or an
archive of one) through `read_cached`. The first run decodes every JPEG/PNG
and writes the whole splits (before any `max_*_examples` subset) to
`<cache_dir>/<source name>-<16 hex digits>.npys`, the digits a hash of the
source's absolute path, the splits and the reader's options; later runs read that file instead
(CIFAR-10's 60,000 images: 184 MB, mapped into memory and checked in a
fraction of a second).
`cache_dir` is `data.cache_dir`: None = `default_cache_dir()`, '' = no cache.

The file is a sequence of `.npy` records (`numpy.lib.format`, no pickles):
first `meta`, a JSON string, then per split `images` uint8 (N, H, W, 3) and
`labels` int32 (N,). `meta` holds the format version, the source's identity
(`source_identity`), the dataset name, the class names, the arrays' shapes and
the sha256 of their bytes.

A cache is used only when it is sound and current: the source's identity
(absolute path; an archive's size, modification time and sha256; a folder's
total size, newest modification time and the sha256 of its listing with
every file's size and modification time; the splits and the reader's options
(an official CIFAR-100 archive's label set); the Pillow version
that decodes) equals the stored one, and the arrays' sha256 matches. A stale
or damaged cache (changed source, a file cut short or corrupted) is decoded
again and replaced, saying why in the log.

Writing is atomic (a temporary file in the cache folder, then `os.replace`):
runs that build the same cache at once each write a complete file and the
last rename wins, so readers only ever see one complete cache. A cache that
cannot be written (a read-only folder, a full disk) is a warning; the run goes
on with the decoded images. Whenever a cache is written, the caches whose
source no longer exists and the temporary files of killed writes are removed.
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

from wacnn_jax.data import checks
from wacnn_jax.data.dataset import Dataset, Split
from wacnn_jax.files import atomic

FORMAT = 1  # bump when the file layout or what it holds changes
SUFFIX = ".npys"
ABANDONED_SECONDS = 3600  # a temporary file this old is from a write that was killed


def default_cache_dir() -> str:
  """`$XDG_CACHE_HOME/wacnn_jax/datasets`, or `~/.cache/wacnn_jax/datasets`."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "wacnn_jax", "datasets")


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


def cache_path(cache_dir: str, path: str, splits: Sequence[str],
               options: dict | None = None) -> str:
  """The cache file of `path`'s `splits` (read with `options`) in `cache_dir`."""
  path = os.path.abspath(os.path.expanduser(str(path)))
  key = hashlib.sha256(json.dumps([path, list(splits), options or {}], sort_keys=True).encode()).hexdigest()[:16]
  name = os.path.basename(path.rstrip(os.sep)) or "root"
  return os.path.join(cache_dir, f"{name}-{key}{SUFFIX}")


def _arrays(dataset: Dataset) -> list[np.ndarray]:
  """What a cache file stores after its meta, in this order."""
  return [dataset.train.images, dataset.train.labels, dataset.test.images, dataset.test.labels]


def _payload_sha256(arrays: Sequence[np.ndarray]) -> str:
  digest = hashlib.sha256()
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


def read(file_path: str, identity: dict) -> Dataset:
  """The dataset cached in `file_path`.

  Raises StaleCache when the cache's identity is not `identity`, and any
  other exception when the file is missing or damaged.
  """
  with open(file_path, "rb") as f:
    meta = json.loads(str(np.load(f, allow_pickle=False)))
    if meta["identity"] != identity:
      changed = sorted(k for k in set(identity) | set(meta["identity"])
                       if identity.get(k) != meta["identity"].get(k))
      raise StaleCache(f"the source changed since it was cached ({', '.join(changed)})")
    arrays = [_map_next_array(f, file_path) for _ in meta["arrays"]]
  shapes = [[list(a.shape), a.dtype.str] for a in arrays]
  if shapes != meta["arrays"] or _payload_sha256(arrays) != meta["sha256"]:
    raise ValueError("its arrays do not match their recorded shapes and sha256")
  train_images, train_labels, test_images, test_labels = arrays
  return Dataset(
      name=meta["name"], train=Split(train_images, train_labels),
      test=Split(test_images, test_labels),
      class_names=tuple(meta["class_names"]))


def write(file_path: str, identity: dict, dataset: Dataset) -> None:
  """Writes `dataset` as the cache `file_path` atomically (temporary file, then rename)."""
  arrays = _arrays(dataset)
  meta = {"identity": identity, "name": dataset.name, "class_names": list(dataset.class_names),
          "arrays": [[list(a.shape), a.dtype.str] for a in arrays],
          "sha256": _payload_sha256(arrays)}
  os.makedirs(os.path.dirname(file_path), exist_ok=True)
  with atomic.atomic_writer(file_path) as f:
    np.save(f, np.array(json.dumps(meta)), allow_pickle=False)
    for array in arrays:
      np.save(f, array, allow_pickle=False)


def remove_orphans(cache_dir: str) -> None:
  """Removes from `cache_dir` the caches whose source no longer exists and the temporary
  files of writes that stopped more than `ABANDONED_SECONDS` ago (errors ignored)."""
  for name in os.listdir(cache_dir):
    file_path = os.path.join(cache_dir, name)
    try:
      if name.endswith(atomic.TEMPORARY_SUFFIX):
        if time.time() - os.stat(file_path).st_mtime > ABANDONED_SECONDS:
          os.remove(file_path)
        continue
      if not name.endswith(SUFFIX):
        continue
      with open(file_path, "rb") as f:
        source = json.loads(str(np.load(f, allow_pickle=False)))["identity"]["path"]
      if not os.path.exists(source):
        os.remove(file_path)
        logging.info("Removed the dataset cache %s: its source %s no longer exists.",
                     file_path, source)
    except Exception:  # pylint: disable=broad-except
      continue  # being replaced, damaged or not ours: left for its own reader


def read_cached(decode: Callable[..., Dataset], path: str,
                splits: Sequence[str], cache_dir: str | None,
                options: dict | None = None) -> Dataset:
  """`decode(path, splits=splits, **options)`, read from the cache in `cache_dir` when current.

  `cache_dir`: None = `default_cache_dir()`, '' = no cache (decode every time).
  Errors of `decode` (a missing folder, a bad image) pass through, and
  nothing is cached then.
  """
  if cache_dir == "":
    return decode(path, splits=splits, **(options or {}))
  if not os.path.exists(os.path.expanduser(str(path))):
    return decode(path, splits=splits, **(options or {}))  # its own error says what is wrong
  cache_dir = os.path.abspath(os.path.expanduser(cache_dir or default_cache_dir()))
  file_path = cache_path(cache_dir, path, splits, options)
  identity = source_identity(path, splits, options)
  start = time.perf_counter()
  try:
    dataset = read(file_path, identity)
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
    logging.warning("The dataset cache %s %s; decoding %s again.", file_path, why, path)
  start = time.perf_counter()
  dataset = decode(path, splits=splits, **(options or {}))
  decode_seconds = time.perf_counter() - start
  try:
    write(file_path, identity, dataset)
    remove_orphans(cache_dir)
  except OSError as e:
    logging.warning("Could not write the dataset cache %s (%s); going on without it. "
                    "Set --config.data.cache_dir to a writable folder, or '' for none.",
                    file_path, e)
    return dataset
  logging.info("Decoded %s in %.1f s; cached it in %s (data.cache_dir).", path,
               decode_seconds, file_path)
  return dataset
