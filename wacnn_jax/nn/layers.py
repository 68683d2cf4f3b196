"""PyTorch-equivalent layers for the backbones and attention modules: conv, depthwise conv,
BatchNorm, Dense.

Arrays are NHWC. Every factory takes the compute `dtype` and keeps parameters
float32. Initialisers follow PyTorch's defaults: a Conv2d or Linear weight and
bias are U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (fan_in = input channels per
group x kernel area), BatchNorm scale 1 and bias 0; the modules that use other
initialisers pass them in.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from wacnn_jax.nn import depthwise

Initializer = Callable[..., jax.Array]

# PyTorch's default Conv/Linear weight init, kaiming_uniform(a=sqrt(5)):
# U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_default_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
# nn.init.kaiming_normal_(mode='fan_in', nonlinearity='relu'): untruncated
# N(0, 2 / fan_in) (jax's "normal" distribution is not truncated).
kaiming_normal_fan_in = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
# nn.init.kaiming_normal_(mode='fan_out', nonlinearity='relu'): untruncated N(0, 2 / fan_out),
# fan_out = output channels x kernel area (the init of torchvision's and the reference VGG's
# convolutions).
kaiming_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# nn.init.normal_(std=0.01): the Linear weights of the reference's VGG and of torchvision's
# MobileNetV2.
normal_001 = nn.initializers.normal(0.01)


def torch_default_bias_init(fan_in: int) -> Initializer:
  """PyTorch's default Conv/Linear bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


BN_MOMENTUM = 0.9  # = PyTorch momentum 0.1
BN_EPSILON = 1e-5


class BatchNorm(nn.Module):
  """PyTorch's BatchNorm2d over the last (channel) axis: (..., C) -> (..., C).

  Training: normalises with the batch mean and the biased batch variance over
  every axis but the last (and over the devices of `axis_name`), and updates
  the running averages `mean <- m mean + (1 - m) batch_mean`, `var <- m var +
  (1 - m) n / (n - 1) batch_var` with the unbiased variance, n = values per
  channel in the whole (cross-device) batch, as PyTorch does; n = 1 is refused
  as PyTorch refuses it. Evaluation: normalises with the running averages.
  `y = (x - mean) / sqrt(var + epsilon) * scale + bias`.

  `momentum` m in flax's convention (0.9 = PyTorch's momentum 0.1). Variables
  float32: params `scale` (init 1) and `bias` (0); batch_stats `mean` (0) and
  `var` (1). Statistics and normalisation run in at least float32 (batch
  variance as E[x^2] - E[x]^2, clipped at 0, as flax's BatchNorm); the output
  has dtype `dtype`.
  """

  use_running_average: bool
  momentum: float = BN_MOMENTUM
  epsilon: float = BN_EPSILON
  dtype: Any = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x):
    features = (x.shape[-1],)
    scale = self.param("scale", nn.initializers.ones, features, jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, features, jnp.float32)
    running_mean = self.variable("batch_stats", "mean", jnp.zeros, features, jnp.float32)
    running_var = self.variable("batch_stats", "var", jnp.ones, features, jnp.float32)
    if self.use_running_average:
      mean, var = running_mean.value, running_var.value
    else:
      axes = tuple(range(x.ndim - 1))
      stats = jnp.asarray(x, jnp.promote_types(self.dtype, jnp.float32))
      moments = jnp.stack([stats.mean(axes), jnp.square(stats).mean(axes)])
      count = math.prod(x.shape[:-1])
      if self.axis_name is not None and not self.is_initializing():
        moments = jax.lax.pmean(moments, self.axis_name)
        count *= jax.lax.axis_size(self.axis_name)
      mean = moments[0]
      var = jnp.maximum(0.0, moments[1] - jnp.square(mean))
      if not self.is_initializing():
        if count < 2:
          raise ValueError(f"BatchNorm in training needs more than 1 value per channel, "
                           f"got input shape {x.shape}.")
        m = self.momentum
        running_mean.value = m * running_mean.value + (1 - m) * mean
        running_var.value = m * running_var.value + (1 - m) * var * (count / (count - 1))
    y = (x - mean) * (jax.lax.rsqrt(var + self.epsilon) * scale) + bias
    return jnp.asarray(y, self.dtype)


def batch_norm(train: bool, *, momentum: float = BN_MOMENTUM, dtype: Any = jnp.float32,
               axis_name: str | None = None, name: str | None = None) -> BatchNorm:
  """`BatchNorm` (PyTorch's BatchNorm2d: scale 1, bias 0, eps 1e-5, momentum 0.1).

  Batch statistics in training, running averages otherwise; `axis_name`
  averages the batch statistics across pmapped devices. `momentum` in flax's
  convention, default BN_MOMENTUM (= PyTorch's 0.1).
  """
  return BatchNorm(use_running_average=not train, momentum=momentum, dtype=dtype,
                   axis_name=axis_name, name=name)


