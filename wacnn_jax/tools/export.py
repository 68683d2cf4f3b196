"""Weights from a training run: `python -m wacnn_jax export --workdir RUN --out DIR`.

    export(workdir, out)                  # the final weights; -> the records written
    export(workdir, out, which="best")    # the checkpoint evaluation takes
    export(workdir, out, step=1600)       # any checkpoint, also of an unfinished run

The run's config and checkpoint are read back by `restore` (not its dataset:
the checkpoint records the classes and image shape), and each replica's
parameters and BatchNorm statistics are written in the `weights` format as
`DIR/<name>.msgpack` and `DIR/<name>.json`, with what the model was trained on
(dataset.json's name, source and checksum; the checkpoint's preprocessing), so
that `pretrained.load` and `evaluate --pretrained` need nothing else. <name> is `<arch>-<attention>`
(`run_names`), the reproduction's cell name (e.g. `resnet18-wa`, `resnet18-wa(wavelet=db2)`),
or `name`; a run of `num_seeds` > 1 gives one model per replica,
`<name>-seed<k>`. `DIR/README.md` is then rewritten: a table of every model in DIR.

"final" is the last epoch of a finished run (refused for an unfinished one),
"best" the checkpoint with the best test top-1 (over the replicas' mean).
After a reproduction run has finished, `reproduce` calls `keep_final_weights`
before deleting its checkpoints: the final weights of models under
`FINAL_WEIGHTS_MAX_MB` stay in `<run>/weights/`, and `export` copies those
from a run without checkpoints.
"""

from __future__ import annotations

import os
import subprocess

from absl import flags
import jax
import numpy as np

from wacnn_jax.data.dataset import Dataset, Split
from wacnn_jax.data import pipeline
from wacnn_jax.files import atomic
from wacnn_jax.files import records
from wacnn_jax.nn.attention_spec import AttentionSpec
from wacnn_jax import pretrained
from wacnn_jax.pretrained import weights
from wacnn_jax.tools import command_line
from wacnn_jax.tools import failures
from wacnn_jax.tools import run_names
from wacnn_jax.training import checkpointing
from wacnn_jax.training import restore
from wacnn_jax.training import states
from wacnn_jax.training import steps

WHICH = ("final", "best")
# Final weights up to this size are kept when `reproduce` deletes a run's
# checkpoints: resnet18 (1.0 MB) and mobilenetv2 (8.9 MB), not vgg16_bn (128 MB).
FINAL_WEIGHTS_MAX_MB = 16.0
README_TITLE = "# Trained weights"


def model_name(config) -> str:
  """`<arch>-<attention>`, the folder name of the run's cell in `reproduce`."""
  return run_names.model_name(config.model.arch,
                              str(AttentionSpec.parse(config.model.attention)))


def git_commit() -> str:
  """The commit of the git checkout this package is in, or "unknown"."""
  try:
    found = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                           cwd=os.path.dirname(os.path.abspath(__file__)), timeout=10)
  except (OSError, subprocess.SubprocessError):
    return "unknown"
  return found.stdout.strip() if found.returncode == 0 else "unknown"


def _checkpoint_dataset(config, identity: dict) -> Dataset:
  """The run's dataset as its checkpoint describes it: classes and image shape, no images.

  (Read from `config.data` for checkpoints that do not record them.)
  """
  if "class_names" not in identity or "image_shape" not in identity:
    return pipeline.load(config.data, test_in_memory=True)
  empty = Split(np.zeros((0, *identity["image_shape"]), np.uint8), np.zeros((0,), np.int32))
  return Dataset(config.data.dataset, empty, empty, tuple(identity["class_names"]))


def trained_data(workdir: str, config) -> tuple[str, str, str | None]:
  """(the data's name, its source: "tfds" or the image folder / archive, the archive's
  sha256) of a run, as its dataset.json recorded them (its config where that is missing)."""
  recorded = records.read_json(os.path.join(workdir, "dataset.json"), default=None) or {}
  folder = config.data.get("image_folder")
  source = recorded.get("source") or (os.path.expanduser(str(folder)) if folder else "tfds:")
  name = recorded.get("name") or (
      os.path.basename(str(folder).rstrip("/")) if folder else config.data.dataset)
  return name, "tfds" if source.startswith("tfds:") else source, recorded.get("source_sha256")


def _names(config, name: str | None) -> list[str]:
  """The file name of each replica's model."""
  base = name or model_name(config)
  seeds = states.replica_seeds(config)
  return [base] if len(seeds) == 1 else [f"{base}-seed{seed}" for seed in seeds]


def _refuse_existing(out: str, names, overwrite: bool) -> None:
  for name in names:
    weights.refuse_existing(out, name, overwrite)


