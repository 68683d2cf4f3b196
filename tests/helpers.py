"""Paths and functions the tests share: the repository root, smoke-run configs, data subsets."""

import dataclasses
import os
import shutil
import tarfile
from typing import Any

from configs import cifar
from wacnn_jax.training import train

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CIFAR10_MINI = os.path.join(REPO_ROOT, "tests", "data", "cifar10-mini.tar.gz")


def write_cifar_subset(archive: str, root: str, per_class: dict) -> str:
  """Copies the first `per_class[split]` images of each class into root/split/label/."""
  counts = {}
  with tarfile.open(archive) as tar:
    for member in tar:
      parts = member.name.split("/")
      if not member.isfile() or len(parts) < 3:
        continue
      split, label = parts[-3], parts[-2]
      if split not in per_class or counts.get((split, label), 0) >= per_class[split]:
        continue
      counts[(split, label)] = counts.get((split, label), 0) + 1
      os.makedirs(os.path.join(root, split, label), exist_ok=True)
      with open(os.path.join(root, split, label, parts[-1]), "wb") as f:
        f.write(tar.extractfile(member).read())
  return root


@dataclasses.dataclass(frozen=True)
class SmokeRun:
  """A finished smoke training run: its config, workdir and final train state."""

  config: Any
  workdir: str
  state: Any


def smoke_run_config(image_folder, **overrides):
  """configs/cifar.py:smoke on `image_folder`, with dotted-key overrides."""
  config = cifar.get_config("smoke")
  config.data.image_folder = image_folder
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    target = config
    for parent in parents:
      target = target[parent]
    target[leaf] = value
  return config


def train_smoke_run(image_folder, workdir, **overrides) -> SmokeRun:
  """Trains `smoke_run_config(image_folder, **overrides)` in `workdir`."""
  config = smoke_run_config(image_folder, **overrides)
  state = train.train_and_evaluate(config, str(workdir))
  return SmokeRun(config, str(workdir), state)


def copy_run(run: SmokeRun, destination) -> SmokeRun:
  """A copy of `run`'s workdir at `destination` (for tests that write into it)."""
  shutil.copytree(run.workdir, str(destination))
  return dataclasses.replace(run, workdir=str(destination))
