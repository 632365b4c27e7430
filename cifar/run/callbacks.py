"""Hydra callbacks (registered under `hydra.callbacks` in conf/config.yaml) that run before the first job: the folder
lock and a search's check. The verdict after the last job is cifar/results/report.py's `SweepSummary`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from cifar.errors import UserError
from cifar.run import folders
from cifar.run.console import user_errors_as_one_line


class OutputFolderLock(Callback):
    """Take the run's (or the sweep's) folder before Hydra writes into it: one line if it is unwritable or in use.

    Held until the process ends, which releases it however it ends. Under torchrun only rank 0 has a folder.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if int(os.environ.get("RANK", "0")) == 0:
            self._take(Path(config.hydra.run.dir))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._take(Path(config.hydra.sweep.dir))

    @staticmethod
    def _take(folder: Path) -> None:
        with user_errors_as_one_line():
            folders.acquire(folder)


class SearchNeedsValidation(Callback):
    """A hyperparameter search ranks trials by best validation accuracy: refuse at once, in one line, without a val split."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        with user_errors_as_one_line():
            if not config.data.val_split:
                raise UserError(
                    f"data.val_split={config.data.val_split:g}: a search ranks its trials by validation accuracy; "
                    "give it a split (data.val_split=0.2) or search over an experiment that holds one out"
                )
