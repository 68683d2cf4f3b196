"""wacnn_jax.nn.depthwise: shifted multiply-adds against lax's grouped convolution and float64."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wacnn_jax.nn import depthwise


def _lax_depthwise(x, kernel, strides, padding):
  """The reference: lax's grouped convolution (feature_group_count = C), float32, HIGHEST."""
  return jax.lax.conv_general_dilated(
      jnp.asarray(x, jnp.float32), jnp.asarray(kernel, jnp.float32), (strides, strides),
      depthwise._pairs(padding), dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=x.shape[-1], precision=jax.lax.Precision.HIGHEST)


def _depthwise_cases():
  """Fixed cases (the backbones' and the DWT's) and random ones, odd sizes included."""
  yield (2, 32, 32, 16, 1, 3, 1, 1)  # MobileNetV2 stride 1
  yield (2, 15, 15, 24, 1, 3, 2, 1)  # stride 2 on an odd size
  yield (2, 9, 9, 3, 4, 4, 2, 0)  # the DWT of db2 (padded beforehand): 4 bands per channel
  yield (1, 13, 10, 2, 4, 8, 2, 0)  # sym4
  rng = np.random.default_rng(7)
  for _ in range(8):
    k = int(rng.integers(1, 6))
    h, w = (int(v) for v in rng.integers(k, 13, 2))
    pads = tuple(tuple(int(p) for p in rng.integers(0, k, 2)) for _ in range(2))
    yield (int(rng.integers(1, 4)), h, w, int(rng.integers(1, 7)), int(rng.choice([1, 2, 4])),
           k, int(rng.integers(1, 3)), pads)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("n, h, w, c, m, k, strides, padding", list(_depthwise_cases()))
def test_shifted_depthwise_equals_grouped_convolution(n, h, w, c, m, k, strides, padding, dtype):
  """Forward, input gradient and kernel gradient of `depthwise_conv2d_shifted` against lax's
  grouped convolution in float32. float32: max error <= 2e-6 x the largest value of each
  result (measured <= 4e-7). bfloat16 inputs: the reference runs in float32 on the same
  bfloat16 values, so the error is the rounding of the result to bfloat16: <= 2^-8 of the
  largest value."""
  rng = np.random.default_rng(n * 1000 + h * 100 + w * 10 + c + k)
  x = jnp.asarray(rng.normal(size=(n, h, w, c)), dtype)
  kernel = jnp.asarray(rng.normal(size=(k, k, 1, c * m)), dtype)
  g = jnp.asarray(rng.normal(size=_lax_depthwise(x, kernel, strides, padding).shape), dtype)

  @functools.partial(jax.jit, static_argnums=3)  # one compilation per case, not per operation
  def forward_and_gradients(x, kernel, g, conv):
    y, vjp = jax.vjp(conv, x, kernel)
    return (y, *vjp(g))

  got = forward_and_gradients(x, kernel, g, lambda a, b: depthwise.depthwise_conv2d_shifted(
      a, b, strides=strides, padding=padding))
  want = forward_and_gradients(*(jnp.asarray(v, jnp.float32) for v in (x, kernel, g)),
                               lambda a, b: _lax_depthwise(a, b, strides, padding))
  tolerance = 2e-6 if dtype == jnp.float32 else 2.0 ** -8
  for name, got, want in zip(("forward", "input gradient", "kernel gradient"), got, want):
    assert got.dtype == dtype and got.shape == want.shape, name
    error = float(jnp.max(jnp.abs(jnp.asarray(got, jnp.float32) - want)))
    assert error <= tolerance * float(jnp.max(jnp.abs(want))), (name, error)


def test_shifted_depthwise_equals_a_float64_loop():
  """An independent reference: the definition, summed in numpy float64 (rtol 1e-6)."""
  rng = np.random.default_rng(3)
  x, kernel = rng.normal(size=(2, 7, 6, 3)), rng.normal(size=(3, 3, 1, 6))
  xp = np.pad(x, ((0, 0), (1, 0), (2, 1), (0, 0)))
  want = np.zeros((2, 3, 4, 6))  # (7 + 1 - 3) // 2 + 1 rows, (6 + 3 - 3) // 2 + 1 columns
  for i in range(3):
    for j in range(4):
      window = xp[:, 2 * i:2 * i + 3, 2 * j:2 * j + 3, :]  # (N, 3, 3, C)
      want[:, i, j] = np.einsum("nuvc,uvcq->ncq", window,
                                kernel[:, :, 0].reshape(3, 3, 3, 2)).reshape(2, 6)
  got = depthwise.depthwise_conv2d_shifted(jnp.asarray(x, jnp.float32),
                                        jnp.asarray(kernel, jnp.float32), strides=2,
                                        padding=((1, 0), (2, 1)))
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-6)


def test_depthwise_implementation_is_checked():
  x, kernel = jnp.zeros((1, 4, 4, 3)), jnp.zeros((3, 3, 1, 3))
  with pytest.raises(ValueError, match="not one of 'shifted', 'grouped'"):
    depthwise.depthwise_conv2d(x, kernel, implementation="winograd")
  with pytest.raises(ValueError, match=r"is \(kh, kw, 1, 3 \* m\)"):
    depthwise.depthwise_conv2d(x, jnp.zeros((3, 3, 3, 3)))
  with pytest.raises(ValueError, match="does not fit"):
    depthwise.depthwise_conv2d(x, jnp.zeros((5, 5, 1, 3)))
