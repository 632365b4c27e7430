"""Checkpoint files read back (`weights_only=True`; written whole by cifar/files.py), and summary.json read back.

A checkpoint holds the study's keys (`epoch`, `model_state_dict`, `optimizer_state_dict`,
`loss`) plus what is needed to rebuild and resume the run: the resolved config as a plain
dict, `val_acc`, the class names and, in `last.pt`, the training state.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from cifar.errors import UserError, first_line
from cifar.run.config import ADDED_SETTINGS

log = logging.getLogger(__name__)


REQUIRED_KEYS = ("epoch", "model_state_dict", "optimizer_state_dict", "loss", "config")


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint written by this project. `weights_only=True`: a file cannot run code."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a run's folder: give the file in it, {path / 'last.pt'} to resume or {path / 'ckpt.pt'} to evaluate")
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint file")
    if kind := not_a_checkpoint(path):
        raise UserError(f"{path}: not a checkpoint: it is {kind}: give a ckpt.pt or last.pt that train.py wrote")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for truncated, foreign or unsafe files
        why = UNSAFE if "Weights only load failed" in str(e) else first_line(e)  # never torch's advice to load it unsafely
        raise UserError(f"{path}: not a readable checkpoint ({why})") from None
    if not isinstance(ckpt, dict) or not all(k in ckpt for k in REQUIRED_KEYS):
        held = sorted(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise UserError(f"{path}: not a checkpoint of this project (it holds {held})")
    if isinstance(ckpt.get("config"), dict):
        ckpt["config"] = as_written_today(ckpt["config"])
    return ckpt


UNSAFE = "it holds objects other than tensors, numbers, strings, lists and dicts, which are never loaded: they could run code"
# How files that are not checkpoints begin: a torch checkpoint is a zip archive (PK..) or, in torch's old format, a pickle.
MAGIC = {
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"GIF8": "a GIF image",
    b"%PDF": "a PDF file",
    b"RIFF": "a RIFF file (a WebP image?)",
}


def not_a_checkpoint(path: Path) -> str | None:
    """What `path` is by its first bytes, when that is not a checkpoint (None: it may be one)."""
    with open(path, "rb") as f:
        head = f.read(512)
    if head.startswith((b"PK\x03\x04", b"\x80")):
        return None
    if kind := next((kind for magic, kind in MAGIC.items() if head.startswith(magic)), None):
        return kind
    if not head:
        return "an empty file"
    try:
        head.decode()
        return "a text file"
    except UnicodeDecodeError:
        return None  # some other binary: torch says what it makes of it


# Where the classes a checkpoint names by module path (its config's model, optim and sched `_target_`) lived before
# the package was split into layers: a checkpoint, last.pt or summary.json written then still evaluates, resumes and
# compares. The one place that knows the old names.
MOVED_MODULES = {"cifar.models": "cifar.core.models", "cifar.muon": "cifar.core.muon", "cifar.schedules": "cifar.core.schedules"}


def as_written_today(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored run config as this version writes it: classes under today's module paths, settings added since filled in
    (ADDED_SETTINGS: the values a run written before them trained with), and the model's class count left to the data
    (a model config that still names it must agree, cifar/run/targets.py)."""
    today = with_current_targets(stored)
    for key, value in ADDED_SETTINGS.items():
        node, _, name = key.rpartition(".")
        holder = today.get(node) if node else today
        if isinstance(holder, dict):
            holder.setdefault(name, copy.deepcopy(value))  # a list of classes: its own in each config
    if isinstance(today.get("model"), dict):
        # a count as written then (the weights' shape checks it); anything else stays, for targets.py to refuse
        today["model"] = {key: value for key, value in today["model"].items() if not (key == "num_classes" and isinstance(value, int))}
    return today


def with_current_targets(stored: dict[str, Any]) -> dict[str, Any]:
    """`stored` with every `_target_` written under an old module path renamed to where that class lives now."""
    return {key: renamed_target(value) if key == "_target_" else with_current_targets(value) if isinstance(value, dict) else value
            for key, value in stored.items()}  # fmt: skip


def renamed_target(target: Any) -> Any:
    module, _, name = str(target).rpartition(".")
    return f"{MOVED_MODULES[module]}.{name}" if module in MOVED_MODULES else target


def read_summary(folder: str | os.PathLike, broken: str | None = None) -> dict | None:
    """A run folder's summary.json; None where there is none, or where it is not readable JSON or not a summary's shape
    (cut short by a full disk, edited by hand): then, with `broken` (what the caller does instead), a warning names the
    file and what is wrong with it."""
    path = Path(folder) / "summary.json"
    try:
        summary = json.loads(path.read_text()) if path.is_file() else None
        if summary is not None and (odd := odd_shape(summary, SUMMARY_SHAPE)):
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
# One row of metrics.jsonl: its epoch, and numbers (a figure a run did not have is absent, never another type).
METRICS_SHAPE: dict[str, Any] = {"epoch": int}


def odd_shape(record: Any, shape: dict[str, Any], numbers_elsewhere: bool = False) -> str | None:
    """What is wrong with `record` against `shape` (key -> the types its value may have), None if nothing: the first key
    of another type; with `numbers_elsewhere`, any other key whose value is not a number either. A NaN or Infinity at
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
    if missing := [key for key in shape if key in ("status", "epoch") and key not in record]:
        return f"it has no {missing[0]}"
    return None
