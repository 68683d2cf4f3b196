"""The building blocks under the idioms a Flax user relies on: jax.eval_shape(module.init, ...),
jax.jit(module.init), module.tabulate, bfloat16 compute and jax.vmap."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wacnn_jax.nn import attention
from wacnn_jax.nn import layers
from wacnn_jax.nn import wavelets

KEY = jax.random.PRNGKey(0)
X = jnp.asarray(np.random.default_rng(0).normal(size=(3, 8, 8, 16)), jnp.float32)


class Bands(nn.Module):
  """DWT2D then IDWT2D of its bands (with a parameter-free round trip, a module of each)."""
  wavelet: str = "db2"
  dtype: object = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    bands = wavelets.DWT2D(self.wavelet)(jnp.asarray(x, self.dtype))
    return wavelets.IDWT2D(self.wavelet)(bands)


class ConvBatchNormDense(nn.Module):
  """layers.conv, DepthwiseConv, BatchNorm and Dense in a row."""
  dtype: object = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = layers.conv(16, 3, dtype=self.dtype, name="conv")(jnp.asarray(x, self.dtype))
    x = layers.DepthwiseConv(3, 2, dtype=self.dtype, name="depthwise")(x)
    x = layers.batch_norm(train, dtype=self.dtype, name="bn")(x)
    return layers.linear(4, x.mean(axis=(1, 2)), dtype=self.dtype, name="dense")


BLOCKS = {
    "wavelet_attention": lambda dtype: attention.WaveletAttention("db2", dtype=dtype),
    "se": lambda dtype: attention.SqueezeExcitation(dtype=dtype),
    "cbam": lambda dtype: attention.CBAM(dtype=dtype),
    "eca": lambda dtype: attention.ECA(dtype=dtype),
    "gc": lambda dtype: attention.GlobalContext(dtype=dtype),
    "dwt_idwt": lambda dtype: Bands(dtype=dtype),
    "layers": lambda dtype: ConvBatchNormDense(dtype=dtype),
}


def _first(y):
  return y[0] if isinstance(y, tuple) else y  # WaveletAttention returns (out, ll)


@pytest.mark.parametrize("name", BLOCKS)
def test_building_block_under_jit_eval_shape_vmap_tabulate_bfloat16(name):
  block = BLOCKS[name](jnp.float32)
  variables = block.init(KEY, X)
  shapes = jax.eval_shape(block.init, KEY, X)
  assert jax.tree.map(lambda a: (a.shape, a.dtype), variables) == jax.tree.map(
      lambda a: (a.shape, a.dtype), shapes)
  # Flax's own init (these are plain Flax modules): eager and jitted round a normal draw's
  # scaling each their own way, to an ulp.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
               variables, jax.jit(block.init)(KEY, X))
  y = _first(block.apply(variables, X))
  # vmap over the batch, one image at a time (BatchNorm in evaluation: per-image is exact).
  per_image = jax.vmap(lambda x: _first(block.apply(variables, x[None]))[0])(X)
  np.testing.assert_allclose(per_image, y, rtol=1e-5, atol=1e-5)
  assert type(block).__name__ in block.tabulate(KEY, X, console_kwargs={"width": 200})
  # bfloat16 compute: float32 parameters, the output in bfloat16, close to float32's.
  half = BLOCKS[name](jnp.bfloat16)
  half_variables = half.init(KEY, X)
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(half_variables))
  y_half = _first(half.apply(half_variables, X))
  assert y_half.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(y_half, np.float32), y, rtol=0.05,
                             atol=0.05 * float(jnp.abs(y).max()))
