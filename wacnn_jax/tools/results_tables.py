"""The reproduction's results as markdown: per cell, and WA minus the baseline beside the paper.

    write_results("results", grid)   # RESULTS/<table>/README.md, and the summary in the README
                                     # beside RESULTS between its markers

Per cell: the best and final test top-1 (mean ± sample std over the finished
seeds), parameters, FLOPs, epochs, training wall time per seed and device;
per architecture WA minus the baseline with a 95 % Welch t-interval, beside
the paper's reported delta (`PAPER_DELTA`).
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np
from scipy import stats

from wacnn_jax.files import atomic
from wacnn_jax.tools.grid_runs import Cell, Grid, SeedRun, read_grid

# Top-1 gains of WA over the same backbone without attention that the paper
# reports, in percentage points ("-" where it reports none for that table).
PAPER_DELTA = {("cifar10", "mobilenetv2"): 1.26, ("cifar100", "mobilenetv2"): 1.54}


def _mean_std(values: Sequence[float]) -> str:
  if not values:
    return "-"
  if len(values) == 1:
    return f"{100 * values[0]:.2f}"
  return f"{100 * np.mean(values):.2f} ± {100 * np.std(values, ddof=1):.2f}"


def welch_interval(a: Sequence[float], b: Sequence[float], level: float = 0.95):
  """(mean(a) - mean(b), low, high): Welch's t-interval for the difference of means.

  None for the bounds when either sample has fewer than 2 values.
  """
  a, b = np.asarray(a, float), np.asarray(b, float)
  diff = a.mean() - b.mean()
  if len(a) < 2 or len(b) < 2:
    return diff, None, None
  va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
  se = math.sqrt(va + vb)
  if se == 0:
    return diff, diff, diff
  dof = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
  half = stats.t.ppf(0.5 + level / 2, dof) * se
  return diff, diff - half, diff + half


def _cell_columns(cell: Cell, cell_runs: Sequence[SeedRun], seeds: int) -> str:
  return f"| {cell.arch} | {cell.attention} | {sum(r.complete for r in cell_runs)}/{seeds} |"


def _delta_table(grid: Grid, runs: dict) -> list[str]:
  """Per architecture, WA minus the baseline (best top-1) with its Welch interval."""
  lines = ["| arch | WA - none | 95 % interval (Welch) | seeds (WA, none) | paper |",
           "|---|---|---|---|---|"]
  for arch in dict.fromkeys(c.arch for c in grid.cells):
    wa = [r.best for r in runs.get(Cell(arch, "wa"), []) if r.complete]
    base = [r.best for r in runs.get(Cell(arch, "none"), []) if r.complete]
    paper = PAPER_DELTA.get((grid.table, arch))
    paper = f"{paper:+.2f}" if paper is not None else "-"
    if not wa or not base:
      lines.append(f"| {arch} | - | - | {len(wa)}, {len(base)} | {paper} |")
      continue
    diff, low, high = welch_interval(wa, base)
    interval = "-" if low is None else f"[{100 * low:+.2f}, {100 * high:+.2f}]"
    lines.append(f"| {arch} | {100 * diff:+.2f} | {interval} | {len(wa)}, {len(base)} | "
                 f"{paper} |")
  return lines


def results_markdown(grid: Grid, runs: dict) -> str:
  """README.md of RESULTS/<table>: the per-cell table and the WA-minus-baseline deltas."""
  settings = ", ".join(f"`{key}={value}`" for key, value in grid.settings.items())
  lines = [f"# {grid.title}: reproduction of the paper's comparison", "",
           "Written by `python -m wacnn_jax reproduce`: every run trains `configs/default.py` "
           f"(the reference recipe) with {settings}; the reference's published commands "
           "(`train.sh`) train every model at batch size 256. Top-1 test accuracy in percent, "
           "mean ± sample standard deviation over the finished seeds. *best*: the best "
           "epoch of each run (as the reference reports it); *final*: the last epoch.", "",
           "| arch | attention | seeds finished | epochs | best top-1 | final top-1 | "
           "parameters | MFLOPs/image | train time per seed | device |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for cell in grid.cells:
    cell_runs = runs[cell]
    done = [r for r in cell_runs if r.complete]
    first = next((r for r in cell_runs if r.params), None)
    # The finished seeds' epoch counts, then each unfinished seed's progress.
    epochs = ["/".join(map(str, sorted({r.epochs for r in done})))] if done else []
    epochs += [f"seed {r.seed} at {r.epochs}" for r in cell_runs if not r.complete]
    devices = sorted({d for r in cell_runs for d in r.devices})
    lines.append(
        f"{_cell_columns(cell, cell_runs, grid.seeds)} "
        f"{'; '.join(epochs) or '-'} | {_mean_std([r.best for r in done])} | "
        f"{_mean_std([r.final for r in done])} | "
        f"{f'{first.params:,}' if first else '-'} | "
        f"{f'{first.flops / 1e6:.1f}' if first and first.flops else '-'} | "
        f"{f'{np.mean([r.train_seconds for r in done]) / 60:.1f} min' if done else '-'} | "
        f"{', '.join(devices) or '-'} |")
  lines += ["", "## WA minus the baseline (best top-1, percentage points)", ""]
  lines += _delta_table(grid, runs)
  return "\n".join(lines) + "\n"


def summary_markdown(grid: Grid, runs: dict, full_table: str) -> str:
  """The same numbers in short, for the README beside RESULTS; `full_table`: a link to
  RESULTS/<table>/README.md relative to that README."""
  lines = [f"{grid.title}, top-1 test accuracy in percent, mean ± std over the finished "
           f"seeds; the full table with epochs, parameters, FLOPs, times and devices: "
           f"[{full_table}]({full_table}).", "",
           "| arch | attention | seeds finished | best top-1 | final top-1 |",
           "|---|---|---|---|---|"]
  for cell in grid.cells:
    done = [r for r in runs[cell] if r.complete]
    lines.append(f"{_cell_columns(cell, runs[cell], grid.seeds)} "
                 f"{_mean_std([r.best for r in done])} | {_mean_std([r.final for r in done])} |")
  lines += ["", "WA minus the baseline (best top-1, percentage points; the interval needs two "
            "finished seeds in each cell):", ""]
  lines += _delta_table(grid, runs)
  return "\n".join(lines) + "\n"


def summary_markers(table: str) -> tuple[str, str]:
  return f"<!-- reproduce {table} begin -->", f"<!-- reproduce {table} end -->"


def with_summary(readme: str, table: str, summary: str) -> str | None:
  """`readme` with `summary` between the table's markers; None when it has no markers."""
  begin, end = summary_markers(table)
  if begin not in readme or end not in readme:
    return None
  head, rest = readme.split(begin, 1)
  return f"{head}{begin}\n{summary}{end}{rest.split(end, 1)[1]}"


def write_results(results: str, grid: Grid) -> dict:
  """Rewrites RESULTS/<table>/README.md and the summary in the README beside RESULTS (where it
  has the table's markers); returns `read_grid`'s runs."""
  runs = read_grid(results, grid)
  table_readme = os.path.join(results, grid.table, "README.md")
  atomic.write_atomically(table_readme, results_markdown(grid, runs))
  readme = os.path.join(os.path.dirname(os.path.abspath(results)), "README.md")
  if os.path.isfile(readme):
    with open(readme) as f:
      text = with_summary(f.read(), grid.table, summary_markdown(
          grid, runs, os.path.relpath(table_readme, os.path.dirname(readme))))
    if text is not None:
      atomic.write_atomically(readme, text)
  return runs
