"""Training: `train_and_evaluate(config, workdir)`, the whole run as a table of contents.

    state = train_and_evaluate(config, workdir)

Setup: the config is checked (`config_checks`), the devices found
(`parallel`), the workdir locked (`workdirs`), the data loaded
(`wacnn_jax.data.pipeline`), the run restored from its newest checkpoint or
initialised (`resume`, `states`). Then per epoch: train (`epochs.EpochRunner`:
pmapped `steps.train_steps` dispatches), check for divergence, evaluate
(`steps.eval_batches`), log (`metrics`) and save (`checkpointing`; also
inside an epoch every `checkpoint_every_steps`, `epoch_checkpoints`).

Replicas: `num_seeds` = R independent replicas (seeds `seed`, `seed + 1`,
...) train in one program (`states`); replica k is the single-seed run with
seed `seed + k`. A run resumed from a checkpoint ends with the same
parameters as an uninterrupted one (`resume`). An epoch with a diverged step
(of any replica; `steps.DIVERGED_LOSS`) stops the run before it is evaluated
or saved.

Several processes (`config.distributed`): see `parallel`. All processes take
part in checkpoint saves and restores (one shared workdir); process 0 alone
writes metrics.jsonl, TensorBoard events, config.json and the model summary.
"""

from __future__ import annotations

import contextlib
import functools

import ml_collections
import numpy as np

from wacnn_jax.data.dataset import Dataset
from wacnn_jax.data import pipeline
from wacnn_jax.training import checkpointing
from wacnn_jax.training import compilation_cache
from wacnn_jax.training import config_checks
from wacnn_jax.training import epoch_checkpoints
from wacnn_jax.training import epochs
from wacnn_jax.training import log_output
from wacnn_jax.training import metrics
from wacnn_jax.training import optim
from wacnn_jax.training import parallel
from wacnn_jax.training import resume
from wacnn_jax.training import run_identity
from wacnn_jax.training import run_info
from wacnn_jax.training import states
from wacnn_jax.training import status
from wacnn_jax.training import steps
from wacnn_jax.training import workdirs


def create_runner(config, dataset: Dataset, topology: parallel.Topology):
  """The run's `epochs.EpochRunner`, and a function returning its initial host state."""
  steps_per_epoch = len(dataset.train) // config.batch_size
  if steps_per_epoch == 0:
    raise ValueError(
        f"batch_size={config.batch_size} is larger than the training set "
        f"({len(dataset.train)} examples); lower --config.batch_size.")
  learning_rate_fn = optim.create_learning_rate_fn(config, steps_per_epoch)
  initial_state = functools.partial(states.create_train_states, config,
                                    states.create_model(config, dataset.num_classes),
                                    dataset.image_shape, learning_rate_fn)
  runner = epochs.EpochRunner(config, dataset, topology, learning_rate_fn, steps_per_epoch,
                              states.replica_seeds(config))
  return runner, initial_state


