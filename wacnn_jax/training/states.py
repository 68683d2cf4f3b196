"""The model and the initial training states a config asks for.

    model = create_model(config, num_classes)            # config.model's network
    state = create_train_states(config, model, (32, 32, 3), learning_rate_fn)   # (R, ...)

Replicas: `num_seeds` = R independent replicas of the model (seeds `seed`,
`seed + 1`, ...) train in one program, stacked on a leading replica axis R of
every state array. Replica k is the single-seed run with seed `seed + k`: its
initial state is that run's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from wacnn_jax import models
from wacnn_jax.training import optim
from wacnn_jax.training import parallel
from wacnn_jax.training import steps


def create_model(config: ml_collections.ConfigDict, num_classes: int,
                 axis_name: str | None = parallel.AXIS_NAME):
  """`config.model`'s network (`models.create_model`); bfloat16 compute with `half_precision`."""
  return models.create_model(
      config.model.arch, num_classes=num_classes, attention=config.model.attention,
      block=config.model.get("block"),
      dtype=jnp.bfloat16 if config.get("half_precision") else jnp.float32,
      axis_name=axis_name)


def initial_variables(model, image_shape, rng):
  """Model variables {params, batch_stats} for NHWC images of shape `image_shape` (H, W, C)."""
  dummy = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
  params_key, dropout_key = jax.random.split(rng)
  # One compiled program without the forward pass (models.batched_init).
  return model.init({"params": params_key, "dropout": dropout_key}, dummy, train=False)


def create_train_state(config, model, image_shape, learning_rate_fn,
                       rng) -> steps.TrainState:
  init_key, state_key = jax.random.split(rng)
  variables = initial_variables(model, image_shape, init_key)
  return steps.TrainState.create(
      apply_fn=model.apply,
      params=variables["params"],
      batch_stats=variables.get("batch_stats", {}),
      tx=optim.create_optimizer(config, learning_rate_fn),
      rng=state_key)


def replica_seeds(config) -> list[int]:
  """The seeds of the `num_seeds` replicas: `seed`, `seed + 1`, ..."""
  return [config.seed + k for k in range(config.num_seeds)]


def create_train_states(config, model, image_shape, learning_rate_fn) -> steps.TrainState:
  """The replicas' initial states, stacked on a leading replica axis R = `num_seeds`.

  Replica k is `create_train_state(..., PRNGKey(seed + k))`, the initial state
  of a single-seed run with seed `seed + k`.
  """
  states = [create_train_state(config, model, image_shape, learning_rate_fn,
                               jax.random.PRNGKey(seed)) for seed in replica_seeds(config)]
  # Leaf by leaf: each state has its own optimiser object, so the trees' static parts differ.
  leaves = zip(*(jax.tree.leaves(state) for state in states))
  return jax.tree.unflatten(jax.tree.structure(states[0]),
                            [jnp.stack(replicas) for replicas in leaves])


def abstract_train_states(config, model, image_shape, num_train_examples: int):
  """The replicas' TrainState: structure, shapes (R, ...) and dtypes (nothing is computed)."""
  steps_per_epoch = max(1, num_train_examples // config.batch_size)
  learning_rate_fn = optim.create_learning_rate_fn(config, steps_per_epoch)
  return jax.eval_shape(lambda: create_train_states(config, model, image_shape,
                                                    learning_rate_fn))
