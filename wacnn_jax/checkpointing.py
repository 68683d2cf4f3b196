"""Orbax checkpoints of the training state, with the run's metadata beside them.

Layout: `workdir/checkpoints/<step>/{state,meta}`, written by one
`orbax.checkpoint.CheckpointManager`. `state` is the (unreplicated) TrainState
pytree; `meta` is JSON: epoch, best test accuracy, this checkpoint's test
accuracy and the model/dataset config, so that a checkpoint of another model is
refused with a clear message instead of a shape error deep inside Orbax. The
latest `keep` checkpoints are kept, and the one with the best test accuracy.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
  """A checkpoint is missing, corrupt, or belongs to another model/dataset."""


class Checkpointer:
  """Saves and restores `(state, meta)` pairs in `workdir/checkpoints`."""

  def __init__(self, workdir: str, *, keep: int = 3, identity: dict | None = None,
               create: bool = True):
    """`identity` (model and dataset settings) must match on restore."""
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.identity = identity or {}
    policies = ocp.checkpoint_managers
    options = ocp.CheckpointManagerOptions(
        create=create,
        read_only=not create,
        preservation_policy=policies.AnyPreservationPolicy([
            policies.LatestN(n=max(1, keep)),
            policies.BestN(get_metric_fn=lambda m: m["test_accuracy"], n=1,
                           keep_checkpoints_without_metrics=False),
        ]),
    )
    if not create and not os.path.isdir(self.directory):
      raise CheckpointError(
          f"no checkpoints in {self.directory}: train first (mode=train) with "
          "this --workdir, or point --workdir at a finished run.")
    self._manager = ocp.CheckpointManager(
        self.directory, item_names=("state", "meta"), options=options)

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, meta: dict) -> None:
    """Saves asynchronously; `meta['test_accuracy']` ranks the best checkpoint."""
    meta = dict(meta, identity=self.identity)
    self._manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                meta=ocp.args.JsonSave(meta)),
        metrics={"test_accuracy": float(meta["test_accuracy"])})

  def read_meta(self, step: int) -> dict:
    try:
      return self._manager.restore(
          step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(
          f"checkpoint {step} in {self.directory} is unreadable or corrupt "
          f"({type(e).__name__}: {e}). Delete that step's folder to fall back "
          "to an earlier one, or use a new --workdir.") from e

  def best_step(self) -> int | None:
    steps = self.all_steps()
    if not steps:
      return None
    return max(steps, key=lambda s: (self.read_meta(s)["test_accuracy"], s))

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    """Restores checkpoint `step` into the structure of `abstract_state`."""
    if step not in self.all_steps():
      raise CheckpointError(
          f"no checkpoint {step} in {self.directory}; there are "
          f"{self.all_steps() or 'none'}.")
    meta = self.read_meta(step)
    saved = meta.get("identity", {})
    mismatched = {k: (saved.get(k), v) for k, v in self.identity.items()
                  if saved.get(k) != v}
    if mismatched:
      detail = "; ".join(f"{k}: checkpoint has {a!r}, config has {b!r}"
                         for k, (a, b) in sorted(mismatched.items()))
      raise CheckpointError(
          f"the checkpoints in {self.directory} were written by another "
          f"model or dataset ({detail}). Use a new --workdir, or set the "
          "config to match the checkpoint.")
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    try:
      restored = self._manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(
          f"checkpoint {step} in {self.directory} could not be restored "
          f"({type(e).__name__}: {e}). It is corrupt or from an incompatible "
          "version: delete that step's folder to fall back to an earlier one, "
          "or use a new --workdir.") from e
    return restored["state"], meta

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
