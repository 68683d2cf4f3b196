"""A compressed image archive streamed from: decompressed once into the cache folder.

    tar_path = uncompressed("images.tar.gz", cache_dir)   # <cache_dir>/images-<key>.tar

The stream pipeline reads images at random (`stream_sources`), which a
compressed stream does not allow. A `.tar.gz`/`.tgz` is decompressed once,
read to its end so that gzip's CRC-32 and length are checked (a damaged or
cut archive is refused by name), into `<cache_dir>/<name>-<16 hex digits>.tar`,
the digits a hash of the archive's absolute path, size and modification
time: a changed archive is decompressed again. Its index
(`cache_folder`: `<name>-<16 hex>.source.json`) names the archive it came
from, for `python -m wacnn_jax cache` and the size cap; each use touches it.
The file is written atomically (`files.atomic`), so a run killed meanwhile
leaves no partial archive behind. An uncompressed `.tar` is read where it is.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import time

from absl import logging

from wacnn_jax.data import cache_folder
from wacnn_jax.data.dataset import DatasetError
from wacnn_jax.data import tar_archives
from wacnn_jax.files import atomic

COMPRESSED_SUFFIXES = (".tar.gz", ".tgz")


def uncompressed(path: str, cache_dir: str | None, max_gb: float | None = None) -> str:
  """`path` itself for an uncompressed tar, else its decompressed copy in `cache_dir`
  (made once; DatasetError for a damaged archive or without a cache folder). `max_gb`:
  the cache folder's size cap (`cache_folder.enforce_cap`)."""
  if not path.endswith(COMPRESSED_SUFFIXES):
    return path
  if not cache_dir:
    raise DatasetError(
        f"streaming {path} needs a cache folder to decompress it into once "
        "(data.cache_dir is ''): set data.cache_dir, or give the archive uncompressed "
        "(gunzip it to a .tar) or extracted (a folder).")
  stat = os.stat(path)
  source = os.path.abspath(path)
  key = hashlib.sha256(json.dumps([source, stat.st_size, stat.st_mtime_ns]).encode()
                       ).hexdigest()[:16]
  name = os.path.basename(source)
  for suffix in COMPRESSED_SUFFIXES:
    name = name.removesuffix(suffix)
  target = os.path.join(cache_dir, f"{name}-{key}.tar")
  index = os.path.join(cache_dir, f"{name}-{key}{cache_folder.INDEX_SUFFIX}")
  if os.path.exists(target) and os.path.exists(index):
    cache_folder.touch(target, index)
    return target
  os.makedirs(cache_dir, exist_ok=True)
  cache_folder.write_index(index, {  # first: a data file no index names is removed
      "source": source, "identity": {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns},
      "data": os.path.basename(target), "name": name})
  logging.info("decompressing %s into %s (once) ...", path, target)
  start = time.perf_counter()
  try:
    with gzip.open(path, "rb") as compressed, atomic.atomic_writer(target) as out:
      while chunk := _read(compressed, path):  # to the end: the CRC is checked there
        out.write(chunk)
  except BaseException:
    os.remove(index)  # nothing of a damaged archive stays in the cache
    raise
  logging.info("decompressed %s (%.1f GB) in %.1f s", path, os.path.getsize(target) / 1e9,
               time.perf_counter() - start)
  cache_folder.remove_orphans(cache_dir)
  cache_folder.enforce_cap(cache_dir, max_gb, keep=target)
  return target


def _read(compressed, path: str) -> bytes:
  """The next MiB of the decompressed stream; DatasetError naming a damaged archive."""
  try:
    return compressed.read(1 << 20)
  except tar_archives.ARCHIVE_ERRORS as e:
    raise DatasetError(f"archive {path} cannot be read whole ({type(e).__name__}: {e}); copy "
                       "or download it again (gzip -t checks a .tar.gz).") from e
