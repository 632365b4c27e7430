"""One epoch's figures, typed: what training fills in, and what metrics.jsonl, W&B, TensorBoard, the epoch's log line,
the stop rules, last.pt and the report all read. A new per-epoch figure is one field here (its file name in NAMES)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class EpochRecord:
    epoch: int  # 1-based
    train_loss: float  # mean training loss over the epoch's steps (label smoothing and mixing included)
    lr: float  # the first parameter group's learning rate at the epoch's end
    epoch_seconds: float  # training time of the epoch's steps, without validation or checkpoints
    images_per_sec: float  # training images a second over those steps
    train_acc: float | None = (
        None  # share of the training images classed right as they were trained on (None: a run from before it was counted)
    )
    val_loss: float | None = None  # None without a validation split
    val_acc: float | None = None
    test_acc: float | None = None  # prefix_epochs: this epoch's checkpoint on the test set, when validation improved
    metrics: dict[str, float] = field(default_factory=dict)  # the config's `metrics` on the validation split, by name

    def row(self) -> dict[str, Any]:
        """metrics.jsonl's line and W&B's log: the figures under their file names, those not measured left out; each of
        the config's metrics as val/<name>."""
        figures = {NAMES[f.name]: v for f in FIGURES if (v := getattr(self, f.name)) is not None}
        return {"epoch": self.epoch} | figures | {METRIC_PREFIX + name: v for name, v in self.metrics.items()}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> EpochRecord:
        """A line of metrics.jsonl, or an epoch of an older last.pt's history (which may lack later figures and metrics)."""
        metrics = {key.removeprefix(METRIC_PREFIX): v for key, v in row.items() if key.startswith(METRIC_PREFIX) and key not in OWN_NAMES}
        return cls(epoch=row["epoch"], **{f.name: row.get(NAMES[f.name]) for f in FIGURES}, metrics=metrics)


# The names each figure is written under, in metrics.jsonl, W&B and TensorBoard: unchanged since the first runs.
NAMES = {
    "train_loss": "train/loss", "lr": "lr", "epoch_seconds": "time/epoch_seconds", "images_per_sec": "time/images_per_sec",
    "train_acc": "train/acc", "val_loss": "val/loss", "val_acc": "val/acc", "test_acc": "test/acc",
}  # fmt: skip
FIGURES = [f for f in dataclasses.fields(EpochRecord) if f.name not in ("epoch", "metrics")]
OWN_NAMES = set(NAMES.values())
METRIC_PREFIX = "val/"  # a configured metric's figure: val/<its name> (config.py refuses the names of val/loss and val/acc)
