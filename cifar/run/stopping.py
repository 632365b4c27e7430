"""When training stops before its last epoch, by one of the run's own rules: each rule a callback (cifar/core/callbacks.py)
that the run's assembly builds from its key, and whose on_epoch_end returns the stop it calls for (None: train on). The
engine (cifar/run/engine.py fit) ends the epochs on it and tests the best checkpoint so far; the run's lifecycle
(cifar/run/lifecycle.py stopped_early) takes its status from it and records why it stopped.

    max_minutes       out_of_time   this command's time budget is spent (resume= continues the run, with a budget of its own)
    stop_below_loss   finished      the training loss is below the mark: it has learnt the images (debug=overfit)
    early_stop        finished      validation accuracy has not improved for this many epochs (its patience)
    a callback's      finished      a reason a `callbacks` entry's on_epoch_end returned (CallbackStop)

Each rule reads only the run's history, which a resume restores whole, so none has state of its own to save. The fifth
way to stop early, a training loss that is not finite (diverged), is checked inside the epoch, every few steps
(cifar/run/engine.py train_epoch), so that a diverged run stops at once.
"""

from __future__ import annotations

from omegaconf import DictConfig

from cifar.core.callbacks import Callback, RunState
from cifar.records import EpochRecord
from cifar.run.lifecycle import OutOfTime, RunStopped
from cifar.run.state import best_epoch, train_seconds


class LearntIt(RunStopped):
    status = "finished"


class NoLongerImproving(RunStopped):
    status = "finished"


class CallbackStop(RunStopped):
    """A `callbacks` entry asked to stop after this epoch: the run ends as finished, with the callback's reason."""

    status = "finished"


def stop_rules(cfg: DictConfig) -> list[Callback]:
    """The rules the config turns on (each is off while its key is null), in the order their stops are taken."""
    return [
        *([MaxMinutes(cfg.max_minutes)] if cfg.max_minutes else []),
        *([StopBelowLoss(cfg.stop_below_loss)] if cfg.stop_below_loss else []),
        *([EarlyStop(cfg.early_stop)] if cfg.early_stop else []),
    ]


def as_stop(reason: str | RunStopped) -> RunStopped:
    """What on_epoch_end returned, as the stop the loop raises: a rule's own, or a callback's reason as CallbackStop."""
    return reason if isinstance(reason, RunStopped) else CallbackStop(reason)


class MaxMinutes(Callback):
    """The budget is per command, not per run: the same command with resume= added (the advice OutOfTime prints, and what
    a batch job under a time limit submits again) trains up to max_minutes more, whatever the epochs before it took."""

    def __init__(self, minutes: float):
        self.minutes, self.restored = minutes, 0

    def on_fit_start(self, state: RunState) -> None:
        self.restored = len(state.history)  # the epochs an earlier command trained

    def on_epoch_end(self, state: RunState, record: EpochRecord) -> RunStopped | None:
        if train_seconds(state.history[self.restored :]) > 60 * self.minutes:
            return OutOfTime(state.epoch, state.epochs, self.minutes, state.run_dir / "last.pt")
        return None


class StopBelowLoss(Callback):
    def __init__(self, mark: float):
        self.mark = mark

    def on_epoch_end(self, state: RunState, record: EpochRecord) -> RunStopped | None:
        if record.train_loss < self.mark:
            loss = record.train_loss
            return LearntIt(f"training loss {loss:.4f} is below stop_below_loss={self.mark:g} after {state.epoch} epochs: stopping")
        return None


class EarlyStop(Callback):
    """Validation accuracy's best is `patience` epochs old or more (without a validation split: never)."""

    def __init__(self, patience: int):
        self.patience = patience

    def on_epoch_end(self, state: RunState, record: EpochRecord) -> RunStopped | None:
        best = best_epoch(list(state.history))
        if best is None or state.epoch - best.epoch < self.patience:
            return None
        return NoLongerImproving(
            f"early_stop={self.patience}: validation accuracy has not improved for {state.epoch - best.epoch} epochs since its best, "
            f"{best.val_acc:.2%} at epoch {best.epoch}: stopping after epoch {state.epoch} of {state.epochs}"
        )
