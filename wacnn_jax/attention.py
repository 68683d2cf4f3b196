"""Wavelet Attention, the comparison attention modules (SE, CBAM, ECA, GC) and their registry.

All modules take NHWC arrays and are called as `module(x, train)`.
`WaveletAttention` halves H and W (it replaces a downsampling step) and
returns `(out, ll)`; the others return an array of the input's shape and
dtype, re-weighted. `dtype` is the compute dtype (e.g. bfloat16); parameters
are always float32.

Every layer is initialised as the reference's (PyTorch) layer: PyTorch's
default for a Linear or Conv2d is U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for the
weight and for the bias (fan_in = input channels per group x kernel area);
modules state where they differ. The reference's VGG re-initialises the
layers of the attention modules inside it (Linear weights N(0, 0.01), Conv2d
weights kaiming-normal fan_out with biases 0): SE, CBAM and GC take these
initialisers as `linear_init` / `conv_init` (None: the module's own).

Registry: each module class is registered under a name with its options
(`register_attention`), and an `AttentionSpec` names one of them and sets its
options, written as a string:

    AttentionSpec.parse("se")                              # reduction 4
    AttentionSpec.parse("se(reduction=8)")
    AttentionSpec.parse("eca(kernel_size=5)")
    AttentionSpec.parse("wa(wavelet='db2', stages='all')")
    str(AttentionSpec.parse("wad(wavelet='haar')")) == "wa"  # canonical form

Registered: none; se(reduction=4); cbam(reduction=4); eca(kernel_size=3);
gc(reduction=4); wa(wavelet='haar', stages='reference'), alias wad. A module's
role says where the backbones put it: IN_BLOCK modules after a block's last
BatchNorm (every block), DOWNSAMPLING modules (WA) instead of a stride-2
downsampling, where the option `stages` says (see the backbones).

A new attention module is an `AttentionModule` subclass whose fields with
defaults are its options, with `__call__(self, x, train)`, decorated with
`register_attention(name, options=[Option(field, check), ...])`.
"""

from __future__ import annotations

import ast
import dataclasses
import types
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from wacnn_jax import layers
from wacnn_jax import wavelets

# The reference's CBAM builds its spatial gate's BatchNorm2d with momentum 0.01.
CBAM_BN_MOMENTUM = 0.99

# Roles: where a backbone puts a registered module.
IN_BLOCK = "in_block"  # after a block's last BatchNorm: NHWC -> NHWC
DOWNSAMPLING = "downsampling"  # instead of a stride-2 downsampling: NHWC -> (out, ll), halved
WA_STAGES = ("reference", "all")
_FIELD_DEFAULT = object()  # Option.default unset: the module field's default


# ---------------------------------------------------------------------------
# Registry and spec.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Option:
  """An option of a registered attention, set in a spec as `name=literal`.

  `check(value)` raises ValueError saying what the value must be (its return
  value is ignored). `default`: unset = the module field `name`'s default. A
  `placement` option is read by the backbones (where the module goes) and not
  passed to the module.
  """

  name: str
  check: Callable[[Any], Any]
  default: Any = _FIELD_DEFAULT
  placement: bool = False


@dataclasses.dataclass(frozen=True)
class AttentionKind:
  """A registered attention: its module class (None for 'none'), role and options."""

  name: str
  module: type[AttentionModule] | None
  role: str | None
  options: tuple[Option, ...] = ()
  aliases: tuple[str, ...] = ()

  def describe_options(self) -> str:
    """E.g. "its options: reduction (default 4)"."""
    if not self.options:
      return "it has no options"
    return "its options: " + ", ".join(f"{o.name} (default {o.default!r})"
                                       for o in self.options)


_KINDS: dict[str, AttentionKind] = {}  # by name, in registration order
_NAMES: dict[str, str] = {}  # name or alias -> name


def _add_kind(kind: AttentionKind) -> None:
  for key in (kind.name,) + kind.aliases:
    if key in _NAMES:
      raise ValueError(f"attention {key!r} is already registered.")
    _NAMES[key] = kind.name
  _KINDS[kind.name] = kind


