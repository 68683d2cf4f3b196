"""The README's quick start (between its `quickstart` markers) is run, so README and program agree.

Default run: the two `train` commands are parsed by the CLI's own flag parser
and must give exactly the configs of the session's smoke runs
(`smoke_baseline_run`, `smoke_wa_run` in conftest.py, trained once per
session), whose workdirs then stand in for theirs; every other command
(`evaluate`, `report`, `visualize`) runs as written, in process, in a fresh
folder that holds the repository's `configs/` and `tests/data/`. The slow
test runs all of them, training included, as separate processes.
"""

import os
import re
import shlex
import shutil
import subprocess
import sys

from absl import flags
import pytest

from tests.helpers import REPO_ROOT
from wacnn_jax import cli
from wacnn_jax.tools import command_line

README = os.path.join(REPO_ROOT, "README.md")


def quickstart_commands() -> list[list[str]]:
  """The quick start's commands, each as argv, backslash continuations joined."""
  text = open(README).read()
  block = re.search(r"<!-- quickstart:begin -->\s*```bash\n(.*?)```\s*<!-- quickstart:end -->",
                    text, re.S)
  assert block, "README.md has no quick start between <!-- quickstart:begin/end --> markers"
  joined = block.group(1).replace("\\\n", " ")
  return [shlex.split(line) for line in joined.splitlines()
          if line.strip() and not line.lstrip().startswith("#")]


def fresh_folder(tmp_path) -> str:
  """A folder holding what the commands read from the repository (configs/, tests/data/)."""
  root = tmp_path / "user"
  (root / "tests").mkdir(parents=True)
  os.symlink(os.path.join(REPO_ROOT, "configs"), root / "configs")
  os.symlink(os.path.join(REPO_ROOT, "tests", "data"), root / "tests" / "data")
  return str(root)


def cli_argv(command: list[str]) -> list[str]:
  """`python -m wacnn_jax X ...` or `python run_train.py ...` as cli.main's argv."""
  if command[:3] == ["python", "-m", "wacnn_jax"]:
    return ["wacnn_jax/__main__.py"] + command[3:]
  assert command[:2] == ["python", "run_train.py"], command
  return ["run_train.py", "train"] + command[2:]


def parsed_train_command(command: list[str]):
  """(config, workdir) that `train` would run, from the CLI's own parser."""
  argv = cli_argv(command)
  assert argv[1] == "train", command
  fv = flags.FlagValues()
  cli.command("train").define(fv, argv)
  command_line.parse_flags(fv, ["train"] + argv[2:])
  return fv.config, fv.workdir


def test_quickstart_is_smoke_sized_and_connected(monkeypatch):
  monkeypatch.chdir(REPO_ROOT)
  commands = quickstart_commands()
  names = [cli_argv(c)[1] for c in commands]
  assert names == ["train", "train", "evaluate", "evaluate", "report", "visualize"], names
  workdirs = {parsed_train_command(c)[1] for c in commands if cli_argv(c)[1] == "train"}
  used = {a for c in commands[2:] for a in c if a.startswith("runs/")} | {
      c[c.index("--workdir") + 1] for c in commands[2:] if "--workdir" in c}
  assert used == workdirs, (used, workdirs)  # evaluate/report/visualize read what train wrote


def test_quickstart_runs(smoke_wa_run, smoke_baseline_run, tmp_path, monkeypatch, capsys):
  root = fresh_folder(tmp_path)
  monkeypatch.chdir(root)
  fixtures = {"none": smoke_baseline_run, "wa": smoke_wa_run}
  for command in quickstart_commands():
    argv = cli_argv(command)
    if argv[1] == "train":
      config, workdir = parsed_train_command(command)
      run = fixtures[config.model.attention]
      assert os.path.realpath(config.data.image_folder) == os.path.realpath(
          run.config.data.image_folder)
      expected = run.config.to_dict()
      expected["data"]["image_folder"] = config.data.image_folder
      assert config.to_dict() == expected, command  # the run the fixture trained
      shutil.copytree(run.workdir, os.path.join(root, workdir))
    else:
      assert cli.main(argv) == 0, (command, capsys.readouterr().err[-3000:])
  for path in ("runs/wa/eval.json", "runs/baseline/eval.json", "runs/wa/confusion.png",
               "report/report.md", "report/curves.png", "attention_maps.png"):
    assert os.path.exists(os.path.join(root, path)), path
  report = open(os.path.join(root, "report", "report.md")).read()
  assert "| baseline |" in report and "| wa |" in report


@pytest.mark.slow
def test_quickstart_runs_as_written(tmp_path):
  """Every command as a separate process, in a fresh folder, with the package as installed
  (or, without an installation, from the repository on PYTHONPATH)."""
  root = fresh_folder(tmp_path)
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [REPO_ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
  for command in quickstart_commands():
    assert command[0] == "python"
    result = subprocess.run([sys.executable] + command[1:], cwd=root, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (command, result.stderr[-3000:])
  assert os.path.exists(os.path.join(root, "attention_maps.png"))
  assert "| wa |" in open(os.path.join(root, "report", "report.md")).read()


def sample_counts() -> dict[str, int]:
  """Images per split of the committed sample archive, counted from its members."""
  import tarfile  # pylint: disable=g-import-not-at-top
  counts = {"train": 0, "test": 0}
  with tarfile.open(os.path.join(REPO_ROOT, "tests", "data", "cifar10-mini.tar.gz")) as archive:
    for member in archive.getmembers():
      parts = member.name.split("/")
      if member.isfile() and "train" in parts[:2]:
        counts["train"] += 1
      elif member.isfile() and "test" in parts[:2]:
        counts["test"] += 1
  return counts


def test_readme_and_help_figures_are_what_the_smoke_preset_trains(capsys, monkeypatch):
  """The quick start's and `train --help`'s epochs and image counts, read from the preset and
  the sample archive themselves."""
  from configs import cifar  # pylint: disable=g-import-not-at-top
  smoke = cifar.get_config("smoke")
  counts = sample_counts()
  text = " ".join(open(README).read().split())
  quick = re.search(r"trained for (\d+) epochs on (\d+) / (\d+) of the (\d+) / (\d+) real "
                    r"CIFAR-10 images committed in `tests/data/cifar10-mini.tar.gz`", text)
  assert quick, "the quick start's sentence on what it trains is not found"
  assert tuple(map(int, quick.groups())) == (
      smoke.num_epochs, smoke.data.max_train_examples, smoke.data.max_test_examples,
      counts["train"], counts["test"])
  tests_section = re.search(r"\(`tests/data/cifar10-mini.tar.gz`, (\d+) train and (\d+) test "
                            r"JPEGs", text)
  assert tuple(map(int, tests_section.groups())) == (counts["train"], counts["test"])
  monkeypatch.chdir(REPO_ROOT)
  assert cli.main(["run_train.py", "train", "--help"]) == 0
  help_text = " ".join(capsys.readouterr().out.split())
  assert (f"configs/cifar.py:smoke a tiny CPU run: {smoke.data.max_train_examples} / "
          f"{smoke.data.max_test_examples} images, {smoke.num_epochs} epochs") in help_text
