"""Trained models in one call: the shipped ones by name, or weights exported from a run.

    from wacnn_jax import pretrained
    pretrained.list()                          # the names shipped for CIFAR-10
    net = pretrained.load("mobilenetv2-wa", dataset="cifar10")   # or a path (below)
    net.predict(["cat.jpg", pil_image, uint8_array], top_k=3)   # [[("cat", 0.91), ...], ...]

`predict` (`predict.top_classes`) takes images of any size and brings them
to the model's as training did (resize, normalisation: `net.preprocessing`).
By hand: `net.model.apply(net.variables, transforms.normalize(images,
net.preprocessing.normalization), train=False)` on uint8 NHWC images of
`net.record.image_shape`; logits are float32 (N, classes), label k named
`net.record.class_names[k]`.

`load` also takes the path of weights exported from a training run
(`python -m wacnn_jax export --workdir RUN --out DIR`, `wacnn_jax.tools.export`): a record
`DIR/<name>.json` or its `DIR/<name>.msgpack`, a folder holding one exported
model, or a finished reproduction run, whose final weights are in `<run>/weights/`.
The format is `weights`'s. The shipped models are in `shipped/<dataset>/`
inside the package (`shipped/README.md` says which and how they are made).

This layer sits beside the trainer: it imports the data layer, the models,
the building blocks and `wacnn_jax.files`, never the trainer or the tools.
"""

from __future__ import annotations

import builtins
import dataclasses
import glob
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from wacnn_jax import models
from wacnn_jax.data import pipeline
from wacnn_jax.data import transforms
from wacnn_jax.data.dataset import Dataset, DatasetError
from wacnn_jax.pretrained import predict
from wacnn_jax.pretrained import weights
from wacnn_jax.pretrained.weights import WeightsError  # pylint: disable=unused-import
from wacnn_jax.pretrained.weights import WeightsRecord

SHIPPED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "shipped")
# The folder in a training workdir where `reproduce` keeps a finished run's final weights.
RUN_WEIGHTS_FOLDER = "weights"


@dataclasses.dataclass(frozen=True)
class Pretrained:
  """A trained model ready for `model.apply(variables, x, train=False)`.

  `model` is the Flax module (no pmap axis; bfloat16 compute where it was
  trained so); `variables` its {"params", "batch_stats"}; `record` what they
  are (classes, accuracies, origin); `path` the record's file.
  """

  model: nn.Module
  variables: dict
  record: WeightsRecord
  path: str

  @property
  def name(self) -> str:
    return os.path.splitext(os.path.basename(self.path))[0]

  @property
  def preprocessing(self) -> transforms.Preprocessing:
    """How the model saw its images in training: size, normalisation, resize mode."""
    return self.record.image_preprocessing

  def predict(self, images, top_k: int = 5) -> builtins.list[builtins.list[tuple[str, float]]]:
    """Per image, the `top_k` class names and probabilities (`predict.top_classes`)."""
    return predict.top_classes(self.model, self.variables, self.preprocessing,
                               self.record.class_names, images, top_k)


def find_all(folder: str) -> builtins.list[str]:
  """The record files (<name>.json with a <name>.msgpack beside it) in `folder`, sorted."""
  pattern = os.path.join(glob.escape(folder), "*" + weights.RECORD_SUFFIX)
  return sorted(p for p in glob.glob(pattern) if os.path.exists(weights.weights_path(p)))


def _names(paths) -> builtins.list[str]:
  return [os.path.splitext(os.path.basename(p))[0] for p in paths]


def list(dataset: str = "cifar10") -> builtins.list[str]:  # pylint: disable=redefined-builtin
  """The names of the models shipped for `dataset` ([] for a dataset with none)."""
  return _names(find_all(os.path.join(SHIPPED, dataset)))


def shipped_datasets() -> builtins.list[str]:
  """The datasets with shipped models."""
  return sorted(d for d in os.listdir(SHIPPED) if find_all(os.path.join(SHIPPED, d)))


def _is_path(name_or_path: str) -> bool:
  return (os.sep in name_or_path or name_or_path.endswith(
      (weights.RECORD_SUFFIX, weights.WEIGHTS_SUFFIX)) or os.path.exists(name_or_path))


def _record_in_folder(folder: str) -> str:
  """The one exported model in `folder` (or in a training run's `weights/`)."""
  found = find_all(folder)
  if not found and os.path.isdir(os.path.join(folder, RUN_WEIGHTS_FOLDER)):
    return _record_in_folder(os.path.join(folder, RUN_WEIGHTS_FOLDER))
  if len(found) == 1:
    return found[0]
  if found:
    raise ValueError(f"{folder} holds {len(found)} models ({', '.join(_names(found))}); "
                     f"name one, e.g. {found[0]}.")
  hint = (f" It is a training workdir: export its weights first (python -m wacnn_jax export "
          f"--workdir {folder} --out DIR), or evaluate it with --workdir."
          if os.path.exists(os.path.join(folder, "config.json")) else "")
  raise ValueError(f"no exported weights (<name>.json and <name>.msgpack) in {folder}.{hint}")


