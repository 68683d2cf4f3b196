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
