"""CIFAR-10/100 with any backbone and attention: `configs/default.py`, parameterised.

    python run_train.py --workdir runs/c100_vgg_wa \
        --config configs/cifar.py:dataset=cifar100,arch=vgg16_bn,attention=wa
    python run_train.py --workdir /tmp/smoke --config configs/cifar.py:smoke \
        --config.data.image_folder=tests/data/cifar10-mini.tar.gz

The argument after `:` is a comma-separated list of `key=value` settings
(`dataset`, `arch`, `attention`, an attention spec such as
`attention=wa(wavelet='db2', stages='all')`; defaults as in
`configs/default.py`) and presets (`smoke`: a tiny ResNet run that finishes
in well under a minute on a CPU). In Python: `get_config("smoke")`.
"""

from __future__ import annotations

import ml_collections

from configs import default
from wacnn_jax.nn import attention_spec

SETTINGS = {"dataset": ("data", "dataset"), "arch": ("model", "arch"),
            "attention": ("model", "attention")}


def smoke(config: ml_collections.ConfigDict) -> None:
  """512 training and 256 test images, 2 epochs of batch 64; a cosine schedule, which spans
  whatever `num_epochs` the run is given."""
  config.data.max_train_examples = 512
  config.data.max_test_examples = 256
  config.batch_size = 64
  config.eval_batch_size = 64
  config.num_epochs = 2
  config.schedule.name = "cosine"
  config.log_every_steps = 4


PRESETS = {"smoke": smoke}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = default.get_config()
  for item in filter(None, attention_spec.split_top_level(arg or "")):
    key, has_value, value = item.partition("=")
    key = key.strip()
    if not has_value and key in PRESETS:
      PRESETS[key](config)
    elif has_value and key in SETTINGS:
      section, field = SETTINGS[key]
      config[section][field] = value.strip()
    else:
      raise ValueError(
          f"configs/cifar.py: unknown setting {item!r}; use "
          f"{', '.join(k + '=...' for k in SETTINGS)} or a preset ({', '.join(PRESETS)}), "
          "comma-separated, e.g. configs/cifar.py:dataset=cifar100,arch=vgg16_bn.")
  return config
