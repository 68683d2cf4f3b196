"""The files a run writes and the tools read back: a torn last line is dropped with a
warning; anything else that cannot be read is one error naming the file.

The torn files are a real run's (the session's smoke run, copied) with their
last line or bytes cut, as a crash while writing leaves them.
"""

import json
import os

import pytest

from tests import helpers
from wacnn_jax import cli
from wacnn_jax.files import records
from wacnn_jax.tools import grid_runs
from wacnn_jax.tools import report





def _tear(path, keep_bytes_of_last_line=25):
  """Cuts the file's last line after `keep_bytes_of_last_line` characters, as a kill would."""
  lines = open(path).read().splitlines(keepends=True)
  with open(path, "w") as f:
    f.write("".join(lines[:-1]) + lines[-1][:keep_bytes_of_last_line])
  return lines


def test_a_torn_last_line_is_dropped_with_a_warning(tmp_path, caplog):
  path = str(tmp_path / "metrics.jsonl")
  with open(path, "w") as f:
    f.write('{"epoch": 1}\n\n{"epoch": 2}\n{"epoch": 3, "test_acc')
  assert records.read_json_lines(path) == [{"epoch": 1}, {"epoch": 2}]
  assert f"{path}: dropped its last line, which was cut short" in caplog.text
  with open(path, "a") as f:
    f.write('uracy": 0.5}\n\n')  # the same line, whole, then blank lines: nothing dropped
  assert records.read_json_lines(path)[-1] == {"epoch": 3, "test_accuracy": 0.5}
  assert records.read_json_lines(str(tmp_path / "none.jsonl")) == []


@pytest.mark.parametrize("content, message", [
    ('{"epoch": 1}\n{"epoch": 2, "te\n{"epoch": 3}\n', "line 2 is not JSON"),
    ('{"epoch": 1}\n[1, 2]\n', "line 2 is not a JSON object"),
    (b'{"epoch": 1}\n\xff\xfe\n', "is not UTF-8 text"),
])
def test_damage_before_the_last_line_names_the_file_and_line(content, message, tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_bytes(content if isinstance(content, bytes) else content.encode())
  with pytest.raises(records.RecordError, match=f"^{path} .*{message}"):
    records.read_json_lines(str(path))


@pytest.mark.parametrize("content, state", [
    ("", "is empty"), ('{"seed": 0, "model": {"arch": "res', "is cut short"),
    ("{'seed': 0}", "is not JSON")])
def test_a_json_file_that_cannot_be_read_is_named(content, state, tmp_path, caplog):
  path = tmp_path / "config.json"
  path.write_text(content)
  with pytest.raises(records.RecordError, match=f"^{path} {state} \\(line 1"):
    records.read_json(str(path))
  assert records.read_json(str(path), default=None) is None  # an optional file: warned
  assert f"{path} {state}" in caplog.text and "Going on without it" in caplog.text
  assert records.read_json(str(tmp_path / "eval.json"), default={}) == {}
  with pytest.raises(records.RecordError, match="does not exist"):
    records.read_json(str(tmp_path / "eval.json"))


@pytest.fixture
def run_copy(smoke_wa_run, tmp_path):
  return helpers.copy_run(smoke_wa_run, tmp_path / "wa_seed0").workdir


def test_report_and_reproduce_read_a_run_with_torn_records(run_copy, tmp_path, caplog):
  _tear(os.path.join(run_copy, "metrics.jsonl"))  # epoch 2's line
  with open(os.path.join(run_copy, "eval.json"), "w") as f:
    f.write('{"step": 8, "accuracy": 0.3')
  with open(os.path.join(run_copy, "reproduce.json"), "w") as f:
    f.write('[{"device": "cpu x1", "outcome": "fin')
  result = report.make_report([run_copy], str(tmp_path / "report"))
  [run] = result["runs"]
  assert run.epochs == 1 and run.evaluation is None
  [seed_run] = grid_runs.read_run(run_copy)
  assert seed_run.epochs == 1 and seed_run.devices == ()
  for name in ("metrics.jsonl", "eval.json", "reproduce.json"):
    assert os.path.join(run_copy, name) in caplog.text


def test_a_torn_config_json_is_one_line_naming_it(run_copy, tmp_path, capsys):
  config = os.path.join(run_copy, "config.json")
  with open(config) as f:
    text = f.read()
  with open(config, "w") as f:
    f.write(text[:len(text) // 2])
  json.loads(text)  # the original was whole
  for argv, fix in ((["wacnn_jax", "evaluate", "--workdir", run_copy], "--config FILE"),
                    (["wacnn_jax", "report", run_copy, "--out", str(tmp_path / "report")], "")):
    assert cli.main(argv) == 1
    lines = [l for l in capsys.readouterr().err.splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and f"{config} is cut short" in lines[0] and fix in lines[0], lines
