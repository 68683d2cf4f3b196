"""Compare training runs: a markdown table (the paper's tables) and training-curve plots.

    python -m wacnn_jax report runs/r18 runs/r18_wa runs/r18_wa_seed1 [--out report]

Reads each workdir's `config.json`, `metrics.jsonl`, `model_summary.json` and,
when present, `eval.json` (from `python -m wacnn_jax evaluate`). A workdir trained
with `num_seeds` = R > 1 holds R runs, replica k being the run of seed
`seed + k` (its rows of metrics.jsonl and its entry of eval.json's
"replicas"); they are named `<workdir> (replica k)` and count exactly as
separate runs of those seeds would. Writes to `--out`:

- `report.md`: one row per run (arch, attention, dataset, seed, parameters,
  FLOPs per image, epochs, best and final test top-1, the evaluated
  checkpoint's top-1/top-5 and its noise-robustness accuracies), then one row
  per configuration with the mean ± sample standard deviation over the runs
  that share it. Runs share a configuration when their configs are equal
  except for `seed`, `num_seeds` and the settings that do not change the
  result (IGNORED_KEYS: evaluation options, logging, checkpointing, data
  location, multi-process setup).
- `curves.png`: test accuracy and test loss against the epoch, one line per run.
- `noise.png` (when an eval.json has a noise sweep): top-1 against strength.

Accuracies are in percent.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from typing import Sequence

from absl import flags
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
import numpy as np

from wacnn_jax.files import records
from wacnn_jax.tools import command_line
from wacnn_jax.tools import failures

# Config keys that do not define the experiment: runs that differ only in these
# (and the seed) are repetitions of one configuration.
IGNORED_KEYS = ("seed", "num_seeds", "mode", "checkpoint_step", "eval", "log_every_steps",
                "keep_checkpoints", "checkpoint_every_epochs", "distributed",
                "coordinator_address", "num_processes", "process_id",
                "initialization_timeout", "heartbeat_timeout",
                "steps_per_dispatch", "data.data_dir", "data.download",
                "data.allow_missing_classes", "data.cache_dir", "data.cache_max_gb",
                "compilation_cache_dir")


@dataclasses.dataclass
class Run:
  """One trained model: a workdir's replica (its config's `seed` is the replica's)."""

  workdir: str
  name: str
  config: dict
  metrics: list
  summary: dict | None = None
  evaluation: dict | None = None

  @property
  def arch(self) -> str:
    return self.config["model"]["arch"]

  @property
  def attention(self) -> str:
    """The attention spec as the run's config has it, e.g. "wa" or "se(reduction=8)"."""
    return self.config["model"]["attention"]

  @property
  def dataset(self) -> str:
    data = self.config["data"]
    folder = data.get("image_folder")
    return os.path.basename(str(folder).rstrip("/")) if folder else data["dataset"]

  @property
  def seed(self):
    return self.config.get("seed")

  @property
  def epochs(self) -> int:
    return self.metrics[-1]["epoch"] if self.metrics else 0

  @property
  def best_accuracy(self) -> float:
    return max(max(r["test_accuracy"] for r in self.metrics),
               self.metrics[-1].get("best_test_accuracy", 0.0))

  @property
  def final_accuracy(self) -> float:
    return self.metrics[-1]["test_accuracy"]

  @property
  def params(self):
    return (self.summary or {}).get("params")

  @property
  def flops(self):
    return (self.summary or {}).get("flops_per_image")

  @property
  def noise(self) -> dict:
    """{(corruption, strength): top-1} of the evaluated checkpoint."""
    rows = (self.evaluation or {}).get("noise") or []
    return {(r["corruption"], float(r["strength"])): r["accuracy"] for r in rows}

  def group_key(self) -> str:
    return json.dumps(_without(self.config, IGNORED_KEYS), sort_keys=True)


def _without(config: dict, keys: Sequence[str]) -> dict:
  config = json.loads(json.dumps(config))
  for key in keys:
    *parents, leaf = key.split(".")
    target = config
    for parent in parents:
      target = target.get(parent, {}) if isinstance(target, dict) else {}
    if isinstance(target, dict):
      target.pop(leaf, None)
  return config


