"""How a run ends, in one place: its status, its summary (summary.json and W&B), W&B's exit code, what reaches the caller.

finished      every epoch ran; the best checkpoint was tested
diverged      the training loss stopped being finite; the best checkpoint so far was tested
out_of_time   max_minutes was reached; the best checkpoint so far was tested (resume= continues)
interrupted   Ctrl-C or SIGTERM; summary.json says so and TrainingInterrupted says how to resume
failed        an error; summary.json says so (where the disk still takes it) and the error goes on up
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from cifar.build import Parts
from cifar.checkpoint import atomic_write_text, read_summary
from cifar.console import console, print_run_summary
from cifar.distributed import Ranks
from cifar.errors import UserError
from cifar.hardware import device_name
from cifar.state import TrainingState, prefix_results, time_to_accuracy
from cifar.tracking import NoRecord, Recorder, open_wandb_run

log = logging.getLogger(__name__)

STOP_MESSAGES = {
    "diverged": "epoch {epoch}: the training loss is not finite: stopping this run as diverged (try a lower optim.lr); {kept}",
    "out_of_time": "max_minutes={max_minutes:g} reached after epoch {epoch} of {epochs}: testing the best checkpoint now; "
    "continue with resume={last}",
}


class TrainingInterrupted(Exception):
    """Ctrl-C or SIGTERM in a run: where it can be resumed from (None if no epoch completed) and the epoch it stopped in
    (0: before training began)."""

    def __init__(self, last: Path | None, epoch: int):
        super().__init__(f"interrupted in epoch {epoch}")
        self.last, self.epoch = last, epoch


class RunLifecycle:
    """The run's W&B run and record, opened on entry; on exit, the status and summary whatever happened inside.

    Exceptions leave the W&B block already closed, so W&B prints no traceback of its own for a
    user's mistake (a UserError: one line) or for Ctrl-C (TrainingInterrupted: how to resume).
    """

    def __init__(self, cfg: DictConfig, config: dict, parts: Parts, state: TrainingState, output_dir: Path, ranks: Ranks):
        self.cfg, self.config, self.parts, self.state, self.output_dir, self.ranks = cfg, config, parts, state, output_dir, ranks
        self.status, self.summary, self.started = "running", None, time.perf_counter()

    def __enter__(self) -> RunLifecycle:
        self.wandb_run = open_wandb_run(self.cfg, self.state.run_name, self.state.run_group, self.output_dir, self.config, self.ranks.main)
        self.recorder = Recorder(self.output_dir, self.wandb_run, self.state.history) if self.ranks.main else NoRecord()
        return self

    def log_epoch(self, metrics: dict[str, Any]) -> None:
        self.recorder.log_epoch(metrics)

    def stop(self, status: str, epoch: int) -> None:
        """End training early (diverged, out_of_time): the best checkpoint so far is still tested."""
        self.status = status
        kept = (
            f"ckpt.pt from epoch {self.state.best_epoch} is kept"
            if self.state.best_epoch
            else "no epoch completed, so there is no checkpoint"
        )
        last = self.output_dir / "last.pt"
        log.warning(
            STOP_MESSAGES[status].format(epoch=epoch, epochs=self.cfg.epochs, max_minutes=self.cfg.max_minutes or 0, kept=kept, last=last)
        )

    def finish(self, test: dict | None, test_loss: float | None) -> None:
        """Training is over: the best checkpoint's test figures (None if there is none) go into the summary."""
        self.status = "finished" if self.status == "running" else self.status
        if test:
            self.recorder.log_test(test)
        self.summary = self.summarize(test, test_loss)
        if test and self.cfg.wandb.log_model:
            keys = ("best_epoch", "best_val_acc", "test_acc", "test_acc_tta", "test_tta", "precision", "name", "group")
            metadata = {k: self.summary.get(k) for k in keys} | {"model": self.config["model"]["_target_"]}
            self.recorder.log_model(self.output_dir / "ckpt.pt", metadata)

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.wandb_run.__exit__(None, None, None)
            if self.ranks.main:
                print_run_summary(self.summary)
            return False
        self.status = "interrupted" if exc_type is KeyboardInterrupt else "failed"
        with contextlib.suppress(OSError, UserError):  # a full disk may refuse summary.json too: the error still says why
            self.summary = self.summarize()
        if isinstance(exc, (KeyboardInterrupt, UserError)):
            self.wandb_run.finish(exit_code=130 if exc_type is KeyboardInterrupt else 1)  # a non-zero code: not "finished" in W&B
            self.wandb_run.__exit__(None, None, None)
        else:
            self.wandb_run.__exit__(exc_type, exc, tb)  # a bug: W&B records the traceback
        if exc_type is KeyboardInterrupt:  # last.pt holds the last completed epoch
            raise TrainingInterrupted(self.output_dir / "last.pt" if self.state.history else None, self.state.epoch + 1) from None
        return False

    def summarize(self, test: dict | None = None, test_loss: float | None = None) -> dict[str, Any]:
        state, parts = self.state, self.parts
        summary = {
            "status": self.status,
            "name": state.run_name,
            "group": state.run_group,
            "epochs_completed": len(state.history),
            "best_epoch": state.best_epoch,
            "best_val_acc": state.best_val_acc,
            "test_acc": test and test["acc"],
            "test_loss": test_loss,
            "test_per_class_acc": test and test["per_class_acc"],
            "test_acc_tta": test and test.get("tta_acc"),  # with test_tta's test-time augmentation, beside the plain test_acc
            "test_tta": test and test.get("tta"),
            "train_seconds": state.train_seconds,
            "time_to_val_acc": time_to_accuracy(state.history, self.cfg.acc_thresholds),
            "prefix_results": prefix_results(state.history, self.cfg.prefix_epochs),
            "wall_seconds": time.perf_counter() - self.started,
            "precision": parts.precision.name,
            "device": str(parts.device),
            "device_name": device_name(parts.device),
            "processes": self.ranks.world,  # torchrun processes that trained the model together
            "threads": torch.get_num_threads(),  # CPU threads of each
            "params": parts.n_params,
            "data_source": parts.data.source,
            "output_dir": str(self.output_dir),
            "config": self.config,
        }
        self.recorder.write_summary(summary)
        return summary


