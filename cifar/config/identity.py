"""What makes a run this experiment: its settings less the bookkeeping ones (cifar/config/schema.py's BOOKKEEPING_KEYS),
as dotted keys: what resume and sweep continuation hold a run folder to, and what cifar-study compares a run with."""

from __future__ import annotations

from typing import Any

from cifar.config.schema import is_bookkeeping
from cifar.records import stored_node

CONSTANT_LR = "cifar.core.schedules.none"  # sched=none's target: the one schedule whose lr never changes


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"optim": {"lr": 0.01}} -> {"optim.lr": 0.01}: the dotted keys that overrides and the lists above use."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# Mappings whose order is part of the experiment: data.augment's transforms apply in it (crop then flip is not flip then crop).
ORDERED = ("data.augment",)


def experiment_settings(config: dict, with_epochs: bool = False) -> dict:
    """The settings that make a run this experiment. `epochs` only where asked, or where a schedule is laid out over it:
    a constant lr can train on for more epochs. An ordered mapping's order is a setting too (`data.augment.order`)."""
    flat = flatten(config)
    for key in ORDERED:
        if node := stored_node(config, *key.split(".")):
            flat[f"{key}.order"] = [name for name, entry in node.items() if entry is not None]
    keep_epochs = with_epochs or flat.get("sched._target_") != CONSTANT_LR  # a record from elsewhere may lack it
    return {k: v for k, v in flat.items() if not is_bookkeeping(k) and (k != "epochs" or keep_epochs)}


def differing_settings(saved: dict, current: dict, with_epochs: bool = False) -> str:
    """`key: then vs now` for each experiment setting that differs ("" when none does)."""
    saved, current = experiment_settings(saved, with_epochs), experiment_settings(current, with_epochs)
    keys = sorted(saved.keys() | current.keys())
    return "; ".join(f"{k}: {saved.get(k)} then vs {current.get(k)} now" for k in keys if saved.get(k) != current.get(k))
