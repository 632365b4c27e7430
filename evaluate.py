"""Evaluate a checkpoint on the CIFAR-10 test set: `python evaluate.py ckpt=outputs/.../ckpt.pt`."""

import sys

import hydra
from omegaconf import DictConfig

from cifar.console import console
from cifar.errors import UserError
from cifar.evaluation import evaluate


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    try:
        evaluate(cfg)
    except UserError as e:
        console.print(f"[bold red]error:[/bold red] {e}", soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
