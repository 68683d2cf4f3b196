"""`wacnn_jax.pretrained`: smoke runs' weights exported, loaded back exactly, refused if damaged."""

import dataclasses
import hashlib
import json
import os
import re
import shutil

import jax
import numpy as np
from PIL import Image
import pytest

from tests.helpers import copy_run
from wacnn_jax import cli
from wacnn_jax.data import normalization
from wacnn_jax.data import transforms
from wacnn_jax import pretrained
from wacnn_jax.tools import grid_runs
from wacnn_jax.tools import reproduce
from wacnn_jax.training import checkpointing
from wacnn_jax.training import restore





from wacnn_jax.pretrained import weights
from wacnn_jax.tools import export


@pytest.fixture(scope="module")
def exported(smoke_wa_run, smoke_baseline_run, tmp_path_factory):
  """A folder with the WA smoke run's final weights and the baseline's best, written by the CLI."""
  out = str(tmp_path_factory.mktemp("exported"))
  assert cli.main(["wacnn_jax", "export", "--workdir", smoke_wa_run.workdir, "--out", out]) == 0
  assert cli.main(["wacnn_jax", "export", "--workdir", smoke_baseline_run.workdir, "--out", out,
                   "--which", "best"]) == 0
  return out


@pytest.fixture(scope="module")
def mini_test_split(exported, cifar10_mini):
  """The 260 test images and labels of the mini archive (the test split only)."""
  net = pretrained.load(os.path.join(exported, "resnet18-wa.json"))
  return pretrained.load_test_data(net, cifar10_mini).test


@pytest.fixture(scope="module")
def final_checkpoint(smoke_wa_run, mini_test_split):
  """The WA smoke run's last checkpoint restored, and its logits of the test images."""
  final = max(checkpointing.Checkpointer(smoke_wa_run.workdir, create=False).all_steps())
  run = restore.restore_checkpoint(smoke_wa_run.config, smoke_wa_run.workdir, step=final)
  return run, run.model.apply(run.variables, transforms.normalize(mini_test_split.images,
                                                           normalization.CIFAR),
                              train=False)


def metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_export_writes_the_record_and_a_table(exported, smoke_wa_run, smoke_baseline_run):
  assert sorted(os.listdir(exported)) == ["README.md", "resnet18-none.json",
                                          "resnet18-none.msgpack", "resnet18-wa.json",
                                          "resnet18-wa.msgpack"]
  steps = checkpointing.Checkpointer(smoke_wa_run.workdir, create=False).all_steps()
  rows = metrics(smoke_wa_run.workdir)
  record = weights.read_record(os.path.join(exported, "resnet18-wa.json"))
  with open(os.path.join(smoke_wa_run.workdir, "model_summary.json")) as f:
    params = json.load(f)["params"]
  assert (record.arch, record.attention, record.block, record.half_precision) == (
      "resnet18", "wa", None, False)
  assert (record.dataset, record.data_source) == ("cifar10-mini",
                                                  smoke_wa_run.config.data.image_folder)
  assert record.preprocessing["normalization"]["source"] == "cifar"
  assert record.class_names[:2] == ("airplane", "automobile") and record.num_classes == 10
  assert record.image_shape == (32, 32, 3)
  assert (record.seed, record.checkpoint, record.step, record.epoch) == (0, "final", max(steps), 2)
  assert (record.epochs_trained, record.num_epochs) == (2, 2)
  assert record.test_top1 == record.test_top1_final == rows[-1]["test_accuracy"]
  assert record.test_top1_best == max(r["test_accuracy"] for r in rows)
  assert record.params == params == 272_474
  assert record.commit == "unknown" or re.fullmatch(r"[0-9a-f]{40}", record.commit)
  with open(os.path.join(smoke_wa_run.workdir, "config.json")) as f:
    assert record.config == json.load(f)
  with open(os.path.join(exported, "resnet18-wa.msgpack"), "rb") as f:
    assert record.sha256 == hashlib.sha256(f.read()).hexdigest()
  # --which best: the checkpoint evaluation takes.
  best = weights.read_record(os.path.join(exported, "resnet18-none.json"))
  assert best.checkpoint == "best" and best.step == checkpointing.Checkpointer(
      smoke_baseline_run.workdir, create=False).best_step()
  assert best.attention == "none" and best.test_top1 == best.test_top1_best
  table = open(os.path.join(exported, "README.md")).read()
  assert f"| resnet18-wa | resnet18 | wa | cifar10-mini (cifar10-mini.tar.gz) | " \
         f"{100 * record.test_top1:.2f} |" in table
  assert "--config.model.attention=none" in table and "--config.num_epochs=2" in table


