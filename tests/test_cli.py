"""`run_train.py` end to end, in subprocesses, with TensorFlow made unimportable."""

import json
import os
import re
import subprocess
import sys

import pytest

from tests.helpers import REPO_ROOT
from wacnn_jax import cli

# Runs run_train.py with `tensorflow` hidden from the import system, as on a
# machine where it is not installed, and reports which of the libraries that
# training does without (TensorFlow, and what only the tools after training or
# a TensorBoard writer library would bring: each costs every run's start) it imported.
HIDE_TENSORFLOW = r"""
import runpy, sys
class HideTensorFlow:
    def __init__(self, finders): self.finders = finders
    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            return None
        for finder in self.finders:
            spec = finder.find_spec(name, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None:
                return spec
sys.meta_path[:] = [HideTensorFlow(list(sys.meta_path))]
sys.argv = ["run_train.py"] + sys.argv[1:]
try:
    runpy.run_path("run_train.py", run_name="__main__")
finally:
    heavy = ("tensorflow", "torch", "matplotlib", "scipy", "tensorboardX")
    sys.stderr.write("IMPORTED=%s\n" % sorted({m.split(".")[0] for m in sys.modules} & set(heavy)))
"""


def run_cli(*args, hide_tensorflow=True, timeout=600):
  command = [sys.executable, "-c", HIDE_TENSORFLOW] if hide_tensorflow else [
      sys.executable, "run_train.py"]
  return subprocess.run(command + list(args), cwd=REPO_ROOT, capture_output=True,
                        text=True, timeout=timeout)


def test_smoke_config_trains_without_tensorflow_or_tool_libraries(cifar10_mini, tmp_path):
  workdir = tmp_path / "smoke"
  result = run_cli("--config", "configs/cifar.py:smoke", "--workdir", str(workdir),
                   f"--config.data.image_folder={cifar10_mini}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "IMPORTED=[]" in result.stderr
  assert "epoch   2/2" in result.stderr
  records = [json.loads(l) for l in open(workdir / "metrics.jsonl")]
  assert len(records) == 2 and records[-1]["test_examples"] == 256
  # What it says while it works: the data, each epoch with the time left, the end.
  assert "loaded 512 train + 256 test images in" in result.stderr
  assert re.search(r"epoch   1/2 .* ETA \d", result.stderr)
  assert re.search(r"finished epoch 2/2 \(2 trained in .*\): best test top-1 0\.\d+ \(epoch \d\), "
                   r"final 0\.\d+; checkpoints in .*checkpoints", result.stderr)
  assert any(name.isdigit() for name in os.listdir(workdir / "checkpoints"))
  assert "parameters:" in (workdir / "model_summary.txt").read_text()
  # The console holds the progress lines, not Orbax's INFO chatter per save.
  assert "checkpoint_manager.py" not in result.stderr
  assert "Unable to initialize backend" not in result.stderr


def test_unknown_override_key_lists_the_valid_keys(tmp_path):
  result = run_cli("--config", "configs/cifar.py:smoke", "--workdir", str(tmp_path),
                   "--config.model.attentoin=se", hide_tensorflow=False)
  assert result.returncode != 0
  assert "bad config override" in result.stderr
  assert "model.attention" in result.stderr and "Traceback" not in result.stderr
  assert "\\" not in result.stderr.splitlines()[0]  # no escaped quotes: 'attentoin', not \'attentoin\'


@pytest.mark.parametrize("override, message", [
    ("--config.model.arch=resnet19", "unknown arch 'resnet19'. Did you mean 'resnet18'"),
    ("--config.model.arch=resnet20", "unknown arch 'resnet20'. The 20-layer CIFAR ResNet is "
     "'resnet18' (the reference's name for it)."),
    ("--config.model.attention=se(foo=1)", "se has no option 'foo'"),
    ("--config.data.cifar100_labels=medium", "data.cifar100_labels='medium' is not one of"),
])
def test_bad_model_and_data_values_are_usage_errors(override, message, tmp_path, synthetic_folder,
                                                   capsys, monkeypatch):
  """Like every bad config value: one line, status 2, nothing written (no error.log)."""
  monkeypatch.chdir(REPO_ROOT)
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["run_train.py", "train", "--config", "configs/cifar.py:smoke", "--workdir",
              str(tmp_path / "run"), f"--config.data.image_folder={synthetic_folder}", override])
  assert exit_info.value.code == 2
  lines = capsys.readouterr().err.splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
  assert not os.path.exists(tmp_path / "run")


