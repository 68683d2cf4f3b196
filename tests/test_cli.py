"""`run_train.py` end to end, in subprocesses, with TensorFlow made unimportable."""

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO_ROOT

# Runs run_train.py with `tensorflow` hidden from the import system, as on a
# machine where it is not installed, and reports whether anything imported it.
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
    sys.stderr.write("TENSORFLOW_IMPORTED=%s\n" % ("tensorflow" in sys.modules))
"""


def run_cli(*args, hide_tensorflow=True, timeout=600):
  command = [sys.executable, "-c", HIDE_TENSORFLOW] if hide_tensorflow else [
      sys.executable, "run_train.py"]
  return subprocess.run(command + list(args), cwd=REPO_ROOT, capture_output=True,
                        text=True, timeout=timeout)


def test_smoke_config_trains_without_tensorflow(cifar10_mini, tmp_path):
  workdir = tmp_path / "smoke"
  result = run_cli("--config", "configs/cifar.py:smoke", "--workdir", str(workdir),
                   f"--config.data.image_folder={cifar10_mini}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "TENSORFLOW_IMPORTED=False" in result.stderr
  assert "epoch   2/2" in result.stderr
  records = [json.loads(l) for l in open(workdir / "metrics.jsonl")]
  assert len(records) == 2 and records[-1]["test_examples"] == 256
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


def test_unknown_arch_is_one_readable_line(tmp_path, synthetic_folder):
  result = run_cli("--config", "configs/cifar.py:smoke", "--workdir", str(tmp_path),
                   f"--config.data.image_folder={synthetic_folder}",
                   "--config.model.arch=resnet19", hide_tensorflow=False)
  assert result.returncode == 1
  assert "error:" in result.stderr and "resnet18" in result.stderr
  assert "Traceback" not in result.stderr
  assert os.path.exists(tmp_path / "error.log")


def test_missing_dataset_says_how_to_fix(tmp_path):
  result = run_cli("--config", "configs/cifar.py:smoke", "--workdir", str(tmp_path),
                   f"--config.data.data_dir={tmp_path}", "--config.data.download=False",
                   hide_tensorflow=False)
  assert result.returncode == 1
  assert "data.image_folder" in result.stderr and "Traceback" not in result.stderr


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
