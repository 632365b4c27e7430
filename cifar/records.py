"""What a run's folder records, and the one place that reads it back as data (train.py writes it: cifar/run/tracking.py,
cifar/run/lifecycle.py): used by a run that continues its folder and by everything that reports on runs (cifar/results/).

    EpochRecord        one epoch's figures, typed: what training fills in, and what metrics.jsonl, W&B, TensorBoard, the
                       epoch's log line, the stop rules, last.pt and the report all read. A new per-epoch figure is one
                       field here (its file name in NAMES)
    summary.json       read_summary, held to SUMMARY_SHAPE
    metrics.jsonl      read_history, each line held to METRICS_SHAPE
    .hydra/*.yaml      read_stored_yaml: plain data, nothing in it resolved; stored_node to walk it

A file of a run folder may come from elsewhere, be cut short by a full disk or edited by hand: each reader says so in one
warning or one line (UserError), never fails deep inside a caller. Imports no layer of the package.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from cifar.errors import UserError, first_line

log = logging.getLogger(__name__)


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
METRIC_PREFIX = "val/"  # a configured metric's figure: val/<its name> (cifar/run/metrics.py refuses the names of val/loss and val/acc)


def train_seconds(history: list[EpochRecord]) -> float:
    """Training time of these epochs: their own seconds, without start-up, validation waits or the final test."""
    return sum(m.epoch_seconds for m in history)


def best_epoch(history: list[EpochRecord]) -> EpochRecord | None:
    """The epoch whose checkpoint training keeps: the first of the best validation accuracy (None without validation)."""
    scored = [m for m in history if m.val_acc is not None]
    return max(scored, key=lambda m: (m.val_acc, -m.epoch)) if scored else None


# ---- a run folder's files read back: summary.json, metrics.jsonl, .hydra/*.yaml


def read_summary(folder: str | os.PathLike, broken: str | None = None) -> dict | None:
    """A run folder's summary.json; None where there is none, or where it is not readable JSON or not a summary's shape
    (cut short by a full disk, edited by hand): then, with `broken` (what the caller does instead), a warning names the
    file and what is wrong with it."""
    path = Path(folder) / "summary.json"
    try:
        summary = json.loads(path.read_text()) if path.is_file() else None
        if summary is not None and (odd := odd_shape(summary, SUMMARY_SHAPE, required=("status",))):
            raise ValueError(odd)
        return summary
    except (OSError, ValueError) as e:  # json.JSONDecodeError is a ValueError
        if broken:
            log.warning("%s is not a readable summary (%s): %s", path, first_line(e), broken)
        return None


NUMBER = (int, float)
NONE = type(None)
# What summary.json's keys hold where readers use them (the report, the study's table, a sweep run again). A file edited by
# hand that breaks one is read as broken, in one warning, rather than failing a reader deep inside.
SUMMARY_SHAPE: dict[str, Any] = {
    "status": str, "name": (str, NONE), "epochs_completed": (int, NONE), "best_epoch": (int, NONE), "best_val_acc": (*NUMBER, NONE),
    "test_acc": (*NUMBER, NONE), "test_acc_tta": (*NUMBER, NONE), "test_loss": (*NUMBER, NONE), "train_seconds": (*NUMBER, NONE),
    "wall_seconds": (*NUMBER, NONE), "config": (dict, NONE), "device_name": (str, NONE), "error": (str, NONE), "stopped_early": (str, NONE),
    "prefix_results": (dict, NONE), "time_to_val_acc": (dict, NONE), "test_per_class_acc": (dict, NONE),
}  # fmt: skip
# One row of metrics.jsonl: its epoch, the figures every epoch has had since the first runs, and numbers (a figure a run
# did not have is absent, never another type).
METRICS_SHAPE: dict[str, Any] = {
    "epoch": int,
    "train/loss": NUMBER,
    "lr": NUMBER,
    "time/epoch_seconds": NUMBER,
    "time/images_per_sec": NUMBER,
}


def odd_shape(record: Any, shape: dict[str, Any], required: tuple[str, ...] = (), numbers_elsewhere: bool = False) -> str | None:
    """What is wrong with `record` against `shape` (key -> the types its value may have), None if nothing: the first key
    of another type, or the first of `required` it lacks; with `numbers_elsewhere`, any other key whose value is not a number either. A NaN or Infinity at
    any depth is wrong too: Python's json reads them, but this project writes a figure it lacks as null, never so, and
    a NaN among a report's figures fails its statistics."""
    if not isinstance(record, dict):
        return f"a {type(record).__name__}, not an object of keys"
    for key, value in record.items():
        types = shape.get(key, (*NUMBER, NONE) if numbers_elsewhere else object)
        if not isinstance(value, types):
            return f"{key} is {value!r}"
        try:
            json.dumps(value, allow_nan=False)
        except ValueError:
            return f"{key} is {value!r}" if isinstance(value, float) else f"{key} holds NaN or Infinity"
    if missing := [key for key in required if key not in record]:
        return f"it has no {missing[0]}"
    return None


def read_history(path: Path) -> list[EpochRecord]:
    """metrics.jsonl's epochs, in order, up to the first line that is cut short (a running job's) or not an epoch's record."""
    if not path.is_file():
        return []
    history = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # the line a running job is writing right now
            break
        if odd := odd_shape(
            row, METRICS_SHAPE, required=tuple(METRICS_SHAPE), numbers_elsewhere=True
        ):  # edited by hand: the epochs before it still count
            log.warning("%s, line %d, is not an epoch's record (%s): reading the %d epochs before it", path, number, odd, len(history))
            break
        history.append(EpochRecord.from_row(row))
    return history


def stored_node(stored: Any, *keys: str) -> dict:
    """The mapping at `keys` inside a YAML file read as data; empty where the file holds something else there."""
    for key in keys:
        stored = stored.get(key) if isinstance(stored, dict) else None
    return stored if isinstance(stored, dict) else {}


def read_stored_yaml(path: str | os.PathLike) -> Any:
    """A YAML file of a run folder (`.hydra/config.yaml`, `hydra.yaml`, `overrides.yaml`) as plain data: lists, dicts and
    strings, a `${...}` kept as the text it is. A folder from elsewhere is data: nothing in it is ever resolved."""
    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception as e:  # YAML's and OmegaConf's errors for a file cut short or edited by hand
        raise UserError(f"{path} is not readable YAML ({first_line(e)}): restore it, or leave its folder out") from None
