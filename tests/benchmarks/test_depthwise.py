"""benchmarks/depthwise.py runs and writes its table; it times nothing that a test checks."""

import json

import pytest

from benchmarks import depthwise


def test_op_and_dwt_phases_write_their_rows(tmp_path):
  docs, out = tmp_path / "benchmarks.md", tmp_path / "raw.json"
  raw = depthwise.main(["--batch", "2", "--windows", "1", "--repeats", "1",
                        "--phases", "op,dwt", "--docs", str(docs), "--out", str(out)])
  assert [r["shape"].split(" ")[0] for r in raw["op"]] == [
      f"2x{hw}x{hw}x{c}" for hw, c, _ in depthwise.OP_SHAPES]
  assert all(r["shifted"] > 0 and r["grouped"] > 0 for r in raw["op"] + [
      {"shifted": r["shifted forward"], "grouped": r["grouped forward"]} for r in raw["dwt"]])
  text = docs.read_text()
  assert "<!-- depthwise:begin -->" in text and "| 2x32x32x96 s1 |" in text
  assert "| dwt2 db2 |" in text and "| 2x32x32x144 |" in text
  assert json.loads(out.read_text())["batch"] == 2


@pytest.mark.slow  # compiles networks eleven times
def test_train_levers_and_profile_phases(tmp_path):
  docs = tmp_path / "benchmarks.md"
  raw = depthwise.main(["--batch", "2", "--windows", "1", "--steps", "1", "--no-torch",
                        "--phases", "train,levers,profile", "--docs", str(docs)])
  assert [r["model"] for r in raw["train"]] == [m[0] for m in depthwise.TRAIN_MODELS]
  assert all(r["shifted"] > 0 and r["grouped"] > 0 for r in raw["train"])
  assert [r["model"] for r in raw["levers"]] == ["mobilenetv2 none", "resnet18 wa"]
  assert all(r[name] > 0 for r in raw["levers"] for name in depthwise.LEVER_ABLATIONS)
  assert raw["profile"]["lanes"]
  text = docs.read_text()
  assert "| mobilenetv2-WA |" in text and "| resnet18 wa |" in text and "traced:" in text


def test_unknown_phase_is_a_usage_error():
  with pytest.raises(SystemExit):
    depthwise.main(["--phases", "op,winograd"])


def test_each_phase_is_written_before_the_next_runs(tmp_path, monkeypatch):
  docs, out = tmp_path / "benchmarks.md", tmp_path / "raw.json"

  def dwt_stopped(*args):
    raise KeyboardInterrupt  # as a time limit stops the script in its second phase

  monkeypatch.setattr(depthwise, "bench_dwt", dwt_stopped)
  with pytest.raises(KeyboardInterrupt):
    depthwise.main(["--batch", "2", "--windows", "1", "--repeats", "1", "--no-torch",
                    "--phases", "op,dwt", "--docs", str(docs), "--out", str(out)])
  raw = json.loads(out.read_text())
  assert len(raw["op"]) == len(depthwise.OP_SHAPES) and "dwt" not in raw
  assert "| 2x32x32x96 s1 |" in docs.read_text()


def test_train_table_shows_the_compiled_peer_where_it_ran():
  raw = {"info": {"date": "d", "device": "gpu", "host": "h", "jax": "j", "torch": "t"},
         "windows": 1, "batch": 128,
         "train": [{"model": "mobilenetv2", "shifted": 300.0, "grouped": 100.0, "torch": 150.0,
                    "torch compiled": 200.0},
                   {"model": "mobilenetv2-WA", "shifted": 280.0, "grouped": 140.0,
                    "torch": 140.0}]}
  lines = depthwise.render(raw).splitlines()
  assert lines[2].endswith("| compiled PyTorch (channels_last, fp32) | shifted vs compiled |")
  assert lines[4] == ("| mobilenetv2 | 300.0 img/s | 100.0 img/s | 150.0 img/s | 3.00x | 2.00x |"
                      " 200.0 img/s | 1.50x |")
  assert lines[5] == ("| mobilenetv2-WA | 280.0 img/s | 140.0 img/s | 140.0 img/s | 2.00x | "
                      "2.00x | - | - |")
  del raw["train"][0]["torch compiled"]
  assert "compiled" not in depthwise.render(raw)
