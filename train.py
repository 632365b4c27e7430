"""Train a CIFAR-10 model: `python train.py [overrides]`, `python train.py -m optim.lr=0.01,0.001`."""

import sys

import hydra
from omegaconf import DictConfig

from cifar.console import console, user_errors_as_one_line
from cifar.training import TrainingInterrupted, train


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    with user_errors_as_one_line():
        try:
            return train(cfg)["best_val_acc"]
        except TrainingInterrupted as e:
            where = (
                f"resume with the same overrides plus resume={e.last}"
                if e.last
                else "no epoch had completed, so there is nothing to resume"
            )
            console.print(f"[bold yellow]interrupted[/bold yellow] in epoch {e.epoch}: {where}", soft_wrap=True)
            sys.exit(130)  # the shell's code for Ctrl-C


if __name__ == "__main__":
    main()
