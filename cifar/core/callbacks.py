"""What a run may add around the training loop, and when: the one protocol the loop calls, named and meant as
Lightning's callbacks (lightning.pytorch.Callback), so that a Lightning user reads one at once.

The loop knows no recipe and no rule. A model, a helper or a config's `callbacks` entry subclasses `Callback` and
overrides what it needs (each method does nothing here); `CallbackList` calls them in the order given:

    on_fit_start(state)              once, before the first epoch this command trains (after a resume's restore)
    on_train_epoch_start(state)      before each epoch's first step (FastNet freezes its whitening bias after a few epochs)
    on_train_batch_end(state)        after each optimizer step and learning-rate update, outside the step: a step replayed
                                     from a CUDA graph is never broken by it (Lookahead pulls the weights to their average,
                                     the weight EMA moves). Called every step: keep it to device work, no reads back
    on_train_epoch_end(state)        after the epoch's last step, before the epoch is validated (Lightning validates
                                     first; here the validated weights are what this hook leaves: Lookahead's average)
    on_epoch_end(state, record)      after the epoch is validated, checkpointed and logged, with its EpochRecord
                                     (cifar/records.py); may return a reason (a string) to stop after this epoch: the
                                     run then tests its best checkpoint and records the reason in summary.json (status
                                     finished, `stopped_early`). After the last epoch there is nothing to stop
    on_fit_end(state, outcome)       after the best checkpoint was tested (finished, stopped by a rule, or diverged; not
                                     on Ctrl-C or an error): `outcome` says how the run ended and its test figures

`state` is a `RunState`: a read-only view of the run (its epoch, model, optimizer, history, folder), never the run's
parts. A callback is built from the config by cifar/run/targets.py (a Callback class of this project), with the
arguments its node gives.

State across resume: a resumed run builds its callbacks afresh, and nothing of theirs is saved in last.pt (Lightning's
state_dict/load_state_dict are not called). The run's own rules (cifar/run/stopping.py) derive all they need from
`state.history`, which a resume restores whole; a callback that keeps a count or a best of its own must do the same
(recompute it from the history in on_fit_start), or it starts from nothing again on resume.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from torch import nn
from torch.optim import Optimizer

from cifar.errors import UserError
from cifar.files import atomic_save

if TYPE_CHECKING:
    from cifar.records import EpochRecord

log = logging.getLogger(__name__)


class RunState:
    """What a callback sees of the run, read-only: the loop moves `epoch` on, the run's state fills `history`."""

    def __init__(
        self, epochs: int, model: nn.Module, optimizer: Optimizer, history: list, run_dir: Path, main: bool, checkpoint: Callable[[], dict]
    ):
        self._epochs, self._model, self._optimizer, self._history = epochs, model, optimizer, history
        self._run_dir, self._main, self._checkpoint = run_dir, main, checkpoint
        self._epoch = len(history)

    @property
    def epoch(self) -> int:
        """The epoch being trained (1-based), or, from on_epoch_end on, the one just completed; before the first, the
        last completed (0 for a new run)."""
        return self._epoch

    @property
    def epochs(self) -> int:
        """The epochs the run is set to train (`epochs`)."""
        return self._epochs

    @property
    def model(self) -> nn.Module:
        """The network being trained (its own parameter names; not the DDP or compiled wrapper)."""
        return self._model

    @property
    def optimizer(self) -> Optimizer:
        return self._optimizer

    @property
    def history(self) -> tuple[EpochRecord, ...]:
        """Every completed epoch's record, a resumed run's earlier ones included, as metrics.jsonl holds them."""
        return tuple(self._history)

    @property
    def run_dir(self) -> Path:
        """The run's folder: ckpt.pt, last.pt, metrics.jsonl, summary.json."""
        return self._run_dir

    @property
    def main(self) -> bool:
        """Whether this process writes the run's files (under torchrun, rank 0 alone; every rank calls the callbacks)."""
        return self._main

    def checkpoint(self) -> dict[str, Any]:
        """The latest completed epoch's checkpoint, the dict ckpt.pt and last.pt are written from (cifar/run/state.py
        checkpoint()): what evaluate.py reads. Its tensors are the model's own, not copies: save it, do not change it."""
        return self._checkpoint()

    def at_epoch(self, epoch: int) -> None:
        """The loop's alone: the epoch it trains now."""
        self._epoch = epoch


