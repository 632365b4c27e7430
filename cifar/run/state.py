"""What a run carries from one epoch to the next, and the two files it is saved in.

`ckpt.pt` is the best checkpoint: the study's keys (`epoch`, `model_state_dict`,
`optimizer_state_dict`, `loss`) and what rebuilds the model; with weight EMA on, `model_state_dict` is the
average and the raw weights sit beside it. `last.pt` is the latest epoch's
checkpoint plus everything resume needs: `TrainingState.save` and `TrainingState.restore` are the
one pair of places that list it, so saving and resuming cannot drift apart; beside them, `check_saved` and
`check_fits` say what each of those fields must hold before any is used (a last.pt is a file from elsewhere: corrupt,
edited or crafted, it is refused in one line rather than failing half-way through a resume).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cifar.files import atomic_save
from cifar.records import METRICS_SHAPE, NAMES, EpochRecord, best_epoch, odd_shape, train_seconds
from cifar.run.build import Parts
from cifar.run.checkpoint import described, interpolation, is_number


@dataclass
class TrainingState:
    run_name: str  # the W&B run name, kept across resumes
    run_group: str | None  # the W&B group (the sweep folder in a multirun)
    epoch: int = 0  # the last completed epoch
    best_val_acc: float | None = None  # of the checkpoint in ckpt.pt (None without a validation split)
    best_epoch: int | None = None  # the epoch ckpt.pt is from
    history: list[EpochRecord] = field(default_factory=list)  # one per completed epoch, as in metrics.jsonl
    wandb_id: str | None = None  # the W&B run's id: a resume online continues that run
    restored: int = 0  # the epochs restored from last.pt: this command trained those after them

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

    def as_of(self, epoch: int) -> TrainingState:
        """This state as it stood after `epoch`, one of its epochs: what last.pt holds when the epoch after it was recorded
        here but not saved there."""
        if epoch >= self.epoch:
            return self
        history = self.history[:epoch]
        best = best_epoch(history) or (history[-1] if history else None)  # without validation, the last epoch is kept
        best_val_acc, best_at = (best.val_acc, best.epoch) if best else (None, None)
        return dataclasses.replace(self, epoch=epoch, best_val_acc=best_val_acc, best_epoch=best_at, history=history)

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
            restored=saved["epoch"],
        )


# ---- last.pt read back: what each field TrainingState.restore uses must hold, checked before any is used


class NotResumable(ValueError):
    """A field of a last.pt that TrainingState.save would never have written: named, with what it holds."""


# The keys restore reads from every last.pt (the others only where the run has the part, or with a default).
RESTORED = ("scheduler_state_dict", "scaler_state_dict", "rng_state", "best_val_acc", "best_epoch", "history", "run_name", "run_group")
# The figures every epoch of a history holds (EpochRecord's fields without a default).
REQUIRED_FIGURES = tuple(NAMES[name] for name in ("train_loss", "lr", "epoch_seconds", "images_per_sec"))


def check_saved(saved: dict[str, Any]) -> None:
    """last.pt's own fields, read alone (the epoch, history, best checkpoint, names, random generators and stored
    settings), as TrainingState.save writes them; NotResumable names the first that is not."""
    if missing := [key for key in RESTORED if key not in saved]:
        raise NotResumable(f"it has no {missing[0]}")
    epoch, best, accuracy = saved["epoch"], saved["best_epoch"], saved["best_val_acc"]
    need(is_count(epoch) and epoch >= 1, f"epoch is {described(epoch)}, not a count of completed epochs")
    check_history(saved["history"], epoch)
    need(best is None or (is_count(best) and 1 <= best <= epoch), f"best_epoch is {described(best)}, not one of its {epoch} epochs")
    need(accuracy is None or (is_number(accuracy) and 0 <= accuracy <= 1), f"best_val_acc is {described(accuracy)}, not an accuracy")
    need(isinstance(saved["run_name"], str), f"run_name is {described(saved['run_name'])}, not a name")
    for key in ("run_group", "wandb_run_id", "data_id", "precision"):
        need(isinstance(saved.get(key), str | None), f"{key} is {described(saved.get(key))}, not a name")
    need(
        is_bytes(saved["rng_state"], torch.get_rng_state().shape),
        f"rng_state is {described(saved['rng_state'])}, not torch's generator state",
    )
    need(
        saved.get("cuda_rng_state") is None or is_bytes(saved["cuda_rng_state"]),
        f"cuda_rng_state is {described(saved.get('cuda_rng_state'))}",
    )
    check_stored_config(saved["config"])


def check_history(history: Any, epochs: int) -> None:
    """One row per completed epoch, as metrics.jsonl's lines: epochs 1 to `epochs` in order, each with its figures."""
    need(isinstance(history, list) and len(history) == epochs, f"history is {described(history)}, not the rows of its {epochs} epochs")
    for number, row in enumerate(history, start=1):
        odd = odd_shape(row, METRICS_SHAPE, numbers_elsewhere=True)
        odd = odd or next((f"{name} is {described(row.get(name))}" for name in REQUIRED_FIGURES if not is_number(row.get(name))), None)
        odd = odd or (row["epoch"] != number and f"epoch is {row['epoch']!r}")
        need(not odd, f"history's row {number} is not epoch {number}'s figures ({odd})")