def find(name_or_path: str, dataset: str = "cifar10") -> str:
  """The record file of a shipped model's name, or of exported weights at a path.

  ValueError for an unknown name (listing the shipped ones) or a path with no
  weights.
  """
  if _is_path(name_or_path):
    path = name_or_path
    if os.path.isdir(path):
      return _record_in_folder(path)
    if path.endswith(weights.WEIGHTS_SUFFIX):
      path = os.path.splitext(path)[0] + weights.RECORD_SUFFIX
      if os.path.exists(name_or_path) and not os.path.exists(path):
        raise ValueError(f"{name_or_path} has no record {path} beside it (export writes both).")
    if not os.path.exists(path):
      raise ValueError(f"no exported weights at {name_or_path}: no such file or folder.")
    return path
  path = os.path.join(SHIPPED, dataset, name_or_path + weights.RECORD_SUFFIX)
  if os.path.exists(path):
    return path
  shipped = list(dataset)
  others = [d for d in shipped_datasets() if d != dataset]
  raise ValueError(
      f"no shipped model {name_or_path!r} for {dataset}; "
      + (f"valid names: {', '.join(shipped)}." if shipped else
         "none is shipped for it yet (see wacnn_jax/pretrained/shipped/README.md).")
      + (f" Models are shipped for {', '.join(others)} (dataset=...)." if others else "")
      + " Exported weights load by path (a .json record, or its folder).")


def create_model(record: WeightsRecord, axis_name: str | None = None) -> nn.Module:
  """The model a record describes (`models.create_model`; `axis_name` for pmapped use)."""
  return models.create_model(record.arch, num_classes=record.num_classes,
                             attention=record.attention, block=record.block,
                             dtype=jnp.bfloat16 if record.half_precision else jnp.float32,
                             axis_name=axis_name)


def abstract_variables(model: nn.Module, image_shape) -> Any:
  """{params, batch_stats} shapes and dtypes of `model` for NHWC `image_shape` (H, W, C);
  nothing is computed."""
  x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
  return jax.eval_shape(lambda key, x: model.init(key, x, train=False),
                        jax.random.PRNGKey(0), x)


def load(name_or_path: str, dataset: str = "cifar10") -> Pretrained:
  """A shipped model by name (`list(dataset)`), or exported weights by path; see the module doc.

  The model expects uint8 NHWC images of its size normalised as `.preprocessing` says
  (`.predict` does both).
  Raises ValueError for an unknown name or a path without weights, WeightsError
  (naming the file) for a damaged record or weights file.
  """
  path = find(name_or_path, dataset)
  record = weights.read_record(path)
  model = create_model(record)
  variables = weights.read_variables(path, record, abstract_variables(model, record.image_shape))
  return Pretrained(model, jax.tree.map(jnp.asarray, variables), record, path)


def data_config(record: WeightsRecord,
                image_folder: str | None = None) -> ml_collections.ConfigDict:
  """`config.data` that reads the test split of the record's dataset, and only it, at the
  model's image size.

  From `image_folder` (a folder or archive) when given, else from the image
  folder or archive the model was trained on (`record.data_source`, where it
  is on this machine), else tensorflow-datasets' `record.dataset`. The train
  split is set to the test split, so that the (larger) training images are
  not read. ValueError when the model was trained on an image folder that is
  not here and none is given.
  """
  if image_folder is None and record.data_source != "tfds":
    if not os.path.exists(os.path.expanduser(record.data_source)):
      raise ValueError(
          f"the model was trained on the images of {record.data_source!r} ({record.dataset}), "
          "which is not on this machine: give its test images with --image_folder (a folder "
          "<root>/test/<class>/... or an archive of one).")
    image_folder = record.data_source
  return ml_collections.ConfigDict({
      "dataset": record.dataset, "data_dir": None, "image_folder": image_folder,
      "download": True, "train_split": "test", "test_split": "test",
      "max_train_examples": 0, "max_test_examples": 0,
      "image_size": tuple(record.image_shape[:2]),
      "resize": record.image_preprocessing.resize, "normalization": "cifar"})


def check_dataset(net: Pretrained, dataset: Dataset) -> None:
  """ValueError when `dataset`'s classes or image size are not those the model was trained on."""
  trained = (tuple(net.record.class_names), tuple(net.record.image_shape))
  given = (tuple(dataset.class_names), tuple(dataset.image_shape))
  if given != trained:
    raise ValueError(
        f"{net.path} was trained on {trained[1]} images of the classes "
        f"{builtins.list(trained[0])}; the test data {dataset.name!r} has {given[1]} images "
        f"of {builtins.list(given[0])}. Give the images of its dataset "
        f"({net.record.dataset}, {net.record.data_source}).")


def load_test_data(net: Pretrained, image_folder: str | None = None) -> Dataset:
  """The test split of the model's dataset (`data_config`), checked by `check_dataset`."""
  config = data_config(net.record, image_folder)
  try:
    dataset = pipeline.load(config, test_in_memory=True)
  except DatasetError as e:
    if config.image_folder:
      raise
    raise DatasetError(f"{net.path} was trained on tfds's {net.record.dataset!r}, which "
                       f"cannot be read here ({str(e).split('. ')[0]}): give its test images "
                       "as image_folder (--image_folder: an image folder <root>/test/<class>/..., "
                       "an archive of one, or an official CIFAR archive).") from e
  check_dataset(net, dataset)
  return dataset
