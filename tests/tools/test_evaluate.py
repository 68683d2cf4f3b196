"""`wacnn_jax.tools.evaluate`: checkpoint evaluation, corruptions and the noise sweep."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from tests.helpers import copy_run
from tests.helpers import smoke_run_config
from wacnn_jax import cli
from wacnn_jax.data import transforms
from wacnn_jax.tools import corruptions
from wacnn_jax.tools import eval_results
from wacnn_jax.tools import evaluate
from wacnn_jax.training import checkpointing
from wacnn_jax.training import restore
from wacnn_jax.training import steps






# ---------------------------------------------------------------------------
# Corruptions against numpy / scipy.
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def images():
  return np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)


KEY = jax.random.PRNGKey(7)


@pytest.mark.parametrize("name", ["gaussian", "salt_pepper", "blur"])
def test_strength_zero_is_the_identity(name, images):
  out = jax.jit(corruptions.corruption(name, 0.0))(images, KEY)
  assert out.dtype == jnp.uint8
  np.testing.assert_array_equal(out, images)


def test_gaussian_noise_matches_numpy(images):
  stddev = 0.1
  out = np.asarray(jax.jit(corruptions.corruption("gaussian", stddev))(images, KEY))
  noise = np.asarray(jax.random.normal(KEY, images.shape, jnp.float32))
  expected = np.clip(np.round(images.astype(np.float32) + np.float32(stddev * 255) * noise),
                     0, 255).astype(np.uint8)
  difference = np.abs(out.astype(int) - expected)
  assert difference.max() <= 1 and (difference > 0).mean() < 1e-3  # float rounding only
  assert np.abs(out.astype(float) - images).mean() > 10  # ~0.8 * 25.5 where not clipped


def test_salt_and_pepper_matches_numpy(images):
  amount = 0.3
  out = np.asarray(jax.jit(corruptions.corruption("salt_pepper", amount))(images, KEY))
  u = np.asarray(jax.random.uniform(KEY, images.shape[:-1] + (1,), jnp.float32))
  expected = np.where(u < amount / 2, 255, np.where(u < amount, 0, images)).astype(np.uint8)
  np.testing.assert_array_equal(out, expected)
  changed = (out != images).any(-1).mean()
  assert 0.2 < changed < 0.4


def test_gaussian_blur_matches_scipy(images):
  ndimage = pytest.importorskip("scipy.ndimage")
  for sigma in (0.7, 2.0):
    out = np.asarray(jax.jit(corruptions.corruption("blur", sigma))(images, KEY))
    expected = ndimage.gaussian_filter(images.astype(np.float64), sigma=(0, sigma, sigma, 0),
                                       mode="reflect", truncate=4.0)
    expected = np.clip(np.round(expected), 0, 255).astype(np.uint8)
    difference = np.abs(out.astype(int) - expected)
    assert difference.max() <= 1 and (difference > 0).mean() < 1e-3


def test_bad_strengths_are_refused():
  with pytest.raises(ValueError, match="gaussian_stddevs"):
    corruptions.corruption("gaussian", -0.1)
  with pytest.raises(ValueError, match="salt_pepper_amounts"):
    corruptions.corruption("salt_pepper", 1.5)
  with pytest.raises(ValueError, match="unknown corruption"):
    corruptions.corruption("fog", 0.1)


# ---------------------------------------------------------------------------
# Evaluating a real checkpoint.
# ---------------------------------------------------------------------------


def test_eval_agrees_with_the_training_loop(evaluated_wa_run):
  run, result, printed = evaluated_wa_run
  records = [json.loads(l) for l in open(os.path.join(run.workdir, "metrics.jsonl"))]
  best = max(records, key=lambda r: (r["test_accuracy"], r["step"]))
  assert result["step"] == best["step"]  # --eval.step=-1: the best checkpoint
  assert result["accuracy"] == best["test_accuracy"]
  assert result["top5_accuracy"] == best["test_top5_accuracy"]
  assert result["loss"] == pytest.approx(best["test_loss"], rel=1e-6)
  assert result["count"] == best["test_examples"] == 256
  confusion = np.asarray(result["confusion"])
  assert confusion.shape == (10, 10) and confusion.sum() == 256
  assert np.trace(confusion) / 256 == pytest.approx(result["accuracy"])
  per_class = np.diag(confusion) / confusion.sum(1)
  np.testing.assert_allclose(result["per_class_accuracy"], per_class)
  assert json.load(open(os.path.join(run.workdir, "eval.json")))["accuracy"] == result["accuracy"]
  assert f"top-1 accuracy {result['accuracy']:.4f}" in printed
  assert "confusion matrix" in printed and "airplane" in printed
  with Image.open(os.path.join(run.workdir, "confusion.png")) as image:
    assert image.size[0] > 300 and image.size[1] > 300


def test_noise_sweep(evaluated_wa_run):
  run, result, printed = evaluated_wa_run
  rows = {(r["corruption"], r["strength"]): r for r in result["noise"]}
  assert list(rows) == [("gaussian", 0.0), ("gaussian", 0.5), ("salt_pepper", 0.3),
                        ("blur", 2.0)]
  zero = rows[("gaussian", 0.0)]
  assert zero["accuracy"] == result["accuracy"]  # exactly
  assert zero["top5_accuracy"] == result["top5_accuracy"]
  # The sweep's program differs from the clean evaluation's, so XLA may sum the loss
  # in another order: equal to float32 rounding.
  assert zero["loss"] == pytest.approx(result["loss"], rel=1e-6)
  assert "noise robustness" in printed and "salt_pepper" in printed
  assert "uint8" in result["noise_convention"]
  for key in (("gaussian", 0.5), ("salt_pepper", 0.3), ("blur", 2.0)):
    assert rows[key]["count"] == 256
    assert rows[key]["loss"] != result["loss"], key  # the images did change


def test_heavy_noise_lowers_accuracy_or_changes_predictions(evaluated_wa_run):
  run, result, _ = evaluated_wa_run
  noisy = next(r for r in result["noise"] if r["strength"] == 0.5)
  if noisy["accuracy"] < result["accuracy"]:
    return
  restored = restore.restore_checkpoint(run.config, run.workdir)
  evaluator = evaluate.Evaluator(run.config, restored.state, restored.dataset.test,
                                 restored.dataset.num_classes,
                                 restored.preprocessing.normalization)
  [corrupted] = evaluator(corruptions.corruption("gaussian", 0.5))
  assert corrupted["confusion"] != result["confusion"]


def test_evaluate_a_chosen_step_through_the_cli(smoke_wa_run, tmp_path, capsys):
  run = copy_run(smoke_wa_run, tmp_path / "run")
  records = [json.loads(l) for l in open(os.path.join(run.workdir, "metrics.jsonl"))]
  first = records[0]
  checkpoints = checkpointing.Checkpointer(run.workdir, create=False)
  assert first["step"] in checkpoints.all_steps()
  assert cli.main(["wacnn_jax", "evaluate", "--workdir", run.workdir,
                   f"--eval.step={first['step']}", "--eval.visualize=True"]) == 0
  result = json.load(open(os.path.join(run.workdir, "eval.json")))
  assert result["step"] == first["step"] and result["epoch"] == first["epoch"]
  assert result["accuracy"] == first["test_accuracy"]
  assert "noise" not in result
  assert result["figures"] == ["confusion.png", "attention_maps_wa0.png"]
  with Image.open(os.path.join(run.workdir, "attention_maps_wa0.png")) as image:
    assert image.size[0] > 500
  out = capsys.readouterr().out
  assert "per-class accuracy" in out
  assert out.splitlines()[-1] == (f"wrote in {os.path.abspath(run.workdir)}: eval.json, "
                                  "confusion.png, attention_maps_wa0.png")


def test_missing_or_wrong_checkpoints_are_clear_errors(smoke_wa_run, tmp_path, capsys):
  empty = str(tmp_path / "empty")
  os.makedirs(empty)
  assert cli.main(["wacnn_jax", "evaluate", "--workdir", empty,
                   "--config", "configs/cifar.py:smoke"]) == 1
  err = capsys.readouterr().err
  assert "error: no checkpoints in" in err and "Traceback" not in err
  assert cli.main(["wacnn_jax", "evaluate", "--workdir", empty]) == 1
  assert "config.json does not exist" in capsys.readouterr().err
  # A workdir that does not exist (a typo): one line, and nothing created on the way.
  typo = tmp_path / "typo" / "run"
  for command in (["--workdir", str(typo)], ["--workdir", str(typo), "--config",
                                               "configs/cifar.py:smoke"]):
    assert cli.main(["wacnn_jax", "evaluate", *command]) == 1
    err = capsys.readouterr().err
    assert err == (f"error: --workdir {typo} does not exist; give the folder of a training run "
                   "(the --workdir it was trained with).\n")
  assert not (tmp_path / "typo").exists()

  config = smoke_run_config(smoke_wa_run.config.data.image_folder)
  options = evaluate.default_options()
  options.step = 999
  with pytest.raises(checkpointing.CheckpointError, match="no checkpoint 999.*there are"):
    evaluate.evaluate_checkpoint(config, smoke_wa_run.workdir, options)

  other = smoke_run_config(smoke_wa_run.config.data.image_folder,
                           **{"model.attention": "se"})
  with pytest.raises(checkpointing.CheckpointError, match="another model.*model.attention"):
    evaluate.evaluate_checkpoint(other, smoke_wa_run.workdir)
  assert not os.path.exists(os.path.join(smoke_wa_run.workdir, "eval.json"))


def test_restored_state_matches_the_training_result(smoke_wa_run):
  restored = restore.restore_checkpoint(smoke_wa_run.config, smoke_wa_run.workdir)
  assert restored.step == checkpointing.Checkpointer(
      smoke_wa_run.workdir, create=False).best_step()
  assert restored.dataset.class_names[0] == "airplane"
  logits = restored.model.apply(
      restored.variables, transforms.normalize(restored.dataset.test.images[:8],
                           restored.preprocessing.normalization),
      train=False)
  assert logits.shape == (8, 10) and np.isfinite(np.asarray(logits)).all()
  assert isinstance(restored.state, steps.TrainState)


# ---------------------------------------------------------------------------
# The noise sweep's defaults, and eval.json kept across evaluations.
# ---------------------------------------------------------------------------


def test_noise_sweep_defaults_run_all_three_corruptions():
  pairs = evaluate.noise_sweep(evaluate.default_options())
  for name in ("gaussian", "salt_pepper", "blur"):
    strengths = [s for n, s in pairs if n == name]
    assert len(strengths) >= 4 and strengths == sorted(strengths), (name, strengths)


def _row(name, strength, accuracy):
  return {"corruption": name, "strength": strength, "accuracy": accuracy}


def test_merge_keeps_what_was_not_recomputed():
  base = {"step": 16, "dataset": "d", "count": 4, "class_names": ["a"], "model": {"arch": "r"}}
  earlier = dict(base, noise=[_row("gaussian", 0.1, 0.5), _row("blur", 1.0, 0.4)],
                 replicas=[{"noise": [_row("gaussian", 0.1, 0.5), _row("blur", 1.0, 0.4)]}],
                 figures=["confusion.png", "attention_maps_wa0.png"])
  new = dict(base, noise=[_row("gaussian", 0.1, 0.6), _row("salt_pepper", 0.05, 0.3)],
             replicas=[{"noise": [_row("gaussian", 0.1, 0.6), _row("salt_pepper", 0.05, 0.3)]}],
             figures=["confusion.png"])
  merged, kept = eval_results.merge_with_earlier(new, earlier)
  assert kept == 1
  expected = [_row("gaussian", 0.1, 0.6), _row("salt_pepper", 0.05, 0.3), _row("blur", 1.0, 0.4)]
  assert merged["noise"] == expected and merged["replicas"][0]["noise"] == expected
  assert merged["figures"] == ["confusion.png", "attention_maps_wa0.png"]
  # Another checkpoint (or test set): the new result replaces the old one.
  for key, value in (("step", 8), ("count", 5), ("dataset", "e")):
    assert eval_results.merge_with_earlier(dict(new, **{key: value}), earlier) == (
        dict(new, **{key: value}), 0)


def test_a_later_evaluation_keeps_the_noise_sweep(evaluated_wa_run, tmp_path):
  run, first, _ = evaluated_wa_run
  run = copy_run(run, tmp_path / "run")
  result = evaluate.evaluate_checkpoint(run.config, run.workdir, verbose=False)  # no noise
  saved = json.load(open(os.path.join(run.workdir, "eval.json")))
  assert saved["noise"] == first["noise"] == result["noise"]
  assert saved["replicas"][0]["noise"] == first["replicas"][0]["noise"]
  assert saved["accuracy"] == first["accuracy"]