def register_attention(name: str, *, options: Sequence[Option] = (), role: str = IN_BLOCK,
                       aliases: Sequence[str] = ()):
  """Class decorator: registers an `AttentionModule` subclass as `name` (and `aliases`).

  `options`: the module's options, each a field of the module unless
  `placement`; an option without a default takes the field's.
  """

  def register(module: type[AttentionModule]) -> type[AttentionModule]:
    fields = module.__dataclass_fields__
    resolved = tuple(
        dataclasses.replace(o, default=fields[o.name].default)
        if o.default is _FIELD_DEFAULT else o for o in options)
    _add_kind(AttentionKind(name, module, role, resolved, tuple(aliases)))
    return module

  return register


def attention_names() -> tuple[str, ...]:
  """The registered attention names, in registration order (aliases not included)."""
  return tuple(_KINDS)


def _choices() -> str:
  return ", ".join(k.name + (f" (alias {', '.join(k.aliases)})" if k.aliases else "")
                   for k in _KINDS.values())


def attention_kind(name: str) -> AttentionKind:
  """The registered attention `name` (or alias); ValueError naming the choices otherwise."""
  if name not in _NAMES:
    raise ValueError(f"unknown attention {name!r}; choose one of: {_choices()}.")
  return _KINDS[_NAMES[name]]


def split_top_level(text: str) -> list[str]:
  """The comma-separated items of `text`, stripped; commas inside parentheses belong to an item.

  E.g. "none, wa(wavelet='db2', stages='all')" -> ["none", "wa(wavelet='db2', stages='all')"].
  """
  specs, depth, start = [], 0, 0
  for i, char in enumerate(text):
    depth += {"(": 1, ")": -1}.get(char, 0)
    if char == "," and depth == 0:
      specs.append(text[start:i])
      start = i + 1
  return [spec.strip() for spec in specs + [text[start:]]]


@dataclasses.dataclass(frozen=True)
class AttentionSpec:
  """A registered attention and the values of all its options; immutable and hashable.

  `AttentionSpec(name, options)` resolves an alias, fills in the defaults and
  checks every value; an unknown name, option or a bad value raises one
  ValueError naming the problem and the valid choices. `parse` reads the
  string form, `str()` gives the canonical one: the name, then the options
  that differ from their defaults, in registration order.
  """

  name: str
  options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    kind = attention_kind(self.name)
    known = [o.name for o in kind.options]
    for key in self.options:
      if key not in known:
        raise ValueError(f"{kind.name} has no option {key!r}; {kind.describe_options()}.")
    values = {}
    for option in kind.options:
      value = self.options.get(option.name, option.default)
      try:
        option.check(value)
      except ValueError as e:
        raise ValueError(f"{kind.name} option {option.name}={value!r} is invalid: {e}") from None
      values[option.name] = value
    object.__setattr__(self, "name", kind.name)
    object.__setattr__(self, "options", types.MappingProxyType(values))

  def __hash__(self):
    return hash((self.name, tuple(self.options.items())))

  def __str__(self):
    changed = [f"{o.name}={self.options[o.name]!r}" for o in self.kind.options
               if self.options[o.name] != o.default]
    return f"{self.name}({', '.join(changed)})" if changed else self.name

  def __repr__(self):
    return f"AttentionSpec.parse({str(self)!r})"

  def __reduce__(self):  # pickle and deepcopy (a mappingproxy is neither)
    return AttentionSpec, (self.name, dict(self.options))

  @classmethod
  def parse(cls, text: str) -> AttentionSpec:
    """`name` or `name(option=literal, ...)`, e.g. "se(reduction=8)", "wa(wavelet='db2')".

    Values are Python literals (numbers, quoted strings), read with
    `ast.literal_eval`; nothing is evaluated.
    """
    example = "e.g. 'se', 'se(reduction=8)' or \"wa(wavelet='db2')\""
    if not isinstance(text, str):
      raise ValueError(f"attention must be a spec string, {example}; got {text!r}.")
    try:
      node = ast.parse(text.strip(), mode="eval").body
    except SyntaxError:
      node = None
    if isinstance(node, ast.Name):
      return cls(node.id)
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
      raise ValueError(f"cannot read attention {text!r}: write a name or "
                       f"name(option=value, ...) with literal values, {example}; "
                       f"attentions: {_choices()}.")
    kind = attention_kind(node.func.id)
    if node.args or any(k.arg is None for k in node.keywords):
      raise ValueError(f"attention {text!r}: options go by name, as {kind.name}(option=value); "
                       f"{kind.describe_options()}.")
    options = {}
    for keyword in node.keywords:
      if keyword.arg in options:
        raise ValueError(f"attention {text!r} sets {keyword.arg} twice.")
      try:
        options[keyword.arg] = ast.literal_eval(keyword.value)
      except (ValueError, TypeError):
        raise ValueError(f"attention {text!r}: the value of {keyword.arg} must be a literal "
                         f"(a number or a quoted string), got {ast.unparse(keyword.value)}."
                         ) from None
    return cls(node.func.id, options)

  @property
  def kind(self) -> AttentionKind:
    return attention_kind(self.name)

  @property
  def in_blocks(self) -> bool:
    """Whether the module goes after a block's last BatchNorm (role IN_BLOCK)."""
    return self.kind.role == IN_BLOCK

  @property
  def replaces_downsampling(self) -> bool:
    """Whether the module replaces stride-2 downsamplings (role DOWNSAMPLING: WA)."""
    return self.kind.role == DOWNSAMPLING

  def module(self, *, name: str, dtype: Any, axis_name: str | None = None,
             linear_init: layers.Initializer | None = None,
             conv_init: layers.Initializer | None = None) -> AttentionModule:
    """The module with the spec's options and the backbone's context (see `AttentionModule`)."""
    kind = self.kind
    options = {o.name: self.options[o.name] for o in kind.options if not o.placement}
    return kind.module(**options, dtype=dtype, axis_name=axis_name, linear_init=linear_init,
                       conv_init=conv_init, name=name)


