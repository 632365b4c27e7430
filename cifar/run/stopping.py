"""When training stops before its last epoch, by one of the run's own rules: each rule a small check of the epochs so far,
run after every epoch is recorded, that returns the stop it calls for (None: train on). The stop is raised, and the run's
lifecycle (cifar/run/lifecycle.py) takes its status from it, tests the best checkpoint so far and records why it stopped.

    max_minutes       out_of_time   the time budget is spent (resume= continues the run)
    stop_below_loss   finished      the training loss is below the mark: it has learnt the images (debug=overfit)
    early_stop        finished      validation accuracy has not improved for this many epochs (its patience)

The fourth way to stop early, a training loss that is not finite (diverged), is checked inside the epoch, every few steps
(cifar/run/training.py), so that a diverged run stops at once.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from cifar.run.lifecycle import OutOfTime, RunStopped
from cifar.run.state import TrainingState


class LearntIt(RunStopped):
    status = "finished"


class NoLongerImproving(RunStopped):
    status = "finished"


def stop_after_epoch(cfg: DictConfig, state: TrainingState, output_dir: Path) -> RunStopped | None:
    """The first stop the run's rules call for after its latest epoch (`state.history[-1]`), or None. After the last
    epoch there is nothing to stop."""
    if state.epoch >= cfg.epochs:
        return None
    rules = (
        (cfg.max_minutes, out_of_time),
        (cfg.stop_below_loss, below_loss),
        (cfg.early_stop, no_better_for),
    )
    return next((stop for setting, rule in rules if setting and (stop := rule(setting, cfg, state, output_dir))), None)


def out_of_time(max_minutes: float, cfg: DictConfig, state: TrainingState, output_dir: Path) -> RunStopped | None:
    if state.train_seconds > 60 * max_minutes:
        return OutOfTime(state.epoch, cfg.epochs, max_minutes, output_dir / "last.pt")
    return None


def below_loss(mark: float, cfg: DictConfig, state: TrainingState, output_dir: Path) -> RunStopped | None:
    loss = state.history[-1].train_loss
    if loss < mark:
        return LearntIt(f"training loss {loss:.4f} is below stop_below_loss={mark:g} after {state.epoch} epochs: stopping")
    return None


def no_better_for(patience: int, cfg: DictConfig, state: TrainingState, output_dir: Path) -> RunStopped | None:
    """Validation accuracy's best is `patience` epochs old or more (without a validation split: never)."""
    if state.best_epoch is None or state.best_val_acc is None or state.epoch - state.best_epoch < patience:
        return None
    return NoLongerImproving(
        f"early_stop={patience}: validation accuracy has not improved for {state.epoch - state.best_epoch} epochs since its best, "
        f"{state.best_val_acc:.2%} at epoch {state.best_epoch}: stopping after epoch {state.epoch} of {cfg.epochs}"
    )
