"""JAX's persistent compilation cache: programs compiled once, loaded by later processes.

    compilation_cache.enable(config.compilation_cache_dir)   # before the first compilation

Every run compiles the same programs when it starts: the model's
initialisation, the train step and the evaluation (resnet18: 12 s on an
H100, 26 s on an H200, over a minute on a 2-core CPU). With the cache on,
JAX writes each compiled executable to a folder and a later process loads
it instead of compiling. JAX keys an entry by the whole program (its HLO,
constants such as the learning-rate schedule included), the compile options
(`steps.compiler_options()`), the devices and the JAX/XLA version, so a
changed config or JAX compiles anew. The seed is not in any program (random
keys and the data order are arguments), so all seeds of a configuration
share its entries.

It is on for every command and for `train_and_evaluate` called from Python
(a notebook): `enable(config.compilation_cache_dir)`, where None (the
default) is `default_dir()` and '' turns it off (JAX's own settings then
apply: `JAX_COMPILATION_CACHE_DIR`, if set). On a 2-core CPU it takes the
train step's compilation from 6.2 to 1.4 s, and a second identical run to
its first step in 26 % of the first's time, the dataset cache included
(`benchmarks/startup.py`, docs/benchmarks.md). `python -m wacnn_jax cache` lists and clears
it with the dataset caches. Every program is kept, however short its compilation (`MIN_COMPILE_SECONDS` = 0,
where JAX's `jax_persistent_cache_min_compile_time_secs` defaults to 1 s;
`JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS` in the environment wins): besides
its three large programs a run compiles some 90 small ones (array
creation, random keys, metrics), and loading those too made a warm start
4 s shorter on a 2-core CPU, for 1.2 MB of cache (resnet18).

The folder must be trusted (JAX runs the executables it finds there), and
JAX evicts nothing from it: it grows with every new configuration and
version; deleting it (`python -m wacnn_jax cache --clear`) is always safe.
"""

from __future__ import annotations

import dataclasses
import os

from absl import logging
import jax
from jax.experimental.compilation_cache import compilation_cache as jax_compilation_cache

MIN_COMPILE_SECONDS = 0.0


def default_dir() -> str:
  """The per-machine folder: `$JAX_COMPILATION_CACHE_DIR` if set, else
  `$XDG_CACHE_HOME/wacnn_jax/xla` (`~/.cache/wacnn_jax/xla`)."""
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return os.environ["JAX_COMPILATION_CACHE_DIR"]
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "wacnn_jax", "xla")


def enable(directory: str | None = None) -> str | None:
  """Keeps compiled programs in `directory` (None: `default_dir()`) from now on; '' changes
  nothing.

  Call it before the first compilation that should be cached. Returns the
  absolute folder, or None when the cache stays as it was ('', or a folder
  that cannot be created: a warning, and the run compiles as usual).
  """
  if directory == "":
    return None
  if directory is None:
    directory = default_dir()
  directory = os.path.abspath(os.path.expanduser(directory))
  try:
    os.makedirs(directory, exist_ok=True)
  except OSError as e:
    logging.warning("Cannot use the compilation cache %s (%s); compiling without it. Set "
                    "--config.compilation_cache_dir to a writable folder, or '' for none.",
                    directory, e)
    return None
  previous = jax.config.jax_compilation_cache_dir
  if previous != directory:
    jax.config.update("jax_compilation_cache_dir", directory)
    if previous:  # JAX opened the old folder at its first compilation: open the new one
      jax_compilation_cache.reset_cache()
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
  logging.info("Compilation cache: %s (compilation_cache_dir).", directory)
  return directory


@dataclasses.dataclass(frozen=True)
class Program:
  """A compiled program kept in the cache folder."""

  path: str
  size: int  # bytes
  last_used: float  # seconds since the epoch: the file's last access or write


def programs(directory: str) -> list[Program]:
  """The compiled programs in `directory` (JAX's `<name>-<hash>-cache` files, with their
  `-atime` files where JAX keeps them), least recently used first; [] without the folder."""
  if not os.path.isdir(directory):
    return []
  found = []
  for name in os.listdir(directory):
    if not name.endswith("-cache"):
      continue
    path = os.path.join(directory, name)
    try:
      stat = os.stat(path)
    except OSError:
      continue
    found.append(Program(path, stat.st_size, max(stat.st_atime, stat.st_mtime)))
  return sorted(found, key=lambda p: p.last_used)


def remove(program: Program) -> None:
  """Removes `program` and JAX's access-time file beside it, if any."""
  for path in (program.path, program.path[:-len("-cache")] + "-atime"):
    try:
      os.remove(path)
    except FileNotFoundError:
      pass
