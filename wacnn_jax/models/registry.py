"""What every backbone shares: its modules' common fields, and its registration by name.

A backbone is one file that defines its network (a `Network`) and registers
a builder for each of its names:

    @registry.register_backbone("mynet", options=("depth",))
    def build(arch, *, depth=None, **fields) -> MyNet:
      return MyNet(..., **fields)

`fields` are the `Network` fields `num_classes`, `attention` (an
`AttentionSpec`), `dtype` and `axis_name`; `options` names the keyword
options the builder takes besides them (None = the builder's default).
`wacnn_jax.models` imports the backbone files, so that they register, and
looks names up here (`models.create_model`).
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from wacnn_jax.models import batched_init
from wacnn_jax.nn.attention_spec import NO_ATTENTION, AttentionSpec


class BackboneModule(nn.Module):
  """Fields shared by every network and block of the backbones (keyword-only).

  `attention`: the attention and its options (in-block modules after the
  blocks' last BatchNorm, or WA instead of downsampling, as each backbone
  documents); `dtype`: compute dtype (parameters stay float32); `axis_name`:
  the pmap axis over which BatchNorm averages batch statistics.
  """

  _: dataclasses.KW_ONLY
  attention: AttentionSpec = NO_ATTENTION
  dtype: Any = jnp.float32
  axis_name: str | None = None


class Network(BackboneModule):
  """A whole backbone: NHWC images (N, H, W, 3) -> float32 logits (N, num_classes).

  Called as `model.apply(variables, x, train=bool, ...)`; `train` defaults to
  False (evaluation: BatchNorm's running averages, no dropout). `model.init`
  gives Flax's variables, bit for bit, without running the forward pass
  (`batched_init`): seconds on a CPU instead of half a minute. It works as
  Flax's does under `jax.jit`, `jax.eval_shape` and `jax.vmap`.
  """

  _: dataclasses.KW_ONLY
  num_classes: int

  @nn.nowrap
  def init(self, rngs, *args, **kwargs):
    """`flax.linen.Module.init`, computed by `batched_init.init` (same arguments, same result)."""
    return batched_init.init(self, rngs, *args, **kwargs)


# The image sizes a layout is made for: CIFAR's keep their resolution through
# the stem (32x32 images), ImageNet's downsample by 4 in the stem (224x224).
LAYOUTS = {"cifar": 32, "imagenet": 224}


@dataclasses.dataclass(frozen=True)
class Backbone:
  """A registered arch: `build(arch, num_classes=..., attention=..., dtype=...,
  axis_name=..., **options)` -> Network, where `options` are among `options`;
  `layout`: "cifar" or "imagenet" (`LAYOUTS`)."""

  name: str
  build: Callable[..., Network]
  options: tuple[str, ...] = ()
  layout: str = "cifar"


_BACKBONES: dict[str, Backbone] = {}  # by arch name, in registration order


def register_backbone(*names: str, options: Sequence[str] = (), layout: str = "cifar"):
  """Function decorator: registers a builder under each arch name of `names`."""
  if layout not in LAYOUTS:
    raise ValueError(f"layout {layout!r} is not one of {', '.join(LAYOUTS)}.")

  def register(build: Callable[..., Network]) -> Callable[..., Network]:
    for name in names:
      if name in _BACKBONES:
        raise ValueError(f"arch {name!r} is already registered.")
      _BACKBONES[name] = Backbone(name, build, tuple(options), layout)
    return build

  return register


def arch_names() -> tuple[str, ...]:
  """The registered arch names, in registration order."""
  return tuple(_BACKBONES)


# The reference names its CIFAR ResNets after the ImageNet ResNets whose block counts they
# share; by depth (6n + 2 layers, He et al.) they are these.
CIFAR_RESNETS_BY_DEPTH = {"resnet20": "resnet18", "resnet32": "resnet34", "resnet56": "resnet50"}


def did_you_mean(arch: str) -> str:
  """What an unknown `arch` most likely meant, as a sentence ('' when nothing is close)."""
  name = str(arch).lower().replace("-", "").replace(" ", "")
  if name in CIFAR_RESNETS_BY_DEPTH:
    depth = name[len("resnet"):]
    return (f" The {depth}-layer CIFAR ResNet is {CIFAR_RESNETS_BY_DEPTH[name]!r} (the "
            "reference's name for it).")
  if name in _BACKBONES:
    return f" Did you mean {name!r}?"
  close = difflib.get_close_matches(name, list(_BACKBONES), n=2, cutoff=0.75)
  return f" Did you mean {' or '.join(map(repr, close))}?" if close else ""


def backbone(arch: str) -> Backbone:
  """The registered arch `arch`; ValueError naming the choices (and the likely one) otherwise."""
  if arch not in _BACKBONES:
    raise ValueError(f"unknown arch {arch!r}.{did_you_mean(arch)} Choose one of: "
                     f"{', '.join(_BACKBONES)}.")
  return _BACKBONES[arch]


def archs_taking(option: str) -> tuple[str, ...]:
  """The arch names whose builder takes the keyword option `option`."""
  return tuple(name for name, entry in _BACKBONES.items() if option in entry.options)
