"""What a checkpoint records of its run, so that another run's checkpoint is refused by name.

    checkpoint_identity(config, dataset)   # model, classes, image shape, replicas: any restore
    resume_identity(config, dataset)       # + every setting and the data's checksums: training on

`checkpointing.Checkpointer` saves the identity in each checkpoint's meta and
compares it on restore; a difference is one line naming the fields.
"""

from __future__ import annotations

from wacnn_jax.data import transforms
from wacnn_jax.data.dataset import Dataset
from wacnn_jax.files import records
from wacnn_jax.nn.attention_spec import AttentionSpec


def checkpoint_identity(config, dataset: Dataset) -> dict:
  """What must match between a checkpoint and any config restoring it: the model (its
  attention as the canonical spec string), its classes, the number of replicas and
  their seeds (which evaluation reports)."""
  identity = {f"model.{k}": v for k, v in config.model.to_dict().items()}
  identity["model.attention"] = str(AttentionSpec.parse(config.model.attention))
  identity["num_seeds"] = config.num_seeds
  identity["seed"] = config.seed
  identity["num_classes"] = dataset.num_classes
  identity["class_names"] = list(dataset.class_names)
  identity["image_shape"] = list(dataset.image_shape)
  return identity


# The config fields that may change when a run resumes (README, "When things go
# wrong"): how long, how fast, where and with what cadence it trains, the data's
# location (its content is compared by checksum) and, after divergence, the
# learning rate. Every other field must match the checkpoint's.
RESUMABLE_FIELDS = (
    "num_epochs", "optimizer.learning_rate", "eval_batch_size", "steps_per_dispatch",
    "checkpoint_every_epochs", "checkpoint_every_steps", "keep_checkpoints", "log_every_steps",
    "distributed", "coordinator_address", "num_processes", "process_id",
    "initialization_timeout", "heartbeat_timeout", "compilation_cache_dir",
    "data.dataset", "data.image_folder", "data.data_dir", "data.download", "data.cache_dir",
    "data.cache_max_gb", "data.allow_missing_classes", "data.pipeline", "data.memory_share",
    "data.workers")


def resume_identity(config, dataset: Dataset) -> dict:
  """`checkpoint_identity` plus what must also match to train on from a checkpoint.

  Every config field but RESUMABLE_FIELDS (the seed, batch size, optimiser,
  schedule, subsets, augmentation, precision, ...), the number of training
  examples, the pipeline they take (held in memory or streamed: their batches
  differ), the data as trained on: the sha256 of each split's decoded
  images and labels (`Split.checksum`; a streamed split's listing), and of the source file
  where it is one (compared only as `checkpointing.IDENTITY_FALLBACKS` says),
  and its preprocessing (normalisation, augmentation), which a restore for
  evaluation reads back (`recorded_preprocessing`) without comparing it: a
  checkpoint may be evaluated on other images of its classes and size.
  """
  identity = {k: v for k, v in records.flat_keys(config.to_dict()).items()
              if k not in RESUMABLE_FIELDS}
  identity.update(checkpoint_identity(config, dataset))
  identity["training examples (data.max_train_examples)"] = len(dataset.train)
  identity["data pipeline"] = "stream" if dataset.streamed else "memory"
  for split in ("train", "test"):
    data = getattr(dataset, split)
    identity[f"{split} data sha256"] = (
        dataset.summary.splits[split].sha256 if dataset.summary
        else data.checksum())
  if dataset.summary and dataset.summary.source_sha256:
    identity["data source sha256"] = dataset.summary.source_sha256
  if dataset.preprocessing is not None:
    identity["preprocessing"] = dataset.preprocessing.to_json()
  return identity


def recorded_preprocessing(meta: dict, image_shape) -> transforms.Preprocessing:
  """How the model of a checkpoint (its `meta`) saw its images: recorded since the images'
  own normalisation and larger sizes arrived, else the reference's (the only one before)."""
  recorded = meta.get("identity", {}).get("preprocessing")
  if recorded is None:
    return transforms.Preprocessing.reference(tuple(image_shape[:2]))
  return transforms.Preprocessing.from_json(recorded)
