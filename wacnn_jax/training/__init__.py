"""The trainer: `train.train_and_evaluate(config, workdir)` and everything a run is made of.

    train               train_and_evaluate: the run as a table of contents
    config_checks       a config checked before any work
    states              the model and the initial TrainStates (R replicas) a config asks for
    optim               the reference's SGD and learning-rate schedules
    steps               the pure train and eval steps (jitted, vmapped over replicas, pmapped)
    parallel            processes, devices and the batch split; data and states placed on them
    epochs              an epoch on the devices: compiled calls, divergence
    feeds               what each dispatch gets: the memory pipeline's batches, or the stream's
    stream_feed         the stream pipeline's batches from Grain workers, put on the devices
    stream_positions    the stream's position, as a checkpoint saves it
    epoch_checkpoints   checkpoints inside an epoch, and an epoch resumed from one
    resume              where a run stands: restored from a checkpoint or started afresh
    run_identity        what a checkpoint records of its run, compared on restore
    checkpointing       Orbax checkpoints with their meta
    restore             a finished run read back: its config, checkpoint, model and data
    metrics             metrics.jsonl, TensorBoard and the console, per epoch
    run_info            config.json, dataset.json and the model summary of a run
    status              progress within an epoch, the ETA, the last line
    log_output          where log lines go and how they look: terminal, log file, notebook
    workdirs            the workdir checked and locked
    tensorboard_events  TensorBoard event files without TensorFlow
    compilation_cache   JAX's persistent compilation cache

It imports only the layers below it: the data layer, the models, the building blocks and
`wacnn_jax.files`; never `pretrained` or the tools.
"""
