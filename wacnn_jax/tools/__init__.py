"""The tools: one module per command of `python -m wacnn_jax`, owning its flags; what they share.

    train           train a config in a workdir (`training.train.train_and_evaluate`)
    evaluate        a checkpoint or trained weights on the test split, under noise too
    report          runs compared: a markdown table and training curves
    visualize       WA attention maps next to a baseline's feature maps
    reproduce       the paper's grid of runs, several at once, within a time budget
    export          a run's trained weights for `wacnn_jax.pretrained.load`
    predict         the top classes of image files by trained weights
    cache           the dataset and compilation caches listed, and cleared
    command_line    what every command shares: flags parsed, --help, usage errors
    failures        how a command ends: one line on the console, the rest in error.log
and the modules they are made of: corruptions and eval_results (evaluate),
intermediates and figures (visualize, evaluate), grid_runs, results_tables,
run_pool and run_names (reproduce, export).

The top layer but the `cli`: the tools may import every layer below
(pretrained, the trainer, the data layer, the models, the building blocks,
`wacnn_jax.files`), and nothing below imports them.
"""
