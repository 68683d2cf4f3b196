"""benchmarks/cpu_peers.py runs on tiny shapes and writes its tables; no test checks a timing.

The peers (jaxwt, ptwt, pytorch_wavelets; benchmarks/requirements.txt) are
skipped where they are not installed.
"""

import pytest

from benchmarks import cpu_peers

BY_NAME = {i.name: i for i in cpu_peers.IMPLEMENTATIONS}


@pytest.mark.parametrize("wavelet", ("haar", "sym4"))
@pytest.mark.parametrize("name", list(BY_NAME))
def test_every_implementation_equals_pywt_in_its_mode(name, wavelet):
  implementation = BY_NAME[name]
  if not cpu_peers.installed(implementation):
    pytest.skip(f"{implementation.package} is not installed")
  assert cpu_peers.check_against_pywt(implementation, wavelet) < 1e-4


def test_an_implementation_in_another_mode_is_refused():
  """The check bites: this project's periodization is not pywt's zero mode."""
  wrong = cpu_peers.Implementation("mislabelled", "zero", None, BY_NAME["this project"].prepare)
  with pytest.raises(AssertionError, match="mislabelled"):
    cpu_peers.check_against_pywt(wrong, "db2")


def test_dwt_phase_writes_its_table(tmp_path):
  out = tmp_path / "table.md"
  raw = cpu_peers.main(["--phases", "dwt", "--shape", "2,8,8,3", "--wavelets", "haar,db2",
                        "--windows", "1", "--repeats", "1", "--out", str(out)])
  assert [r["wavelet"] for r in raw["dwt"]] == ["haar", "db2"]
  present = [i.name for i in cpu_peers.IMPLEMENTATIONS if cpu_peers.installed(i)]
  assert all(r[name] > 0 for r in raw["dwt"] for name in present)
  text = out.read_text()
  assert "| wavelet | this project (periodization) |" in text and "| db2 |" in text
  assert "jaxwt has no periodization mode" in text


def test_train_table_names_missing_peers():
  raw = {"date": "d", "cpu": "c", "versions": "v", "windows": 1, "batch": 8,
         "train": [{"model": "resnet18 wa", "this project": 300.0, "PyTorch": 150.0},
                   {"model": "vgg16_bn none", "this project": 100.0}]}
  lines = cpu_peers.render(raw).splitlines()
  assert lines[-2] == "| resnet18 wa | 300.0 | 150.0 | 2.00x |"
  assert lines[-1] == "| vgg16_bn none | 100.0 | - | - |"


@pytest.mark.slow  # compiles a network
def test_train_phase(tmp_path):
  raw = cpu_peers.main(["--phases", "train", "--models", "resnet18:wa", "--batch", "2",
                        "--steps", "1", "--windows", "1"])
  assert raw["train"][0]["model"] == "resnet18 wa" and raw["train"][0]["this project"] > 0


def test_unknown_phase_or_model_is_a_usage_error():
  with pytest.raises(SystemExit):
    cpu_peers.main(["--phases", "dwt,fft"])
  with pytest.raises(SystemExit):
    cpu_peers.main(["--models", "alexnet:none"])