def _choose_step(config, checkpoints: checkpointing.Checkpointer, which: str,
                 step: int | None, workdir: str) -> tuple[int, str, dict]:
  """(step, what it is, the latest checkpoint's meta)."""
  latest = max(checkpoints.all_steps(), default=None)
  if latest is None:
    checkpoints.find_step(-1)  # raises: no checkpoints
  latest_meta = checkpoints.read_meta(latest)
  if step is not None:
    return checkpoints.find_step(step), "step", latest_meta
  if latest_meta["epoch"] < config.num_epochs:
    raise ValueError(
        f"the run in {workdir} stopped at epoch {latest_meta['epoch']} of "
        f"{config.num_epochs}: it has no {which} weights yet. Train it to the end (start it "
        f"again with the same --workdir), or export one of its checkpoints "
        f"{checkpoints.all_steps()} with --step.")
  return (latest if which == "final" else checkpoints.find_step(-1)), which, latest_meta


def export(workdir: str, out: str, *, which: str = "final", step: int | None = None,
           name: str | None = None, overwrite: bool = False) -> list[str]:
  """Writes the weights of a checkpoint of `workdir` to `out` (see the module doc).

  Returns the record paths (one per replica). Raises ValueError (bad choice,
  unfinished run), CheckpointError (no such checkpoint, damaged) or
  WeightsError (a file exists and not `overwrite`).
  """
  if which not in WHICH:
    raise ValueError(f"which={which!r}: choose one of {', '.join(WHICH)}, or a step.")
  config = restore.load_config(workdir)
  kept = os.path.join(workdir, pretrained.RUN_WEIGHTS_FOLDER)
  if not os.path.isdir(os.path.join(workdir, "checkpoints")) and os.path.isdir(kept):
    if step is not None or which != "final":
      raise checkpointing.CheckpointError(
          f"the checkpoints of {workdir} were deleted after it finished; only its final "
          f"weights are kept, in {kept} (export them without --step and --which).")
    return _copy_kept(kept, out, name, overwrite)
  _refuse_existing(out, _names(config, name), overwrite)
  with checkpointing.Checkpointer(workdir, keep=config.keep_checkpoints,
                                  create=False) as checkpoints:
    step, checkpoint, latest_meta = _choose_step(config, checkpoints, which, step, workdir)
  run = restore.restore_checkpoint(
      config, workdir, step=step,
      dataset=_checkpoint_dataset(config, latest_meta.get("identity", {})))
  commit = git_commit()
  data_name, data_source, data_source_sha256 = trained_data(workdir, config)
  paths = []
  for k, (seed, file_name) in enumerate(zip(states.replica_seeds(config), _names(config, name))):
    variables = steps.replica({"params": run.state.params,
                               "batch_stats": run.state.batch_stats}, k)
    record = weights.WeightsRecord(
        arch=config.model.arch, attention=str(AttentionSpec.parse(config.model.attention)),
        block=config.model.get("block"), half_precision=bool(config.half_precision),
        dataset=data_name, data_source=data_source, data_source_sha256=data_source_sha256,
        preprocessing=run.preprocessing.to_json(),
        class_names=tuple(run.dataset.class_names), image_shape=tuple(run.dataset.image_shape),
        seed=seed, checkpoint=checkpoint, step=run.step, epoch=run.meta["epoch"],
        epochs_trained=latest_meta["epoch"], num_epochs=config.num_epochs,
        test_top1=run.meta["replica_test_accuracy"][k],
        test_top1_best=latest_meta["replica_best_test_accuracy"][k],
        test_top1_final=latest_meta["replica_test_accuracy"][k],
        params=int(sum(np.size(p) for p in jax.tree.leaves(variables["params"]))),
        commit=commit, config=config.to_dict())
    paths.append(weights.save(out, file_name, variables, record, overwrite))
  write_readme(out)
  return paths


def _copy_kept(kept: str, out: str, name: str | None, overwrite: bool) -> list[str]:
  """Copies the (checked) final weights kept in a run's `weights/` folder to `out`."""
  sources = [pretrained.load(path) for path in pretrained.find_all(kept)]
  if not sources:
    raise checkpointing.CheckpointError(f"no checkpoints and no kept weights in {kept}.")
  names = [net.name if name is None else
           (name if len(sources) == 1 else f"{name}-seed{net.record.seed}") for net in sources]
  _refuse_existing(out, names, overwrite)
  paths = [weights.save(out, file_name, net.variables, net.record, overwrite)
           for net, file_name in zip(sources, names)]
  write_readme(out)
  return paths


def _weights_megabytes(config, dataset: Dataset) -> float:
  """Size of the model's {params, batch_stats} in float32 (from shapes; nothing is computed)."""
  model = states.create_model(config, dataset.num_classes, axis_name=None)
  variables = pretrained.abstract_variables(model, dataset.image_shape)
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(variables)) / 2**20


def keep_final_weights(workdir: str, max_mb: float = FINAL_WEIGHTS_MAX_MB) -> list[str]:
  """Exports a finished run's final weights to `<workdir>/weights/` when under `max_mb`.

  Called by `reproduce` before it deletes the checkpoints. Returns the
  records written ([] for a larger model, which is said on stdout).
  """
  config = restore.load_config(workdir)
  with checkpointing.Checkpointer(workdir, keep=config.keep_checkpoints,
                                  create=False) as checkpoints:
    identity = checkpoints.read_meta(checkpoints.find_step(-1)).get("identity", {})
  size = _weights_megabytes(config, _checkpoint_dataset(config, identity))
  if size > max_mb:
    print(f"{workdir}: final weights not kept ({size:.1f} MB, over {max_mb:g} MB).", flush=True)
    return []
  return export(workdir, os.path.join(workdir, pretrained.RUN_WEIGHTS_FOLDER), overwrite=True)


