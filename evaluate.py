"""Evaluate a checkpoint on the CIFAR-10 test set: `python evaluate.py ckpt=outputs/.../ckpt.pt`."""

import hydra
from omegaconf import DictConfig

from cifar.console import user_errors_as_one_line
from cifar.evaluation import evaluate


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    with user_errors_as_one_line():
        evaluate(cfg)


if __name__ == "__main__":
    main()
