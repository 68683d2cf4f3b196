"""The weights format: one trained model as two files with one name, in one folder.

    <name>.msgpack   its parameters and BatchNorm statistics, {"params", "batch_stats"}
                     (flax.serialization.msgpack_serialize; no optimiser state)
    <name>.json      its record (`WeightsRecord`): the model, the data it was
                     trained on (name, source, classes, image size, normalisation),
                     its test top-1, where it came from, and the sha256 of
                     <name>.msgpack, which reading checks (version 2; version 1,
                     without the source's checksum and the preprocessing, reads as
                     the reference's CIFAR preprocessing)

    save(folder, name, variables, record)     # -> the record's path
    record = read_record(record_path)
    variables = read_variables(record_path, record, expected=abstract_variables)

Why msgpack rather than an Orbax checkpoint: one file, the arrays' raw bytes
(4 bytes per float32 parameter, nothing else), and read with msgpack and numpy
alone (`flax.serialization.msgpack_restore`), so loading needs neither Orbax
nor TensorStore and does not depend on their on-disk layouts, which change
between versions. Flax's msgpack encoding (nested maps of names, each array a
msgpack extension holding its dtype name, shape and C-order bytes) has not
changed since flax 0.3.

A damaged pair is refused with a `WeightsError` naming the file: a weights
file whose sha256 is not its record's (modified, cut short), a record that is
not JSON or lacks fields, and weights whose arrays are not the model's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Mapping

import jax
from flax import serialization
import ml_collections
import numpy as np

from wacnn_jax.data import transforms
from wacnn_jax.files import atomic

FORMAT = "wacnn_jax weights"
FORMAT_VERSION = 2
# Version 1 records lack these fields; they are read with these values (the only
# preprocessing there was: `transforms.Preprocessing.reference` at the record's size).
ADDED_IN_VERSION_2 = ("data_source_sha256", "preprocessing")
WEIGHTS_SUFFIX = ".msgpack"
RECORD_SUFFIX = ".json"


class WeightsError(RuntimeError):
  """A weights file or its record is missing, damaged, or not the model's."""


@dataclasses.dataclass(frozen=True)
class WeightsRecord:
  """What a weights file holds, how it scored and where it came from (<name>.json).

  Accuracies are test top-1 fractions in [0, 1]; `test_top1` is this
  checkpoint's, `test_top1_best` and `test_top1_final` the run's best epoch and
  last trained epoch (`epochs_trained`; the run asked for `num_epochs`).
  """

  arch: str
  attention: str  # the canonical attention spec (`attention.AttentionSpec`)
  block: str | None  # ResNets: basic / bottleneck; None = the arch's default
  half_precision: bool  # trained with bfloat16 compute; loaded models compute the same way
  dataset: str  # the data's name: the tfds name, or the image folder's / archive's
  data_source: str  # "tfds", or the image folder / archive it trained on (as given)
  class_names: tuple[str, ...]  # label k's name
  image_shape: tuple[int, int, int]  # (H, W, C) of the NHWC input
  seed: int
  checkpoint: str  # "final", "best" (the checkpoint evaluation takes) or "step"
  step: int  # the checkpoint's train step
  epoch: int  # the checkpoint's epoch (1-based)
  epochs_trained: int
  num_epochs: int
  test_top1: float
  test_top1_best: float
  test_top1_final: float
  params: int  # parameters (the `params` collection; BatchNorm statistics not counted)
  commit: str  # git commit of the code that exported it, or "unknown"
  config: dict  # the training run's config.json
  sha256: str = ""  # of <name>.msgpack; `save` fills it in
  data_source_sha256: str | None = None  # of the archive it trained on; None for folders, tfds
  # How it saw its images: size, normalisation, augmentation (`transforms.Preprocessing`).
  preprocessing: dict | None = None
  format: str = FORMAT
  format_version: int = FORMAT_VERSION

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def image_preprocessing(self) -> transforms.Preprocessing:
    """`preprocessing` as a `transforms.Preprocessing` (the reference's where unrecorded)."""
    if self.preprocessing is None:
      return transforms.Preprocessing.reference(self.image_shape[:2])
    return transforms.Preprocessing.from_json(self.preprocessing)

  def model_config(self) -> ml_collections.ConfigDict:
    """The config fields that make its model: model.*, half_precision."""
    return ml_collections.ConfigDict({
        "model": {"arch": self.arch, "attention": self.attention, "block": self.block},
        "half_precision": self.half_precision})

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=1) + "\n"


def weights_path(record_path: str) -> str:
  """<name>.msgpack beside <name>.json."""
  return os.path.splitext(record_path)[0] + WEIGHTS_SUFFIX


def serialize(variables: Mapping[str, Any]) -> bytes:
  """msgpack bytes of {"params", "batch_stats"} (arrays fetched to the host)."""
  return serialization.msgpack_serialize(
      {"params": jax.device_get(variables["params"]),
       "batch_stats": jax.device_get(variables.get("batch_stats", {}))})


