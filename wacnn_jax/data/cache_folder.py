"""The dataset cache folder: what it holds, for which sources, how big, when last used.

    entries = cache_folder.entries(cache_dir)           # [Entry(path, size, last_used, sources)]
    cache_folder.remove(entry)
    cache_folder.enforce_cap(cache_dir, max_bytes, keep=path_in_use)

The folder (`data.cache_dir`; None = `default_cache_dir()`) holds two kinds
of data file: decoded images (`<name>-<16 hex>.npys`, `data.cache`), keyed by
their content, and compressed archives decompressed for streaming
(`<name>-<16 hex>.tar`, `data.uncompressed_archives`). Beside them, one small
index per source, `<name>-<16 hex>.source.json`: the source's path and
identity, and the data file that serves it. Several sources may share one
data file (an archive and the same images unpacked into a folder decode to
the same arrays: one copy); a data file no index names is removed.

Every use of a data file touches it (its modification time is its last
use), so the size cap (`data.cache_max_gb`) evicts the least recently used
files first, each with a log line, and `python -m wacnn_jax cache` lists
and removes entries.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time

from absl import logging

from wacnn_jax.files import atomic
from wacnn_jax.files import records

INDEX_SUFFIX = ".source.json"
DATA_SUFFIXES = (".npys", ".tar")
ABANDONED_SECONDS = 3600  # a temporary file this old is from a write that was killed


def default_cache_dir() -> str:
  """`$XDG_CACHE_HOME/wacnn_jax/datasets`, or `~/.cache/wacnn_jax/datasets`."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "wacnn_jax", "datasets")


def file_name(source: str, key: object, suffix: str) -> str:
  """'<source's base name, without an archive suffix>-<16 hex digits of key>' + suffix."""
  name = os.path.basename(os.path.abspath(os.path.expanduser(str(source))).rstrip(os.sep))
  for archive_suffix in (".tar.gz", ".tgz", ".tar"):
    name = name.removesuffix(archive_suffix)
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
  return f"{name or 'root'}-{digest}{suffix}"


def read_index(path: str) -> dict:
  """The index record at `path`: {"source", "identity", "data", "name", ...}.
  FileNotFoundError when there is none."""
  if not os.path.exists(path):
    raise FileNotFoundError(path)
  return records.read_json(path)


def write_index(path: str, record: dict) -> None:
  atomic.write_atomically(path, json.dumps(record, indent=1, sort_keys=True))


def touch(*paths: str) -> None:
  """Marks `paths` as used now (their modification time); errors ignored."""
  for path in paths:
    try:
      os.utime(path)
    except OSError:
      pass


@dataclasses.dataclass(frozen=True)
class Entry:
  """A data file of the cache folder and the sources it serves."""

  path: str
  size: int  # bytes
  last_used: float  # seconds since the epoch
  sources: tuple[str, ...]  # the sources' paths (absolute), as their indexes record them
  indexes: tuple[str, ...]  # the index files naming it

  @property
  def kind(self) -> str:
    return "decoded images" if self.path.endswith(".npys") else "uncompressed archive"


def _indexes(cache_dir: str) -> dict[str, dict]:
  """{index path: its record} of the folder's readable indexes."""
  found = {}
  for name in os.listdir(cache_dir):
    if name.endswith(INDEX_SUFFIX):
      path = os.path.join(cache_dir, name)
      try:
        found[path] = read_index(path)
      except Exception:  # pylint: disable=broad-except
        continue  # being replaced, or damaged: not counted
  return found


def entries(cache_dir: str) -> list[Entry]:
  """The data files of `cache_dir` with the sources they serve, least recently used first
  ([] when the folder does not exist)."""
  if not os.path.isdir(cache_dir):
    return []
  served: dict[str, list[tuple[str, str]]] = {}
  for index, record in _indexes(cache_dir).items():
    served.setdefault(str(record.get("data")), []).append((index, str(record.get("source"))))
  found = []
  for name in os.listdir(cache_dir):
    if not name.endswith(DATA_SUFFIXES):
      continue
    path = os.path.join(cache_dir, name)
    try:
      stat = os.stat(path)
    except OSError:
      continue
    pairs = served.get(name, [])
    found.append(Entry(path, stat.st_size, stat.st_mtime,
                       tuple(sorted({source for _, source in pairs})),
                       tuple(index for index, _ in pairs)))
  return sorted(found, key=lambda e: e.last_used)


def remove(entry: Entry) -> None:
  """Removes `entry`'s data file and its indexes (those already gone are skipped)."""
  for path in (*entry.indexes, entry.path):
    try:
      os.remove(path)
    except FileNotFoundError:
      pass


def remove_orphans(cache_dir: str) -> None:
  """Removes from `cache_dir` the indexes whose source no longer exists, the data files no
  index names, and the temporary files of writes that stopped more than
  `ABANDONED_SECONDS` ago (errors ignored)."""
  for index, record in _indexes(cache_dir).items():
    source = record.get("source")
    if source and not os.path.exists(source):
      try:
        os.remove(index)
        logging.info("Removed %s from the dataset cache: its source %s no longer exists.",
                     os.path.basename(index), source)
      except OSError:
        pass
  # Read again, just before the data files are listed: an index written meanwhile by another
  # run (before its data file, `cache.read_cached`) keeps that file.
  named = {str(record.get("data")) for record in _indexes(cache_dir).values()}
  for name in os.listdir(cache_dir):
    path = os.path.join(cache_dir, name)
    try:
      if name.endswith(atomic.TEMPORARY_SUFFIX):
        if time.time() - os.stat(path).st_mtime > ABANDONED_SECONDS:
          os.remove(path)
      elif name.endswith(DATA_SUFFIXES) and name not in named:
        os.remove(path)
        logging.info("Removed %s from the dataset cache: no source uses it any more.", name)
    except OSError:
      continue


def megabytes(size: int) -> str:
  return f"{size / 2**20:,.1f} MB" if size < 2**30 else f"{size / 2**30:,.2f} GB"


def enforce_cap(cache_dir: str, max_gb: float | None, keep: str | None = None) -> None:
  """Removes the least recently used data files (never `keep`) until the folder's data
  files total at most `max_gb` GB, one log line each; None or 0: no cap."""
  if not max_gb:
    return
  cap = int(max_gb * 2**30)
  found = entries(cache_dir)
  total = sum(e.size for e in found)
  for entry in found:
    if total <= cap:
      break
    if keep is not None and os.path.abspath(entry.path) == os.path.abspath(keep):
      continue
    remove(entry)
    total -= entry.size
    logging.warning(
        "The dataset cache %s is over its cap of %g GB (data.cache_max_gb): removed %s (%s of "
        "%s, last used %s); it is decoded again when next needed.", cache_dir, max_gb,
        os.path.basename(entry.path), megabytes(entry.size),
        ", ".join(entry.sources) or "no source", time.strftime(
            "%Y-%m-%d %H:%M", time.localtime(entry.last_used)))
