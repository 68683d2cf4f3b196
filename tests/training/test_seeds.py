"""`num_seeds`: R replicas in one program, each equal to the single-seed run of its seed."""

import json
import os
import shutil

import jax
import numpy as np
from PIL import Image
import pytest

from tests.helpers import smoke_run_config
from tests.tools.test_report import table_rows as report_rows
from wacnn_jax import cli
from wacnn_jax import pretrained
from wacnn_jax.tools import evaluate
from wacnn_jax.tools import report
from wacnn_jax.training import checkpointing
from wacnn_jax.training import epochs
from wacnn_jax.training import restore
from wacnn_jax.training import steps
from wacnn_jax.training import train








from wacnn_jax.tools import export

# Replica k and the single run of seed k agree up to float reordering, not bit
# for bit: vmapping the convolutions over R (grouped convolutions) sums in
# another order, ~1e-7 relative at the first step, and training amplifies it
# (ReLU and BatchNorm over 16 random images; at the smoke recipe's learning
# rate 0.1, ~100x per step). So these runs use learning rate 0.001, after whose
# 8 steps parameters and BatchNorm statistics differ by at most ~6e-5
# (absolute), the losses by ~3e-6 relative, and the accuracies not at all. A
# wrong seed differs by O(1) in the parameters, a wrong data order or
# augmentation key by ~1e-2 in the train loss.
RTOL, ATOL, METRIC_RTOL = 1e-3, 1e-4, 1e-4


@pytest.fixture(scope="module")
def random_folder(tmp_path_factory):
  """64 train and 32 test random PNG images, 4 classes."""
  root = tmp_path_factory.mktemp("random_images")
  rng = np.random.default_rng(0)
  for split, n in (("train", 16), ("test", 8)):
    for label in ("a", "b", "c", "d"):
      os.makedirs(root / split / label)
      for i in range(n):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
            root / split / label / f"{i}.png")
  return str(root)


def seeds_config(folder, **overrides):
  """configs/cifar.py:smoke on `folder`: 2 epochs of 4 steps of batch 16 (augmented)."""
  return smoke_run_config(folder, batch_size=16, eval_batch_size=16,
                          **{"optimizer.learning_rate": 0.001, **overrides})


@pytest.fixture(scope="module")
def runs(random_folder, tmp_path_factory):
  """{"both": (workdir, state) of num_seeds=2, 0 and 1: the single runs of seeds 0 and 1}."""
  result = {}
  for name, overrides in (("both", {"num_seeds": 2}), (0, {"seed": 0}), (1, {"seed": 1})):
    workdir = str(tmp_path_factory.mktemp(f"seeds_{name}"))
    result[name] = (workdir, train.train_and_evaluate(seeds_config(random_folder, **overrides),
                                                      workdir))
  return result


def metrics(workdir):
  return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]


TIMINGS = ("images_per_sec", "compile_seconds", "startup_seconds", "epoch_seconds")


def test_each_replica_equals_the_single_run_of_its_seed(runs):
  both_dir, both = runs["both"]
  assert both.step.shape == (2,)
  rows = metrics(both_dir)
  assert [(r["epoch"], r["replica"], r["seed"]) for r in rows] == [
      (1, 0, 0), (1, 1, 1), (2, 0, 0), (2, 1, 1)]
  for seed in (0, 1):
    single_dir, single = runs[seed]
    assert single.step.shape == (1,)
    for name in ("params", "batch_stats"):
      ours = jax.tree.leaves(steps.replica(getattr(both, name), seed))
      theirs = jax.tree.leaves(steps.replica(getattr(single, name), 0))
      assert len(ours) == len(theirs) > 0
      for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL, err_msg=name)
    np.testing.assert_array_equal(steps.replica(both.rng, seed), steps.replica(single.rng, 0))
    assert both.step[seed] == single.step[0] == 8
    ours = [r for r in rows if r["replica"] == seed]
    theirs = metrics(single_dir)
    assert [r["seed"] for r in theirs] == [seed, seed] and len(ours) == 2
    for a, b in zip(ours, theirs):
      assert a.keys() == b.keys()
      for key in a.keys() - {"replica", *TIMINGS}:
        assert a[key] == pytest.approx(b[key], rel=METRIC_RTOL), key
  # The replicas are different models.
  a, b = (jax.tree.leaves(steps.replica(both.params, k)) for k in (0, 1))
  assert not np.allclose(a[0], b[0])


def test_first_divergence_names_the_replicas():
  diverged = np.array([[False, False, True, True],
                       [False, True, True, False],
                       [False, False, False, False]])
  assert epochs.first_divergence(diverged) == (1, [1])
  diverged[0, 1] = True
  assert epochs.first_divergence(diverged) == (1, [0, 1])
  message = epochs.divergence_message(
      0, 4, 1, [0.5, float("nan"), 1.0, 1.0], [0.1] * 4, None, "/ckpt", replicas=[1],
      seeds=[5, 6, 7])
  assert "at step 2 (epoch 1, step 2 of 4) in replica 1 (seed 6) of 3: train loss nan" in message


