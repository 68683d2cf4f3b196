"""Command-line entry point: train (or evaluate) a wacnn_jax model.

    python run_train.py --config configs/default.py --workdir runs/r18_wa \
        [--config.some.field=value ...]

All logic lives in the package (`wacnn_jax.train`, `wacnn_jax.evaluate`), so
that tests and notebooks run the same code.
"""

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from wacnn_jax import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and summaries.")
config_flags.DEFINE_config_file(
    "config", None, "Path to a config file with get_config().", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv  # cli.parse_flags refuses positional arguments
  logging.set_verbosity(logging.INFO)
  cli.quiet_library_logs()
  sys.exit(cli.run(FLAGS.config, FLAGS.workdir))


if __name__ == "__main__":
  sys.exit(cli.main(app, main))