class Outcome(NamedTuple):
    """How a run ended, as on_fit_end is told (summary.json's figures of the same names)."""

    status: str  # finished, out_of_time or diverged (summary.json's status)
    stopped_early: str | None  # why the epochs ended before the last, when a rule or a callback ended them
    best_epoch: int | None  # the epoch of the tested checkpoint (None without one)
    test_acc: float | None
    test_loss: float | None


class Callback:
    """The hooks, each a no-op here: override those you need (see the module's docstring for when each is called)."""

    def on_fit_start(self, state: RunState) -> None:
        pass

    def on_train_epoch_start(self, state: RunState) -> None:
        pass

    def on_train_batch_end(self, state: RunState) -> None:
        pass

    def on_train_epoch_end(self, state: RunState) -> None:
        pass

    def on_epoch_end(self, state: RunState, record: EpochRecord) -> str | None:
        pass

    def on_fit_end(self, state: RunState, outcome: Outcome) -> None:
        pass


HOOKS = ("on_fit_start", "on_train_epoch_start", "on_train_batch_end", "on_train_epoch_end", "on_epoch_end", "on_fit_end")


class CallbackList(Callback):
    """The callbacks among `objects` (those that subclass Callback), called in the order given. Each hook calls only the
    callbacks that override it: the every-step hook costs nothing for those that do not."""

    def __init__(self, *objects: object):
        self.callbacks = [o for o in objects if isinstance(o, Callback)]
        self.having = {hook: [c for c in self.callbacks if getattr(type(c), hook) is not getattr(Callback, hook)] for hook in HOOKS}

    def on_fit_start(self, state: RunState) -> None:
        for callback in self.having["on_fit_start"]:
            callback.on_fit_start(state)

    def on_train_epoch_start(self, state: RunState) -> None:
        for callback in self.having["on_train_epoch_start"]:
            callback.on_train_epoch_start(state)

    def on_train_batch_end(self, state: RunState) -> None:
        for callback in self.having["on_train_batch_end"]:
            callback.on_train_batch_end(state)

    def on_train_epoch_end(self, state: RunState) -> None:
        for callback in self.having["on_train_epoch_end"]:
            callback.on_train_epoch_end(state)

    def on_epoch_end(self, state: RunState, record: EpochRecord) -> str | None:
        """Every callback is called (one that saves files must see each epoch); the first reason to stop is returned."""
        reasons = [callback.on_epoch_end(state, record) for callback in self.having["on_epoch_end"]]
        return next((reason for reason in reasons if reason), None)

    def on_fit_end(self, state: RunState, outcome: Outcome) -> None:
        for callback in self.having["on_fit_end"]:
            callback.on_fit_end(state, outcome)


class CheckpointEvery(Callback):
    """Keeps `epoch_<n>.pt` in the run's folder every `every` epochs (and after the last): the dict ckpt.pt is written
    from, so evaluate.py reads each. Written whole or not at all (cifar/files.py). Costs one checkpoint's disk (the
    weights, the optimizer's state) per file kept: FastNet's ~17 MB, VGG16's ~1.2 GB with momentum."""

    def __init__(self, every: int = 1):
        if every < 1:
            raise UserError(f"CheckpointEvery(every={every}): keep a checkpoint every 1 epoch or more")
        self.every = every

    def on_epoch_end(self, state: RunState, record: EpochRecord) -> None:
        if state.main and (state.epoch % self.every == 0 or state.epoch == state.epochs):
            atomic_save(state.checkpoint(), state.run_dir / f"epoch_{state.epoch}.pt")


class LearningRateMonitor(Callback):
    """Logs each parameter group's learning rate after every epoch (Lightning's LearningRateMonitor, to the log alone:
    metrics.jsonl already holds the first group's as `lr`)."""

    def on_epoch_end(self, state: RunState, record: EpochRecord) -> None:
        rates = ", ".join(f"{group['lr']:.6g}" for group in state.optimizer.param_groups)
        log.info("epoch %d: learning rate %s", state.epoch, rates)
