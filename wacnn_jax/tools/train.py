"""`python -m wacnn_jax train` (and `run_train.py`): train a config in a workdir; resumes.

    python -m wacnn_jax train --config configs/default.py --workdir W [--config.a.b=v ...]

A bad config value is one `error:` line and status 2 before anything is
written; an error while training is one line and status 1, with its
traceback in `W/error.log` (`failures.report_user_errors`). SIGINT and
SIGTERM stop it at once; the same command resumes from the newest checkpoint.
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from wacnn_jax.tools import command_line
from wacnn_jax.tools import failures
from wacnn_jax.training import train


def define_flags(fv: flags.FlagValues, argv: list[str]) -> None:
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and summaries.",
                      flag_values=fv, required=True)
  config_flags.DEFINE_config_file("config", None, "The experiment: a config file (see below).",
                                  flag_values=fv, lock_config=True, sys_argv=argv)
  flags.mark_flag_as_required("config", flag_values=fv)


def run(fv: flags.FlagValues, args: list[str]) -> int:
  del args
  command_line.check_config(fv.config)
  return failures.report_user_errors(
      fv.workdir, lambda: train.train_and_evaluate(fv.config, fv.workdir))


TRAIN_DETAILS = """\
--config is a file with get_config(), and settings for it after ':':
  configs/default.py                               the reference recipe: resnet18 + WA on CIFAR-10,
                                                   160 epochs (tfds; or set data.image_folder)
  configs/cifar.py:smoke                           a tiny CPU run: 512 / 256 images, 2 epochs
  configs/cifar.py:dataset=cifar100,arch=vgg16_bn  any paper experiment (keys: dataset, arch,
                                                   attention; e.g. attention=se)
Every field of it is set as --config.FIELD=VALUE (an unknown field is refused, listing the valid
ones), e.g. --config.num_epochs=30 --config.model.attention="se(reduction=8)"
--config.data.image_folder=cifar-10-python.tar.gz (an official CIFAR archive, an image folder
<root>/{train,test}/<class>/*.jpg or a .tar.gz of one). `--config FILE --help` lists FILE's
fields. A run started again with the same --workdir resumes.

example (a smoke run on the committed CIFAR-10 sample, a minute on a CPU):
  python -m wacnn_jax train --config configs/cifar.py:smoke --workdir runs/wa \\
      --config.data.image_folder=tests/data/cifar10-mini.tar.gz"""


COMMAND = command_line.Command(
    define_flags, run, details=TRAIN_DETAILS,
    on_signal="training stopped. The same command resumes it from its newest checkpoint (the "
    "epochs after it are trained again).")
