"""cifar: the study's CIFAR-10 training, in four layers, each importing only the ones before it.

    core/      models, data, optimizers, schedules, one training step, scoring: torch and torchvision only
    run/       one training run: config checks, the build, the loop, checkpoints, its folder, its record, how it ends
    results/   reading runs back: evaluate.py, your own images, reports, the study's table, plots
    tools/     the benchmark

errors.py (the one-line UserError), files.py (files written whole or not at all) and hold.py (the points tests stop a
run at) are used by all of them.
"""

# Registers the training config's schema with Hydra's ConfigStore on any import of the package,
# so conf/config.yaml's `train_schema` default resolves for train.py, the tests and the benchmark alike.
from cifar.run import config as _config  # noqa: F401
