"""Train a wacnn_jax model: `python -m wacnn_jax train`, the design's entry point.

    python run_train.py --config configs/default.py --workdir runs/r18_wa \
        [--config.some.field=value ...]

All logic lives in the package (`wacnn_jax.cli`, `wacnn_jax.tools.train`), so that
tests and notebooks run the same code.
"""

import sys

from wacnn_jax import cli

if __name__ == "__main__":
  sys.exit(cli.main([sys.argv[0], "train"] + sys.argv[1:]))