def test_missing_dataset_says_how_to_fix(tmp_path):
  result = run_cli("--config", "configs/cifar.py:smoke", "--workdir", str(tmp_path),
                   f"--config.data.data_dir={tmp_path}", "--config.data.download=False",
                   hide_tensorflow=False)
  assert result.returncode == 1
  assert "data.image_folder" in result.stderr and "Traceback" not in result.stderr


def test_a_mistyped_image_folder_leaves_nothing_behind(tmp_path, capsys, monkeypatch):
  """One line naming the field; neither the workdir nor an error.log is created."""
  monkeypatch.chdir(REPO_ROOT)
  missing = tmp_path / "cifar10-mini.tar.gzz"
  assert cli.main(["run_train.py", "train", "--config", "configs/cifar.py:smoke", "--workdir",
                   str(tmp_path / "runs" / "wa"), f"--config.data.image_folder={missing}"]) == 1
  lines = capsys.readouterr().err.splitlines()
  assert len(lines) == 1 and lines[0].startswith(
      f"error: data.image_folder='{missing}' does not exist."), lines
  assert os.listdir(tmp_path) == []


SMOKE = ["--config", "configs/cifar.py:smoke", "--workdir", "WORKDIR"]


@pytest.mark.parametrize("args, message", [
    (SMOKE + ["--config.batch_size=abc"], "flag --config.batch_size=abc: invalid literal"),
    (SMOKE + ["--config.half_precision=maybe"], "flag --config.half_precision=maybe"),
    (SMOKE + ["--foo=1"], "Unknown command line flag 'foo'"),
    (SMOKE + ["no_such_argument"], "unexpected arguments ['no_such_argument']"),
    (["--config", "configs/nope.py", "--workdir", "WORKDIR"], "configs/nope.py: no such file"),
    (["--config", "configs/cifar.py:smoke"], "Flag --workdir must have a value"),
])
def test_bad_command_lines_are_one_line_and_status_2(args, message, tmp_path):
  result = run_cli(*[str(tmp_path) if a == "WORKDIR" else a for a in args],
                   hide_tensorflow=False)
  assert result.returncode == 2, result.stderr[-3000:]
  lines = result.stderr.splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
  assert not os.listdir(tmp_path)


def test_train_help_teaches_the_config_syntax(capsys, monkeypatch):
  monkeypatch.chdir(REPO_ROOT)
  assert cli.main(["run_train.py", "train", "--help"]) == 0
  text = capsys.readouterr().out
  assert text.startswith("usage: run_train.py ")
  assert "--config FILE[:SETTINGS]" in text and "(required)" in text
  assert "--config.FIELD=VALUE" in text
  assert "configs/cifar.py:smoke" in text and "configs/cifar.py:dataset=cifar100,arch=vgg16_bn" in text
  # With a config: its fields, each as the override that sets it, with its value.
  assert cli.main(["run_train.py", "train", "--config", "configs/cifar.py:smoke", "--help"]) == 0
  text = capsys.readouterr().out
  assert "--config.num_epochs=2" in text and "--config.model.attention=wa" in text
  assert "--config.schedule.boundaries=(81, 121)" in text and "--config.schedule.name=cosine" in text


def test_evaluate_help_shows_defaults_as_values(capsys):
  assert cli.main(["wacnn_jax/__main__.py", "evaluate", "--help"]) == 0
  text = capsys.readouterr().out
  assert "--eval.gaussian_stddevs=(0.0, 0.02, 0.05, 0.1, 0.2)" in text
  assert "--eval.noise=False" in text and "--eval.step=-1" in text
  assert "!!python" not in text
  assert "evaluate (--workdir=WORKDIR | --pretrained=PRETRAINED) [--flag=value ...]" in text
