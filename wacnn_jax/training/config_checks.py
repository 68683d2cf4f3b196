"""A config checked before any work: every numeric field in range, the model section buildable.

    config_checks.validate_config(config)   # ValueError naming the first bad field

A bad value is one clear line before anything is read or written, e.g.
"checkpoint_every_epochs=0 is out of range: it must be a finite number >= 1"
or "se has no option 'kernel_size'; its options: reduction (default 4)."
"""

from __future__ import annotations

import math
import numbers

import ml_collections

from wacnn_jax.data import cifar_archives
from wacnn_jax.data import normalization
from wacnn_jax.data import resizing
from wacnn_jax.data import transforms
from wacnn_jax.training import states

# The least value of each numeric config field (the type is the default's).
NUMERIC_FIELD_MINIMUM = {
    "seed": 0, "num_seeds": 1, "batch_size": 1, "eval_batch_size": 1, "num_epochs": 0,
    "steps_per_dispatch": 0, "checkpoint_every_epochs": 1, "keep_checkpoints": 1,
    "log_every_steps": 0,
    "data.max_train_examples": 0, "data.max_test_examples": 0,
    "optimizer.learning_rate": 0, "optimizer.momentum": 0, "optimizer.weight_decay": 0,
    "schedule.decay": 0, "schedule.warmup_epochs": 0, "schedule.warmup_learning_rate": 0,
}


def _check_number(field: str, value, least) -> None:
  if (isinstance(value, bool) or not isinstance(value, numbers.Real)
      or not math.isfinite(value) or value < least):
    raise ValueError(f"{field}={value!r} is out of range: it must be a finite "
                     f"number >= {least}.")


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Checks the numeric fields (`NUMERIC_FIELD_MINIMUM`, `schedule.boundaries`), the data
  section's choices (CIFAR-100 label set, image size, resize, normalisation, augmentation)
  and the model section (arch, attention spec, block) before any work.

  Raises ValueError naming the first bad field.
  """
  if not isinstance(config, ml_collections.ConfigDict):
    raise ValueError(f"the config is a {type(config).__name__}, not an ml_collections."
                     "ConfigDict: a config file's get_config() should build on "
                     "configs/default.py's.")
  for field, least in NUMERIC_FIELD_MINIMUM.items():
    value = config
    for part in field.split("."):
      if part not in value:
        raise ValueError(f"the config has no field {field}: a config file's get_config() "
                         "should build on configs/default.py's.")
      value = value[part]
    _check_number(field, value, least)
  for boundary in config.schedule.boundaries:
    _check_number("schedule.boundaries", boundary, 0)
  cifar_archives.check_label_mode(config.data.get("cifar100_labels", "fine"))
  resizing.target_size(config.data.get("image_size"))
  resizing.check_mode(config.data.get("resize", "crop"))
  normalization.check_setting(config.data.get("normalization", "auto"))
  transforms.choose_augmentation(config.data.get("augmentation", "auto"), True, (32, 32))
  states.create_model(config, num_classes=1)
