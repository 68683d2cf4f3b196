"""A config checked before any work: every numeric field in range, the model section buildable.

    config_checks.validate_config(config)   # ValueError naming the first bad field

A bad value is one clear line before anything is read or written, e.g.
"checkpoint_every_epochs=0 is out of range: it must be a finite number >= 1"
or "se has no option 'kernel_size'; its options: reduction (default 4)."
"""

from __future__ import annotations

import math
import numbers

from absl import logging
import ml_collections

from wacnn_jax.data import augmentation_settings
from wacnn_jax.data import cifar_archives
from wacnn_jax.data import normalization
from wacnn_jax.data import pipeline_choice
from wacnn_jax.data import resizing
from wacnn_jax.training import states

# The least value of each numeric config field (the type is the default's).
NUMERIC_FIELD_MINIMUM = {
    "seed": 0, "num_seeds": 1, "batch_size": 1, "eval_batch_size": 1, "num_epochs": 0,
    "steps_per_dispatch": 0, "checkpoint_every_epochs": 1, "keep_checkpoints": 1,
    "log_every_steps": 0, "checkpoint_every_steps": 0,
    "data.max_train_examples": 0, "data.workers": 0, "data.max_test_examples": 0,
    "data.cache_max_gb": 0,
    "optimizer.learning_rate": 0, "optimizer.momentum": 0, "optimizer.weight_decay": 0,
    "schedule.decay": 0, "schedule.warmup_epochs": 0, "schedule.warmup_learning_rate": 0,
}
# Fields added after the first runs were written: checked when present, as the config.json
# of an older run (evaluated, exported) lacks them and the code reads them with a default.
ADDED_FIELDS = ("checkpoint_every_steps", "data.workers", "data.cache_max_gb")


def _check_number(field: str, value, least) -> None:
  if (isinstance(value, bool) or not isinstance(value, numbers.Real)
      or not math.isfinite(value) or value < least):
    raise ValueError(f"{field}={value!r} is out of range: it must be a finite "
                     f"number >= {least}.")


def _as_tuple(values) -> str:
  return f"({values[0]},)" if len(values) == 1 else f"({', '.join(map(str, values))})"


def unreached_boundaries(config: ml_collections.ConfigDict) -> str | None:
  """A line when a step schedule has boundaries at or after its last epoch (a `num_epochs`
  override that left the preset's boundaries behind), proposing ones that scale; else None."""
  if config.schedule.name != "step":
    return None
  epochs = config.num_epochs
  late = [b for b in config.schedule.boundaries if b >= epochs]
  if not late:
    return None
  # The reference's boundaries, 81 and 121 of 160 epochs, are 1/2 and 3/4 of the run.
  scaled = tuple(sorted({max(1, round(epochs * (1 - 0.5 ** (k + 1))))
                         for k in range(len(config.schedule.boundaries))}))
  scaled = tuple(b for b in scaled if b < epochs)
  example = f', e.g. --config.schedule.boundaries="{_as_tuple(scaled)}",' if scaled else ""
  return (f"schedule.boundaries {tuple(config.schedule.boundaries)}: epoch(s) "
          f"{', '.join(map(str, late))} come at or after the last epoch (num_epochs={epochs}), so "
          "the learning rate never decays there. Scale them with the run"
          f"{example}"
          " or use --config.schedule.name=cosine.")


def warn_of_unreached_boundaries(config: ml_collections.ConfigDict) -> None:
  """Logs `unreached_boundaries`' line, if any (training only: an evaluation of the run need
  not hear it again)."""
  note = unreached_boundaries(config)
  if note:
    logging.warning("%s", note)


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Checks the numeric fields (`NUMERIC_FIELD_MINIMUM`, `schedule.boundaries`), the data
  section's choices (CIFAR-100 label set, image size, resize, normalisation, augmentation,
  pipeline)
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
        if field in ADDED_FIELDS:
          break
        raise ValueError(f"the config has no field {field}: a config file's get_config() "
                         "should build on configs/default.py's.")
      value = value[part]
    else:
      _check_number(field, value, least)
  for boundary in config.schedule.boundaries:
    _check_number("schedule.boundaries", boundary, 0)
  cifar_archives.check_label_mode(config.data.get("cifar100_labels", "fine"))
  resizing.target_size(config.data.get("image_size"))
  resizing.check_mode(config.data.get("resize", "crop"))
  normalization.check_setting(config.data.get("normalization", "auto"))
  augmentation_settings.choose_augmentation(config.data.get("augmentation", "auto"), True, (32, 32))
  pipeline_choice.check_setting(config.data.get("pipeline", "auto"),
                                config.data.get("memory_share", 0.5))
  states.create_model(config, num_classes=1)
