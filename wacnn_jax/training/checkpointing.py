"""Orbax checkpoints of the training state, with the run's metadata beside them.

Layout: `workdir/checkpoints/<step>/{state,meta[,data]}`, written by one
`orbax.checkpoint.CheckpointManager`; `<step>` is the state's own step count
(`epoch * steps_per_epoch` at the end of an epoch; any step for a checkpoint
inside an epoch, `epoch_checkpoints`). `state` is the (unreplicated)
TrainState pytree; `data`, of a streamed run, the stream's position
(`stream_feed.StreamPosition`, one JSON file per process, written by Grain's
Orbax handler); `meta` is JSON: epoch, best test accuracy,
this checkpoint's test accuracy, the epoch's metrics records and the identity
of the run (model, classes, settings, the data's checksums), so that a
checkpoint of another run is refused with a clear message instead of a shape
error deep inside Orbax, or a silent resume. The latest `keep` checkpoints are
kept, and the one with the best test accuracy.

A save that fails (a full disk) is a CheckpointError naming the checkpoint and
the cause; Orbax writes in background threads, so it surfaces at the next save
or when the Checkpointer closes. The checkpoint it was writing stays a
temporary folder that restores never see.

A checkpoint that cannot be read (cut short by a full disk, a damaged file) is
a `DamagedCheckpointError`; `restore_latest` then moves it to
`workdir/checkpoints_damaged/<step>` and falls back to the one before. One
that is intact but holds other arrays than the model's (written by another
version of the model code) is a plain CheckpointError and stays where it is.
"""

from __future__ import annotations

import contextlib
import logging as python_logging
import os
import re
import sys
from typing import Any

from absl import logging
from etils import epath
import jax
import orbax.checkpoint as ocp

from wacnn_jax.training.stream_positions import StreamPosition


class CheckpointError(RuntimeError):
  """A checkpoint is missing, corrupt, or belongs to another model/dataset."""


class DamagedCheckpointError(CheckpointError):
  """A checkpoint exists but cannot be read."""


def short_reason(error: BaseException) -> str:
  """The innermost cause of `error` in one line, without TensorStore's spec dump."""
  while error.__cause__ is not None:
    error = error.__cause__
  text = str(error).split("\n", 1)[0]
  for noise in (" [tensorstore_spec=", " See full TensorStore details"):
    text = text.split(noise, 1)[0]
  return f"{type(error).__name__}: {text[:300]}"


def _save_reason(error: BaseException) -> str:
  """Why a save failed: the operating system's reason where TensorStore gives its code."""
  text = str(error)
  while error.__cause__ is not None:
    error = error.__cause__
    text += f" {error}"
  code = re.search(r"\[os_error_code='(\d+)'\]", text)
  return os.strerror(int(code.group(1))) if code else short_reason(error)