def test_checkpoint_holds_every_replica_and_resumes(runs, random_folder, tmp_path):
  both_dir, both = runs["both"]
  copy = str(tmp_path / "run")
  shutil.copytree(both_dir, copy)
  with checkpointing.Checkpointer(copy, create=False) as checkpoints:
    meta = checkpoints.read_meta(max(checkpoints.all_steps()))
  assert meta["identity"]["num_seeds"] == 2
  accuracies = [r["test_accuracy"] for r in metrics(both_dir) if r["epoch"] == 2]
  assert meta["replica_test_accuracy"] == accuracies
  assert meta["test_accuracy"] == pytest.approx(np.mean(accuracies))
  with pytest.raises(checkpointing.CheckpointError, match="num_seeds: checkpoint has 2, config has 3"):
    train.train_and_evaluate(seeds_config(random_folder, num_seeds=3, num_epochs=3), copy)
  # Resuming trains on from the checkpoint of both replicas: epoch 3's rows follow.
  state = train.train_and_evaluate(seeds_config(random_folder, num_seeds=2, num_epochs=3), copy)
  assert state.step.tolist() == [12, 12]
  assert [(r["epoch"], r["replica"]) for r in metrics(copy)][-2:] == [(3, 0), (3, 1)]


def test_evaluate_reports_each_replica_and_their_mean(runs, random_folder, tmp_path, capsys):
  both_dir, _ = runs["both"]
  copy = str(tmp_path / "run")
  shutil.copytree(both_dir, copy)
  config = seeds_config(random_folder, num_seeds=2)
  options = evaluate.default_options()
  options.noise, options.gaussian_stddevs = True, (0.0, 0.3)
  result = evaluate.evaluate_checkpoint(config, copy, options)
  rows = [r for r in metrics(both_dir) if r["step"] == result["step"]]
  assert [(r["replica"], r["seed"]) for r in result["replicas"]] == [(0, 0), (1, 1)]
  for replica, row in zip(result["replicas"], rows):
    assert replica["accuracy"] == row["test_accuracy"]
    assert replica["loss"] == pytest.approx(row["test_loss"], rel=1e-6)
    assert replica["noise"][0]["accuracy"] == replica["accuracy"]  # strength 0
  losses = [r["loss"] for r in result["replicas"]]
  assert result["loss"] == pytest.approx(np.mean(losses))
  assert result["loss_std"] == pytest.approx(np.std(losses, ddof=1))
  assert np.sum(result["confusion"]) == 2 * 32
  noisy = result["noise"][1]
  assert noisy["accuracy"] == pytest.approx(np.mean([r["noise"][1]["accuracy"]
                                                     for r in result["replicas"]]))
  printed = capsys.readouterr().out
  assert f"loss {result['loss']:.4f} ± {result['loss_std']:.4f}" in printed
  assert "replica 1 (seed 1): top-1" in printed
  # A config with another replica count is refused before any arrays are read.
  with pytest.raises(checkpointing.CheckpointError, match="num_seeds: checkpoint has 2"):
    evaluate.evaluate_checkpoint(seeds_config(random_folder), copy)


def test_report_counts_replicas_as_runs(runs):
  result = report.make_report([runs["both"][0], runs[0][0], runs[1][0]],
                              os.path.join(runs["both"][0] + "_report"))
  _, groups = report_rows(result["markdown"], "Mean ± std over seeds")
  header, rows = report_rows(result["markdown"], "Runs")
  assert [r[header.index("seed")] for r in rows] == ["0", "1", "0", "1"]
  assert rows[1][header.index("run")].endswith("(replica 1)")
  finals = [r["test_accuracy"] for r in metrics(runs["both"][0]) if r["epoch"] == 2]
  assert rows[1][header.index("final top-1 (%)")] == f"{100 * finals[1]:.2f}"
  # One configuration: two replicas and two separate runs.
  assert len(groups) == 1 and groups[0][3] == "4" and groups[0][4] == "0, 1, 0, 1"


def test_visualize_chooses_the_replica(runs, random_folder):
  both_dir, both = runs["both"]
  config = seeds_config(random_folder, num_seeds=2)
  restored = restore.restore_checkpoint(config, both_dir, replica=1)
  np.testing.assert_array_equal(restored.variables["params"]["classifier"]["kernel"],
                                both.params["classifier"]["kernel"][1])
  with pytest.raises(ValueError, match="replica 2 is not in the run.*num_seeds=2"):
    restore.restore_checkpoint(config, both_dir, replica=2)
  assert cli.main(["wacnn_jax", "visualize", "--workdir", both_dir, "--replica=2"]) == 1


def test_export_writes_one_model_per_replica(runs, tmp_path):
  both_dir, both = runs["both"]
  paths = export.export(both_dir, str(tmp_path), name="r18")
  assert [os.path.basename(p) for p in paths] == ["r18-seed0.json", "r18-seed1.json"]
  finals = [r["test_accuracy"] for r in metrics(both_dir) if r["epoch"] == 2]
  for k, path in enumerate(paths):
    net = pretrained.load(path)
    assert (net.record.seed, net.record.test_top1_final) == (k, finals[k])
    np.testing.assert_array_equal(net.variables["params"]["classifier"]["kernel"],
                                  both.params["classifier"]["kernel"][k])


def _conv(w, x):
  return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


@pytest.mark.parametrize("replicas", [1, 3])
def test_map_replicas_equals_vmap_and_runs_one_replica_unbatched(replicas):
  rng = np.random.default_rng(0)
  w = rng.normal(size=(replicas, 3, 3, 4, 8)).astype(np.float32)
  x = rng.normal(size=(replicas, 2, 8, 8, 4)).astype(np.float32)
  out = steps.map_replicas(_conv, w, x)
  assert out.shape == (replicas, 2, 8, 8, 8)
  np.testing.assert_allclose(out, jax.vmap(_conv)(w, x), rtol=1e-5, atol=1e-5)
  program = str(jax.make_jaxpr(lambda w, x: steps.map_replicas(_conv, w, x))(w, x))
  if replicas == 1:  # the single-model program: no grouped convolution, no transposes
    assert "feature_group_count=1" in program and "transpose" not in program
  else:
    assert f"feature_group_count={replicas}" in program