class AttentionModule(nn.Module):
  """Base of the registered modules: the backbone's context, as keyword-only fields.

  `dtype`: compute dtype; `axis_name`: the pmap axis over which BatchNorm
  averages batch statistics; `linear_init` / `conv_init`: the backbone's
  initialisers of the module's Linear / Conv2d kernels (None: the module's
  own). A module uses those that apply to its layers. Subclasses declare
  their options as (positional) fields with defaults and implement
  `__call__(self, x, train)`.
  """

  _: dataclasses.KW_ONLY
  dtype: Any = jnp.float32
  axis_name: str | None = None
  linear_init: layers.Initializer | None = None
  conv_init: layers.Initializer | None = None


def positive_integer(value) -> None:
  """Option check: an int >= 1 (not a bool)."""
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError("it must be a positive integer.")


def one_of(*choices) -> Callable[[Any], None]:
  """Option check: one of `choices`."""

  def check(value) -> None:
    if value not in choices:
      raise ValueError(f"it must be one of {', '.join(map(repr, choices))}.")

  return check


_add_kind(AttentionKind("none", None, None))  # no module: the backbones add nothing
NO_ATTENTION = AttentionSpec("none")


# ---------------------------------------------------------------------------
# The modules.
# ---------------------------------------------------------------------------


