"""`wacnn_jax.tools.report`: the comparison table and training-curve plots of real runs."""

import json
import os

import numpy as np
from PIL import Image

from wacnn_jax import cli
from wacnn_jax.tools import report



def table_rows(markdown: str, heading: str) -> list[list[str]]:
  """Body rows of the markdown table under `## heading`."""
  section = markdown.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
  lines = [l for l in section.splitlines() if l.startswith("|")]
  header = [c.strip() for c in lines[0].strip("|").split("|")]
  return header, [[c.strip() for c in l.strip("|").split("|")] for l in lines[2:]]


def test_baseline_and_wa(evaluated_wa_run, smoke_baseline_run, tmp_path):
  wa_run, evaluation, _ = evaluated_wa_run
  out = str(tmp_path / "report")
  result = report.make_report([smoke_baseline_run.workdir, wa_run.workdir], out)
  header, rows = table_rows(result["markdown"], "Runs")
  assert [r[header.index("attention")] for r in rows] == ["none", "wa"]
  assert all(r[header.index("arch")] == "resnet18" for r in rows)
  assert rows[1][header.index("run")] == "wa_seed0"

  for run, row in zip((smoke_baseline_run, wa_run), rows):
    records = [json.loads(l) for l in open(os.path.join(run.workdir, "metrics.jsonl"))]
    summary = json.load(open(os.path.join(run.workdir, "model_summary.json")))
    assert row[header.index("final top-1 (%)")] == f"{100 * records[-1]['test_accuracy']:.2f}"
    assert row[header.index("best top-1 (%)")] == (
        f"{100 * max(r['test_accuracy'] for r in records):.2f}")
    assert row[header.index("params")] == f"{summary['params']:,}"
    assert row[header.index("FLOPs")] == f"{summary['flops_per_image'] / 1e6:.1f}M"
    assert row[header.index("dataset")] == os.path.basename(run.config.data.image_folder)
    assert row[header.index("epochs")] == "2"
  # The WA ResNet has exactly the baseline's parameters (the reference's property).
  assert rows[0][header.index("params")] == rows[1][header.index("params")]

  # Noise columns come from the WA run's eval.json; the baseline has none.
  noisy = {f"{r['corruption']} {r['strength']:g} (%)": r["accuracy"] for r in evaluation["noise"]}
  assert set(noisy) <= set(header)
  for column, accuracy in noisy.items():
    assert rows[1][header.index(column)] == f"{100 * accuracy:.2f}"
    assert rows[0][header.index(column)] == "–"
  assert rows[1][header.index("eval top-1 (%)")] == f"{100 * evaluation['accuracy']:.2f}"

  _, groups = table_rows(result["markdown"], "Mean ± std over seeds")
  assert len(groups) == 2  # two configurations of one run each

  for name, size in (("curves.png", (1100, 400)), ("noise.png", (3 * 450, 380))):
    with Image.open(os.path.join(out, name)) as image:
      assert image.size == size
  assert open(os.path.join(out, "report.md")).read() == result["markdown"]


def test_mean_and_std_over_seeds(evaluated_wa_run, smoke_wa_seed1_run, smoke_baseline_run,
                                 tmp_path):
  wa_run, _, _ = evaluated_wa_run
  runs = [wa_run.workdir, smoke_wa_seed1_run.workdir, smoke_baseline_run.workdir]
  result = report.make_report(runs, str(tmp_path))
  header, rows = table_rows(result["markdown"], "Runs")
  assert [r[header.index("seed")] for r in rows] == ["0", "1", "0"]

  header, groups = table_rows(result["markdown"], "Mean ± std over seeds")
  assert len(groups) == 2
  wa, baseline = groups
  assert wa[header.index("attention")] == "wa" and wa[header.index("runs")] == "2"
  assert wa[header.index("seeds")] == "0, 1"
  finals = [json.loads(open(os.path.join(w, "metrics.jsonl")).readlines()[-1])["test_accuracy"]
            for w in runs[:2]]
  assert wa[header.index("final top-1 (%)")] == (
      f"{100 * np.mean(finals):.2f} ± {100 * np.std(finals, ddof=1):.2f}")
  assert "±" not in baseline[header.index("final top-1 (%)")]
  assert baseline[header.index("runs")] == "1"
  # Only the seed-0 WA run was evaluated: its noise accuracy is the group's value.
  assert "±" not in wa[header.index("gaussian 0.5 (%)")]


def test_command_line(smoke_wa_run, smoke_baseline_run, tmp_path, capsys):
  out = str(tmp_path / "out")
  assert cli.main(["wacnn_jax", "report", smoke_wa_run.workdir, smoke_baseline_run.workdir,
                   "--out", out]) == 0
  printed = capsys.readouterr().out
  assert "| wa_seed0 |" in printed and "| baseline_seed0 |" in printed
  assert os.path.exists(os.path.join(out, "curves.png"))
  assert not os.path.exists(os.path.join(out, "noise.png"))  # no eval.json with noise

  assert cli.main(["wacnn_jax", "report", str(tmp_path / "nothing"), "--out", out]) == 1
  assert "has no config.json" in capsys.readouterr().err


def test_group_key_ignores_seed_and_bookkeeping():
  base = {"seed": 0, "model": {"arch": "resnet18"}, "eval": {"noise": True},
          "data": {"dataset": "cifar10", "data_dir": "/a"}, "num_epochs": 2}
  run = lambda config: report.Run("w", "n", config, [{"epoch": 1, "test_accuracy": 0.5}])
  same = json.loads(json.dumps(base))
  same.update(seed=3, eval={"noise": False})
  same["data"]["data_dir"] = "/b"
  other = json.loads(json.dumps(base))
  other["num_epochs"] = 3
  assert run(base).group_key() == run(same).group_key() != run(other).group_key()
  assert len(report.group_runs([run(base), run(other), run(same)])) == 2
