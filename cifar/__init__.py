"""cifar: the study's CIFAR-10 training, in five layers, each importing only the ones before it.

    core/      models, data, optimizers, schedules, one training step, scoring: torch and torchvision only
    config/    the configs' schemas, Hydra's side, what makes a run an experiment, a stored config read as today's
    results/   reading runs back: reports, the study's table, plots (never the run's machinery: a run folder is data)
    run/       one training run: its checks, the build, the loop, checkpoints, its folder, its record, how it ends;
               evaluate.py and your own images (a checkpoint rebuilt and run)
    tools/     the benchmark

errors.py (the one-line UserError), files.py (files written whole or not at all), hold.py (the points tests stop a run
at), signals.py (what Ctrl-C and SIGTERM do), console.py (what the terminal shows) and records.py (a run folder read back
as data) are used by all of them.

Importing any of it registers nothing with Hydra: the entry points, the tools that compose configs and the tests call
cifar.config.compose.register() first. cifar.core imports no Hydra at all.
"""
