"""`wacnn_jax.tools.visualize`: WA maps and feature maps of real checkpoints, and the figures."""

import json
import os
import shutil

import jax
import numpy as np
from PIL import Image
import pytest
import pywt

from wacnn_jax import cli
from wacnn_jax.data import normalization
from wacnn_jax.data import pipeline
from wacnn_jax.data import transforms
from wacnn_jax import models
from wacnn_jax.tools import figures
from wacnn_jax.tools import intermediates
from wacnn_jax.tools import visualize
from wacnn_jax.training import restore
from wacnn_jax.training import states






BLOCK, LAYER = "stage2_block0/wavelet_attention", "stage2_block0/conv1"


@pytest.fixture(scope="module")
def restored(smoke_wa_run, smoke_baseline_run):
  """(WA, baseline) checkpoints restored on the same dataset."""
  dataset = pipeline.load(smoke_wa_run.config.data)
  return (restore.restore_checkpoint(smoke_wa_run.config, smoke_wa_run.workdir, dataset=dataset),
          restore.restore_checkpoint(smoke_baseline_run.config, smoke_baseline_run.workdir,
                                      dataset=dataset))


@pytest.fixture(scope="module")
def images(restored):
  return visualize.pick_images(restored[0].dataset.test, 3)


def titles(fig):
  return [ax.get_title() for ax in fig.axes]


def test_wa_blocks_and_the_layers_that_follow_them(restored):
  wa, baseline = restored
  assert intermediates.wa_blocks(wa.model, wa.variables) == [BLOCK]
  assert intermediates.layer_pairs(wa.model, wa.variables) == [(BLOCK, LAYER)]
  assert intermediates.wa_blocks(baseline.model, baseline.variables) == []


@pytest.mark.parametrize("arch, expected", [
    ("vgg11_bn", [(f"wavelet_attention{k}", f"conv{c}") for k, c in enumerate((1, 2, 4, 6))]
     + [("wavelet_attention4", None)]),  # the last one feeds the classifier
    ("mobilenetv2", [(f"stage{s}_block0/wavelet_attention", f"stage{s}_block0/depthwise_conv")
                     for s in (3, 4, 6)]),
])
def test_layer_pairs_of_the_plain_networks(arch, expected):
  model = models.create_model(arch, num_classes=10, attention="wa")
  variables = jax.eval_shape(lambda: states.initial_variables(
      model, (32, 32, 3), jax.random.PRNGKey(0)))
  assert intermediates.layer_pairs(model, variables) == expected


def test_sown_maps_are_the_wa_block(restored, images):
  wa, _ = restored
  pixels, _ = images
  previous = "stage1_block2"  # the WA block's input
  acts = intermediates.activations(wa.model, wa.variables, pixels, [previous, LAYER],
                                  normalization=normalization.CIFAR)
  maps = acts.wa[BLOCK]
  assert maps["attention"].shape == maps["ll"].shape == maps["out"].shape == (3, 16, 16, 16)
  np.testing.assert_allclose(maps["attention"].sum(-1), 1, rtol=1e-5)
  np.testing.assert_allclose(maps["out"], maps["ll"] * (1 + maps["attention"]), rtol=1e-5,
                             atol=1e-6)
  x = acts.features[previous]
  ll, (ch, cv, _) = pywt.dwt2(x, "haar", axes=(1, 2))
  np.testing.assert_allclose(maps["ll"], ll, rtol=1e-4, atol=1e-5)
  e = np.exp(ch + cv - (ch + cv).max(-1, keepdims=True))
  np.testing.assert_allclose(maps["attention"], e / e.sum(-1, keepdims=True), atol=1e-5)
  assert acts.features[LAYER].shape == (3, 16, 16, 32)
  logits = wa.model.apply(wa.variables, transforms.normalize(pixels, normalization.CIFAR),
                          train=False)
  np.testing.assert_allclose(acts.logits, logits, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="no layer"):
    intermediates.activations(wa.model, wa.variables, pixels, ["stage9/conv"],
                              normalization=normalization.CIFAR)


