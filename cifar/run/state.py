"""What a run carries from one epoch to the next, and the two files it is saved in.

`ckpt.pt` is the best checkpoint: the study's keys (`epoch`, `model_state_dict`,
`optimizer_state_dict`, `loss`) and what rebuilds the model; with weight EMA on, `model_state_dict` is the
average and the raw weights sit beside it. `last.pt` is the latest epoch's
checkpoint plus everything resume needs: `TrainingState.save` and `TrainingState.restore` are the
one pair of places that list it, so saving and resuming cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cifar.files import atomic_save
from cifar.run.build import Parts
from cifar.run.record import EpochRecord


@dataclass
class TrainingState:
    run_name: str  # the W&B run name, kept across resumes
    run_group: str | None  # the W&B group (the sweep folder in a multirun)
    epoch: int = 0  # the last completed epoch
    best_val_acc: float | None = None  # of the checkpoint in ckpt.pt (None without a validation split)
    best_epoch: int | None = None  # the epoch ckpt.pt is from
    history: list[EpochRecord] = field(default_factory=list)  # one per completed epoch, as in metrics.jsonl
    wandb_id: str | None = None  # the W&B run's id: a resume online continues that run

    @property
    def train_seconds(self) -> float:
        return train_seconds(self.history)

    def record(self, epoch: EpochRecord) -> bool:
        """Add a completed epoch; True if its checkpoint is now the one to keep. Validation picks it (the first epoch of
        the best accuracy); without validation the last epoch is kept."""
        improved = epoch.val_acc is None or self.best_val_acc is None or epoch.val_acc > self.best_val_acc
        self.history.append(epoch)
        self.epoch = epoch.epoch
        if improved:
            self.best_val_acc, self.best_epoch = epoch.val_acc, epoch.epoch
        return improved

    def save(self, path: Path, checkpoint: dict[str, Any], parts: Parts) -> None:
        """last.pt: this epoch's checkpoint, this state, and the optimizer, schedule, scaler and random generators."""
        device = parts.device
        atomic_save(
            {
                **checkpoint,
                "scaler_state_dict": parts.scaler.state_dict(),
                "scheduler_state_dict": parts.scheduler.state_dict(),
                "rng_state": torch.get_rng_state(),
                "cuda_rng_state": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,  # dropout's stream on a GPU
                "lookahead_state_dict": parts.lookahead.state_dict() if parts.lookahead else None,
                "best_val_acc": self.best_val_acc,
                "best_epoch": self.best_epoch,
                "history": [epoch.row() for epoch in self.history],  # as metrics.jsonl's lines
                "wandb_run_id": self.wandb_id,
            },
            path,
        )

    @classmethod
    def restore(cls, saved: dict[str, Any], parts: Parts) -> TrainingState:
        """Load last.pt's weights, optimizer, schedule, scaler and random generators into `parts`; return its state."""
        parts.model.load_state_dict(saved["raw_model_state_dict"] if parts.ema else saved["model_state_dict"])
        if parts.ema:
            parts.ema.load(saved["model_state_dict"], saved["ema_updates"])
        parts.optimizer.load_state_dict(saved["optimizer_state_dict"])
        parts.scaler.load_state_dict(saved["scaler_state_dict"])
        parts.scheduler.load_state_dict(saved["scheduler_state_dict"])
        torch.set_rng_state(saved["rng_state"])
        if parts.device.type == "cuda" and saved.get("cuda_rng_state") is not None:
            torch.cuda.set_rng_state(saved["cuda_rng_state"], parts.device)
        if parts.lookahead:
            parts.lookahead.load_state_dict(saved["lookahead_state_dict"])
        return cls(
            saved["run_name"],
            saved["run_group"],
            saved["epoch"],
            saved["best_val_acc"],
            saved["best_epoch"],
            [EpochRecord.from_row(row) for row in saved["history"]],
            saved.get("wandb_run_id"),  # None in a last.pt from before W&B runs were continued
        )


def checkpoint(state: TrainingState, epoch: EpochRecord, parts: Parts, config: dict[str, Any]) -> dict[str, Any]:
    """This epoch's checkpoint: the study's keys and what rebuilds and evaluates the model (ckpt.pt is one of these)."""
    return {
        "epoch": epoch.epoch,
        "model_state_dict": parts.evaluated_model.state_dict(),  # with weight EMA on, the average: what evaluate.py reads
        "raw_model_state_dict": parts.model.state_dict() if parts.ema else None,  # the weights training continues from
        "ema_updates": parts.ema.updates if parts.ema else None,
        "optimizer_state_dict": parts.optimizer.state_dict(),
        "loss": epoch.train_loss,  # the epoch's mean training loss
        "val_loss": epoch.val_loss,
        "val_acc": epoch.val_acc,
        "config": config,
        "classes": list(parts.data.classes),  # label i is classes[i]: what evaluate.py, images= and W&B name
        "dataset": parts.data.name,
        "data_id": parts.data.identity,  # which images it was trained on: a resume on another copy is refused
        "precision": parts.precision.name,
        "run_name": state.run_name,
        "run_group": state.run_group,  # W&B's group: the sweep folder in a multirun; evaluate.py's W&B run joins it
    }


def train_seconds(history: list[EpochRecord]) -> float:
    """Training time of these epochs: their own seconds, without start-up, validation waits or the final test."""
    return sum(m.epoch_seconds for m in history)


def best_epoch(history: list[EpochRecord]) -> EpochRecord | None:
    """The epoch whose checkpoint training keeps: the first of the best validation accuracy (None without validation)."""
    scored = [m for m in history if m.val_acc is not None]
    return max(scored, key=lambda m: (m.val_acc, -m.epoch)) if scored else None


def time_to_accuracy(history: list[EpochRecord], thresholds: list[float]) -> dict[str, dict | None]:
    """For each threshold, the first epoch whose val accuracy reached it and the training seconds until then."""
    reached: dict[str, dict | None] = {}
    for threshold in thresholds:
        seconds, reached[f"{threshold:g}"] = 0.0, None
        for m in history:
            seconds += m.epoch_seconds
            if m.val_acc is not None and m.val_acc >= threshold:
                reached[f"{threshold:g}"] = {"epoch": m.epoch, "train_seconds": seconds}
                break
    return reached


def prefix_results(history: list[EpochRecord], prefix_epochs: list[int]) -> dict[str, dict]:
    """What a run of only the first N epochs would have reported, for each N in `prefix_epochs` this run got through.

    With a constant learning rate and batch orders drawn per (seed, epoch), the first N epochs of a
    longer run are the N-epoch run, step for step; its best-validation checkpoint was tested when it
    was saved (`test_acc` in the history).
    """
    results = {}
    for n in prefix_epochs:
        if len(history) >= n and (best := best_epoch(history[:n])):
            results[str(n)] = {"best_epoch": best.epoch, "best_val_acc": best.val_acc, "test_acc": best.test_acc}
    return results
