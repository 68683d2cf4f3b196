"""Smoke test: a tiny WA-ResNet run that finishes in well under a minute on a CPU.

    python run_train.py --config configs/smoke.py --workdir /tmp/smoke \
        --config.data.image_folder=../shared/data/cifar10-jpeg.tar.gz
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.max_train_examples = 512
  config.data.max_test_examples = 256
  config.batch_size = 64
  config.eval_batch_size = 64
  config.num_epochs = 2
  config.schedule.boundaries = (1,)
  config.log_every_steps = 4
  return config
