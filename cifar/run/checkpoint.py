"""Checkpoint files read back (`weights_only=True`; written whole by cifar/files.py), and summary.json read back.

A checkpoint holds the study's keys (`epoch`, `model_state_dict`, `optimizer_state_dict`,
`loss`) plus what is needed to rebuild and resume the run: the resolved config as a plain
dict, `val_acc`, the class names and, in `last.pt`, the training state.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from cifar.errors import UserError, first_line

log = logging.getLogger(__name__)


REQUIRED_KEYS = ("epoch", "model_state_dict", "optimizer_state_dict", "loss", "config")


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint written by this project. `weights_only=True`: a file cannot run code."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for truncated, foreign or unsafe files
        raise UserError(f"{path}: not a readable checkpoint ({first_line(e)})") from None
    if not isinstance(ckpt, dict) or not all(k in ckpt for k in REQUIRED_KEYS):
        held = sorted(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise UserError(f"{path}: not a checkpoint of this project (it holds {held})")
    if isinstance(ckpt.get("config"), dict):
        ckpt["config"] = as_written_today(ckpt["config"])
    return ckpt


# Where the classes a checkpoint names by module path (its config's model, optim and sched `_target_`) lived before
# the package was split into layers: a checkpoint, last.pt or summary.json written then still evaluates, resumes and
# compares. The one place that knows the old names.
MOVED_MODULES = {"cifar.models": "cifar.core.models", "cifar.muon": "cifar.core.muon", "cifar.schedules": "cifar.core.schedules"}


# Settings added since runs were first written, each with the value that leaves it off: a run written before one
# existed trained without it, so it resumes, continues a sweep and compares as a run with it off.
ADDED_SETTINGS = {"ema_decay": 0.0, "mixup_alpha": 0.0, "cutmix_alpha": 0.0, "limit_batches": None, "stop_below_loss": None}


def as_written_today(config: dict[str, Any]) -> dict[str, Any]:
    """A stored run config as this version writes it: classes under today's module paths, settings added since filled in."""
    return {**ADDED_SETTINGS, **with_current_targets(config)}


def with_current_targets(config: dict[str, Any]) -> dict[str, Any]:
    """`config` with every `_target_` written under an old module path renamed to where that class lives now."""
    return {key: renamed_target(value) if key == "_target_" else with_current_targets(value) if isinstance(value, dict) else value
            for key, value in config.items()}  # fmt: skip


def renamed_target(target: Any) -> Any:
    module, _, name = str(target).rpartition(".")
    return f"{MOVED_MODULES[module]}.{name}" if module in MOVED_MODULES else target


def read_summary(folder: str | os.PathLike, broken: str | None = None) -> dict | None:
    """A run folder's summary.json; None where there is none, or where it is not readable JSON (cut short by a full disk,
    edited by hand): then, with `broken` (what the caller does instead), a warning names the file."""
    path = Path(folder) / "summary.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, json.JSONDecodeError) as e:
        if broken:
            log.warning("%s is not readable JSON (%s): %s", path, first_line(e), broken)
        return None
