"""The benchmark suite (benchmarks/gpu_suite.sh, benchmarks/throughput.py): a CPU dry run.

These pin that the GPU suite runs end to end, keeps to its budget and writes
its results; they time nothing.
"""

import gzip
import json
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO_ROOT

from benchmarks import throughput


@pytest.fixture(scope="module")
def small_folder(random_image_folder):
  """96 train / 24 test images: enough for configs/cifar.py:smoke's batch 64."""
  return random_image_folder(32, 8)


def _suite_env(base):
  env = dict(base)
  env["DEPTHWISE_SECONDS"] = "0"  # benchmarks/depthwise.py: tests/benchmarks/test_depthwise.py
  env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]  # python3 = this one
  return env


def _only_json(folder):
  names = [n for n in os.listdir(folder) if n.endswith(".json")]
  assert len(names) == 1, names
  with open(os.path.join(folder, names[0])) as f:
    return json.load(f)


@pytest.mark.slow  # 80 s: run it (pytest -m slow) before a GPU window
def test_gpu_suite_dry_run_measures_every_phase(tmp_path, small_folder, subprocess_env):
  out = tmp_path / "out"
  result = subprocess.run(
      ["bash", os.path.join("benchmarks", "gpu_suite.sh"), str(out), "600", small_folder,
       "--quick", "--full-run-workdir", str(tmp_path / "full_run"),
       "--phases", "train,seeds,full_run,peers,dwt,profile"],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=900, env=_suite_env(subprocess_env))
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  raw = _only_json(out)
  assert raw["errors"] == [], raw["errors"]
  assert set(raw["train"]) == {"resnet18 none fp32 b32", "resnet18 wa fp32 b32",
                                "resnet18 wa fp32 b32 x2 seeds"}
  for row in raw["train"].values():
    assert row["train"] > 0 and row["eval"] > 0
  assert set(raw["dwt"]) == {"8x32x32x16", "8x16x16x128"}
  assert all(r["dwt2"] > 0 and r["repeat"] >= 1 for r in raw["dwt"].values())
  profile = raw["profile"]["resnet18 wa fp32 b32"]
  assert profile["lanes"] and all(l["busy_us_per_step"] > 0 for l in profile["lanes"].values())
  full = raw["full_run"]
  assert full["outcome"] == "finished"
  assert full["epochs_done"] == 2 and full["projected_wall_seconds"] > 0
  if "torch" in sys.modules or _has_torch():
    assert set(raw["peers"]) == {"faithful", "tuned"}
  # The table, the log and the versions block.
  table = (out / "table.md").read_text()
  for row in ("| train | resnet18 wa fp32 b32 |", "| dwt haar | 8x32x32x16 |", "| profile |",
              "| full run | resnet18 wa"):
    assert row in table, row
  log = (out / "suite.log").read_text()
  assert "ml_collections" in log and "devices:" in log
  assert (out / "full_run.log").exists()


def _has_torch():
  try:
    import torch  # pylint: disable=g-import-not-at-top,unused-import
    return True
  except ImportError:
    return False


