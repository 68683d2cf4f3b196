"""`python -m wacnn_jax predict --pretrained NAME_OR_PATH IMAGE ...`: the top classes of images.

    python -m wacnn_jax predict --pretrained weights/resnet18-wa.json cat.jpg dog.png --top_k=3

Each image (a file Pillow reads, of any size) is resized and normalised as
the model was trained (`pretrained.Pretrained.predict`); one line per image:
its path, then the classes with their probabilities, most probable first.
"""

from __future__ import annotations

from absl import flags

from wacnn_jax import pretrained
from wacnn_jax.tools import command_line
from wacnn_jax.tools import failures
from wacnn_jax.training import compilation_cache


def define_flags(fv: flags.FlagValues, argv: list[str]) -> None:
  del argv
  flags.DEFINE_string("pretrained", None, "Trained weights: a shipped model's name or the path "
                      "of exported ones (wacnn_jax.pretrained.load).", flag_values=fv,
                      required=True)
  flags.DEFINE_string("dataset", "cifar10", "The dataset of a shipped model's name.",
                      flag_values=fv)
  flags.DEFINE_integer("top_k", 5, "How many classes per image.", lower_bound=1,
                       flag_values=fv)


def format_line(path: str, top: list[tuple[str, float]]) -> str:
  """'cat.jpg: cat 0.912, dog 0.041, deer 0.020'."""
  return f"{path}: " + ", ".join(f"{name} {probability:.3f}" for name, probability in top)


def run(fv: flags.FlagValues, args: list[str]) -> int:
  if not args:
    command_line.exit_with_usage_error("predict: name one or more image files.")

  def predict() -> int:
    compilation_cache.enable()  # the per-machine folder, as for every command
    net = pretrained.load(fv.pretrained, fv.dataset)
    for path, top in zip(args, net.predict(args, top_k=fv.top_k)):
      print(format_line(path, top), flush=True)
    return 0

  return failures.print_error(predict)


COMMAND = command_line.Command(define_flags, run, positional="IMAGE ...")