def check_stored_config(config: Any) -> None:
    """The settings the run was trained with, as train.py stores them: resolved values, never an interpolation (`${...}`),
    which is refused here unresolved: a file from elsewhere must not read this machine's environment or files."""
    need(isinstance(config, dict), f"config is {described(config)}, not a run's settings")
    need(isinstance(config.get("sched"), dict) and isinstance(config["sched"].get("_target_"), str), "its config names no sched._target_")
    if found := interpolation(config):
        raise NotResumable(f"its config holds {found}, an interpolation, where train.py stores values (it is not resolved)")


def check_fits(saved: dict[str, Any], parts: Parts) -> None:
    """last.pt's weights and the optimizer's, schedule's, scaler's, lookahead's and EMA's states against the parts this
    run built from its config, which restore loads them into: the same names, shapes and types, finite numbers, the
    same settings where the config makes them (base learning rates, momentum, ...), and one step count for all."""
    scheduler = saved["scheduler_state_dict"]
    check_settings("scheduler_state_dict", scheduler, parts.scheduler.state_dict(), COUNTERS)
    steps = scheduler["last_epoch"]
    check_learning_rates(scheduler["_last_lr"], parts.scheduler, steps)
    check_optimizer(saved["optimizer_state_dict"], parts.optimizer, scheduler["_last_lr"])
    check_settings("scaler_state_dict", saved["scaler_state_dict"], parts.scaler.state_dict(), SCALER_COUNTERS)
    weights = "raw_model_state_dict" if parts.ema else "model_state_dict"
    check_tensors(weights, saved.get(weights), parts.model.state_dict())
    if parts.ema:
        check_tensors("model_state_dict", saved["model_state_dict"], parts.ema.module.state_dict())
        need(saved.get("ema_updates") == steps, f"ema_updates is {described(saved.get('ema_updates'))}, not its {steps} steps")
    if parts.lookahead:
        lookahead = saved.get("lookahead_state_dict")
        need(isinstance(lookahead, dict) and lookahead.get("steps") == steps, f"lookahead_state_dict is not at its {steps} steps")
        check_tensors("lookahead_state_dict's average", lookahead.get("average"), parts.lookahead.average)
    if parts.device.type == "cuda" and saved.get("cuda_rng_state") is not None:
        need(
            is_bytes(saved["cuda_rng_state"], torch.cuda.get_rng_state(parts.device).shape), "cuda_rng_state is not CUDA's generator state"
        )


def check_settings(name: str, saved: Any, fresh: dict[str, Any], counters: dict[str, Any]) -> None:
    """A state of plain values against this run's own (`fresh`): each counter there, and of its kind; every other value
    both hold, equal. A key only one holds is let be: torch versions add and drop them, and fill in what is missing."""
    need(isinstance(saved, dict), f"{name} is {described(saved)}, not a state")
    for key, value in fresh.items():
        if key in counters:
            need(counters[key](saved.get(key)), f"{name}'s {key} is {described(saved.get(key))}")
        elif key in saved:
            need(same(saved[key], value), f"{name}'s {key} is {described(saved[key])} where this run's settings make it {described(value)}")


def check_learning_rates(rates: list[float], scheduler: torch.optim.lr_scheduler.LRScheduler, steps: int) -> None:
    """The schedule's learning rates after `steps` steps: where the schedule says them from the step alone (every
    LambdaLR, as all of cifar/core/schedules.py are), the ones this run's config gives at that step."""
    need(len(rates) == len(scheduler.base_lrs), f"scheduler_state_dict's _last_lr is {described(rates)}")
    if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        expected = [base * factor(steps) for base, factor in zip(scheduler.base_lrs, scheduler.lr_lambdas, strict=True)]
        need(all(math.isclose(a, b, rel_tol=1e-9) for a, b in zip(rates, expected, strict=True)),
             f"scheduler_state_dict's learning rates {rates} are not this run's schedule at step {steps} ({expected})")  # fmt: skip


