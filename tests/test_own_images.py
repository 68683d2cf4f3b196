"""One's own images, any size: a 64x64 folder and a folder of mixed sizes train end to end with
their own statistics and the random-resized crop, in a CIFAR and an ImageNet-layout backbone;
the exported model evaluates and predicts by its path alone."""

import contextlib
import io
import json
import os

import jax
import numpy as np
from PIL import Image
import pytest

from tests import helpers
from wacnn_jax import cli
from wacnn_jax import pretrained
from wacnn_jax.data import normalization
from wacnn_jax.tools import evaluate
from wacnn_jax.tools import export
from wacnn_jax.training import train

CLASSES = ("circle", "square", "stripes")


def _drawing(kind: str, h: int, w: int, rng) -> np.ndarray:
  """A class a network learns from a few examples: a disc, a box or stripes, on noise."""
  y, x = np.mgrid[:h, :w]
  cy, cx, r = h * rng.uniform(0.35, 0.65), w * rng.uniform(0.35, 0.65), min(h, w) / 4
  mask = {"circle": (y - cy) ** 2 + (x - cx) ** 2 < r ** 2,
          "square": (abs(y - cy) < r) & (abs(x - cx) < r),
          "stripes": (x // max(2, w // 8)) % 2 == 0}[kind]
  pixels = rng.integers(0, 60, (h, w, 3))
  pixels[mask] = [230, 200 if kind == "square" else 40, 40]
  return pixels.astype(np.uint8)


def make_folder(root, sizes, train=8, test=4, seed=0) -> str:
  """<root>/{train,test}/<class>/NN.jpg, image k of (h, w) = sizes[k % len(sizes)], plus a
  notes file and a .DS_Store as folders have them."""
  rng = np.random.default_rng(seed)
  k = 0
  for split, count in (("train", train), ("test", test)):
    for kind in CLASSES:
      folder = os.path.join(root, split, kind)
      os.makedirs(folder)
      for i in range(count):
        h, w = sizes[k % len(sizes)]
        Image.fromarray(_drawing(kind, h, w, rng)).save(os.path.join(folder, f"{i:02d}.jpg"),
                                                         quality=95)
        k += 1
  open(os.path.join(root, "train", "notes.txt"), "w").write("taken in the garden")
  open(os.path.join(root, "train", "circle", ".DS_Store"), "wb").write(b"\0\0")
  return str(root)


def _config(folder, arch, **overrides):
  config = helpers.smoke_run_config(folder, **{
      "model.arch": arch, "batch_size": 8, "eval_batch_size": 6, "num_epochs": 1,
      "data.max_train_examples": 0, "data.max_test_examples": 0, "data.cache_dir": "",
      **overrides})
  return config


@pytest.fixture(scope="module")
def folder_64(tmp_path_factory):
  return make_folder(tmp_path_factory.mktemp("own") / "shapes64", [(64, 64)])


@pytest.fixture(scope="module")
def trained_64(folder_64, tmp_path_factory):
  """resnet18 (CIFAR layout) + WA, one epoch on the 64x64 folder."""
  workdir = str(tmp_path_factory.mktemp("runs") / "shapes64")
  config = _config(folder_64, "resnet18")
  train.train_and_evaluate(config, workdir)
  return config, workdir


def _dataset_json(workdir):
  with open(os.path.join(workdir, "dataset.json")) as f:
    return json.load(f)


def test_a_64x64_folder_trains_with_its_own_statistics(trained_64, folder_64):
  _, workdir = trained_64
  data = _dataset_json(workdir)
  assert data["image_shape"] == [64, 64, 3] and data["class_names"] == list(CLASSES)
  preprocessing = data["preprocessing"]
  assert preprocessing["augmentation"] == "random_resized_crop"
  assert preprocessing["normalization"]["source"] == "dataset"
  images = np.stack([np.asarray(Image.open(os.path.join(folder_64, "train", c, f)))
                     for c in CLASSES for f in sorted(os.listdir(
                         os.path.join(folder_64, "train", c))) if f.endswith(".jpg")])
  np.testing.assert_allclose(preprocessing["normalization"]["mean"],
                             normalization.of_images(images).mean, rtol=1e-9)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    record = json.loads(f.readline())
  assert record["test_examples"] == 12 and np.isfinite(record["test_loss"])
  assert record["test_diverged"] is False


def test_mixed_sizes_train_in_an_imagenet_layout(tmp_path):
  folder = make_folder(tmp_path / "mixed", [(80, 60), (64, 64), (50, 70), (120, 90)])
  workdir = str(tmp_path / "run")
  config = _config(folder, "resnet18_imagenet", **{"data.image_size": 64,
                                                   "model.attention": "wa"})
  train.train_and_evaluate(config, workdir)
  data = _dataset_json(workdir)
  assert data["image_shape"] == [64, 64, 3]
  assert data["preprocessing"]["augmentation"] == "random_resized_crop"
  assert data["preprocessing"]["resize"] == "crop"


def test_the_exported_model_evaluates_and_predicts_by_its_path_alone(trained_64, folder_64,
                                                                     tmp_path, monkeypatch):
  _, workdir = trained_64
  # `predict` keeps its compiled programs in the per-machine folder, as every command does.
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "xla"))
  [path] = export.export(workdir, str(tmp_path / "weights"))
  net = pretrained.load(path)
  record = net.record
  assert (record.dataset, record.data_source) == ("shapes64", folder_64)
  assert record.preprocessing["normalization"]["source"] == "dataset"
  assert net.preprocessing.image_size == (64, 64)
  # Evaluated on its own test split, found from the record: each image once (12, not 24).
  result = evaluate.evaluate_pretrained(path, verbose=False)
  assert result["count"] == 12 and result["dataset"] == "shapes64"
  assert np.sum(result["confusion"]) == 12
  # Predicted from files, Pillow images and arrays of other sizes.
  picture = os.path.join(folder_64, "test", "circle", "00.jpg")
  pil = Image.open(picture).resize((100, 80))
  array = np.asarray(Image.open(picture).resize((33, 47)))
  tops = net.predict([picture, pil, array], top_k=2)
  assert [len(top) for top in tops] == [2, 2, 2]
  for top in tops:
    assert {name for name, _ in top} <= set(CLASSES)
    assert top[0][1] >= top[1][1] and 0 <= top[1][1] <= top[0][1] <= 1
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    assert cli.main(["wacnn_jax/__main__.py", "predict", "--pretrained", path, picture,
                     "--top_k=3"]) == 0
  line = printed.getvalue().strip()
  assert line.startswith(f"{picture}: ") and line.count(",") == 2
  assert jax.config.jax_compilation_cache_dir == str(tmp_path / "xla")


def test_an_unpacked_folder_is_counted_once_by_evaluate_pretrained(trained_64, folder_64,
                                                                   tmp_path):
  _, workdir = trained_64
  [path] = export.export(workdir, str(tmp_path / "weights"))
  result = evaluate.evaluate_pretrained(path, image_folder=folder_64, verbose=False)
  assert result["count"] == 12
  assert [sum(row) for row in result["confusion"]] == [4, 4, 4]


def test_a_model_of_a_folder_that_is_gone_says_how_to_give_it(trained_64, tmp_path):
  _, workdir = trained_64
  [path] = export.export(workdir, str(tmp_path / "weights"))
  record_path = path
  with open(record_path) as f:
    fields = json.load(f)
  fields["data_source"] = str(tmp_path / "moved_away")
  with open(record_path, "w") as f:
    json.dump(fields, f)
  with pytest.raises(ValueError, match="not on this machine: give its test images with "
                                       "--image_folder"):
    evaluate.evaluate_pretrained(record_path, verbose=False)
