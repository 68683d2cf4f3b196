"""A training run read back: its saved config and a checkpoint with its model and dataset.

    run = restore_checkpoint(load_config(workdir), workdir)   # the best checkpoint
    run.variables    # replica 0's {params, batch_stats}
    run.model.apply(run.variables, transforms.normalize(images, run.preprocessing.normalization))

Used by evaluation, visualisation and notebooks.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import ml_collections

from wacnn_jax.data import transforms
from wacnn_jax.data.dataset import Dataset
from wacnn_jax.data import pipeline
from wacnn_jax.files import records
from wacnn_jax.training import checkpointing
from wacnn_jax.training import run_identity
from wacnn_jax.training import states
from wacnn_jax.training import steps
from wacnn_jax.training import workdirs


@dataclasses.dataclass
class Restored:
  """A checkpoint restored for evaluation, with its model and dataset."""

  config: ml_collections.ConfigDict
  state: steps.TrainState  # on the host, without the device axis; all R replicas (R, ...)
  step: int
  meta: dict
  dataset: Dataset
  model: Any  # the Flax module without a pmap axis (for visualisation)
  replica: int = 0  # whose `variables` are shown

  @property
  def preprocessing(self) -> transforms.Preprocessing:
    """How the model saw its images in training (normalisation, size, augmentation)."""
    return run_identity.recorded_preprocessing(self.meta, self.dataset.image_shape)

  @property
  def variables(self) -> dict:
    """Replica `replica`'s {params, batch_stats} (no replica axis)."""
    state = steps.replica(self.state, self.replica)
    return {"params": state.params, "batch_stats": state.batch_stats}


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run saved in `workdir/config.json`."""
  workdirs.check_exists(workdir)
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise checkpointing.CheckpointError(
        f"{path} does not exist: {workdir!r} is not a training workdir.")
  try:
    return ml_collections.ConfigDict(records.read_json(path))
  except records.RecordError as e:
    raise records.RecordError(
        f"{e} Give the run's config with --config FILE (and its --config.x=y overrides).") from e


def restore_checkpoint(config, workdir: str, step: int = -1,
                       dataset: Dataset | None = None,
                       replica: int = 0) -> Restored:
  """Restores checkpoint `step` (-1, the default: the best) of `workdir`.

  All `config.num_seeds` replicas are restored; `replica` picks whose
  `Restored.variables` are. Raises ValueError for a replica that is not in
  the run, CheckpointError when there is no such checkpoint, it cannot be
  read, or it belongs to another model, other classes or another number of
  replicas.
  """
  if not 0 <= replica < config.num_seeds:
    raise ValueError(f"replica {replica} is not in the run: it trained num_seeds="
                     f"{config.num_seeds} replica(s), 0 to {config.num_seeds - 1}.")
  # The checkpoints are looked up before the (slow) dataset is read.
  checkpoints = checkpointing.Checkpointer(workdir, keep=config.keep_checkpoints,
                                           create=False)
  try:
    step = checkpoints.find_step(step)
    if dataset is None:
      dataset = pipeline.load(config.data, test_in_memory=True)
    model = states.create_model(config, dataset.num_classes)
    checkpoints.identity = run_identity.checkpoint_identity(config, dataset)
    state, meta = checkpoints.restore(int(step), states.abstract_train_states(
        config, model, dataset.image_shape, len(dataset.train)))
  except checkpointing.DamagedCheckpointError as e:
    raise checkpointing.DamagedCheckpointError(
        f"{e} Evaluate another with --eval.step (there are "
        f"{checkpoints.all_steps()}); training on in this workdir sets damaged "
        "checkpoints aside.") from e
  finally:
    checkpoints.close()
  return Restored(config, state, int(step), meta, dataset,
                  states.create_model(config, dataset.num_classes, axis_name=None), replica)
