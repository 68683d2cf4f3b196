"""notebooks/wacnn_colab.ipynb runs top to bottom (smoke setting), so it never rots.

The kernel is this interpreter (`sys.executable` with ipykernel), declared in a
temporary kernelspec found through JUPYTER_PATH, so the test does not depend on
which Jupyter kernels the machine has installed.
"""

import json
import os
import re
import sys

import pytest

from tests.helpers import REPO_ROOT

NOTEBOOK = os.path.join(REPO_ROOT, "notebooks", "wacnn_colab.ipynb")
KERNEL_NAME = "wacnn-jax-test"

nbformat = pytest.importorskip("nbformat")


def read_notebook():
  return nbformat.read(NOTEBOOK, as_version=4)


def test_outputs_are_cleared_in_git():
  for cell in read_notebook().cells:
    if cell.cell_type == "code":
      assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


def test_notebook_uses_the_package():
  code = "\n".join(c.source for c in read_notebook().cells if c.cell_type == "code")
  assert "from wacnn_jax.training import restore, train" in code
  assert code.count("def ") == 1  # make_config only: no logic copied into the notebook
  for call in ("train.train_and_evaluate", "evaluate.evaluate_checkpoint",
               "restore.restore_checkpoint", "report.make_report",
               "visualize.attention_figures"):
    assert call in code


def install_test_kernel(root) -> str:
  """A kernelspec for this interpreter under `root` (to put on JUPYTER_PATH)."""
  pytest.importorskip("ipykernel")
  kernel_dir = os.path.join(root, "kernels", KERNEL_NAME)
  os.makedirs(kernel_dir)
  with open(os.path.join(kernel_dir, "kernel.json"), "w") as f:
    json.dump({"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
               "display_name": "wacnn_jax test kernel", "language": "python"}, f)
  return root


def test_notebook_runs_in_smoke_mode(cifar10_mini, tmp_path, monkeypatch):
  nbclient = pytest.importorskip("nbclient")
  monkeypatch.setenv("JUPYTER_PATH", install_test_kernel(str(tmp_path / "jupyter")))
  monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "jupyter_runtime"))
  monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
  workdir = tmp_path / "runs"
  monkeypatch.setenv("WACNN_SMOKE", "1")
  monkeypatch.setenv("WACNN_IMAGE_FOLDER", cifar10_mini)
  monkeypatch.setenv("WACNN_WORKDIR", str(workdir))
  monkeypatch.setenv("MPLBACKEND", "Agg")
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
      [REPO_ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))

  notebook = read_notebook()
  client = nbclient.NotebookClient(
      notebook, kernel_name=KERNEL_NAME, timeout=600, startup_timeout=120,
      resources={"metadata": {"path": REPO_ROOT}})
  client.execute()

  text = "\n".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code"
                   for o in c.outputs)
  # The training cell shows the run's progress (absl's records routed to the cell): the data
  # loaded, a line per epoch and the last line, each short (time, message).
  training = next(c for c in notebook.cells if c.cell_type == "code"
                  and "train.train_and_evaluate" in c.source)
  shown = "\n".join(o.get("text", "") for o in training.outputs)
  for name in ("baseline", "wa"):
    assert f"training {name}:" in shown
  assert len(re.findall(r"^\d\d:\d\d:\d\d loaded 256 train \+ 128 test images", shown, re.M)) == 2
  assert len(re.findall(r"^\d\d:\d\d:\d\d epoch   1/1  seed 0  lr ", shown, re.M)) == 2, shown
  assert len(re.findall(r"^\d\d:\d\d:\d\d finished epoch 1/1 ", shown, re.M)) == 2
  assert "I1" not in shown and ".py:" not in shown  # no absl header
  assert "nothing to install" in text
  assert "top-1 accuracy" in text and "noise robustness" in text
  images = sum("image/png" in o.get("data", {}) for c in notebook.cells
               if c.cell_type == "code" for o in c.outputs)
  assert images == 5  # curves, confusion, attention maps, attention channels, noise
  for name in ("baseline", "wa"):
    records = [json.loads(l) for l in open(workdir / name / "metrics.jsonl")]
    assert len(records) == 1 and records[0]["test_examples"] == 128
    evaluation = json.load(open(workdir / name / "eval.json"))
    assert evaluation["noise"][0]["accuracy"] == evaluation["accuracy"]
  markdown = (workdir / "report" / "report.md").read_text()
  assert "| baseline |" in markdown and "| wa |" in markdown
  assert (workdir / "attention_maps_wa0.png").exists()