def test_attention_figure_next_to_the_baseline(restored, images):
  wa, baseline = restored
  pixels, labels = images
  [(block, fig)] = visualize.attention_figures(
      wa.model, wa.variables, pixels, normalization=normalization.CIFAR,
      baseline=(baseline.model, baseline.variables), labels=labels,
      class_names=wa.dataset.class_names)
  assert block == BLOCK
  assert len(fig.axes) == 3 * 7
  assert titles(fig)[:7] == ["input", "LL", "attention (max over C)", "LL x attention",
                             "re-weighted LL", f"{LAYER}\n(WA)", f"{LAYER}\n(baseline)"]
  assert all(t == "" for t in titles(fig)[7:])
  assert fig.axes[0].get_ylabel().startswith(f"true: {wa.dataset.class_names[labels[0]]}")
  assert "baseline:" in fig.axes[0].get_ylabel()
  assert fig.get_suptitle() == f"Wavelet attention at {BLOCK}"

  acts = intermediates.activations(wa.model, wa.variables, pixels,
                                  normalization=normalization.CIFAR)
  fig = figures.attention_figure(acts, BLOCK)  # the WA block alone
  assert len(fig.axes) == 3 * 5


def test_feature_figures(restored, images, tmp_path):
  wa, baseline = restored
  pixels, labels = images
  runs = {name: intermediates.activations(r.model, r.variables, pixels, [LAYER],
                                               normalization=normalization.CIFAR)
          for name, r in (("WA", wa), ("baseline", baseline))}
  fig = figures.feature_maps_figure(pixels, [LAYER], runs, labels=labels,
                                      class_names=wa.dataset.class_names)
  assert len(fig.axes) == 3 * 3
  assert titles(fig)[:3] == ["input", f"{LAYER}\n(WA)", f"{LAYER}\n(baseline)"]

  fig = figures.feature_grid_figure(runs["WA"].features[LAYER][0], title=LAYER, channels=12,
                                      columns=8)
  assert [t for t in titles(fig) if t] == [f"ch {k}" for k in range(12)]
  assert len(fig.axes) == 16  # 2 rows of 8; the 4 unused panels are hidden

  written = visualize.save_model_figures(
      baseline.model, baseline.variables, pixels, labels, wa.dataset.class_names,
      str(tmp_path), normalization=normalization.CIFAR, baseline_layers=[LAYER])
  assert written == [os.path.join(str(tmp_path), "feature_maps.png")]
  with Image.open(written[0]) as image:
    assert image.size == (400, 3 * 160 + 50)  # 2 panels of 1.6", at least 4" wide


def test_confusion_figure():
  confusion = np.arange(9).reshape(3, 3)
  fig = figures.confusion_figure(confusion, ["a", "b", "c"], title="t")
  ax = fig.axes[0]
  assert ax.get_title() == "t" and len(fig.axes) == 2  # matrix and colour bar
  assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]
  assert sorted(int(t.get_text()) for t in ax.texts) == list(range(9))


def test_command_line(smoke_wa_run, smoke_baseline_run, tmp_path, capsys):
  out = str(tmp_path / "maps.png")
  assert cli.main(["wacnn_jax", "visualize", "--workdir", smoke_wa_run.workdir,
                   "--baseline", smoke_baseline_run.workdir, "--images", "2", "--out", out]) == 0
  assert f"{BLOCK}: wrote {out}" in capsys.readouterr().out
  with Image.open(out) as image:
    assert image.size == (7 * 160, 2 * 160 + 50)
  assert cli.main(["wacnn_jax", "visualize", "--workdir", smoke_baseline_run.workdir,
                   "--out", out]) == 1
  assert "no WA blocks" in capsys.readouterr().err


@pytest.mark.parametrize("field, value, named", [
    ("arch", "resnet34", "architecture resnet34 (baseline) vs resnet18"),
    ("dataset", "cifar100", "dataset cifar100 (baseline) vs "),
    ("classes", ["a", "b"], "classes 2 (a, b, ...) (baseline) vs 10 (airplane, automobile, bird"),
])
def test_a_baseline_of_another_network_or_data_is_named(smoke_wa_run, smoke_baseline_run,
                                                        tmp_path, capsys, field, value, named):
  """The comparison names what differs before restoring anything (a copy of the baseline run
  whose records say it is another network or data)."""
  other = tmp_path / "other"
  shutil.copytree(smoke_baseline_run.workdir, other, ignore=shutil.ignore_patterns(".lock"))
  name = "config.json" if field == "arch" else "dataset.json"
  record = json.loads((other / name).read_text())
  if field == "arch":
    record["model"]["arch"] = value
  else:
    record["name" if field == "dataset" else "class_names"] = value
  (other / name).write_text(json.dumps(record))
  out = str(tmp_path / "maps.png")
  assert cli.main(["wacnn_jax", "visualize", "--workdir", smoke_wa_run.workdir,
                   "--baseline", str(other), "--out", out]) == 1
  err = capsys.readouterr().err
  assert err.startswith(f"error: the baseline {other} is not the WA model's network without WA: ")
  assert named in err and "Give a baseline trained with the same architecture" in err
  assert len(err.splitlines()) == 1 and not os.path.exists(out)