def check_optimizer(saved: Any, optimizer: torch.optim.Optimizer, rates: list[float]) -> None:
    """The parameter groups of this run's optimizer (the same parameters and settings, at the schedule's learning
    rates), and per parameter a state that broadcasts to its shape (`_broadcasts_to`) or a number (a step count)."""
    fresh = optimizer.state_dict()
    groups = saved.get("param_groups") if isinstance(saved, dict) else None
    need(isinstance(groups, list) and len(groups) == len(fresh["param_groups"]) and isinstance(saved.get("state"), dict),
         f"optimizer_state_dict is not {len(fresh['param_groups'])} parameter groups and a state")  # fmt: skip
    for number, (group, fresh_group) in enumerate(zip(groups, fresh["param_groups"], strict=True)):
        check_settings(f"optimizer_state_dict's parameter group {number}", group, fresh_group, GROUP_COUNTERS)
        need(group["params"] == fresh_group["params"], f"optimizer_state_dict's parameter group {number} is of other parameters")
        need(group["lr"] == rates[number], f"optimizer_state_dict's lr {group['lr']!r} is not the schedule's, {rates[number]!r}")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, state in saved["state"].items():
        need(
            is_count(index) and index < len(params) and isinstance(state, dict),
            f"optimizer_state_dict's state names parameter {described(index)}",
        )
        for name, value in state.items():
            fits = value is None or is_number(value) or (isinstance(value, torch.Tensor) and _broadcasts_to(value, params[index]))
            need(
                fits and finite(value),
                f"optimizer_state_dict's {name} of parameter {index} is {described(value)}, for a parameter of shape {tuple(params[index].shape)}",
            )


def _broadcasts_to(state: torch.Tensor, param: torch.Tensor) -> bool:
    """A state of its parameter's shape (a momentum, Adam's moments), a number (a step count) or a factor of it that
    broadcasts to it (Adafactor's row and column moments of a (3, 4) weight: (3, 1) and (1, 4))."""
    try:
        return state.ndim <= param.ndim and torch.broadcast_shapes(state.shape, param.shape) == param.shape
    except RuntimeError:
        return False


def check_tensors(name: str, saved: Any, fresh: dict[str, torch.Tensor]) -> None:
    """Weights (or their average) for this run's model: its tensors' names, shapes and types, and finite numbers."""
    need(isinstance(saved, dict), f"{name} is {described(saved)}, not weights")
    if odd := sorted(saved.keys() ^ fresh.keys(), key=str):
        raise NotResumable(
            f"{name} {'lacks' if odd[0] in fresh else 'has'} {odd[0]!r}, which this run's model {'has' if odd[0] in fresh else 'lacks'}"
        )
    for key, tensor in fresh.items():
        value = saved[key]
        fits = isinstance(value, torch.Tensor) and value.shape == tensor.shape and value.dtype == tensor.dtype
        need(fits, f"{name}'s {key} is {described(value)} where this run's model has {described(tensor)}")
        need(finite(value), f"{name}'s {key} holds numbers that are not finite")


def need(holds: bool, problem: str) -> None:
    if not holds:
        raise NotResumable(problem)


def is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def is_positive(value: Any) -> bool:
    return is_number(value) and value > 0


def is_numbers(value: Any) -> bool:
    return isinstance(value, list) and all(is_number(v) for v in value)


def is_counts(value: Any) -> bool:
    return isinstance(value, list) and all(is_count(v) for v in value)


def is_bytes(value: Any, shape: torch.Size | None = None) -> bool:
    """A random generator's state: bytes (of `shape`, where given)."""
    return isinstance(value, torch.Tensor) and value.dtype == torch.uint8 and value.dim() == 1 and shape in (None, value.shape)


def finite(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return not value.is_floating_point() or bool(torch.isfinite(value).all())
    return not isinstance(value, float) or math.isfinite(value)


def same(saved: Any, fresh: Any) -> bool:
    if isinstance(saved, torch.Tensor) or isinstance(fresh, torch.Tensor):
        return (
            isinstance(saved, torch.Tensor)
            and isinstance(fresh, torch.Tensor)
            and saved.shape == fresh.shape
            and bool((saved == fresh).all())
        )
    with warnings.catch_warnings():  # a stored value of another type compares unequal, never with a warning
        warnings.simplefilter("ignore")
        return type(saved) is type(fresh) and saved == fresh


# The values of a schedule's, a scaler's and an optimizer group's state that training moves (the rest the config
# makes): what each must be.
COUNTERS = {"last_epoch": is_count, "_step_count": is_count, "_last_lr": is_numbers}
SCALER_COUNTERS = {"scale": is_positive, "_growth_tracker": is_count}
GROUP_COUNTERS = {"params": is_counts, "lr": is_number}


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