def load_run(workdir: str, name: str | None = None) -> list[Run]:
  """Reads a workdir: one Run per replica; ValueError when it has no config.json or
  metrics.jsonl, or one cannot be read (`records`: a torn last line is dropped)."""
  workdir = os.path.expanduser(workdir)
  paths = {k: os.path.join(workdir, k) for k in
           ("config.json", "metrics.jsonl", "model_summary.json", "eval.json")}
  for required in ("config.json", "metrics.jsonl"):
    if not os.path.exists(paths[required]):
      raise ValueError(f"{workdir!r} has no {required}: pass the --workdir of a "
                       "training run (python run_train.py ... --workdir DIR).")
  metrics = records.read_json_lines(paths["metrics.jsonl"])
  if not metrics:
    raise ValueError(f"{paths['metrics.jsonl']} is empty: the run has not finished an epoch.")
  optional = {k: records.read_json(paths[k], default=None)
              for k in ("model_summary.json", "eval.json")}
  config = records.read_json(paths["config.json"])
  name = name or os.path.basename(os.path.abspath(workdir))
  replicas = config["num_seeds"]
  evaluation = optional["eval.json"]
  return [Run(workdir=workdir, name=name if replicas == 1 else f"{name} (replica {k})",
              config=dict(config, seed=config["seed"] + k),
              metrics=[r for r in metrics if r["replica"] == k],
              summary=optional["model_summary.json"],
              evaluation=evaluation["replicas"][k] if evaluation else None)
          for k in range(replicas)]


def load_runs(workdirs: Sequence[str]) -> list[Run]:
  """Loads the runs (all replicas of each workdir), naming each by its folder (or its path,
  where folder names repeat)."""
  names = [os.path.basename(os.path.abspath(w)) for w in workdirs]
  if len(set(names)) < len(names):
    common = os.path.commonpath([os.path.abspath(w) for w in workdirs])
    names = [os.path.relpath(os.path.abspath(w), os.path.dirname(common)) for w in workdirs]
  return [run for w, n in zip(workdirs, names) for run in load_run(w, n)]


# ---------------------------------------------------------------------------
# Tables.
# ---------------------------------------------------------------------------


def _percent(value) -> str:
  return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def _mean_std(values: Sequence[float]) -> str:
  values = [v for v in values if v is not None]
  if not values:
    return "–"
  if len(values) == 1:
    return _percent(values[0])
  return f"{100 * np.mean(values):.2f} ± {100 * np.std(values, ddof=1):.2f}"


def _count(value) -> str:
  return "–" if value is None else f"{int(value):,}"


def _mflops(value) -> str:
  return "–" if value is None or not math.isfinite(value) else f"{value / 1e6:.1f}M"


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


# Column order of the corruptions (evaluate.CORRUPTIONS' order); others follow by name.
CORRUPTION_ORDER = ("gaussian", "salt_pepper", "blur")


def noise_columns(runs: Sequence[Run]) -> list[tuple[str, float]]:
  """(corruption, strength) pairs of all runs' eval.json, in a stable order."""
  keys = {key for run in runs for key in run.noise}
  rank = lambda name: (CORRUPTION_ORDER.index(name) if name in CORRUPTION_ORDER
                       else len(CORRUPTION_ORDER), name)
  return sorted(keys, key=lambda k: (rank(k[0]), k[1]))


def _noise_header(key) -> str:
  return f"{key[0]} {key[1]:g}"


def runs_table(runs: Sequence[Run]) -> str:
  """One row per run."""
  noise = noise_columns(runs)
  header = ["run", "arch", "attention", "dataset", "seed", "params", "FLOPs", "epochs",
            "best top-1 (%)", "final top-1 (%)", "eval top-1 (%)", "eval top-5 (%)"]
  header += [f"{_noise_header(k)} (%)" for k in noise]
  rows = []
  for run in runs:
    ev = run.evaluation or {}
    rows.append([run.name, run.arch, run.attention, run.dataset, run.seed,
                 _count(run.params), _mflops(run.flops), run.epochs,
                 _percent(run.best_accuracy), _percent(run.final_accuracy),
                 _percent(ev.get("accuracy")), _percent(ev.get("top5_accuracy"))]
                + [_percent(run.noise.get(k)) for k in noise])
  return _markdown(header, rows)


def group_runs(runs: Sequence[Run]) -> list[list[Run]]:
  """Runs grouped by configuration (equal except for seed and IGNORED_KEYS), in first-seen order."""
  groups: dict[str, list[Run]] = {}
  for run in runs:
    groups.setdefault(run.group_key(), []).append(run)
  return list(groups.values())


def groups_table(runs: Sequence[Run]) -> str:
  """One row per configuration: mean ± sample std (ddof 1) over its runs."""
  noise = noise_columns(runs)
  header = ["arch", "attention", "dataset", "runs", "seeds", "params", "FLOPs",
            "best top-1 (%)", "final top-1 (%)"]
  header += [f"{_noise_header(k)} (%)" for k in noise]
  rows = []
  for group in group_runs(runs):
    first = group[0]
    rows.append([first.arch, first.attention, first.dataset, len(group),
                 ", ".join(str(r.seed) for r in group), _count(first.params),
                 _mflops(first.flops), _mean_std([r.best_accuracy for r in group]),
                 _mean_std([r.final_accuracy for r in group])]
                + [_mean_std([r.noise.get(k) for r in group]) for k in noise])
  return _markdown(header, rows)