def search_value(summary: dict) -> float:
    """What a hyperparameter search maximises (train.py returns it): the best validation accuracy; 0 for a trial
    that reached none (failed, or diverged in its first epoch), so that the search ranks it last instead of stopping."""
    return summary.get("best_val_acc") or 0.0


def in_sweep() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def sweep_of_this_experiment() -> tuple[dict, bool]:
    """The sweep an experiment declares (`hydra.sweeper.params`, which only `-m` runs) and whether this is a multirun."""
    if not HydraConfig.initialized():
        return {}, False
    params = HydraConfig.get().sweeper.get("params") or {}
    return dict(params), in_sweep()


def interrupted_before_training(output_dir: Path, name: str, ranks: Ranks) -> TrainingInterrupted:
    """Ctrl-C or SIGTERM while a run was setting up (decoding the data, say): a new run's summary.json says interrupted;
    a resumed run's folder is left as it was, its last.pt still the way back."""
    last = output_dir / "last.pt"
    if ranks.main and not (output_dir / "summary.json").exists():
        write_summary_if_possible(output_dir, {"name": name, "status": "interrupted", "epochs_completed": 0, "output_dir": str(output_dir)})
    return TrainingInterrupted(last if last.is_file() else None, 0)


def record_failure(output_dir: Path, name: str, reason: str) -> dict[str, Any]:
    """A sweep job's own mistake: one line, and summary.json says failed and why (the sweep verdict shows it, by `name`)."""
    console.print(f"[bold red]error:[/bold red] {reason} (this job is marked failed; the sweep goes on)", soft_wrap=True)
    summary = {"name": name, **(read_summary(output_dir) or {}), "status": "failed", "error": reason}
    write_summary_if_possible(output_dir, summary)
    return summary


def write_summary_if_possible(output_dir: Path, summary: dict[str, Any]) -> None:
    """summary.json for a run that ended outside its lifecycle (before training began). A full disk may refuse it:
    the line printed about the run still says what happened."""
    with contextlib.suppress(OSError, UserError):
        atomic_write_text(json.dumps(summary, indent=2) + "\n", output_dir / "summary.json")
