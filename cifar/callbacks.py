"""Hydra callbacks (registered under `hydra.callbacks` in conf/config.yaml): checks before the first job, a verdict after the last.

`python -m cifar.callbacks <sweep folder>` prints the same verdict for a sweep on disk (finished or still running).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from rich.table import Table

from cifar import folders
from cifar.console import console, user_errors_as_one_line
from cifar.errors import UserError
from cifar.runs import by_what_they_reached, find_runs, fmt_pct, is_search, mean_std, swept_keys, test_columns


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


class SweepSummary(Callback):
    """After a multirun: one row per job, mean and std over seeds, exit status 1 if any job did not finish."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not sweep_verdict(Path(config.hydra.sweep.dir)):
            sys.exit(1)


def sweep_verdict(sweep: Path) -> bool:
    """Print the sweep's table; True if every job finished (diverged, interrupted and failed jobs are named)."""
    runs = find_runs([sweep])
    search = is_search(runs)
    if search:
        runs = by_what_they_reached(runs)  # the best trial first
    table = Table(title=f"{'Search' if search else 'Sweep'} {sweep}")
    # The figures the runs have: no validation column for recipes without a split (fastnet94), a TTA one where tested so
    figures = [("best val acc", lambda run: run.best_val_acc)] if any(run.best_val_acc is not None for run in runs) else []
    figures += [(name, lambda run, key=key: run.summary_value(key)) for name, key in test_columns(runs)]
    for col in ("job", "run", "status", *(name for name, _ in figures), "train time"):
        table.add_column(col, justify="left" if col in ("job", "run", "status") else "right", no_wrap=col != "run", overflow="fold")
    for run in runs:
        table.add_row(
            run.folder.name,
            run.summary_value("name") or "?",
            run.status,
            *(fmt_pct(value(run)) for _, value in figures),
            f"{run.train_seconds:.0f} s",
        )
    finished = [run for run in runs if run.finished]
    # Single runs mislead: over seeds, the spread is part of the result. Other sweeps: `python -m cifar.report`.
    if len(finished) > 1 and swept_keys(runs) == ["seed"]:
        table.add_section()
        table.add_row("", f"mean ± std ({len(finished)})", "", *(mean_std([value(r) for r in finished]) for _, value in figures), "")
    console.print(table)
    unfinished = [
        f"{run.folder.name} ({run.status}{f': {e}' if (e := run.summary_value('error')) else ''})" for run in runs if not run.finished
    ]
    if unfinished:
        console.print(f"[bold red]{len(unfinished)} of {len(runs)} jobs did not finish:[/bold red] {', '.join(unfinished)}", soft_wrap=True)
    return not unfinished


if __name__ == "__main__":
    sys.exit(0 if sweep_verdict(Path(sys.argv[1])) else 1)