# ---------------------------------------------------------------------------
# Plots.
# ---------------------------------------------------------------------------


def curves_figure(runs: Sequence[Run]) -> Figure:
  """Test accuracy and test loss against the epoch, one line per run."""
  fig = Figure(figsize=(11, 4), layout="constrained")
  accuracy_ax, loss_ax = fig.subplots(1, 2)
  for run in runs:
    epochs = [r["epoch"] for r in run.metrics]
    accuracy_ax.plot(epochs, [100 * r["test_accuracy"] for r in run.metrics], marker=".",
                     label=run.name)
    loss_ax.plot(epochs, [r["test_loss"] for r in run.metrics], marker=".", label=run.name)
  accuracy_ax.set(xlabel="epoch", ylabel="test top-1 accuracy (%)", title="Test accuracy")
  loss_ax.set(xlabel="epoch", ylabel="test loss", title="Test loss")
  for ax in (accuracy_ax, loss_ax):
    ax.grid(alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  accuracy_ax.legend(fontsize=8)
  return fig


def noise_figure(runs: Sequence[Run]) -> Figure | None:
  """Top-1 against corruption strength, one panel per corruption, one line per run."""
  corruptions = list(dict.fromkeys(k[0] for k in noise_columns(runs)))
  if not corruptions:
    return None
  fig = Figure(figsize=(4.5 * len(corruptions), 3.8), layout="constrained")
  axes = np.atleast_1d(fig.subplots(1, len(corruptions)))
  for ax, name in zip(axes, corruptions):
    for run in runs:
      points = sorted((s, a) for (c, s), a in run.noise.items() if c == name)
      if points:
        ax.plot([p[0] for p in points], [100 * p[1] for p in points], marker="o",
                label=run.name)
    ax.set(xlabel="strength", ylabel="test top-1 accuracy (%)", title=name)
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8)
  return fig


# ---------------------------------------------------------------------------
# The report.
# ---------------------------------------------------------------------------


def make_report(workdirs: Sequence[str], out: str = "report") -> dict:
  """Writes report.md, curves.png (and noise.png) to `out`; returns {markdown, paths}."""
  if not workdirs:
    raise ValueError("give at least one training workdir.")
  runs = load_runs(workdirs)
  os.makedirs(out, exist_ok=True)
  paths = {"curves": os.path.join(out, "curves.png")}
  curves_figure(runs).savefig(paths["curves"], dpi=100)
  figure = noise_figure(runs)
  if figure is not None:
    paths["noise"] = os.path.join(out, "noise.png")
    figure.savefig(paths["noise"], dpi=100)
  markdown = "\n".join([
      "# wacnn_jax runs", "",
      "## Runs", "", runs_table(runs), "",
      "## Mean ± std over seeds", "",
      "Runs whose configs differ only in the seed (and in settings that do not "
      "change the result) are one configuration, whether they are replicas of one "
      "workdir (num_seeds) or separate workdirs; ± is the sample standard "
      "deviation over its runs (noise columns: over its evaluated runs).", "",
      groups_table(runs), "",
      "## Training curves", "", "![training curves](curves.png)", ""]
      + (["## Noise robustness", "", "![noise robustness](noise.png)", ""]
         if "noise" in paths else []))
  paths["markdown"] = os.path.join(out, "report.md")
  with open(paths["markdown"], "w") as f:
    f.write(markdown)
  return {"markdown": markdown, "paths": paths, "runs": runs}


def print_report(workdirs: Sequence[str], out: str) -> int:
  """`python -m wacnn_jax report`: `make_report`, printed; the exit code."""
  try:
    result = make_report(workdirs, out)
  except (ValueError, OSError) as e:
    sys.stderr.write(f"error: {e}\n")
    return 1
  print(result["markdown"])
  print(f"wrote {', '.join(result['paths'].values())}")
  return 0


def define_flags(fv: flags.FlagValues, argv: list[str]) -> None:
  del argv
  flags.DEFINE_string("out", "report", "Output folder.", flag_values=fv)


def run(fv: flags.FlagValues, args: list[str]) -> int:
  if not args:
    command_line.exit_with_usage_error("report: name one or more training workdirs.")
  return failures.print_error(lambda: print_report(args, fv.out))


COMMAND = command_line.Command(define_flags, run, positional="WORKDIR ...")
