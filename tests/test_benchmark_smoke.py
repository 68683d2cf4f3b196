"""benchmarks/throughput.py --quick runs end to end (a smoke test, not a timing)."""

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT


def test_throughput_quick_writes_its_table(tmp_path):
  pytest.importorskip("torch")
  out = tmp_path / "benchmarks.md"
  out.write_text("# Benchmarks\n\nintro\n\n<!-- results:begin -->\nold\n<!-- results:end -->\n\ntail\n")
  result = subprocess.run(
      [sys.executable, os.path.join("benchmarks", "throughput.py"), "--quick", "--docs", str(out),
       "--results", str(tmp_path / "benchmarks")],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  text = out.read_text()
  assert text.startswith("# Benchmarks\n\nintro") and text.rstrip().endswith("tail")
  assert "old" not in text
  for row in ("| train | resnet18 wa fp32 b32 |", "| train | resnet18 wa fp32 b32 x2 seeds |",
              "| dwt haar |", "| peer | torch faithful",
              "| peer | torch tuned", "not yet measured"):
    assert row in text, row
  assert os.listdir(tmp_path / "benchmarks")
