"""Training speed of `reproduce`'s levers, measured by the grid's own runs: runs at once, XLA flags.

    python benchmarks/reproduce_rates.py results/cifar10 [MORE_TABLE_FOLDERS ...]

`python -m wacnn_jax reproduce` appends every invocation of a run to its
`reproduce.json`: the device, how many runs trained at the same time
(`--concurrent`), the `--xla_flags`, the epochs before and after, and how long
the run was the only one running (`alone_seconds`). `metrics.jsonl` holds
every epoch's training images/s (its compilation time excluded; a run of
several seeds sums its replicas' rows). Per architecture, device, runs at once and
XLA flags this prints:

- *per run*: the median over invocations of each invocation's median epoch
  rate (its epochs after `epochs_before`, up to `epochs_after`);
- *summed*: N times that, for N runs at once (the machine's training
  throughput);
- *vs one alone*: summed over the per-run rate of runs of the same
  architecture on the same device, one at a time, without extra XLA flags.
  For `--concurrent N` it is the throughput gain; for `--xla_flags` the
  lever's gain.

An invocation of N > 1 runs at once counts only when its run shared the
machine for most of its wall time (`alone_seconds` under half of it); cells of
one architecture (baseline and WA) are pooled. Invocations written before
these fields existed are left out.

A second table gives each run's start-up, per architecture and device: the
first epoch record of an invocation holds `startup_seconds` (the training
process's start to its first epoch: imports, data, model, restore) and
`compile_seconds` (the train step's compilation, or loading it from the
compilation cache), so the runs of the grid measure the start-up of the runs
that follow them (warm dataset and compilation caches) for free.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
from typing import Sequence

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from wacnn_jax.tools import grid_runs


def invocation_rates(table_dir: str) -> list[dict]:
  """One row per recorded invocation of a run under `table_dir` (RESULTS/<table>) that trained
  at least one epoch: arch, device, concurrent, xla_flags, epochs, rate."""
  rows = []
  for cell in sorted(os.listdir(table_dir)):
    cell_dir = os.path.join(table_dir, cell)
    for run in sorted(os.listdir(cell_dir)) if os.path.isdir(cell_dir) else []:
      replicas = grid_runs.read_run(os.path.join(cell_dir, run))
      if not re.fullmatch(r"seed\d+|seeds\d+-\d+", run) or not replicas:
        continue
      epochs = {}  # epoch: training images/s, summed over replicas
      first = {}  # epoch: replica 0's record (its start-up and compile times)
      for record in (r for replica in replicas for r in replica.records):
        epochs[record["epoch"]] = epochs.get(record["epoch"], 0.0) + record["images_per_sec"]
        first.setdefault(record["epoch"], record)
      for invocation in replicas[0].invocations:
        if "epochs_before" not in invocation:
          continue
        concurrent = invocation["concurrent"]
        if concurrent > 1 and invocation["alone_seconds"] >= invocation["wall_seconds"] / 2:
          continue
        rates = [rate for epoch, rate in epochs.items()
                 if invocation["epochs_before"] < epoch <= invocation["epochs_after"]]
        if rates:
          opening = first.get(invocation["epochs_before"] + 1, {})
          rows.append({"arch": replicas[0].config["model"]["arch"],
                       "device": invocation["device"], "concurrent": concurrent,
                       "xla_flags": invocation["xla_flags"], "epochs": len(rates),
                       "rate": statistics.median(rates),
                       "startup_seconds": opening.get("startup_seconds"),
                       "compile_seconds": opening.get("compile_seconds")})
  return rows


def rates_table(rows: Sequence[dict]) -> str:
  """The markdown table of the module docstring."""
  groups = {}
  for row in rows:
    key = (row["arch"], row["device"], row["concurrent"], row["xla_flags"])
    groups.setdefault(key, []).append(row)
  lines = ["| arch | device | runs at once | XLA flags | invocations | epochs | "
           "images/s per run | images/s summed | vs one alone |",
           "|---|---|---|---|---|---|---|---|---|"]
  for (arch, device, concurrent, flags), group in sorted(groups.items()):
    per_run = statistics.median(r["rate"] for r in group)
    alone = groups.get((arch, device, 1, ""))
    ratio = "-"
    if alone:
      ratio = f"{concurrent * per_run / statistics.median(r['rate'] for r in alone):.2f}x"
    lines.append(f"| {arch} | {device} | {concurrent} | {f'`{flags}`' if flags else '-'} | "
                 f"{len(group)} | {sum(r['epochs'] for r in group)} | {per_run:,.0f} | "
                 f"{concurrent * per_run:,.0f} | {ratio} |")
  return "\n".join(lines) + "\n"


def startup_table(rows: Sequence[dict]) -> str:
  """Start-up per architecture and device (invocations that recorded it): the medians and
  ranges of `startup_seconds` and of the first epoch's `compile_seconds`."""
  groups = {}
  for row in rows:
    if row.get("startup_seconds") is not None:
      groups.setdefault((row["arch"], row["device"]), []).append(row)
  lines = ["| arch | device | invocations | process start to first epoch, s | "
           "first epoch's compile, s | sum of the medians, s |", "|---|---|---|---|---|---|"]

  for (arch, device), group in sorted(groups.items()):
    cells, total = [], 0.0
    for key in ("startup_seconds", "compile_seconds"):
      values = [r[key] for r in group]
      median = statistics.median(values)
      cells.append(f"{median:.1f} ({min(values):.1f}-{max(values):.1f})")
      total += median
    lines.append(f"| {arch} | {device} | {len(group)} | {cells[0]} | {cells[1]} | "
                 f"{total:.1f} |")
  return "\n".join(lines) + "\n" if groups else ""


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("tables", nargs="+", help="RESULTS/<table> folders, e.g. results/cifar10")
  args = parser.parse_args(argv)
  missing = [t for t in args.tables if not os.path.isdir(t)]
  if missing:
    sys.stderr.write(f"error: {missing[0]} is not a folder; give RESULTS/<table> folders of "
                     "`python -m wacnn_jax reproduce`, e.g. results/cifar10.\n")
    return 2
  rows = [row for table in args.tables for row in invocation_rates(table)]
  print(rates_table(rows), end="")
  startup = startup_table(rows)
  if startup:
    print("\n" + startup, end="")
  return 0


if __name__ == "__main__":
  sys.exit(main())
