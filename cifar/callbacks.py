"""Hydra callbacks (registered under `hydra.callbacks` in conf/config.yaml): checks before the first job, a verdict after the last.

`python -m cifar.callbacks <sweep folder>` prints the same verdict for a sweep on disk (finished or still running).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from rich.table import Table

from cifar.config import check_writable
from cifar.console import console, user_errors_as_one_line


class OutputFolderCheck(Callback):
    """Hydra creates the job folder before any of our code runs; an unwritable one must still give one clear line."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(Path(config.hydra.run.dir))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(Path(config.hydra.sweep.dir))

    @staticmethod
    def _check(folder: Path) -> None:
        with user_errors_as_one_line():
            check_writable(folder)


class SweepSummary(Callback):
    """After a multirun: one row per job, mean and std over the finished ones, exit status 1 if any job did not finish."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not sweep_verdict(Path(config.hydra.sweep.dir)):
            sys.exit(1)


def sweep_verdict(sweep: Path) -> bool:
    """Print the sweep's table; True if every job finished (diverged, interrupted and failed jobs are named)."""
    jobs = sorted((p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    table = Table(title=f"Sweep {sweep}")
    for col in ("job", "run", "status", "best val acc", "test acc", "train time"):
        table.add_column(col, justify="left" if col in ("job", "run", "status") else "right", no_wrap=col != "run")
    summaries, unfinished = [], []
    for job in jobs:
        summary_file = job / "summary.json"
        s = json.loads(summary_file.read_text()) if summary_file.is_file() else {"status": "failed or running (no summary.json)"}
        if s["status"] == "finished":
            summaries.append(s)
        else:
            unfinished.append(f"{job.name} ({s['status']})")
        seconds = s.get("train_seconds")
        table.add_row(
            job.name,
            s.get("name", "?"),
            s["status"],
            _pct(s.get("best_val_acc")),
            _pct(s.get("test_acc")),
            "-" if seconds is None else f"{seconds:.0f} s",
        )
    if len(summaries) > 1:  # single runs mislead: the spread across seeds is part of the result
        table.add_section()
        table.add_row(
            "",
            f"mean ± std, {len(summaries)} runs",
            "",
            *(_mean_std([s.get(k) for s in summaries]) for k in ("best_val_acc", "test_acc")),
            "",
        )
    console.print(table)
    if unfinished:
        console.print(f"[bold red]{len(unfinished)} of {len(jobs)} jobs did not finish:[/bold red] {', '.join(unfinished)}", soft_wrap=True)
    return not unfinished


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def _mean_std(values: list[float | None]) -> str:
    values = [v for v in values if v is not None]
    if len(values) < 2:
        return "-"
    return f"{statistics.mean(values):.2%} ± {statistics.stdev(values):.2%}"


if __name__ == "__main__":
    sys.exit(0 if sweep_verdict(Path(sys.argv[1])) else 1)
