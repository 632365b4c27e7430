"""Hydra callbacks (registered under `hydra.callbacks` in conf/config.yaml): checks before the first job, a verdict after the last."""

from __future__ import annotations

import json
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
    """After a multirun: one row per job, and exit status 1 if any job did not finish (diverged, interrupted, failed)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(config.hydra.sweep.dir)
        jobs = sorted((p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
        table = Table(title=f"Sweep {sweep}")
        for col in ("job", "run", "status", "best val acc", "test acc"):
            table.add_column(col, justify="right" if "acc" in col else "left")
        unfinished = []
        for job in jobs:
            summary_file = job / "summary.json"
            s = json.loads(summary_file.read_text()) if summary_file.is_file() else {"status": "failed (no summary.json)"}
            if s["status"] != "finished":
                unfinished.append(f"{job.name} ({s['status']})")
            table.add_row(job.name, s.get("name", "?"), s["status"], _pct(s.get("best_val_acc")), _pct(s.get("test_acc")))
        console.print(table)
        if unfinished:
            console.print(
                f"[bold red]{len(unfinished)} of {len(jobs)} jobs did not finish:[/bold red] {', '.join(unfinished)}", soft_wrap=True
            )
            sys.exit(1)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"
