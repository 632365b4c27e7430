"""When training stops before its last epoch, by one of the run's own rules: each rule a small check of the epochs so far,
run after every epoch is recorded, that returns the stop it calls for (None: train on). The stop is raised, and the run's
lifecycle (cifar/run/lifecycle.py) takes its status from it, tests the best checkpoint so far and records why it stopped.

    max_minutes       out_of_time   this command's time budget is spent (resume= continues the run, with a budget of its own)
    stop_below_loss   finished      the training loss is below the mark: it has learnt the images (debug=overfit)
    early_stop        finished      validation accuracy has not improved for this many epochs (its patience)

The fourth way to stop early, a training loss that is not finite (diverged), is checked inside the epoch, every few steps
(cifar/run/training.py), so that a diverged run stops at once.
"""

from __future__ import annotations

from pathlib import Path

from cifar.run.lifecycle import OutOfTime, RunStopped
from cifar.run.state import TrainingState


class LearntIt(RunStopped):
    status = "finished"


class NoLongerImproving(RunStopped):
    status = "finished"


def stop_after_epoch(
    state: TrainingState, epochs: int, max_minutes: float | None, stop_below_loss: float | None, early_stop: int | None, last_pt: Path
) -> RunStopped | None:
    """The first stop the run's rules call for after its latest epoch (`state.history[-1]`) of `epochs`, or None. After
    the last epoch there is nothing to stop. Each rule is off while its setting is null."""
    if state.epoch >= epochs:
        return None
    return (
        (max_minutes and out_of_time(max_minutes, state, epochs, last_pt))
        or (stop_below_loss and below_loss(stop_below_loss, state))
        or (early_stop and no_better_for(early_stop, state, epochs))
        or None
    )


def out_of_time(max_minutes: float, state: TrainingState, epochs: int, last_pt: Path) -> RunStopped | None:
    """The budget is per command, not per run: the same command with resume= added (the advice OutOfTime prints, and what
    a batch job under a time limit submits again) trains up to max_minutes more, whatever the epochs before it took."""
    if state.train_seconds_here > 60 * max_minutes:
        return OutOfTime(state.epoch, epochs, max_minutes, last_pt)
    return None


def below_loss(mark: float, state: TrainingState) -> RunStopped | None:
    loss = state.history[-1].train_loss
    if loss < mark:
        return LearntIt(f"training loss {loss:.4f} is below stop_below_loss={mark:g} after {state.epoch} epochs: stopping")
    return None


def no_better_for(patience: int, state: TrainingState, epochs: int) -> RunStopped | None:
    """Validation accuracy's best is `patience` epochs old or more (without a validation split: never)."""
    if state.best_epoch is None or state.best_val_acc is None or state.epoch - state.best_epoch < patience:
        return None
    return NoLongerImproving(
        f"early_stop={patience}: validation accuracy has not improved for {state.epoch - state.best_epoch} epochs since its best, "
        f"{state.best_val_acc:.2%} at epoch {state.best_epoch}: stopping after epoch {state.epoch} of {epochs}"
    )
