"""run_info.model_summary: parameter count and FLOPs per image against hand counts."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from wacnn_jax.training import run_info


class _ConvDense(nn.Module):

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(8, (3, 3), use_bias=False)(x)          # SAME padding, 16 x 16 output
    return nn.Dense(5)(x.reshape((x.shape[0], -1)))   # 2 * 2048 * 5 + 5


def test_flops_and_parameters_match_a_hand_count():
  model = _ConvDense()
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))
  summary = run_info.model_summary(model, variables, (16, 16, 3))
  assert summary["params"] == 9 * 3 * 8 + 2048 * 5 + 5
  # A multiply-add is 2 FLOPs; XLA counts only taps that fall inside the image:
  # along each axis the 3 taps of 16 outputs hit 3 * 16 - 2 pixels. The bias adds are 5.
  conv = 2 * 3 * 8 * (3 * 16 - 2) ** 2
  assert summary["flops_per_image"] == conv + 2 * 2048 * 5 + 5
