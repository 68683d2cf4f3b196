"""A checkpoint and exported weights written before the package was arranged in layers still load
and give the logits they gave then (tests/data/README.md, `before_layers/`)."""

import os
import shutil

import numpy as np

from tests.helpers import CIFAR10_MINI
from tests.helpers import REPO_ROOT
from wacnn_jax.data import pipeline
from wacnn_jax.data import transforms
from wacnn_jax import pretrained
from wacnn_jax.training import restore

BEFORE = os.path.join(REPO_ROOT, "tests", "data", "before_layers")


def saved_logits():
  return np.load(os.path.join(BEFORE, "logits.npz"))


def test_the_checkpoint_restores_to_the_same_logits(tmp_path):
  workdir = shutil.copytree(os.path.join(BEFORE, "run"), tmp_path / "run")
  config = restore.load_config(str(workdir))
  config.data.image_folder = CIFAR10_MINI
  run = restore.restore_checkpoint(config, str(workdir), dataset=pipeline.load(config.data))
  assert run.step == 4 and run.meta["epoch"] == 1
  saved = saved_logits()
  logits = run.model.apply(run.variables,
                           transforms.normalize(saved["images"], run.preprocessing.normalization),
                          train=False)
  np.testing.assert_allclose(logits, saved["checkpoint_logits"], rtol=1e-5, atol=1e-5)


def test_the_exported_weights_load_to_the_same_logits():
  net = pretrained.load(os.path.join(BEFORE, "weights", "resnet18-wa.json"))
  assert (net.record.arch, net.record.attention, net.record.epoch) == ("resnet18", "wa", 1)
  saved = saved_logits()
  logits = net.model.apply(net.variables,
                           transforms.normalize(saved["images"], net.preprocessing.normalization),
                          train=False)
  np.testing.assert_allclose(logits, saved["weights_logits"], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(saved["weights_logits"], saved["checkpoint_logits"], atol=0)