@register_attention("se", options=[Option("reduction", positive_integer)])
class SqueezeExcitation(AttentionModule):
  """SE: global average pool -> Dense C->C/r -> ReLU -> Dense C/r->C -> sigmoid -> scale.

  No biases: 2 * C * (C // r) parameters. Kernels: `linear_init`, None =
  PyTorch's default U(+-1/sqrt(fan_in)).
  """

  reduction: int = 4

  @nn.compact
  def __call__(self, x, train: bool):
    del train  # no batch statistics
    c = x.shape[-1]
    kernel_init = self.linear_init or layers.torch_default_init
    layer = lambda features, name: layers.dense(features, bias_init=None,
                                                kernel_init=kernel_init, dtype=self.dtype,
                                                name=name)
    s = x.mean(axis=(1, 2))
    s = nn.relu(layer(c // self.reduction, "squeeze")(s))
    s = nn.sigmoid(layer(c, "excite")(s))
    return x * s[:, None, None, :].astype(x.dtype)


@register_attention("cbam", options=[Option("reduction", positive_integer)])
class CBAM(AttentionModule):
  """CBAM: channel gate, then spatial gate; NHWC -> NHWC.

  Channel gate: sigmoid(mlp(avg_pool(x)) + mlp(max_pool(x))) with the shared
  mlp Dense C->C/r -> ReLU -> Dense C/r->C (biases). Spatial gate on the
  channel-gated x: [max, mean] over channels -> conv 7x7 2->1 (no bias, zero
  padding 3) -> BatchNorm -> sigmoid. Parameters: 2 C (C//r) + C//r + C + 98
  + 2 (BN scale, bias). `train` and `axis_name` drive the BatchNorm, whose
  momentum is the reference's 0.01 (PyTorch convention; CBAM_BN_MOMENTUM).

  Init: mlp kernels `linear_init`, conv kernel `conv_init` (None: PyTorch's
  default U(+-1/sqrt(fan_in)), fan_in C, C//r and 98); mlp biases PyTorch's
  default U(+-1/sqrt(fan_in)) in any case; BatchNorm scale 1, bias 0.
  """

  reduction: int = 4

  @nn.compact
  def __call__(self, x, train: bool):
    c = x.shape[-1]
    hidden_features = c // self.reduction
    kernel_init = self.linear_init or layers.torch_default_init
    hidden = layers.dense(hidden_features, bias_init=layers.torch_default_bias_init(c),
                          kernel_init=kernel_init, dtype=self.dtype, name="mlp_hidden")
    output = layers.dense(c, bias_init=layers.torch_default_bias_init(hidden_features),
                          kernel_init=kernel_init, dtype=self.dtype, name="mlp_output")
    mlp = lambda v: output(nn.relu(hidden(v)))
    channel_gate = nn.sigmoid(mlp(x.mean(axis=(1, 2))) + mlp(x.max(axis=(1, 2))))
    x = x * channel_gate[:, None, None, :].astype(x.dtype)
    pooled = jnp.concatenate([x.max(axis=-1, keepdims=True),
                              x.mean(axis=-1, keepdims=True)], axis=-1)
    s = nn.Conv(1, (7, 7), padding=((3, 3), (3, 3)), use_bias=False,
                kernel_init=self.conv_init or layers.torch_default_init, dtype=self.dtype,
                param_dtype=jnp.float32, name="spatial_conv")(pooled)
    s = layers.batch_norm(train, momentum=CBAM_BN_MOMENTUM, dtype=self.dtype,
                          axis_name=self.axis_name, name="spatial_bn")(s)
    return x * nn.sigmoid(s).astype(x.dtype)


@register_attention("eca", options=[Option("kernel_size", positive_integer)])
class ECA(AttentionModule):
  """ECA: global average pool -> 1-D conv over the channel axis -> sigmoid -> scale.

  Kernel k, no bias, zero padding ((k-1)//2, k//2) so that C stays C: k
  parameters, initialised as PyTorch's Conv1d, U(+-1/sqrt(k)) (the reference's
  VGG re-initialises Conv2d layers only, so also there: `conv_init` is not used).
  """

  kernel_size: int = 3

  @nn.compact
  def __call__(self, x, train: bool):
    del train  # no batch statistics
    k = self.kernel_size
    s = x.mean(axis=(1, 2))[:, :, None]  # (N, C, 1): channels as a 1-D sequence
    s = nn.Conv(1, (k,), padding=(((k - 1) // 2, k // 2),), use_bias=False,
                kernel_init=layers.torch_default_init, dtype=self.dtype,
                param_dtype=jnp.float32, name="channel_conv")(s)
    return x * nn.sigmoid(s[:, None, None, :, 0]).astype(x.dtype)


@register_attention("gc", options=[Option("reduction", positive_integer)])
class GlobalContext(AttentionModule):
  """GC (GCNet, fusion by addition): NHWC -> NHWC.

  context = sum over positions of softmax_hw(conv1x1 C->1 (x)) * x;
  transform = conv1x1 C->C/r -> LayerNorm -> ReLU -> conv1x1 C/r->C (biases;
  1x1 convs on the pooled vector are Dense layers); out = x + transform,
  broadcast to every position. Parameters: (C + 1) + (C (C//r) + C//r) +
  2 (C//r) + ((C//r) C + C).

  Init (GCNet's reset_parameters, as the reference): mask conv kaiming-normal
  fan_in (N(0, 2/C), untruncated), bias 0; first transform conv PyTorch's
  default (kernel and bias U(+-1/sqrt(C))); LayerNorm scale 1, bias 0; last
  transform conv kernel and bias 0, so that the block starts as the identity.
  With `conv_init` (the reference's VGG re-initialisation) every conv kernel
  is `conv_init` and every conv bias 0.
  """

  reduction: int = 4

  @nn.compact
  def __call__(self, x, train: bool):
    del train  # no batch statistics
    n, h, w, c = x.shape
    hidden = c // self.reduction
    zeros = nn.initializers.zeros
    if self.conv_init is None:
      inits = {"context_mask": (layers.kaiming_normal_fan_in, zeros),
               "transform_reduce": (layers.torch_default_init,
                                    layers.torch_default_bias_init(c)),
               "transform_expand": (zeros, zeros)}
    else:
      inits = dict.fromkeys(("context_mask", "transform_reduce", "transform_expand"),
                            (self.conv_init, zeros))
    conv1x1 = lambda features, name: layers.dense(features, kernel_init=inits[name][0],
                                                  bias_init=inits[name][1], dtype=self.dtype,
                                                  name=name)
    logits = conv1x1(1, "context_mask")(x).reshape(n, h * w)
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    weights = jax.nn.softmax(logits, axis=-1).astype(x.dtype)
    context = jnp.einsum("np,npc->nc", weights, x.reshape(n, h * w, c))
    t = conv1x1(hidden, "transform_reduce")(context)
    t = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, param_dtype=jnp.float32,
                     name="transform_norm")(t)
    t = conv1x1(c, "transform_expand")(nn.relu(t))
    return x + t[:, None, None, :].astype(x.dtype)


@register_attention("wa", aliases=("wad",), role=DOWNSAMPLING, options=[
    Option("wavelet", wavelets.wavelet_filters),
    Option("stages", one_of(*WA_STAGES), default="reference", placement=True)])
class WaveletAttention(AttentionModule):
  """WA block: x (N, H, W, C) -> (out, ll), each (N, ceil(H/2), ceil(W/2), C).

  `ll, lh, hl, _ = dwt2(x, wavelet)`; `attention = softmax over the channel
  axis (last) of (lh + hl)` at each position (hh unused); `out = ll + ll *
  attention`. No parameters. Residual networks feed `out` to the block's
  first convolution and `ll` to the shortcut; plain networks use `out` only.
  `attention`, `ll` and `out` are sown into the `intermediates` collection
  (read them with `apply(..., mutable=['intermediates'])`). The input is cast
  to `dtype`; the softmax runs in at least float32.

  Options: `wavelet` (any discrete pywt name); `stages` (placement, read by
  the backbones): 'reference' puts WA where the paper's code does, 'all' at
  every stride-2 downsampling (they differ only for BasicBlock ResNets).
  """

  wavelet: str = "haar"

  @nn.compact
  def __call__(self, x, train: bool):
    del train  # no batch statistics
    x = jnp.asarray(x, self.dtype)
    ll, lh, hl, _ = wavelets.dwt2(x, self.wavelet)
    logits = (lh + hl).astype(jnp.promote_types(ll.dtype, jnp.float32))
    attention = jax.nn.softmax(logits, axis=-1).astype(ll.dtype)
    out = ll + ll * attention
    self.sow("intermediates", "attention", attention)
    self.sow("intermediates", "ll", ll)
    self.sow("intermediates", "out", out)
    return out, ll
