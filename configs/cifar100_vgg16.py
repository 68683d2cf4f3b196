"""CIFAR-100 with vgg16_bn, the reference recipe; attention chosen by override.

    python run_train.py --config configs/cifar100_vgg16.py --workdir runs/cifar100_vgg16 \
        --config.model.attention=wa   # or none | se | cbam | eca | gc
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.dataset = "cifar100"
  config.model.arch = "vgg16_bn"
  return config
