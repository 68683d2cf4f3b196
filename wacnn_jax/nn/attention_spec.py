"""Attention modules by name: the registry, and `AttentionSpec`, the string a config gives.

An `AttentionSpec` names a registered attention and sets its options,
written as a string:

    AttentionSpec.parse("se")                              # reduction 4
    AttentionSpec.parse("se(reduction=8)")
    AttentionSpec.parse("eca(kernel_size=5)")
    AttentionSpec.parse("wa(wavelet='db2', stages='all')")
    str(AttentionSpec.parse("wad(wavelet='haar')")) == "wa"  # canonical form
    spec.module(name="attention", dtype=jnp.float32)       # the Flax module it names

Registered (the modules of `attention`): none; se(reduction=4);
cbam(reduction=4); eca(kernel_size=3); gc(reduction=4);
wa(wavelet='haar', stages='reference'), alias wad. A kind's role says where
the backbones put it: IN_BLOCK modules after a block's last BatchNorm (every
block), DOWNSAMPLING modules (WA) instead of a stride-2 downsampling, where
the option `stages` says: 'reference' where the paper's code puts WA, 'all'
at every stride-2 downsampling (they differ only for BasicBlock ResNets).

A new attention module is an `attention.AttentionModule` subclass whose
fields with defaults are its options, with `__call__(self, x, train)`,
registered with `register_attention(name, options=[Option(field, check),
...])(Module)` (or as a class decorator).
"""

from __future__ import annotations

import ast
import dataclasses
import types
from typing import Any, Callable, Mapping, Sequence

from wacnn_jax.nn import attention
from wacnn_jax.nn import layers
from wacnn_jax.nn import wavelets

# Roles: where a backbone puts a registered module.
IN_BLOCK = "in_block"  # after a block's last BatchNorm: NHWC -> NHWC
DOWNSAMPLING = "downsampling"  # instead of a stride-2 downsampling: NHWC -> (out, ll), halved
WA_STAGES = ("reference", "all")
_FIELD_DEFAULT = object()  # Option.default unset: the module field's default


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
  module: type[attention.AttentionModule] | None
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

  def register(module: type[attention.AttentionModule]) -> type[attention.AttentionModule]:
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
             conv_init: layers.Initializer | None = None) -> attention.AttentionModule:
    """The module with the spec's options and the backbone's context (`AttentionModule`)."""
    kind = self.kind
    options = {o.name: self.options[o.name] for o in kind.options if not o.placement}
    return kind.module(**options, dtype=dtype, axis_name=axis_name, linear_init=linear_init,
                       conv_init=conv_init, name=name)


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


# ---------------------------------------------------------------------------
# The registered modules.
# ---------------------------------------------------------------------------

_add_kind(AttentionKind("none", None, None))  # no module: the backbones add nothing
NO_ATTENTION = AttentionSpec("none")
register_attention("se", options=[Option("reduction", positive_integer)])(
    attention.SqueezeExcitation)
register_attention("cbam", options=[Option("reduction", positive_integer)])(attention.CBAM)
register_attention("eca", options=[Option("kernel_size", positive_integer)])(attention.ECA)
register_attention("gc", options=[Option("reduction", positive_integer)])(
    attention.GlobalContext)
register_attention("wa", aliases=("wad",), role=DOWNSAMPLING, options=[
    Option("wavelet", wavelets.wavelet_filters),
    Option("stages", one_of(*WA_STAGES), default="reference", placement=True)])(
        attention.WaveletAttention)
