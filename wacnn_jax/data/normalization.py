"""The per-channel mean and standard deviation a model's input is standardised with.

    normalization = choose(config.data.normalization, dataset)   # "auto": see below
    normalization.mean, normalization.std   # 3 floats each, of pixel values scaled to [0, 1]

"cifar": the reference's CIFAR constants, mean (0.4914, 0.4822, 0.4465) and std
(0.2023, 0.1994, 0.2010). "dataset": the train split's own (as trained on,
after `data.max_train_examples`), over every pixel of every image (of a
streamed split: of a fixed sample of 5,000), computed once when the data is
loaded (float64 sums; the population standard deviation). "auto" (the default): "cifar" for CIFAR-10 and CIFAR-100 at 32x32
(tfds's and the official archives' datasets, or any dataset with their class
names), so that the reference recipe is unchanged; "dataset" otherwise. The
choice and the numbers are recorded in dataset.json, checkpoints and
exported weights.
"""

from __future__ import annotations

import dataclasses

import numpy as np

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
SETTINGS = ("auto", "cifar", "dataset")

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")
CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle",
    "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle",
    "caterpillar", "cattle", "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch",
    "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox",
    "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom",
    "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road",
    "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake",
    "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank",
    "telephone", "television", "tiger", "tractor", "train", "trout", "tulip", "turtle",
    "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm")
CIFAR100_SUPERCLASSES = (
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores", "medium_mammals", "non-insect_invertebrates", "people",
    "reptiles", "small_mammals", "trees", "vehicles_1", "vehicles_2")
# The names tfds and the official archives give CIFAR-10 and CIFAR-100.
CIFAR_DATASET_NAMES = ("cifar10", "cifar100")


@dataclasses.dataclass(frozen=True)
class Normalization:
  """x = (pixels / 255 - mean) / std per channel; `source` "cifar" or "dataset"."""

  mean: tuple[float, float, float]
  std: tuple[float, float, float]
  source: str

  def to_json(self) -> dict:
    return {"mean": list(self.mean), "std": list(self.std), "source": self.source}

  @classmethod
  def from_json(cls, fields: dict) -> "Normalization":
    return cls(tuple(fields["mean"]), tuple(fields["std"]), fields["source"])


CIFAR = Normalization(CIFAR_MEAN, CIFAR_STD, "cifar")


def of_images(images: np.ndarray) -> Normalization:
  """The "dataset" statistics of uint8 images (N, H, W, 3), in chunks (float64 sums)."""
  count = images.shape[0] * images.shape[1] * images.shape[2]
  sums, squares = np.zeros(3), np.zeros(3)
  for start in range(0, len(images), 4096):
    chunk = images[start:start + 4096].reshape(-1, 3).astype(np.float64) / 255.0
    sums += chunk.sum(axis=0)
    squares += np.square(chunk).sum(axis=0)
  mean = sums / max(count, 1)
  std = np.sqrt(np.maximum(squares / max(count, 1) - np.square(mean), 0.0))
  if count == 0 or np.any(std == 0):
    raise ValueError("the training images have a colour channel without any variation "
                     "(all one value): their standard deviation cannot standardise it; "
                     "set data.normalization='cifar'.")
  return Normalization(tuple(float(v) for v in mean), tuple(float(v) for v in std), "dataset")


def is_cifar(name: str, class_names, image_shape) -> bool:
  """CIFAR-10 or CIFAR-100 (fine or coarse labels) at 32x32."""
  names = tuple(class_names)
  return tuple(image_shape[:2]) == (32, 32) and (
      name in CIFAR_DATASET_NAMES
      or names in (CIFAR10_CLASSES, CIFAR100_CLASSES, CIFAR100_SUPERCLASSES))


def check_setting(setting: str) -> None:
  """ValueError unless `data.normalization` is one of SETTINGS."""
  if setting not in SETTINGS:
    raise ValueError(f"data.normalization={setting!r}: use 'auto' (the reference's CIFAR "
                     "constants for CIFAR, the training images' own statistics otherwise), "
                     "'cifar' or 'dataset'.")


def choose(setting: str, dataset) -> Normalization:
  """The normalisation of `dataset` (as trained on) for `data.normalization`."""
  check_setting(setting)
  if setting == "cifar" or (setting == "auto" and is_cifar(
      dataset.name, dataset.class_names, dataset.image_shape)):
    return CIFAR
  return of_images(dataset.train.statistics_sample())