def dense(features: int, *, bias_init: Initializer | None,
          kernel_init: Initializer = torch_default_init, dtype: Any = jnp.float32,
          name: str | None = None) -> nn.Dense:
  """nn.Dense with float32 parameters; `bias_init` None: no bias.

  Kernel (in, out) from `kernel_init` (default PyTorch's U(+-1/sqrt(in))).
  """
  return nn.Dense(features, use_bias=bias_init is not None, kernel_init=kernel_init,
                  bias_init=nn.initializers.zeros if bias_init is None else bias_init,
                  dtype=dtype, param_dtype=jnp.float32, name=name)


def linear(features: int, x, *, name: str, dtype: Any,
           kernel_init: Initializer = torch_default_init):
  """PyTorch's nn.Linear applied to (N, D) `x` -> (N, features).

  Kernel (D, features) from `kernel_init` (default PyTorch's U(+-1/sqrt(D)));
  bias PyTorch's default U(+-1/sqrt(D)).
  """
  return dense(features, bias_init=torch_default_bias_init(x.shape[-1]),
               kernel_init=kernel_init, dtype=dtype, name=name)(x)


class Conv(nn.Conv):
  """nn.Conv with two CPU levers; same parameters, names, initial values and outputs.

  XLA:CPU computes a convolution's weight gradient from transposed copies of
  its input and of its output gradient, and by default fuses the
  recomputation of those (the previous BatchNorm, ReLU and residual adds, up
  to three layers back; the BatchNorm backward after it) into the transposing
  copies, reading several tensors in transposed order:
  over a third of a CPU train step. Optimisation barriers keep the stored
  values instead, where the compilation keeps barriers
  (`steps.compiler_options`):
  1. on the input (forward);
  2. on the output's gradient (`_cotangent_barrier`).
  Elsewhere this is nn.Conv. docs/benchmarks.md measures each.
  """

  @nn.compact
  def __call__(self, inputs):
    backend = jax.default_backend()
    if backend == "cpu":
      inputs = jax.lax.optimization_barrier(inputs)
    y = super().__call__(inputs)
    return _cotangent_barrier(y) if backend == "cpu" else y


@jax.custom_vjp
def _cotangent_barrier(y):
  """The identity, whose gradient passes an optimisation barrier: the gradient arriving at
  a convolution is stored before XLA:CPU transposes it for the weight
  gradient, rather than recomputed (the BatchNorm backward after the layer) inside the
  transposing copy. Reverse mode only (a custom VJP)."""
  return y


_cotangent_barrier.defvjp(lambda y: (y, None),
                          lambda _, g: (jax.lax.optimization_barrier(g),))


def conv(features: int, kernel: int, *, strides: int = 1,
         use_bias: bool = False, dtype: Any = jnp.float32,
         kernel_init: Initializer = torch_default_init, name: str | None = None) -> Conv:
  """Square nn.Conv with PyTorch's symmetric zero padding (kernel // 2 per side).

  Kernel (k, k, Cin, features) from `kernel_init`, default PyTorch's
  U(+-1/sqrt(fan_in)), fan_in = Cin * k * k (depthwise convolutions:
  `DepthwiseConv`). No bias by default (the
  backbones' convolutions have none, except VGG's, which the reference sets
  to 0): biases start at 0. (`Conv` is nn.Conv with CPU-only levers.)
  """
  pad = kernel // 2
  return Conv(features, (kernel, kernel), strides=(strides, strides),
              padding=((pad, pad), (pad, pad)),
              use_bias=use_bias, kernel_init=kernel_init,
              bias_init=nn.initializers.zeros, dtype=dtype,
              param_dtype=jnp.float32, name=name)


class DepthwiseConv(nn.Module):
  """PyTorch's Conv2d(C, C, k, stride, padding=k // 2, groups=C, bias=False): NHWC -> NHWC.

  Parameter `kernel` (k, k, 1, C) float32, as nn.Conv with
  `feature_group_count=C` names and shapes it, from `kernel_init` (default
  PyTorch's U(+-1/sqrt(k * k))); computed by `depthwise.depthwise_conv2d` in
  `dtype` (shifted multiply-adds or lax's grouped convolution, per backend).
  """

  kernel_size: int
  strides: int = 1
  dtype: Any = jnp.float32
  kernel_init: Initializer = torch_default_init

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    kernel = self.param("kernel", self.kernel_init, (k, k, 1, x.shape[-1]), jnp.float32)
    return depthwise.depthwise_conv2d(jnp.asarray(x, self.dtype),
                                      jnp.asarray(kernel, self.dtype),
                                      strides=self.strides, padding=k // 2)


def global_average_pool(x):
  """(N, H, W, C) -> (N, C)."""
  return x.mean(axis=(1, 2))


def relu6(x):
  """min(max(x, 0), 6): torchvision's MobileNetV2 activation."""
  return jnp.minimum(jnp.maximum(x, 0), 6).astype(x.dtype)
