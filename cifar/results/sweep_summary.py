"""The Hydra callback after a multirun (registered under `hydra.callbacks` in conf/config.yaml): the sweep's verdict."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from cifar.console import stopping_the_command


class SweepSummary(Callback):
    """After a multirun: one row per job, mean and std over seeds, exit status 1 if any job did not finish."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        # Imported at a sweep's end only: the report's module draws with matplotlib, ~0.5 s to import, which every run
        # (and every refused command) would otherwise pay when Hydra builds its callbacks.
        with stopping_the_command():  # a verdict that fails is no sweep that passed (exit status 0)
            from cifar.results.report import sweep_verdict

            if not sweep_verdict(Path(config.hydra.sweep.dir)):
                sys.exit(1)
