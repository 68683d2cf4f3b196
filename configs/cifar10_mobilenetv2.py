"""CIFAR-10 with mobilenetv2, the reference recipe; attention chosen by override.

    python run_train.py --config configs/cifar10_mobilenetv2.py --workdir runs/cifar10_mobilenetv2 \
        --config.model.attention=wa   # or none | se | cbam | eca | gc
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.dataset = "cifar10"
  config.model.arch = "mobilenetv2"
  return config