def test_load_gives_the_checkpoint_exactly(exported, final_checkpoint, mini_test_split):
  run, logits = final_checkpoint
  net = pretrained.load(exported + "/resnet18-wa.msgpack")  # the weights file names its record
  assert net.name == "resnet18-wa" and net.record.step == run.step
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(net.variables), run.variables)
  np.testing.assert_array_equal(
      net.model.apply(net.variables, transforms.normalize(mini_test_split.images,
                                                          normalization.CIFAR), train=False),
      logits)


def test_evaluate_pretrained_on_the_test_split(exported, final_checkpoint, mini_test_split,
                                               cifar10_mini, capsys):
  path = os.path.join(exported, "resnet18-wa.json")
  assert cli.main(["wacnn_jax", "evaluate", "--pretrained", path,
                   f"--image_folder={cifar10_mini}"]) == 0
  out = capsys.readouterr().out
  assert out.startswith(f"weights {path} (epoch 2): 260 test images of cifar10-mini\n")
  # All 260 test images (the run evaluated 256): the top-1 of the checkpoint's logits.
  top1 = float(np.mean(np.argmax(final_checkpoint[1], -1) == mini_test_split.labels))
  assert f"top-1 accuracy {top1:.4f} " in out
  assert not [f for f in os.listdir(exported) if f.endswith((".png", "eval.json"))]


def test_visualize_pretrained_next_to_a_pretrained_baseline(exported, cifar10_mini, tmp_path,
                                                            capsys):
  out = str(tmp_path / "maps.png")
  assert cli.main(["wacnn_jax", "visualize", "--pretrained", f"{exported}/resnet18-wa.json",
                   "--baseline_pretrained", f"{exported}/resnet18-none.json", "--images", "2",
                   f"--image_folder={cifar10_mini}", "--out", out]) == 0
  assert f"stage2_block0/wavelet_attention: wrote {out}" in capsys.readouterr().out
  with Image.open(out) as image:
    assert image.size == (7 * 160, 2 * 160 + 50)  # with the baseline's column


@pytest.mark.parametrize("args, message", [
    ([], "give --workdir (a training run) or --pretrained (trained weights)."),
    (["--workdir", "W", "--pretrained", "P"], "give --workdir or --pretrained, not both."),
    (["--pretrained", "P", "--config", "configs/cifar.py:smoke"],
     "--config describes a training run"),
])
def test_evaluate_command_lines(args, message, capsys):
  with pytest.raises(SystemExit) as exit_:
    cli.main(["wacnn_jax", "evaluate", *args])
  assert exit_.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith(f"error: {message}") and err.count("\n") == 1


def copy_exported(exported, folder, name="resnet18-wa"):
  os.makedirs(folder, exist_ok=True)
  for suffix in (".json", ".msgpack"):
    shutil.copy(os.path.join(exported, name + suffix), os.path.join(folder, name + suffix))
  return os.path.join(folder, name + ".json")


