"""`Network.init` as one small XLA program: the forward pass left out, the random draws batched.

Flax's `model.init` runs the whole forward pass to create the variables. Run
eagerly on a CPU that is hundreds of separately compiled operations (35 s for
MobileNetV2); under `jax.jit` it is one program, but one in which every
parameter has its own threefry kernels, which XLA:CPU compiles slowly (as
long again). `init` gives the jitted init's variables, bit for bit, from one
program with few kernels:

1. trace `flax.linen.Module.init` to a jaxpr (shapes only, nothing computed)
   and keep the equations the variables depend on: the forward pass drops
   out, its output is not returned;
2. evaluate that jaxpr under `jax.jit` in waves: every equation whose inputs
   are known runs as it is; then the ready `random_fold_in`s (the keys Flax
   derives for each parameter from the root key) run as one vmapped call,
   and the ready draws (`jax.random.uniform`, `jax.random.normal`) as one
   call per distribution and size class. (JAX >= 0.11 writes a normal draw
   as a uniform draw on (-1, 1) followed by `erf_inv`: the `erf_inv` goes
   into the batched call with its draw.) Draws of different sizes share a
   call because with threefry's partitionable counters
   (`jax_threefry_partitionable`, JAX's default) a draw of shape S is the
   first prod(S) values of a longer flat draw with the same key; sizes within
   4x of each other share one (rows padded to the longest).
3. the variables come back as one buffer per dtype and the draws' batches,
   cut into arrays on the host; XLA:CPU would otherwise compile a kernel for
   each of the hundreds of variables.

An initialiser's multiplication of its draw by a scalar (`normal(key, shape)
* stddev`) is done inside the batched call: under one jit XLA folds the
scalar into the draw's own last multiplication, and so it must here, to
round alike. Batching changes nothing else (`tests/models/test_models.py` compares
with `jax.jit(flax.linen.Module.init)`). Equations it does not recognise
(another key implementation, other random functions, a JAX whose draws take
other arguments) run one by one as under `jax.jit`, so the result is always
the jitted init's.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import flax.linen as nn
import jax
from jax.extend import core
import jax.numpy as jnp
import numpy as np

# A draw equation (a `jit` named after jax.random's inner function) -> how to
# redo it as a flat draw of n values: (its number of inputs, f(key, n, dtype, *other inputs)).
FLAT_DRAWS: dict[str, tuple[int, Callable[..., jax.Array]]] = {
    "_uniform": (3, lambda key, n, dtype, low, high: jax.random.uniform(key, (n,), dtype, low,
                                                                       high)),
    "_normal": (1, lambda key, n, dtype: jax.random.normal(key, (n,), dtype)),
}
THREEFRY_KEY = "key<fry>"
# Conversions between typed keys and their uint32 data: applied to a whole
# batch of fold_in results at once (they map each key on its own).
KEY_CONVERSIONS = ("random_wrap", "random_unwrap")


def _is_literal(v) -> bool:
  return isinstance(v, core.Literal)


def _is_draw(eqn) -> bool:
  """Whether `eqn` is a jax.random draw that `FLAT_DRAWS` can redo from a longer flat draw."""
  name = eqn.params.get("name")
  return (eqn.primitive.name == "jit" and name in FLAT_DRAWS
          and len(eqn.invars) == FLAT_DRAWS[name][0] and len(eqn.outvars) == 1
          and str(eqn.invars[0].aval.dtype) == THREEFRY_KEY
          and jax.config.jax_threefry_partitionable)


@dataclasses.dataclass(frozen=True)
class _Draw:
  """A draw equation, then the equations applied to its values alone (None: not there).

  `inverse_cdf`: the `erf_inv` that is the draw's only use (a normal draw in
  JAX >= 0.11); `scale`: the `mul` by a scalar that is the only use of the
  draw's (or the `erf_inv`'s) result.
  """

  eqn: Any
  inverse_cdf: Any = None
  scale: Any = None

  @property
  def name(self) -> str:
    return self.eqn.params["name"]

  @property
  def aval(self):
    return self.eqn.outvars[0].aval

  @property
  def size(self) -> int:
    return math.prod(self.aval.shape)

  @property
  def invars(self) -> list:
    """The draw's inputs, then the scale (a literal 1 without one)."""
    if self.scale is None:
      return list(self.eqn.invars) + [core.Literal(1.0, self.aval.update(shape=()))]
    unscaled = (self.inverse_cdf or self.eqn).outvars[0]
    a, b = self.scale.invars
    return list(self.eqn.invars) + [b if a is unscaled else a]

  @property
  def outvar(self):
    return (self.scale or self.inverse_cdf or self.eqn).outvars[0]

  def group(self) -> tuple:
    """Draws batched in one call: same function, `erf_inv` or not, dtype, sizes within 4x."""
    return ("draw", self.name, self.inverse_cdf is not None, self.aval.dtype,
            (max(1, self.size - 1).bit_length() + 1) // 2)


def _only_use(v, uses: dict, outputs: set):
  """The one equation that reads `v`, or None (several, none, or `v` is an output)."""
  readers = uses.get(v, [])
  return readers[0] if len(readers) == 1 and v not in outputs else None


def _draw(eqn, uses: dict, outputs: set) -> _Draw:
  """Draw `eqn` with the `erf_inv` and the `mul` by a scalar that only its values go through."""
  out = eqn.outvars[0]
  inverse_cdf = _only_use(out, uses, outputs)
  if inverse_cdf is not None and inverse_cdf.primitive.name == "erf_inv":
    out = inverse_cdf.outvars[0]
  else:
    inverse_cdf = None
  scale = _only_use(out, uses, outputs)
  if scale is None or scale.primitive.name != "mul" or list(scale.invars).count(out) != 1:
    return _Draw(eqn, inverse_cdf)
  other = next(v for v in scale.invars if v is not out)
  if other.aval.shape != () or other.aval.dtype != out.aval.dtype:
    return _Draw(eqn, inverse_cdf)
  return _Draw(eqn, inverse_cdf, scale)


def _units(jaxpr) -> list:
  """The equations the outputs of `jaxpr` depend on, in order; draws as `_Draw`s."""
  needed = {v for v in jaxpr.outvars if not _is_literal(v)}
  live = []
  for eqn in reversed(jaxpr.eqns):
    if eqn.effects or any(v in needed for v in eqn.outvars):
      live.append(eqn)
      needed.update(v for v in eqn.invars if not _is_literal(v))
  live.reverse()
  uses: dict[Any, list] = {}
  for eqn in live:
    for v in eqn.invars:
      if not _is_literal(v):
        uses.setdefault(v, []).append(eqn)
  outputs = {v for v in jaxpr.outvars if not _is_literal(v)}
  units, absorbed = [], set()
  for eqn in live:
    if id(eqn) in absorbed:
      continue
    if _is_draw(eqn):
      draw = _draw(eqn, uses, outputs)
      absorbed.update(id(e) for e in (draw.inverse_cdf, draw.scale) if e is not None)
      units.append(draw)
    else:
      units.append(eqn)
  return units


def _bind(eqn, inputs: list) -> list:
  """Evaluates one equation (as `jax.core.eval_jaxpr` does); its outputs as a list."""
  params = eqn.primitive.get_bind_params(eqn.params)
  outputs = eqn.primitive.bind(*inputs, **params)
  return list(outputs) if eqn.primitive.multiple_results else [outputs]


def _batched_draw(draw: _Draw, n: int, key, *inputs) -> jax.Array:
  """`draw`'s function for a flat draw of `n` values, its `erf_inv`, times its scale (the last input)."""
  values = FLAT_DRAWS[draw.name][1](key, n, draw.aval.dtype, *inputs[:-1])
  if draw.inverse_cdf is not None:
    values = jax.lax.erf_inv(values)
  return values * inputs[-1]


@dataclasses.dataclass(frozen=True)
class Rows:
  """Draw values left in their batch: `batches[batch][row, :prod(shape)]` as `shape`."""

  batch: int
  row: int
  shape: tuple[int, ...]

  def cut(self, batches) -> Any:
    return batches[self.batch][self.row, :math.prod(self.shape)].reshape(self.shape)


def evaluate_batched(closed_jaxpr, *args) -> tuple[list, list]:
  """`closed_jaxpr` on `args` with its fold_ins and draws batched (see the module doc).

  Returns (outputs, batches): each output is an array (a numpy one where it
  is a constant), or, where it is a draw's result as it is, its `Rows` in
  `batches` (the draws' batched calls), for the caller to cut. Meant to run under `jax.jit` (eagerly it compiles
  every equation on its own).
  """
  jaxpr = closed_jaxpr.jaxpr
  env = dict(zip(jaxpr.constvars, closed_jaxpr.consts))
  env.update(zip(jaxpr.invars, args))
  batches: list = []
  rows: dict[Any, Rows] = {}  # draw results not cut from their batch yet
  key_rows: dict[Any, tuple[Any, int]] = {}  # fold_in results: (their batch, row)
  converted: dict[tuple, Any] = {}  # (id(batch of keys), conversion) -> converted batch

  def known(v) -> bool:
    return _is_literal(v) or v in env or v in rows or v in key_rows

  def read(v):
    if _is_literal(v):
      return v.val
    if v not in env:
      env[v] = rows.pop(v).cut(batches) if v in rows else key_rows[v][0][key_rows[v][1]]
    return env[v]

  def stacked(variables: list, dtype=None):
    """The values of `variables` stacked; fold_in results taken from their batch at once."""
    in_rows = [not _is_literal(v) and v in key_rows and v not in env for v in variables]
    if all(in_rows) and len({id(key_rows[v][0]) for v in variables}) == 1:
      return key_rows[variables[0]][0][np.array([key_rows[v][1] for v in variables])]
    # A literal as an array of its own type (a fold_in datum can exceed 2**31).
    values = [np.asarray(v.val, v.aval.dtype) if _is_literal(v) else read(v) for v in variables]
    return jnp.stack([x if dtype is None else x.astype(dtype) for x in values])

  def group(unit) -> tuple | None:
    if isinstance(unit, _Draw):
      return unit.group()
    return ("fold_in",) if unit.primitive.name == "random_fold_in" else None

  def run(eqn) -> None:
    source = eqn.invars[0] if eqn.invars else None
    if (eqn.primitive.name in KEY_CONVERSIONS and not _is_literal(source)
        and source in key_rows and source not in env):
      batch, row = key_rows[source]  # convert the whole batch of keys, once
      memo = (id(batch), eqn.primitive.name)
      if memo not in converted:
        converted[memo] = _bind(eqn, [batch])[0]
      key_rows[eqn.outvars[0]] = (converted[memo], row)
    elif eqn.primitive.name == "broadcast_in_dim" and _is_literal(source):
      out = eqn.outvars[0].aval  # a constant (BatchNorm's ones and zeros): no kernel
      env[eqn.outvars[0]] = np.broadcast_to(np.asarray(eqn.invars[0].val, out.dtype), out.shape)
    else:
      env.update(zip(eqn.outvars, _bind(eqn, [read(v) for v in eqn.invars])))

  pending = _units(jaxpr)
  while pending:
    # Every equation that runs on its own, as long as one is ready.
    progress = True
    while progress:
      progress, waiting = False, []
      for unit in pending:
        if group(unit) is None and all(map(known, unit.invars)):
          run(unit)
          progress = True
        else:
          waiting.append(unit)
      pending = waiting
    # Then the ready fold_ins, and the ready draws of each group: one call each.
    groups: dict[tuple, list] = {}
    for unit in pending:
      if all(map(known, unit.invars)):
        groups.setdefault(group(unit), []).append(unit)
    if pending and not groups:
      raise RuntimeError("batched_init: equations whose inputs are never computed.")
    for key, units in groups.items():
      if key[0] == "fold_in":
        keys = jax.vmap(jax.random.fold_in)(*[stacked([unit.invars[i] for unit in units])
                                              for i in range(2)])
        key_rows.update((unit.outvars[0], (keys, i)) for i, unit in enumerate(units))
        continue
      first = units[0]
      inputs = [stacked([unit.invars[0] for unit in units])] + [
          stacked([unit.invars[i] for unit in units], first.aval.dtype)
          for i in range(1, len(first.invars))]  # _uniform casts its bounds to dtype first
      batches.append(jax.vmap(functools.partial(
          _batched_draw, first, max(unit.size for unit in units)))(*inputs))
      rows.update((unit.outvar, Rows(len(batches) - 1, i, unit.aval.shape))
                  for i, unit in enumerate(units))
    batched = {id(unit) for units in groups.values() for unit in units}
    pending = [unit for unit in pending if id(unit) not in batched]
  outputs = [rows[v] if v in rows else read(v) for v in jaxpr.outvars]
  return outputs, batches


def _packed(arrays: list) -> dict:
  """`arrays` flattened and concatenated per dtype: {dtype name: one buffer}."""
  by_dtype: dict[str, list] = {}
  for x in arrays:
    by_dtype.setdefault(str(x.dtype), []).append(jnp.ravel(x))
  return {dtype: jnp.concatenate(parts) for dtype, parts in by_dtype.items()}


def _unpacked(packed: dict, shapes: list) -> list:
  """The arrays that `_packed` concatenated (of `shapes`, in order), as host views."""
  offsets = dict.fromkeys(packed, 0)
  arrays = []
  for shape in shapes:
    dtype, size = str(shape.dtype), math.prod(shape.shape)
    arrays.append(packed[dtype][offsets[dtype]:offsets[dtype] + size].reshape(shape.shape))
    offsets[dtype] += size
  return arrays


def init(module: nn.Module, rngs, *args, **kwargs) -> Any:
  """`flax.linen.Module.init(module, rngs, *args, **kwargs)`, computed as the module doc says.

  `rngs` and the array arguments are traced; every other argument (a Python
  bool such as `train`, `method`, `mutable`, ...) is passed as it is.
  Called with concrete arrays it compiles and runs one program and returns
  arrays on the default device; inside jit / eval_shape / vmap it adds the
  same computation to the caller's.
  """
  traced = [i for i, a in enumerate(args) if isinstance(a, (jax.Array, np.ndarray))]

  def flax_init(rngs, *traced_args):
    full = list(args)
    for i, a in zip(traced, traced_args):
      full[i] = a
    return nn.Module.init(module, rngs, *full, **kwargs)

  inputs = (rngs, *[args[i] for i in traced])
  closed_jaxpr, out_shape = jax.make_jaxpr(flax_init, return_shape=True)(*inputs)
  shapes, structure = jax.tree.flatten(out_shape)
  flat_inputs = jax.tree.leaves(inputs)
  if any(isinstance(x, jax.core.Tracer) for x in flat_inputs):
    outputs, batches = evaluate_batched(closed_jaxpr, *flat_inputs)
    return jax.tree.unflatten(
        structure, [o.cut(batches) if isinstance(o, Rows) else o for o in outputs])

  layout: list = []  # per output: its Rows, a constant, or None (computed in the program)

  def program(*flat):
    outputs, batches = evaluate_batched(closed_jaxpr, *flat)
    layout[:] = [o if isinstance(o, (Rows, np.ndarray)) else None for o in outputs]
    return _packed([o for o, place in zip(outputs, layout) if place is None]), batches

  packed, batches = jax.device_get(jax.jit(program)(*flat_inputs))
  computed = iter(_unpacked(packed, [s for s, o in zip(shapes, layout) if o is None]))
  return jax.tree.unflatten(structure, jax.device_put([
      next(computed) if o is None else o.cut(batches) if isinstance(o, Rows) else np.array(o)
      for o in layout]))