def _array_shapes(tree) -> dict[tuple[str, ...], tuple[int, ...]]:
  """{key path: shape} of a pytree's leaves, with dict keys, attributes and indices as strings."""
  def name(key):
    for field in ("key", "name", "idx"):
      if hasattr(key, field):
        return str(getattr(key, field))
    return str(key)
  return {tuple(name(k) for k in path): tuple(getattr(leaf, "shape", ()))
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _is_event_loop_closed(error: BaseException | None) -> bool:
  return isinstance(error, RuntimeError) and str(error) == "Event loop is closed"


def _is_restore_aftermath(unraisable) -> bool:
  if _is_event_loop_closed(unraisable.exc_value):
    return True
  code = getattr(unraisable.object, "cr_code", None)  # an abandoned Orbax read coroutine
  return code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename


# Identity entries with a fallback: when an entry differs from the checkpoint's
# but its fallback is recorded there and equal, the run resumes with a warning.
# The checksum of the decoded data falls back to the source file's: the same
# archive decoded by another version of the JPEG decoder (on another machine)
# may differ by a level here and there. The fallback is compared for that alone
# (the data's path and compression may change).
IDENTITY_FALLBACKS = {"train data sha256": "data source sha256",
                      "test data sha256": "data source sha256"}


# TensorStore's errors start with an absl status code: "NOT_FOUND: ...".
_TENSORSTORE_ERROR = re.compile(r"[A-Z_]+: ")


class _AbandonedReadFilter(python_logging.Filter):
  """Drops asyncio's "Task exception was never retrieved" reports of TensorStore errors."""

  def filter(self, record: python_logging.LogRecord) -> bool:
    exception = record.exc_info[1] if record.exc_info else None
    return not (record.getMessage().split("\n", 1)[0].endswith("exception was never retrieved")
                and exception is not None
                and _TENSORSTORE_ERROR.match(str(exception)) is not None)


def _drop_restore_aftermath() -> None:
  """Keeps the leftovers of a failed restore or save off the console (process-wide, once).

  When one array of a checkpoint cannot be read (or written: a full disk),
  Orbax abandons the restore (save) while TensorStore completes the other
  reads (writes), which then report themselves
  at any later time: "Event loop is closed" for each read that completes
  (as an unraisable exception, or printed through `sys.excepthook` by a
  TensorStore callback), the error of each abandoned Orbax read coroutine
  (with a ~60-line TensorStore spec) when it is collected, and asyncio's
  "Task exception was never retrieved" for each failed read no one awaits.
  Nothing can catch them and they add nothing to the DamagedCheckpointError,
  so wrappers of `sys.unraisablehook` and `sys.excepthook` and a filter on
  the asyncio logger drop exactly these and pass every other report on.
  Installed before every restore and save: the reads can complete before
  the failure reaches the caller.
  """
  previous = sys.unraisablehook
  if getattr(previous, "drops_restore_aftermath", False):
    return

  def hook(unraisable):
    if not _is_restore_aftermath(unraisable):
      previous(unraisable)

  previous_excepthook = sys.excepthook

  def excepthook(error_type, error, trace):
    # Only asyncio's own refusal to schedule on a closed loop (its innermost frame).
    innermost = trace
    while innermost is not None and innermost.tb_next is not None:
      innermost = innermost.tb_next
    if not (_is_event_loop_closed(error) and innermost is not None
            and innermost.tb_frame.f_code.co_name == "_check_closed"):
      previous_excepthook(error_type, error, trace)

  hook.drops_restore_aftermath = True
  sys.unraisablehook = hook
  sys.excepthook = excepthook
  python_logging.getLogger("asyncio").addFilter(_AbandonedReadFilter())


# What Orbax warns about every read-only manager (ours only restore): nothing to act on.
READ_ONLY_NOTICES = ("Given directory is read only",)


class _ReadOnlyNoticeFilter(python_logging.Filter):
  """Drops Orbax's READ_ONLY_NOTICES (absl logger); passes every other record on."""

  def filter(self, record: python_logging.LogRecord) -> bool:
    return not record.getMessage().startswith(READ_ONLY_NOTICES)


def _drop_read_only_notices() -> None:
  logger = python_logging.getLogger("absl")
  if not any(isinstance(f, _ReadOnlyNoticeFilter) for f in logger.filters):
    logger.addFilter(_ReadOnlyNoticeFilter())


class Checkpointer:
  """Saves and restores `(state, meta)` pairs in `workdir/checkpoints`.

  A context manager: leaving the `with` block (normally or by an exception)
  waits for pending saves and closes the Orbax manager.
  """

  def __init__(self, workdir: str, *, keep: int = 3, identity: dict | None = None,
               create: bool = True):
    """`identity` (model, dataset and run settings) must match on restore."""
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.damaged_directory = os.path.abspath(os.path.join(workdir, "checkpoints_damaged"))
    self.identity = identity or {}
    self._pending_step = None  # the save Orbax may still be writing
    policies = ocp.checkpoint_managers
    options = ocp.CheckpointManagerOptions(
        create=create,
        read_only=not create,
        save_interval_steps=1 if create else 0,  # (read-only: 0, or Orbax warns that it sets it)
        preservation_policy=policies.AnyPreservationPolicy([
            policies.LatestN(n=max(1, keep)),
            policies.BestN(get_metric_fn=lambda m: m["test_accuracy"], n=1,
                           keep_checkpoints_without_metrics=False),
        ]),
    )
    if not create and not os.path.isdir(self.directory):
      raise self._no_checkpoints()
    if not create:
      _drop_read_only_notices()
    self._manager = ocp.CheckpointManager(
        self.directory, item_names=("state", "meta", "data"), options=options)

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, meta: dict, position=None) -> None:
    """Saves asynchronously; `meta['test_accuracy']` ranks the best checkpoint (not one inside
    an epoch: `meta['epoch_step']`). `position`: the stream's (`stream_feed.StreamPosition`).

    Raises CheckpointError when the checkpoint is not written (Orbax declines
    a step that is not above the latest one), or when the previous save failed
    in the background (`_save_failed`).
    """
    meta = dict(meta, identity=self.identity)
    _drop_restore_aftermath()
    self._wait_for_pending_save()
    items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
    if position is not None:
      from grain import checkpoint as grain_checkpoint  # pylint: disable=import-outside-toplevel
      items["data"] = grain_checkpoint.CheckpointSave(position)
    try:
      saved = self._manager.save(
          step, args=ocp.args.Composite(**items),
          metrics=(None if meta.get("epoch_step") else
                   {"test_accuracy": float(meta["test_accuracy"])}))
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_failed(step, e) from e
    if not saved:
      raise CheckpointError(
          f"checkpoint {step} was not saved: {self.directory} already holds "
          f"checkpoint(s) {self.all_steps()}, and a new one must have a higher step.")
    self._pending_step = step

  def _wait_for_pending_save(self) -> None:
    """Waits for the save Orbax is still writing; CheckpointError if it failed."""
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      failed, self._pending_step = self._pending_step, None  # reported once
      if failed is not None:
        raise self._save_failed(failed, e) from e
    self._pending_step = None

  def _save_failed(self, step: int, error: BaseException) -> CheckpointError:
    kept = [s for s in self.all_steps() if s != step]
    return CheckpointError(
        f"saving checkpoint {step} in {self.directory} failed ({_save_reason(error)}). "
        "Nothing saved before it is lost: free the space (or fix the cause) and start the "
        "same command again to resume from "
        f"{f'checkpoint {max(kept)}' if kept else 'the beginning (there is no checkpoint)'}.")

  def read_meta(self, step: int) -> dict:
    try:
      return self._manager.restore(
          step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as e:  # pylint: disable=broad-except
      raise DamagedCheckpointError(
          f"checkpoint {step} in {self.directory} is damaged ({short_reason(e)}).") from e

  def _no_checkpoints(self) -> CheckpointError:
    return CheckpointError(
        f"no checkpoints in {self.directory}: train first with this --workdir, "
        "or point --workdir at a finished run.")

  def find_step(self, step: int) -> int:
    """Checkpoint `step`, or for a negative `step` the best one; CheckpointError if none."""
    if not self.all_steps():
      raise self._no_checkpoints()
    if step < 0:
      return self.best_step()
    if step not in self.all_steps():
      raise CheckpointError(
          f"no checkpoint {step} in {self.directory}; there are {self.all_steps()} "
          "(--eval.step=-1 takes the best).")
    return step

  def best_step(self) -> int | None:
    """The step of the checkpoint with the best test accuracy (of those at an epoch's end, if
    any)."""
    steps = ([s for s in self.all_steps() if not self.read_meta(s).get("epoch_step")]
             or self.all_steps())
    if not steps:
      return None
    return max(steps, key=lambda s: (self.read_meta(s)["test_accuracy"], s))

  def restore_position(self, step: int) -> StreamPosition | None:
    """The stream position checkpoint `step` saved, or None. (Grain, whose Orbax handler
    writes it, is imported only by streamed runs.)"""
    if not os.path.isdir(os.path.join(self.directory, str(step), "data")):
      return None
    from grain import checkpoint as grain_checkpoint  # pylint: disable=import-outside-toplevel
    restored = self._manager.restore(step, args=ocp.args.Composite(
        data=grain_checkpoint.CheckpointRestore(StreamPosition())))
    return restored["data"]

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    """Restores checkpoint `step` into the structure of `abstract_state`.

    `abstract_state` may hold arrays or `jax.ShapeDtypeStruct`s. Identity
    entries that the checkpoint does not record (older checkpoints) are not
    compared.
    """
    meta = self.read_meta(self.find_step(step))
    self._check_identity(step, meta.get("identity", {}))
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    _drop_restore_aftermath()
    try:
      restored = self._manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
    except Exception as e:  # pylint: disable=broad-except
      difference = self._difference(step, target)
      if difference:
        raise CheckpointError(
            f"checkpoint {step} in {self.directory} holds other arrays than this "
            f"model ({difference}): it was written by another version of the model "
            "code. Use a new --workdir, or the code that wrote it.") from e
      raise DamagedCheckpointError(
          f"checkpoint {step} in {self.directory} is damaged ({short_reason(e)}).") from e
    return restored["state"], meta

  def _check_identity(self, step: int, saved: dict) -> None:
    """Refuses (CheckpointError) a checkpoint whose identity differs from `self.identity`.

    Entries the checkpoint does not record (written by an older version) are
    not compared, and a log line says so; see IDENTITY_FALLBACKS for the one
    difference that is a warning.
    """
    fallbacks = set(IDENTITY_FALLBACKS.values())
    mismatched = {k: (saved[k], v) for k, v in self.identity.items()
                  if k in saved and saved[k] != v and k not in fallbacks}
    for key, fallback in IDENTITY_FALLBACKS.items():
      if (key in mismatched and saved.get(fallback) is not None
          and saved.get(fallback) == self.identity.get(fallback)):
        logging.warning(
            "%s differs from checkpoint %d's, but the source file is the same (%s %s): "
            "its images decode differently here (another JPEG decoder?); resuming on "
            "them.", key, step, fallback, saved[fallback][:16])
        del mismatched[key]
    if mismatched:
      detail = "; ".join(f"{k}: checkpoint has {a!r}, config has {b!r}"
                         for k, (a, b) in sorted(mismatched.items()))
      raise CheckpointError(
          f"the checkpoints in {self.directory} were written by another model or with "
          f"other settings ({detail}). Use a new --workdir, or set the config as the "
          "checkpoint has it (README, 'When things go wrong', lists what may change on "
          "resume).")
    unrecorded = [k for k in self.identity if k not in saved and k not in fallbacks]
    if unrecorded:
      logging.info("Checkpoint %d records no %s (an older version wrote it): these are "
                   "not compared.", step, ", ".join(unrecorded))

  def _difference(self, step: int, target: Any) -> str | None:
    """How checkpoint `step`'s arrays differ from `target`'s; None if they match or are unreadable."""
    try:
      saved = ocp.StandardCheckpointHandler().metadata(
          epath.Path(self.directory) / str(step) / "state").tree
    except Exception:  # pylint: disable=broad-except
      return None  # unreadable: damaged
    saved, wanted = _array_shapes(saved), _array_shapes(target)
    for path in sorted(set(saved) | set(wanted)):
      if saved.get(path) != wanted.get(path):
        return (f"{'/'.join(path)}: checkpoint {saved.get(path, 'has none')}, "
                f"model {wanted.get(path, 'has none')}")
    return None

  def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict] | None:
    """(step, state, meta) of the newest checkpoint that can be read; None when there is none.

    Each damaged checkpoint on the way is moved to `checkpoints_damaged/`
    (out of the manager's sight, so that later saves number on from the one
    restored), with a warning that says so. A checkpoint of another run is
    refused (CheckpointError).
    """
    for step in sorted(self.all_steps(), reverse=True):
      try:
        state, meta = self.restore(step, abstract_state)
        return step, state, meta
      except DamagedCheckpointError as e:
        moved = self._set_aside(step)
        earlier = [s for s in self.all_steps() if s < step]
        logging.warning(
            "%s Moved it to %s; %s", e, moved,
            f"falling back to checkpoint {max(earlier)}." if earlier else
            "no earlier checkpoint is left: training starts from scratch.")
    return None

  def _set_aside(self, step: int) -> str:
    """Moves checkpoint `step` to `checkpoints_damaged/<step>[.n]`; returns the new path."""
    target = os.path.join(self.damaged_directory, str(step))
    if jax.process_index() == 0:
      os.makedirs(self.damaged_directory, exist_ok=True)
      suffix = 0
      while os.path.exists(target):
        suffix += 1
        target = os.path.join(self.damaged_directory, f"{step}.{suffix}")
      os.rename(os.path.join(self.directory, str(step)), target)
    self._manager.reload()
    return target

  def close(self) -> None:
    """Waits for the pending save (CheckpointError if it failed) and closes the manager."""
    try:
      self._wait_for_pending_save()
    except CheckpointError:
      with contextlib.suppress(Exception):  # the manager reports the failed save again
        self._manager.close()
      raise
    self._manager.close()
