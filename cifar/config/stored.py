"""A stored run config (a checkpoint's, last.pt's, summary.json's, a run folder's YAML) read as this version writes it:
classes under today's module paths, settings added since filled in, keys that have moved read where they live now. What
resume, evaluate.py and everything that reads runs back (cifar/results/) compare and rebuild from."""

from __future__ import annotations

import copy
from typing import Any

from cifar.config.old_keys import with_todays_keys
from cifar.config.schema import ADDED_SETTINGS

# Where the classes a checkpoint names by module path (its config's model, optim and sched `_target_`) lived before
# the package was split into layers: a checkpoint, last.pt or summary.json written then still evaluates, resumes and
# compares. The one place that knows the old names.
MOVED_MODULES = {"cifar.models": "cifar.core.models", "cifar.muon": "cifar.core.muon", "cifar.schedules": "cifar.core.schedules"}


def as_written_today(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored run config as this version writes it: classes under today's module paths, settings added since filled in
    (ADDED_SETTINGS: the values a run written before them trained with), and the model's class count left to the data
    (a model config that still names it must agree, cifar/run/targets.py), and the keys that have moved since read where
    they live now (cifar/config/old_keys.py)."""
    today = with_todays_keys(with_current_targets(stored))
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
