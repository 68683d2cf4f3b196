"""What a run trains and evaluates on: checked against its source's promise, and summarised.

Every reader (tfds, image folders and archives) ends in `pipeline.load`,
which applies, whatever the source:

- `check_dataset(dataset, where, allow_missing_classes)`: labels in
  [0, num_classes); uint8 images (N, H, W, 3); one image size across the splits
  (a model trained on 32x32 and evaluated on 64x64 images reports chance); and
  every class present in every split, so that a model is never evaluated on a
  class it never saw, nor trained with an output it is never tested on.
  Refusing is the default; `data.allow_missing_classes=True` accepts it with
  a warning naming the classes. Raises DatasetError naming the problem and the fix.
- `summarize(dataset, source)`: a `DatasetSummary` of the splits as trained
  on (after `data.max_*_examples`): counts per split and class, the image
  shape, the sha256 of each split's decoded images and labels (of a streamed
  split's listing: each record's name, size and label), and the sha256
  of the source file where the source is one (an archive). It is logged
  (`DatasetSummary.line`) and training writes it to `<workdir>/dataset.json`;
  the checksums are part of what a resume must match.

NHWC throughout: images uint8 (N, H, W, 3), labels int32 (N,).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any, Sequence

from absl import logging
import numpy as np
import PIL

from wacnn_jax.data.dataset import DatasetError, Split


@dataclasses.dataclass(frozen=True)
class SplitSummary:
  """One split as trained on: its size, images per class (in class order) and content checksum."""

  examples: int
  per_class: tuple[int, ...]
  sha256: str  # `checksum()`: of the decoded images and labels (a stream's: its listing)


@dataclasses.dataclass(frozen=True)
class DatasetSummary:
  """What a run trains and evaluates on; `to_json()` is `<workdir>/dataset.json`."""

  name: str
  source: str  # data.image_folder, or "tfds:<name>"
  source_sha256: str | None  # sha256 of the source file; None for folders and tfds
  class_names: tuple[str, ...]
  image_shape: tuple[int, int, int]  # (H, W, C)
  splits: dict[str, SplitSummary]  # "train", "test"
  decoder: str  # the image decoder, e.g. "Pillow 12.0.0"
  preprocessing: Any = None  # transforms.Preprocessing: normalisation and augmentation
  pipeline: str = "memory"  # "memory" (decoded into memory) or "stream" (read on demand)

  def line(self) -> str:
    """The summary in one log line (checksums shortened to 16 hex digits)."""
    splits = ", ".join(
        f"{split} {s.examples} ({min(s.per_class)}-{max(s.per_class)} per class, "
        f"sha256 {s.sha256[:16]})" for split, s in self.splits.items())
    source = f"{self.source}" + (f", file sha256 {self.source_sha256[:16]}"
                                 if self.source_sha256 else "")
    normalised = ""
    if self.preprocessing is not None:
      norm = self.preprocessing.normalization
      by = ("the reference's CIFAR mean and std" if norm.source == "cifar" else
            f"the training images' mean {_triple(norm.mean)} and std {_triple(norm.std)}")
      normalised = f"; normalised by {by}; train augmentation {self.preprocessing.augmentation}"
    if self.pipeline == "stream":
      source += ", streamed"
    return (f"dataset {self.name} ({source}): {len(self.class_names)} classes, "
            f"{'x'.join(map(str, self.image_shape))} images; {splits}{normalised}")

  def to_json(self) -> dict:
    """Full checksums and the count of every class in every split."""
    return {
        "name": self.name, "source": self.source, "source_sha256": self.source_sha256,
        "image_shape": list(self.image_shape), "class_names": list(self.class_names),
        "decoder": self.decoder,
        "splits": {split: {"examples": s.examples, "sha256": s.sha256,
                           "per_class": dict(zip(self.class_names, s.per_class))}
                   for split, s in self.splits.items()},
        "preprocessing": None if self.preprocessing is None else self.preprocessing.to_json(),
        "pipeline": self.pipeline,
    }


def check_dataset(dataset, where: str, allow_missing_classes: bool = False) -> None:
  """Refuses (DatasetError) a `dataset` (train and test `Split`s) that breaks a promise above.

  `where` names the source in messages (the folder, archive or tfds name).
  """
  splits = {"train": dataset.train, "test": dataset.test}
  for split, data in splits.items():
    if isinstance(data, Split) and data.images.dtype != np.uint8:
      raise DatasetError(f"the {split} images of {where} are {data.images.dtype}, not uint8; "
                         "convert them to 8-bit RGB first.")
    labels = np.asarray(data.labels)
    if len(labels) and (labels.min() < 0 or labels.max() >= dataset.num_classes):
      raise DatasetError(
          f"the {split} labels of {where} run from {labels.min()} to {labels.max()}, outside "
          f"the {dataset.num_classes} classes 0..{dataset.num_classes - 1}.")
  shapes = {split: tuple(data.image_shape) for split, data in splits.items()}
  if len(set(shapes.values())) > 1:
    raise DatasetError(
        f"the splits of {where} have images of different sizes ("
        + ", ".join(f"{split} {'x'.join(map(str, s[:2]))}" for split, s in shapes.items())
        + "): a model trained on one size and evaluated on another reports chance accuracy. "
        "Set data.image_size (e.g. --config.data.image_size=64) to bring every image to one "
        "size.")
  missing = missing_classes(dataset)
  if not missing:
    return
  detail = "; ".join(f"{split} has no image of {_names(classes)}"
                     for split, classes in missing.items())
  if not allow_missing_classes:
    raise DatasetError(
        f"{where} has classes missing from a split ({detail}): the model would be "
        "trained with outputs it is never tested on, or tested on classes it never "
        "saw. Add images of those classes to every split (an image folder takes its "
        "classes from the class folders of all splits: check for an empty or misnamed "
        "folder), or set --config.data.allow_missing_classes=True to go on anyway.")
  logging.warning("%s has classes missing from a split (%s); going on, as "
                  "data.allow_missing_classes is set.", where, detail)


def missing_classes(dataset) -> dict[str, list[str]]:
  """{split: [names of the classes with no image in it]} for the splits that miss any."""
  missing = {}
  for split in ("train", "test"):
    counts = np.bincount(getattr(dataset, split).labels, minlength=dataset.num_classes)
    absent = [dataset.class_names[c] for c in np.flatnonzero(counts == 0)]
    if absent:
      missing[split] = absent
  return missing


def warn_of_classes_left_out(dataset) -> None:
  """Warns when `data.max_*_examples` leave a class out of a split's subset (a user's choice)."""
  for split, classes in missing_classes(dataset).items():
    logging.warning("The %s subset (%d images, data.max_%s_examples) has no image of %s.",
                    split, len(getattr(dataset, split)), split, _names(classes))


def _names(classes: Sequence[str], shown: int = 5) -> str:
  names = ", ".join(repr(c) for c in classes[:shown])
  return names + (f" and {len(classes) - shown} more" if len(classes) > shown else "")


def file_sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def _triple(values) -> str:
  return "(" + ", ".join(f"{v:.4f}" for v in values) + ")"


def summarize(dataset, source: str, preprocessing=None) -> DatasetSummary:
  """The `DatasetSummary` of `dataset`; `source` is data.image_folder or "tfds:<name>"."""
  return DatasetSummary(
      name=dataset.name, source=source,
      source_sha256=file_sha256(source) if os.path.isfile(source) else None,
      class_names=tuple(dataset.class_names), image_shape=tuple(dataset.image_shape),
      splits={split: SplitSummary(
          examples=len(data),
          per_class=tuple(int(n) for n in np.bincount(data.labels,
                                                       minlength=dataset.num_classes)),
          sha256=data.checksum())
              for split, data in (("train", dataset.train), ("test", dataset.test))},
      decoder=f"Pillow {PIL.__version__}", preprocessing=preprocessing,
      pipeline="stream" if dataset.streamed else "memory")