def refuse_existing(folder: str, name: str, overwrite: bool = False) -> None:
  """WeightsError when model `name` exists in `folder` and not `overwrite`."""
  record_path = os.path.join(folder, name + RECORD_SUFFIX)
  existing = [p for p in (record_path, weights_path(record_path)) if os.path.exists(p)]
  if existing and not overwrite:
    raise WeightsError(f"{existing[0]} exists; export under another --name or --out, or "
                       "replace it with --overwrite.")


def save(folder: str, name: str, variables: Mapping[str, Any], record: WeightsRecord,
         overwrite: bool = False) -> str:
  """Writes `folder/<name>.msgpack` and `folder/<name>.json` (with its sha256); the record's path.

  Each file is replaced in one step, the weights first. Raises WeightsError
  when they exist and not `overwrite`.
  """
  refuse_existing(folder, name, overwrite)
  record_path = os.path.join(folder, name + RECORD_SUFFIX)
  payload = serialize(variables)
  os.makedirs(folder, exist_ok=True)
  atomic.write_atomically(weights_path(record_path), payload)
  record = dataclasses.replace(record, sha256=hashlib.sha256(payload).hexdigest())
  atomic.write_atomically(record_path, record.to_json())
  return record_path


def read_record(record_path: str) -> WeightsRecord:
  """The record in `record_path`; WeightsError naming the file when it is not one."""
  try:
    with open(record_path) as f:
      fields = json.load(f)
  except FileNotFoundError as e:
    raise WeightsError(f"no weights record {record_path}.") from e
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise WeightsError(f"{record_path} is damaged: not a JSON weights record ({e}).") from e
  if not isinstance(fields, dict) or fields.get("format") != FORMAT:
    raise WeightsError(f"{record_path} is not a weights record (no \"format\": \"{FORMAT}\"); "
                       "write one with `python -m wacnn_jax export`.")
  if fields.get("format_version") not in (1, FORMAT_VERSION):
    raise WeightsError(
        f"{record_path} has format_version {fields.get('format_version')!r}; this version of "
        f"wacnn_jax reads versions 1 and {FORMAT_VERSION}.")
  if fields["format_version"] == 1:
    fields = dict(fields, **{name: None for name in ADDED_IN_VERSION_2},
                  format_version=FORMAT_VERSION)
  names = {f.name for f in dataclasses.fields(WeightsRecord)}
  missing = sorted(names - set(fields) - {"format", "format_version"})
  unknown = sorted(set(fields) - names)
  if missing or unknown:
    raise WeightsError(f"{record_path} is damaged: "
                       f"{'missing field(s) ' + ', '.join(missing) if missing else ''}"
                       f"{'; ' if missing and unknown else ''}"
                       f"{'unknown field(s) ' + ', '.join(unknown) if unknown else ''}.")
  fields["class_names"] = tuple(fields["class_names"])
  fields["image_shape"] = tuple(fields["image_shape"])
  return WeightsRecord(**fields)


def _arrays(tree) -> dict[str, tuple[tuple[int, ...], str]]:
  """{"params/stage1/conv/kernel": (shape, dtype name)} of a nested dict of arrays."""
  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    flat["/".join(str(k.key) for k in path)] = (tuple(leaf.shape), np.dtype(leaf.dtype).name)
  return flat


def read_variables(record_path: str, record: WeightsRecord, expected: Any) -> dict:
  """The {"params", "batch_stats"} numpy arrays of <name>.msgpack beside `record_path`.

  Checks the file's sha256 against `record.sha256`, then that its arrays are
  those of `expected` (the model's variables, or their `jax.ShapeDtypeStruct`s)
  by name, shape and dtype. WeightsError naming the file otherwise.
  """
  path = weights_path(record_path)
  try:
    with open(path, "rb") as f:
      payload = f.read()
  except OSError as e:
    raise WeightsError(f"cannot read {path}, the weights of {record_path} "
                       f"({e.strerror or e}).") from e
  digest = hashlib.sha256(payload).hexdigest()
  if digest != record.sha256:
    raise WeightsError(
        f"{path} is damaged: its sha256 is {digest[:16]}..., its record {record_path} says "
        f"{record.sha256[:16]}... ({len(payload):,} bytes; modified or cut short). Copy or "
        "export it again.")
  try:
    variables = serialization.msgpack_restore(payload)
  except Exception as e:  # pylint: disable=broad-except
    raise WeightsError(f"{path} is damaged: not flax msgpack ({type(e).__name__}: {e}).") from e
  got = _arrays(variables) if isinstance(variables, dict) else {}
  want = _arrays(expected)
  for name in sorted(set(got) | set(want)):
    if got.get(name) != want.get(name):
      def describe(entry):
        return "none" if entry is None else f"{entry[1]}{list(entry[0])}"
      raise WeightsError(
          f"{path} holds other arrays than {record.arch} + {record.attention} with "
          f"{record.num_classes} classes, as its record says ({name}: file has "
          f"{describe(got.get(name))}, model has {describe(want.get(name))}). It was written "
          "for another model, or by another version of the model code.")
  return variables
