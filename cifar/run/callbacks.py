"""Hydra callbacks (registered under `hydra.callbacks` in conf/config.yaml) that run before the first job: the checks
and the folder lock, and a search's check. The verdict after the last job is cifar/results/report.py's `SweepSummary`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from cifar.errors import UserError
from cifar.run import folders, resume
from cifar.run.config import check, check_evaluate
from cifar.run.console import user_errors_as_one_line


class BeforeWriting(Callback):
    """Everything that can refuse a run, before Hydra writes anything (the run's folder, `.hydra/`, train.log): a refused
    run leaves nothing on disk. The config's checks; for `resume=`, the whole resume (cifar/run/resume.py), which then
    makes the resumed run's folder this run's; last, the folder's lock (one line if it is unwritable or in use).

    The lock is held until the process ends, which releases it however it ends. Under torchrun only rank 0 has a folder.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        with user_errors_as_one_line():
            check(config)
            if config.resume:
                resume.prepare(config)
            if int(os.environ.get("RANK", "0")) == 0:
                folders.acquire(Path(config.hydra.run.dir))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        with user_errors_as_one_line():
            if config.resume:
                raise UserError(
                    f"resume={config.resume} continues one run, and every job of a sweep would continue it: drop -m, or continue a "
                    "cut sweep by running it again with the same hydra.sweep.dir"
                )
            folders.acquire(Path(config.hydra.sweep.dir))


class EvaluationChecks(Callback):
    """evaluate.py's checks before Hydra writes anything: a refused evaluation leaves no folder (nor does one refused
    later, for a checkpoint it cannot read, say: evaluate.py removes the folder it made)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        with user_errors_as_one_line():
            check_evaluate(config)
        folders.note_new(Path(config.hydra.run.dir))


class SearchChecks(Callback):
    """A hyperparameter search, refused at once in one line where it could not rank a trial: no validation split (trials
    are ranked by best validation accuracy), or no trial to run."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        with user_errors_as_one_line():
            if not config.data.val_split:
                raise UserError(
                    f"data.val_split={config.data.val_split:g}: a search ranks its trials by validation accuracy; "
                    "give it a split (data.val_split=0.2) or search over an experiment that holds one out"
                )
            if config.hydra.sweeper.n_trials < 1:
                raise UserError(
                    f"hydra.sweeper.n_trials={config.hydra.sweeper.n_trials}: a search needs 1 trial or more (20 is the default)"
                )
