"""Evaluate a checkpoint on the CIFAR-10 test set: `python evaluate.py ckpt=outputs/.../ckpt.pt` (or `cifar-eval ckpt=...`)."""

from cifar.signals import stop_with_line

# Ctrl-C or SIGTERM from the first line to the last: one line and exit 130, never a traceback.
stop_with_line("interrupted: the evaluation stopped (every file it writes is written whole or not at all)")

from pathlib import Path

import hydra
from omegaconf import DictConfig

from cifar.config.compose import register
from cifar.console import user_errors_as_one_line
from cifar.run.evaluation import evaluate
from cifar.run.folders import discarded_if_refused

# conf/ beside this file, as an absolute path: Hydra then finds it however this module is started (python train.py, or
# cifar-eval, which imports it as a module and would look for a `conf` package).
CONF = str(Path(__file__).resolve().parent / "conf")
register()  # the schema and resolvers conf/ uses, before Hydra composes it


@hydra.main(version_base="1.3", config_path=CONF, config_name="evaluate")
def main(cfg: DictConfig) -> None:
    with user_errors_as_one_line(), discarded_if_refused(Path(cfg.output_dir)):
        evaluate(cfg)


if __name__ == "__main__":
    main()
