"""The reference recipe's optimiser and learning-rate schedules, from a config.

SGD with momentum and PyTorch's coupled weight decay; a step schedule
(multiplied by `decay` at the `boundaries` epochs) or cosine decay, with an
optional constant warm-up. Schedules are functions of the global step.
"""

from __future__ import annotations

from typing import Any, Callable

import jax.numpy as jnp
import ml_collections
import optax


def create_learning_rate_fn(config: ml_collections.ConfigDict,
                            steps_per_epoch: int) -> Callable[[Any], Any]:
  """LR as a function of the global step, following the epoch-based recipe.

  `step`: base * decay ** (number of `boundaries` epochs passed).
  `cosine`: cosine decay from base to 0 over the epochs after warm-up.
  Warm-up: `warmup_learning_rate` for the first `warmup_epochs` epochs.
  """
  schedule = config.schedule
  base = config.optimizer.learning_rate
  if schedule.name not in ("step", "cosine"):
    raise ValueError(
        f"unknown schedule.name {schedule.name!r}; use 'step' or 'cosine'.")

  def learning_rate_fn(step):
    epoch = jnp.floor_divide(step, steps_per_epoch)
    if schedule.name == "step":
      passed = sum((epoch >= b).astype(jnp.int32) for b in schedule.boundaries)
      lr = base * jnp.power(schedule.decay, passed)
    else:
      span = max(1, config.num_epochs - schedule.warmup_epochs)
      progress = jnp.clip((step / steps_per_epoch - schedule.warmup_epochs) / span, 0, 1)
      lr = base * 0.5 * (1 + jnp.cos(jnp.pi * progress))
    if schedule.warmup_epochs:
      lr = jnp.where(epoch < schedule.warmup_epochs,
                     schedule.warmup_learning_rate, lr)
    return jnp.asarray(lr, jnp.float32)

  return learning_rate_fn


def create_optimizer(config, learning_rate_fn) -> optax.GradientTransformation:
  """SGD with momentum and PyTorch's coupled weight decay.

  Per parameter: g <- g + wd * p; buf <- momentum * buf + g; p <- p - lr * buf
  (torch.optim.SGD with dampening 0), for every parameter, BN and biases too.
  """
  opt = config.optimizer
  return optax.chain(
      optax.add_decayed_weights(opt.weight_decay),
      optax.sgd(learning_rate_fn, momentum=opt.momentum, nesterov=opt.nesterov))
