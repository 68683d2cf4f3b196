"""`python -m wacnn_jax {train,evaluate,report,visualize,reproduce,export} [--flag=value ...]`; see `cli`."""

import sys

from wacnn_jax import cli

if __name__ == "__main__":
  sys.exit(cli.main())
