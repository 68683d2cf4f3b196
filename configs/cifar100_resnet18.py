"""CIFAR-100 with resnet18, the reference recipe; attention chosen by override.

    python run_train.py --config configs/cifar100_resnet18.py --workdir runs/cifar100_resnet18 \
        --config.model.attention=wa   # or none | se | cbam | eca | gc
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.dataset = "cifar100"
  config.model.arch = "resnet18"
  return config
