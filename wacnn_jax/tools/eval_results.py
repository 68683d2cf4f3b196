"""An evaluation's results: combined over replicas, printed, and merged with an earlier eval.json.

    result = {**mean_over_replicas(replicas), "replicas": replicas, ...}
    print(format_results(result))
    merged, kept = merge_with_earlier(result, read_earlier(path))
"""

from __future__ import annotations

import json
from typing import Sequence

from absl import logging
import numpy as np

from wacnn_jax.tools import corruptions

# The per-replica numbers that are averaged over the replicas.
AVERAGED = ("loss", "accuracy", "top5_accuracy")


def averaged(rows: Sequence[dict]) -> dict:
  """The AVERAGED keys of `rows` (one per replica): means, and `<key>_std` the
  sample standard deviation (ddof 1; None for one row)."""
  averaged = {}
  for key in AVERAGED:
    values = [row[key] for row in rows]
    averaged[key] = float(np.mean(values))
    averaged[f"{key}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else None
  return averaged


def mean_over_replicas(replicas: Sequence[dict]) -> dict:
  """The replicas' results combined.

  `loss`, `accuracy`, `top5_accuracy`: means, with `<name>_std` the sample
  standard deviation (None for one replica); `count` is the test set's size;
  `confusion` sums the replicas' matrices (so it counts R x count predictions)
  and `per_class_accuracy` is its diagonal over the row sums, the mean of the
  replicas' per-class accuracies. With one replica these are its own numbers.
  """
  combined = averaged(replicas)
  confusion = np.sum([r["confusion"] for r in replicas], axis=0)
  with np.errstate(invalid="ignore", divide="ignore"):
    per_class = np.diag(confusion) / confusion.sum(axis=1)
  combined.update(count=replicas[0]["count"], per_class_accuracy=per_class.tolist(),
                  confusion=confusion.tolist())
  return combined


def _plus_minus(std: float | None) -> str:
  return "" if std is None else f" ± {std:.4f}"


def noise_table(rows: Sequence[dict], clean_accuracy: float | None = None) -> str:
  """The sweep as a fixed-width text table (top-1 ± its `accuracy_std` where a row has one)."""
  lines = [f"noise robustness{'' if clean_accuracy is None else f' (clean top-1 {clean_accuracy:.4f})'}:",
           f"  {'corruption':<12} {'strength':>8} {'top-1':>16} {'top-5':>7} {'loss':>8}"]
  for row in rows:
    top1 = f"{row['accuracy']:.4f}{_plus_minus(row.get('accuracy_std'))}"
    lines.append(f"  {row['corruption']:<12} {row['strength']:>8g} {top1:>16} "
                 f"{row['top5_accuracy']:>7.4f} {row['loss']:>8.4f}")
  return "\n".join(lines)


def format_results(result: dict) -> str:
  """Printable summary: headline numbers, per-class accuracy, confusion matrix, noise table."""
  names = result["class_names"]
  width = max(5, min(10, max(len(n) for n in names)))
  short = [n[:width] for n in names]
  source = (f"weights {result['pretrained']} (epoch {result.get('epoch')})"
            if "pretrained" in result else
            f"checkpoint {result['step']} (epoch {result.get('epoch')}) of {result['workdir']}")
  lines = [
      f"{source}: {result['count']} test images of {result['dataset']}",
      f"top-1 accuracy {result['accuracy']:.4f}{_plus_minus(result['accuracy_std'])}   "
      f"top-5 accuracy {result['top5_accuracy']:.4f}{_plus_minus(result['top5_accuracy_std'])}"
      f"   loss {result['loss']:.4f}{_plus_minus(result['loss_std'])}"]
  for replica in result["replicas"]:
    lines.append(f"  replica {replica['replica']} (seed {replica['seed']}): top-1 "
                 f"{replica['accuracy']:.4f}   top-5 {replica['top5_accuracy']:.4f}   "
                 f"loss {replica['loss']:.4f}")
  lines.append(f"per-class accuracy{' (mean over replicas)' if len(result['replicas']) > 1 else ''}:")
  for name, accuracy in zip(names, result["per_class_accuracy"]):
    lines.append(f"  {name:<{width}} {accuracy:.4f}" if accuracy == accuracy
                 else f"  {name:<{width}} (no examples)")
  if len(names) <= 20:
    lines.append("confusion matrix (rows: true class, columns: predicted"
                 f"{'; summed over replicas' if len(result['replicas']) > 1 else ''}):")
    lines.append(" " * (width + 2) + " ".join(f"{n:>{width}}" for n in short))
    for name, row in zip(short, result["confusion"]):
      lines.append(f"  {name:<{width}}" + " ".join(f"{v:>{width}d}" for v in row))
  if "noise" in result:
    lines.append(noise_table(result["noise"], result["accuracy"]))
  return "\n".join(lines)


# What must agree for an earlier eval.json's noise rows to be kept beside new results.
SAME_EVALUATION = ("step", "dataset", "count", "class_names", "model")


def _noise_order(row: dict) -> tuple:
  names = list(corruptions.CORRUPTIONS)
  return (names.index(row["corruption"]) if row["corruption"] in names else len(names),
          row["corruption"], row["strength"])


def _merged_rows(earlier: Sequence[dict], new: Sequence[dict]) -> list[dict]:
  """`new` noise rows plus those of `earlier` at other (corruption, strength), in sweep order."""
  recomputed = {(row["corruption"], row["strength"]) for row in new}
  kept = [row for row in earlier if (row["corruption"], row["strength"]) not in recomputed]
  return sorted(kept + list(new), key=_noise_order)


def merge_with_earlier(result: dict, earlier: dict | None) -> tuple[dict, int]:
  """`result` with what the workdir's earlier eval.json holds and this evaluation did not
  recompute: noise rows (per replica too) and figures. Returns (merged, rows kept).

  Only an evaluation of the same checkpoint on the same test set and model
  (SAME_EVALUATION, and as many replicas) is merged; otherwise `result` replaces it.
  """
  if not earlier or len(earlier.get("replicas", [])) != len(result["replicas"]) or any(
      earlier.get(key) != result.get(key) for key in SAME_EVALUATION):
    return result, 0
  merged = dict(result)
  kept = len(_merged_rows(earlier.get("noise", []), result.get("noise", []))) - len(
      result.get("noise", []))
  if earlier.get("noise"):
    merged["noise"] = _merged_rows(earlier["noise"], result.get("noise", []))
    merged["noise_convention"] = corruptions.NOISE_CONVENTION
    merged["replicas"] = [
        dict(replica, noise=_merged_rows(old.get("noise", []), replica.get("noise", [])))
        for replica, old in zip(result["replicas"], earlier["replicas"])]
  figures = list(dict.fromkeys(earlier.get("figures", []) + result.get("figures", [])))
  if figures:
    merged["figures"] = figures
  return merged, kept


def read_earlier(path: str) -> dict | None:
  """The eval.json at `path`, or None (none yet, or unreadable: then it is replaced)."""
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    return None
  except (OSError, ValueError) as e:
    logging.warning("%s cannot be read (%s); it is replaced.", path, e)
    return None