def test_damaged_files_are_one_clear_error(exported, tmp_path, capsys):
  path = copy_exported(exported, str(tmp_path))
  data = weights.weights_path(path)
  original = open(data, "rb").read()
  # One flipped byte, and a file cut short: the sha256 is not the record's.
  for damaged in (original[:1000] + bytes([original[1000] ^ 1]) + original[1001:],
                  original[:len(original) // 2]):
    open(data, "wb").write(damaged)
    with pytest.raises(weights.WeightsError, match=re.escape(data) + " is damaged: its sha256"):
      pretrained.load(path)
  assert cli.main(["wacnn_jax", "evaluate", "--pretrained", path]) == 1
  err = capsys.readouterr().err
  assert err.startswith(f"error: {data} is damaged") and err.count("\n") == 1
  # Intact weights under a record of another model: the arrays are not that model's.
  open(data, "wb").write(original)
  record = weights.read_record(path)
  open(path, "w").write(dataclasses.replace(record, arch="resnet34").to_json())
  with pytest.raises(weights.WeightsError, match=re.escape(data) + " holds other arrays than "
                     r"resnet34 \+ wa with 10 classes.*stage1_block3.*file has none"):
    pretrained.load(path)
  # A record that is not one.
  open(path, "w").write("{\"arch\": ")
  with pytest.raises(weights.WeightsError, match=re.escape(path) + " is damaged: not a JSON"):
    pretrained.load(path)
  open(path, "w").write(json.dumps({"format": "wacnn_jax weights", "format_version": 1,
                                    "arch": "resnet18"}))
  with pytest.raises(weights.WeightsError, match="is damaged: missing field.*attention"):
    pretrained.load(path)


def test_names_and_paths(exported, tmp_path, monkeypatch):
  # The package's shipped folder: its names are its records.
  folder = os.path.join(pretrained.SHIPPED, "cifar10")
  records = os.listdir(folder) if os.path.isdir(folder) else []
  assert pretrained.list() == sorted(f[:-5] for f in records if f.endswith(".json"))
  assert os.path.exists(os.path.join(pretrained.SHIPPED, "README.md"))
  # A shipped folder with two models.
  shipped = tmp_path / "shipped"
  for name in ("resnet18-wa", "resnet18-none"):
    copy_exported(exported, str(shipped / "cifar10"), name)
  monkeypatch.setattr(pretrained, "SHIPPED", str(shipped))
  assert pretrained.list() == ["resnet18-none", "resnet18-wa"] and pretrained.list("cifar100") == []
  assert pretrained.load("resnet18-wa").path == str(shipped / "cifar10" / "resnet18-wa.json")
  with pytest.raises(ValueError, match=r"no shipped model 'resnet18-se' for cifar10; valid "
                     r"names: resnet18-none, resnet18-wa\."):
    pretrained.load("resnet18-se")
  with pytest.raises(ValueError, match="none is shipped for it yet.*shipped for cifar10"):
    pretrained.load("resnet18-wa", dataset="cifar100")
  # Paths: a folder of several models, a training workdir, nothing.
  with pytest.raises(ValueError, match="holds 2 models \\(resnet18-none, resnet18-wa\\)"):
    pretrained.load(exported)
  with pytest.raises(ValueError, match="no such file or folder"):
    pretrained.load(str(tmp_path / "nothing.json"))
  lone = shipped / "cifar10" / "resnet18-wa.msgpack"
  os.remove(shipped / "cifar10" / "resnet18-wa.json")
  with pytest.raises(ValueError, match="has no record .*resnet18-wa.json beside it"):
    pretrained.load(str(lone))


def test_export_of_an_unfinished_run(smoke_wa_run, tmp_path, capsys):
  run = copy_run(smoke_wa_run, tmp_path / "run")
  config_path = os.path.join(run.workdir, "config.json")
  config = json.load(open(config_path))
  open(config_path, "w").write(json.dumps({**config, "num_epochs": 5}))
  out = str(tmp_path / "out")
  assert cli.main(["wacnn_jax", "export", "--workdir", run.workdir, "--out", out]) == 1
  err = capsys.readouterr().err
  assert "stopped at epoch 2 of 5: it has no final weights yet" in err and "--step" in err
  with pytest.raises(SystemExit):
    cli.main(["wacnn_jax", "export", "--workdir", run.workdir, "--out", out, "--which", "best",
              "--step", "8"])
  assert "give --which or --step, not both" in capsys.readouterr().err
  [path] = export.export(run.workdir, out, step=8, name="epoch1")
  record = weights.read_record(path)
  assert (record.checkpoint, record.step, record.epoch, record.epochs_trained,
          record.num_epochs) == ("step", 8, 1, 2, 5)
  assert record.test_top1 == metrics(run.workdir)[0]["test_accuracy"]
  with pytest.raises(weights.WeightsError, match="epoch1.json exists.*--overwrite"):
    export.export(run.workdir, out, step=8, name="epoch1")
  assert sorted(os.listdir(out)) == ["README.md", "epoch1.json", "epoch1.msgpack"]


def test_reproduce_keeps_final_weights_before_deleting_checkpoints(
    smoke_wa_run, cifar10_mini, tmp_path, monkeypatch, capsys):
  """The grid's hook: a finished run's final weights outlive its checkpoints, in <run>/weights/."""
  # The smoke run as the grid's run: a training program that copies it into its --workdir,
  # in a grid with the smoke run's settings.
  train_copy = tmp_path / "train_copy.py"
  train_copy.write_text(
      "import shutil, sys\nworkdir = sys.argv[sys.argv.index('--workdir') + 1]\n"
      "shutil.rmtree(workdir, ignore_errors=True)\n"
      f"shutil.copytree({smoke_wa_run.workdir!r}, workdir)\n")
  monkeypatch.setattr(grid_runs, "RUN_TRAIN", str(train_copy))
  smoke = ["data.max_train_examples=512", "data.max_test_examples=256", "batch_size=64",
           "eval_batch_size=64", "num_epochs=2", "schedule.name=cosine"]
  # Checkpoints under --keep_checkpoints_mb stay, and hold the final weights.
  small = str(tmp_path / "small")
  reproduce.reproduce("cifar10", ["resnet18"], ["wa"], 1, cifar10_mini, small, overrides=smoke,
                      keep_checkpoints_mb=100)
  kept = os.path.join(small, "cifar10", "resnet18-wa", "seed0")
  assert os.path.isdir(os.path.join(kept, "checkpoints"))
  assert not os.path.exists(os.path.join(kept, "weights"))
  # Deleted checkpoints: the final weights are kept first.
  results = str(tmp_path / "results")
  reproduce.reproduce("cifar10", ["resnet18"], ["wa"], 1, cifar10_mini, results,
                      overrides=smoke, keep_checkpoints_mb=0)
  workdir = os.path.join(results, "cifar10", "resnet18-wa", "seed0")
  assert not os.path.exists(os.path.join(workdir, "checkpoints"))
  assert sorted(os.listdir(os.path.join(workdir, "weights"))) == [
      "README.md", "resnet18-wa.json", "resnet18-wa.msgpack"]
  # The final weights are the state the training ended with; the run's folder loads them.
  net = pretrained.load(workdir)
  final = jax.tree.map(lambda x: x[0], smoke_wa_run.state)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(net.variables),
               {"params": final.params, "batch_stats": final.batch_stats})
  assert net.record.checkpoint == "final"
  # export copies them from the run without checkpoints; only they are left.
  out = str(tmp_path / "shipped")
  [path] = export.export(workdir, out)
  assert open(weights.weights_path(path), "rb").read() == open(
      os.path.join(workdir, "weights", "resnet18-wa.msgpack"), "rb").read()
  with pytest.raises(checkpointing.CheckpointError, match="deleted after it finished"):
    export.export(workdir, out, which="best")
  # A model over the size limit keeps nothing.
  run = copy_run(smoke_wa_run, tmp_path / "large")
  assert export.keep_final_weights(run.workdir, max_mb=0.5) == []
  assert "final weights not kept (1.0 MB, over 0.5 MB)" in capsys.readouterr().out
  assert not os.path.exists(os.path.join(run.workdir, "weights"))
