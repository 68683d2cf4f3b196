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

`train_and_evaluate` and `evaluate_checkpoint` call `enable` with
`config.compilation_cache_dir`: '' (the default) leaves JAX's own settings
(`JAX_COMPILATION_CACHE_DIR`, if set, still applies); `reproduce`, which
runs the same programs for every seed, passes `default_dir()`. Every
program is kept, however short its compilation (`MIN_COMPILE_SECONDS` = 0,
where JAX's `jax_persistent_cache_min_compile_time_secs` defaults to 1 s;
`JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS` in the environment wins): besides
its three large programs a run compiles some 90 small ones (array
creation, random keys, metrics), and loading those too made a warm start
4 s shorter on a 2-core CPU, for 1.2 MB of cache (resnet18).

The folder must be trusted (JAX runs the executables it finds there), and
JAX evicts nothing from it: it grows with every new configuration and
version; deleting it is always safe.
"""

from __future__ import annotations

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


def enable(directory: str | None) -> str | None:
  """Keeps compiled programs in `directory` from now on; '' or None changes nothing.

  Call it before the first compilation that should be cached. Returns the
  absolute folder, or None when the cache stays as it was (off, or a folder
  that cannot be created: a warning, and the run compiles as usual).
  """
  if not directory:
    return None
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