def test_suite_skips_what_its_budget_cannot_fit(tmp_path, small_folder):
  """With no time left every phase is skipped with a note, and the run still ends cleanly."""
  result = subprocess.run(
      [sys.executable, os.path.join("benchmarks", "throughput.py"), "--quick", "--budget", "0",
       "--profile", "--full-run", small_folder, "--results", str(tmp_path),
       "--docs", str(tmp_path / "table.md")],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  raw = _only_json(tmp_path)
  assert raw["train"] == {} and raw["dwt"] == {} and "full_run" not in raw
  skipped = {s["phase"] for s in raw["skipped"]}
  assert {"train resnet18 wa fp32 b32", "full run", "dwt 8x32x32x16",
          "profile resnet18 wa fp32"} <= skipped
  assert "| skipped | full run |" in (tmp_path / "table.md").read_text()


def test_full_run_stops_at_its_deadline(tmp_path, small_folder):
  results = throughput.Results(None, {}, {})
  throughput.full_run(results, small_folder, seconds=2, quick=True,
                      workdir=str(tmp_path / "w"), results_dir=str(tmp_path))
  full = results.raw["full_run"]
  assert full["outcome"] == "stopped" and full["wall_seconds_this_call"] < 30
  assert full["epochs_done"] == 0
  assert (tmp_path / "full_run.log").exists()


def _write_trace(path, events):
  with gzip.open(path, "wt") as f:
    json.dump({"traceEvents": events}, f)


def test_summarize_trace_busy_time_gaps_and_classes(tmp_path):
  meta = [
      {"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/device:GPU:0"}},
      {"ph": "M", "pid": 1, "tid": 7, "name": "thread_name", "args": {"name": "Stream #7"}},
      {"ph": "M", "pid": 2, "name": "process_name", "args": {"name": "/host:CPU"}},
      {"ph": "M", "pid": 2, "tid": 3, "name": "thread_name", "args": {"name": "python"}},
  ]
  kernels = [  # (name, start us, duration us): two overlap, then a 50 us gap
      ("sm90_xmma_fprop_implicit_gemm", 0, 100), ("input_reduce_fusion_3", 50, 100),
      ("loop_add_fusion", 200, 50), ("MemcpyD2D", 250, 10)]
  events = meta + [{"ph": "X", "pid": 1, "tid": 7, "name": n, "ts": t, "dur": d}
                   for n, t, d in kernels]
  events.append({"ph": "X", "pid": 2, "tid": 3, "name": "PjitFunction", "ts": 0, "dur": 999})
  path = tmp_path / "t.json.gz"
  _write_trace(path, events)
  summary = throughput.summarize_trace(str(path), wall_seconds=1e-3, steps=2)
  assert list(summary["lanes"]) == ["/device:GPU:0 / Stream #7"]  # host events left out
  lane = summary["lanes"]["/device:GPU:0 / Stream #7"]
  assert lane["events"] == 4
  assert lane["busy_us_per_step"] == pytest.approx((150 + 60) / 2)  # union, not the sum
  assert lane["span_us_per_step"] == pytest.approx(260 / 2)
  assert lane["idle_fraction_of_span"] == pytest.approx(1 - 210 / 260)
  assert lane["us_per_step_by_class"] == pytest.approx({
      "convolution": 50, "reduction": 50, "fused elementwise": 25,
      "memcpy/memset": 5})
  assert summary["trace_wall_us_per_step"] == pytest.approx(500)


def _part(train, skipped, date="2026-01-01", **extra):
  return {"info": {"date": date, "device": "gpu: X", "host": "h", "jax": "j", "torch": "t"},
          "settings": {"quick": False, "steps": 50, "windows": 5, "budget": 100},
          "train": train, "dwt": {}, "peers": {}, "skipped": skipped, "errors": [], **extra}


def test_results_of_several_invocations_merge_into_one_table(tmp_path):
  row = lambda rate: {"train": rate, "eval": 2 * rate, "setup_seconds": 1.0}
  first = _part({"resnet18 wa fp32 b128": row(100.0)},
                [{"phase": "train vgg16_bn wa fp32 b128", "note": "skipped: no time"},
                 {"phase": "train mobilenetv2 wa fp32 b128", "note": "skipped: no time"}])
  second = _part({"vgg16_bn wa fp32 b128": row(50.0), "resnet18 wa fp32 b128": row(120.0)},
                 [], date="2026-01-02")
  paths = []
  for i, part in enumerate((first, second)):
    paths.append(str(tmp_path / f"{i}.json"))
    with open(paths[-1], "w") as f:
      json.dump(part, f)
  docs = tmp_path / "bench.md"
  docs.write_text("# B\n\nintro\n\n<!-- results:begin -->\nold\n<!-- results:end -->\n\ntail\n")
  subprocess.run([sys.executable, os.path.join("benchmarks", "throughput.py"), "--render",
                  *paths, "--docs", str(docs)], cwd=REPO_ROOT, check=True, timeout=120,
                 capture_output=True)
  text = docs.read_text()
  assert text.startswith("# B\n\nintro") and text.rstrip().endswith("tail") and "old" not in text
  assert "| train | resnet18 wa fp32 b128 | 120 img/s |" in text  # the later part wins
  assert "| train | vgg16_bn wa fp32 b128 | 50 img/s |" in text
  assert "skipped | train vgg16_bn" not in text  # measured in the second part
  assert "| skipped | train mobilenetv2 wa fp32 b128 |" in text
  assert "2 invocations merged" in text and "Measured 2026-01-01, 2026-01-02 on" in text


def test_xla_flag_lever_runs_the_step_in_a_child_process():
  results = throughput.Results(None, {}, {})
  throughput.bench_xla_flags(results, "default", "", batch=8, steps=1, windows=1, timeout=300)
  row = results.raw["xla_flags"]["default"]
  assert row["flags"] == "" and row["train"] > 0 and row["eval"] > 0