def save_within_epoch(checkpoints: checkpointing.Checkpointer, runner, progress, epoch: int,
                      state, steps_done: int, step_metrics: dict) -> None:
  """Saves a checkpoint after `steps_done` steps of (0-based) `epoch` (`epoch_checkpoints`)."""
  host_state = parallel.unreplicate(state)
  checkpoints.save(int(host_state.step[0]), host_state,
                   epoch_checkpoints.within_epoch_meta(progress, epoch, steps_done, step_metrics),
                   runner.feed.position())


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       devices=None) -> steps.TrainState:
  """Trains `config` on local `devices` (default: all), writing to `workdir`.

  Resumes from the newest readable checkpoint in `workdir/checkpoints` if
  there is one (`Checkpointer.restore_latest`), holding the workdir's lock
  (`workdirs.lock`) throughout. Returns the final states of the `num_seeds`
  replicas (leading axis R, without the device axis, on the host); with no
  epoch left to train, the restored (or initial) ones.

  A checkpoint holds all replicas; its meta records, per replica, the test and
  best test accuracies (`replica_test_accuracy`, `replica_best_test_accuracy`)
  and, for ranking checkpoints, their means over the replicas
  (`test_accuracy`, `best_test_accuracy`).

  Problems the user can fix raise ValueError (a config field),
  `workdirs.WorkdirError`, `DatasetError`, `checkpointing.CheckpointError` or
  `epochs.DivergenceError`, each with a message.
  """
  # Setup: every check that needs no data first.
  log_output.show_in_notebook()
  config_checks.validate_config(config)
  config_checks.warn_of_unreached_boundaries(config)
  compilation_cache.enable(config.get("compilation_cache_dir"))
  workdirs.check_usable(workdir)
  pipeline.check_source(config.data)  # a mistyped data.image_folder: before the workdir exists
  parallel.initialize_distributed(config)
  topology = parallel.Topology.current(devices)
  topology.per_device_batch(config.batch_size)
  workdirs.prepare(workdir)
  primary = topology.process_index == 0
  with contextlib.ExitStack() as cleanup:
    if primary:
      cleanup.enter_context(workdirs.lock(workdir))
    dataset = pipeline.load(config.data)
    runner, initial_state = create_runner(config, dataset, topology)
    cleanup.callback(runner.close)
    checkpoints = cleanup.enter_context(checkpointing.Checkpointer(
        workdir, keep=config.keep_checkpoints,
        identity=run_identity.resume_identity(config, dataset)))
    metrics_log = cleanup.enter_context(
        metrics.MetricsLog(workdir, enabled=primary, num_replicas=config.num_seeds))
    state, progress = resume.restore_or_initialize(initial_state, checkpoints, config.num_seeds,
                                                   runner.feed)
    # Records of later epochs are from a run that stopped before saving them.
    metrics_log.truncate_after(progress.epoch, progress.checkpoint_records)
    if progress.epoch >= config.num_epochs:
      resume.log_nothing_to_train(progress, config.num_epochs, checkpoints.directory)
      return state
    if primary:
      run_info.write_run_info(config, workdir, dataset, state)
    state = runner.to_devices(state)
    runner.log_start(progress.epoch)

    # The epochs: train, check, evaluate, log, save.
    clock = status.RunClock(progress.epoch, config.num_epochs)
    for epoch in range(progress.epoch, config.num_epochs):
      clock.start_epoch()
      state, train = runner.train_epoch(
          state, epoch, show_progress=primary, start=progress.take_epoch_start(),
          save=functools.partial(save_within_epoch, checkpoints, runner, progress, epoch))
      train.raise_if_diverged(epoch, runner.seeds, progress.checkpoint_epoch,
                              checkpoints.directory)
      tests = runner.evaluate(state)
      test_accuracy = np.array([test["accuracy"] for test in tests])
      is_best = progress.add_test_accuracy(test_accuracy)
      records = metrics.epoch_records(epoch, runner, train, tests, progress,
                                      *clock.end_epoch(train.compile_seconds))
      metrics_log.write_steps(epoch * runner.steps_per_epoch, train.losses,
                              train.learning_rates, config.log_every_steps)
      metrics_log.write_epoch(records)
      metrics.log_records(records, config.num_epochs, clock.eta_seconds())
      progress.checkpoint_records = records
      if progress.checkpoint_due(epoch + 1, config, is_best):
        host_state = parallel.unreplicate(state)
        checkpoints.save(int(host_state.step[0]), host_state,
                         progress.checkpoint_meta(epoch + 1, test_accuracy, records),
                         runner.feed.position())
        progress.checkpoint_epoch = epoch + 1

    # Finish.
    status.log_summary(config.num_epochs, config.num_epochs, clock.epochs, clock.elapsed(),
                       progress.best_mean, metrics_log.best_epoch(), float(test_accuracy.mean()),
                       checkpoints.directory, config.num_seeds)
  return parallel.unreplicate(state)
