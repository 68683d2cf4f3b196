"""`python -m wacnn_jax cache`: what the caches hold (decoded datasets, compiled programs); removal.

    python -m wacnn_jax cache                       # list: source, size, last use
    python -m wacnn_jax cache --older_than=30       # remove what was not used for 30 days
    python -m wacnn_jax cache --clear               # remove everything in both caches

The dataset cache (`data.cache_dir`; `data.cache`, `data.cache_folder`)
holds decoded image folders and archives, and compressed archives
decompressed for streaming; the compilation cache
(`compilation_cache_dir`; `training.compilation_cache`) holds JAX's compiled
programs. Both are rebuilt when needed, so removing entries is always safe;
a run using an entry while it is removed keeps its open copy. A folder that
does not exist is reported as empty and not created.
"""

from __future__ import annotations

import os
import time

from absl import flags

from wacnn_jax.data import cache_folder
from wacnn_jax.tools import command_line
from wacnn_jax.training import compilation_cache

DAY_SECONDS = 86400.0


def define_flags(fv: flags.FlagValues, argv: list[str]) -> None:
  del argv
  flags.DEFINE_string("cache_dir", cache_folder.default_cache_dir(),
                      "The dataset cache folder (a run's data.cache_dir).", flag_values=fv)
  flags.DEFINE_string("compilation_cache_dir", compilation_cache.default_dir(),
                      "The compiled programs' folder (a run's compilation_cache_dir).",
                      flag_values=fv)
  flags.DEFINE_boolean("clear", False, "Remove every entry of both caches.", flag_values=fv)
  flags.DEFINE_float("older_than", None, "Remove the entries last used more than this many "
                     "days ago.", lower_bound=0.0, flag_values=fv)


def when(seconds: float) -> str:
  return time.strftime("%Y-%m-%d %H:%M", time.localtime(seconds))


def describe(cache_dir: str, programs_dir: str) -> list[str]:
  """The listing: one line per dataset entry, one for the compiled programs."""
  entries = cache_folder.entries(cache_dir)
  lines = [f"dataset cache {cache_dir}: "
           + (f"{len(entries)} entries, {cache_folder.megabytes(sum(e.size for e in entries))}"
              if entries else "empty")]
  for entry in reversed(entries):  # most recently used first
    sources = ", ".join(entry.sources) or "(no source: removed when a run next writes)"
    lines.append(f"  {cache_folder.megabytes(entry.size):>10}  last used {when(entry.last_used)}"
                 f"  {entry.kind}: {sources}")
  programs = compilation_cache.programs(programs_dir)
  lines.append(f"compiled programs {programs_dir}: " + (
      f"{len(programs)}, {cache_folder.megabytes(sum(p.size for p in programs))}, last used "
      f"{when(programs[-1].last_used)}" if programs else "empty"))
  return lines


def remove_entries(cache_dir: str, programs_dir: str, older_than_days: float | None) -> str:
  """Removes every entry (`older_than_days` None) or those last used longer ago; the line
  that says what went."""
  cutoff = (float("inf") if older_than_days is None
            else time.time() - older_than_days * DAY_SECONDS)
  entries = [e for e in cache_folder.entries(cache_dir) if e.last_used < cutoff]
  for entry in entries:
    cache_folder.remove(entry)
  programs = [p for p in compilation_cache.programs(programs_dir) if p.last_used < cutoff]
  for program in programs:
    compilation_cache.remove(program)
  which = "" if older_than_days is None else f" last used more than {older_than_days:g} days ago"
  return (f"removed {len(entries)} dataset cache entries "
          f"({cache_folder.megabytes(sum(e.size for e in entries))}) from {cache_dir} and "
          f"{len(programs)} compiled programs "
          f"({cache_folder.megabytes(sum(p.size for p in programs))}) from {programs_dir}{which}.")


def run(fv: flags.FlagValues, args: list[str]) -> int:
  del args
  if fv.clear and fv.older_than is not None:
    command_line.exit_with_usage_error("give --clear or --older_than, not both.")
  cache_dir = os.path.abspath(os.path.expanduser(fv.cache_dir))
  programs_dir = os.path.abspath(os.path.expanduser(fv.compilation_cache_dir))
  if fv.clear or fv.older_than is not None:
    print(remove_entries(cache_dir, programs_dir, fv.older_than))
  print("\n".join(describe(cache_dir, programs_dir)))
  return 0


COMMAND = command_line.Command(define_flags, run)