# ---------------------------------------------------------------------------
# The folder's README.md.
# ---------------------------------------------------------------------------


def training_command(config: dict) -> str:
  """`run_train.py` with `configs/default.py` and the run's fields that differ from it.

  "-" when the repository's `configs` cannot be imported (an installed package).
  An image folder is shown by its name only.
  """
  try:
    from configs import default  # pylint: disable=g-import-not-at-top
  except ImportError:
    return "-"
  defaults = records.flat_keys(default.get_config().to_dict())
  parts = ["python run_train.py --config configs/default.py"]
  for key, value in records.flat_keys(config).items():
    if key in defaults and defaults[key] == value:
      continue
    if key == "data.image_folder" and value:
      value = f".../{os.path.basename(str(value).rstrip('/'))}"
    text = str(tuple(value) if isinstance(value, list) else value).replace(" ", "")
    parts.append(f'--config.{key}="{text}"' if any(c in text for c in "()'[]") else
                 f"--config.{key}={text}")
  return " ".join(parts)


def readme_markdown(folder: str) -> str:
  """README.md of a folder of exported weights: one row per model."""
  lines = [README_TITLE, "",
           "Written by `python -m wacnn_jax export`. Load one with "
           "`wacnn_jax.pretrained.load(\"<folder>/<name>.json\")`; each `<name>.json` is the "
           "model's full record (classes, configuration, commit, sha256 of its weights). Test "
           "top-1 in percent: of the exported checkpoint, and the run's best and final epoch.",
           "", "| name | arch | attention | dataset | top-1 | best | final | epoch | seed | "
           "parameters | size | trained with |", "|---" * 12 + "|"]
  for path in pretrained.find_all(folder):
    record = weights.read_record(path)
    size = os.path.getsize(weights.weights_path(path)) / 2**20
    lines.append(
        f"| {os.path.splitext(os.path.basename(path))[0]} | {record.arch} | {record.attention} | "
        f"{record.dataset} ({os.path.basename(record.data_source.rstrip('/'))}) | "
        f"{100 * record.test_top1:.2f} | "
        f"{100 * record.test_top1_best:.2f} | {100 * record.test_top1_final:.2f} | "
        f"{record.epoch} of {record.num_epochs} ({record.checkpoint}) | {record.seed} | "
        f"{record.params:,} | {size:.1f} MB | `{training_command(record.config)}` |")
  return "\n".join(lines) + "\n"


def write_readme(folder: str) -> str | None:
  """Rewrites `folder/README.md` (unless it is another README); its path, or None."""
  path = os.path.join(folder, "README.md")
  if os.path.exists(path):
    with open(path) as f:
      if not f.read().startswith(README_TITLE):
        print(f"{path} was not written by export: left as it is.", flush=True)
        return None
  atomic.write_atomically(path, readme_markdown(folder))
  return path


# ---------------------------------------------------------------------------
# The command.
# ---------------------------------------------------------------------------


def define_flags(fv: flags.FlagValues, argv: list[str]) -> None:
  del argv
  flags.DEFINE_string("workdir", None, "Workdir of a training run.", flag_values=fv,
                      required=True)
  flags.DEFINE_string("out", None, "Folder to write <name>.msgpack and <name>.json to.",
                      flag_values=fv, required=True)
  flags.DEFINE_enum("which", "final", WHICH, "final: the last epoch of the finished "
                    "run; best: the checkpoint with the best test top-1 (evaluate's default).",
                    flag_values=fv)
  flags.DEFINE_integer("step", None, "Instead of --which: the checkpoint of this train step "
                       "(any, also of an unfinished run).", flag_values=fv)
  flags.DEFINE_string("name", None, "File name (default: <arch>-<attention>, e.g. resnet18-wa; "
                      "-seed<k> is added per replica of a num_seeds > 1 run).", flag_values=fv)
  flags.DEFINE_bool("overwrite", False, "Replace a model of the same name in --out.",
                    flag_values=fv)


def run(fv: flags.FlagValues, args: list[str]) -> int:
  del args
  if fv.step is not None and fv["which"].present:
    command_line.exit_with_usage_error("give --which or --step, not both.")

  def run_export() -> int:
    for path in export(fv.workdir, fv.out, which=fv.which, step=fv.step, name=fv.name,
                       overwrite=fv.overwrite):
      record = weights.read_record(path)
      print(f"wrote {path} and its {os.path.basename(weights.weights_path(path))}: "
            f"{record.arch} + {record.attention}, seed {record.seed}, epoch {record.epoch} of "
            f"{record.num_epochs} ({record.checkpoint}), test top-1 {record.test_top1:.4f}, "
            f"{record.params:,} parameters")
    return 0

  return failures.print_error(run_export)


COMMAND = command_line.Command(define_flags, run)
