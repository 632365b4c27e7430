"""Training runs read back from their folders: what the report and the sweep verdict show.

A run folder is what `train.py` writes (`.hydra/`, `metrics.jsonl`, `summary.json`, checkpoints).
Everything here reads files only, so it works on a sweep that is still running, on one with a
crashed job, and on a machine with no W&B server.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cifar.config.identity import flatten
from cifar.config.schema import is_bookkeeping
from cifar.config.stored import as_written_today
from cifar.errors import UserError
from cifar.predictions import FILE as PREDICTIONS_FILE
from cifar.predictions import TestPredictions, read_predictions
from cifar.records import EpochRecord, best_epoch, read_history, read_stored_yaml, read_summary, stored_node, train_seconds

log = logging.getLogger(__name__)


# Keys that say where or how a run was recorded, not what was trained: never a reason runs differ.
@dataclass
class Run:
    folder: Path
    config: dict[str, Any]  # resolved (from summary.json) once the run ended; as composed by Hydra before that
    choices: dict[str, str]  # config-group choices, e.g. {"model": "net", "experiment": "lr_sweep"}
    summary: dict[str, Any] | None  # None while the run is going (or if it was killed)
    history: list[EpochRecord]  # one per completed epoch, from metrics.jsonl
    sweeper: str | None = None  # Hydra's sweeper choice: basic (a grid), optuna (a search)
    overrides: list[str] | None = None  # the keys set on its command line (a sweep's swept ones included); None if not saved

    @classmethod
    def load(cls, folder: Path) -> Run:
        hydra_dir = folder / ".hydra"
        summary = read_summary(folder, broken="reading that run from its metrics.jsonl only")
        config = (summary or {}).get("config") or read_stored_yaml(hydra_dir / "config.yaml")
        config = as_written_today(config)  # a run from an earlier version: its classes' old names, settings added since
        choices, sweeper = {}, None
        if (hydra_dir / "hydra.yaml").is_file():
            saved = stored_node(read_stored_yaml(hydra_dir / "hydra.yaml"), "hydra", "runtime", "choices")
            choices = {
                k: v
                for k, v in saved.items()
                if not k.startswith("hydra") and "/" not in k and k != "train_schema" and isinstance(v, str) and v
            }
            sweeper = saved.get("hydra/sweeper") if isinstance(saved.get("hydra/sweeper"), str) else None
        overrides = None
        if (hydra_dir / "overrides.yaml").is_file():
            overrides = [str(line).split("=", 1)[0].lstrip("+~") for line in read_stored_yaml(hydra_dir / "overrides.yaml") or []]
        return cls(folder, config, choices, summary, read_history(folder / "metrics.jsonl"), sweeper, overrides)

    @property
    def status(self) -> str:
        if self.summary:
            return self.summary["status"]  # finished | diverged | out_of_time | interrupted | failed
        return "running or killed"

    @property
    def finished(self) -> bool:
        return self.status == "finished"

    def get(self, key: str) -> Any:
        """A group choice (`model`) or a dotted config key (`optim.lr`); None where the run has no such key."""
        if key in self.choices:
            return self.choices[key]
        node: Any = self.config
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node

    def summary_value(self, key: str) -> Any:
        return self.summary.get(key) if self.summary else None

    @property
    def train_seconds(self) -> float:
        return self.summary_value("train_seconds") or train_seconds(self.history)

    @property
    def best_val_acc(self) -> float | None:
        if self.summary:
            return self.summary.get("best_val_acc")
        best = best_epoch(self.history)
        return best and best.val_acc

    @property
    def best_epoch(self) -> int | None:
        """The epoch of the best validation accuracy so far (the checkpoint's), from the history while running."""
        if self.summary:
            return self.summary.get("best_epoch")
        best = best_epoch(self.history)
        return best and best.epoch

    @functools.cached_property
    def predictions(self) -> TestPredictions | None:
        """Its test predictions image by image (test_predictions.npz); None for a run from before they were kept, one not
        tested, or a file of another shape (one warning)."""
        return read_predictions(self.folder / PREDICTIONS_FILE)

    def best_metric(self, name: str) -> float | None:
        """A configured metric's figure (val/<name>) at the best epoch, whose weights the checkpoint holds; None where the
        run has none."""
        best = next((record for record in self.history if record.epoch == self.best_epoch), None)
        return best.metrics.get(name) if best else None


def is_search(runs: list[Run]) -> bool:
    """Trials of a hyperparameter search (hparams_search=..., Hydra's Optuna sweeper) rather than a grid's jobs."""
    return any(run.sweeper == "optuna" for run in runs)


def by_what_they_reached(runs: list[Run]) -> list[Run]:
    """Best validation accuracy first; runs that reached none (failed, diverged at once) last."""
    return sorted(runs, key=lambda r: (r.best_val_acc is None, -(r.best_val_acc or 0)))


def is_run_folder(folder: Path) -> bool:
    """A train.py job folder: its composed config has `epochs` (evaluate.py's folders have none)."""
    config = folder / ".hydra" / "config.yaml"
    return config.is_file() and isinstance(stored := read_stored_yaml(config), dict) and "epochs" in stored


def find_runs(paths: list[str | Path]) -> list[Run]:
    """The training runs in `paths` (run folders, or folders holding them at any depth, e.g. a multirun folder)."""
    runs = []
    for path in map(Path, paths):
        if not path.is_dir():
            raise UserError(f"{path}: no such folder: pass a multirun folder (multirun/<date>/<time>) or run folders")
        folders = [path] if is_run_folder(path) else [p.parent for p in path.rglob(".hydra") if is_run_folder(p.parent)]
        if not folders:
            raise UserError(f"{path}: holds no training runs (no .hydra/config.yaml from train.py below it): pass a multirun or run folder")
        runs += [Run.load(f) for f in sorted(folders, key=_natural)]
    return runs


def _natural(path: Path) -> list:
    """Job folders in number order: 2 before 10."""
    return [int(part) if part.isdigit() else part for part in path.parts]


def differing_keys(runs: list[Run]) -> list[str]:
    """The group choices and config keys whose values differ between the runs, e.g. ["optim.lr", "seed"].

    Keys under a group whose choice differs are left out (`model=net` vs `model=vgg16` says it), and
    so are the bookkeeping keys (where the data and outputs live, W&B settings).
    """
    rows = [{**run.choices, **flatten(run.config)} for run in runs]
    keys = sorted({k for row in rows for k in row}, key=lambda k: (k not in runs[0].choices, k.count("."), k))
    differ = [k for k in keys if len({json.dumps(row.get(k), sort_keys=True) for row in rows}) > 1]
    differ = [k for k in differ if not is_bookkeeping(k)]
    groups = {k for k in differ if "." not in k and any(k in run.choices for run in runs)}
    return [k for k in differ if k.split(".")[0] not in groups or k in groups]


def swept_keys(runs: list[Run]) -> list[str]:
    """The keys a user set to different values on the runs' command lines (a sweep's swept keys), e.g. ["ablation",
    "seed"]: what tells the runs apart. A group that sets many keys at once (an ablation, an experiment) is named
    by its choice, not by every key it sets. Runs whose command lines were not saved: the keys that differ."""
    if any(run.overrides is None for run in runs):
        return differing_keys(runs)
    given = {k for run in runs for k in run.overrides if k == "experiment" or not is_bookkeeping(k)}  # experiments compared: by name
    keys = sorted(given, key=lambda k: (not any(k in run.choices for run in runs), k.count("."), k))
    return [k for k in keys if len({json.dumps(run.get(k), sort_keys=True) for run in runs}) > 1]


def sort_key(value: Any) -> tuple:
    """Orders mixed values: missing first, then numbers by size, then the rest as text."""
    if value is None:
        return (0, 0, "")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return (2, 0, str(value))
    return (1, value, "")


def fmt_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return "-" if value is None else str(value)


def test_columns(runs: list[Run]) -> list[tuple[str, str]]:
    """(header, summary key) of the test figures to show: the plain one, and the TTA one where a run has it (test_tta)."""
    tta = any(run.summary_value("test_acc_tta") is not None for run in runs)
    return [("test acc", "test_acc")] + ([("TTA acc", "test_acc_tta")] if tta else [])


def metric_names(runs: list[Run]) -> list[str]:
    """The configured metrics any of the runs recorded (val/<name>), in the order first seen: the report's columns."""
    return list(dict.fromkeys(name for run in runs for record in run.history for name in record.metrics))


def fmt_pct(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2%}"


def mean_std(values: list[float | None]) -> str:
    """`mean ± std` of the accuracies given (None skipped); one value alone has no spread to show."""
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return fmt_pct(values[0])
    return f"{statistics.mean(values):.2%} ± {statistics.stdev(values):.2%}"


# What two runs must share for their figures to differ only by what was changed: summary.json's keys.
FINGERPRINT = ("data_id", "precision", "device_name", "cpu_class", "torch_version", "torchvision_version", "cuda_version")


def precision_asked(run: Run) -> list:
    """What in a run's config decides its precision: amp and amp_dtype; under amp=auto (bf16 where a step is large
    enough), the model and the batch too (the study's Net row, in fp32, beside its VGG16 rows in bf16 on one CPU)."""
    asked = [run.get("amp"), run.get("amp_dtype")]
    return [*asked, run.get("model"), run.get("batch_size")] if run.get("amp") == "auto" else asked


# A fingerprint key that the runs' own configs decide: runs that differ in it because their configs ask for it ran as
# asked; only runs configured alike must agree.
DECIDED_BY = {"precision": precision_asked}


def mixed_fingerprints(runs: list[Run]) -> str | None:
    """One line naming what the finished runs side by side did not share (the data copy, precision, device, CPU class,
    versions), or None when they agree. Runs too old to record a key are left out of that key."""
    differ = []
    for key in FINGERPRINT:
        alike: dict[str, set[str]] = {}  # the runs configured alike for this key, and the values they recorded
        for run in runs:
            if run.finished and (v := run.summary_value(key)) is not None:
                configured = json.dumps(DECIDED_BY[key](run) if key in DECIDED_BY else None)
                alike.setdefault(configured, set()).add(str(v))
        if any(len(values) > 1 for values in alike.values()):
            values = sorted(set().union(*alike.values()))
            differ.append(f"{key} ({', '.join(values[:3])}{', ...' if len(values) > 3 else ''})")
    if not differ:
        return None
    return f"these runs did not all run alike: {'; '.join(differ)}. Their differences include that, not only what was changed"
