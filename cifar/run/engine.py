"""The loop: `fit` trains the epochs a run has left, validating each, asks the callbacks after each whether to stop, then
tests the best checkpoint. It knows nothing of Hydra or of the config: the run's assembly (cifar/run/training.py) reads
`cfg`, builds the parts, the step and the callbacks, and hands them here with a `FitPlan`. What an epoch leaves on disk
(ckpt.pt, last.pt, metrics.jsonl, the sinks) is the assembly's callbacks' to write.

Costs, per epoch of the study's VGG16 at batch 16 (40,000 images): 2,500 optimizer steps (~1 ms each replayed from a CUDA
graph on an H100-class GPU, ~6 ms eager; ~0.1 s on a 2-core CPU) and one validation pass (10 forward passes of 1,000
images); the assembly's callbacks add one last.pt (~120 MB with the momentum) and, when validation improves, one ckpt.pt.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from cifar.console import epoch_progress
from cifar.core.batches import DeviceBatches
from cifar.core.callbacks import CallbackList, RunState
from cifar.core.distributed import Ranks
from cifar.core.scoring import accuracy_report, score
from cifar.core.steps import Stepped
from cifar.core.tta import tta_mode
from cifar.errors import UserError
from cifar.predictions import TestPredictions
from cifar.records import EpochRecord
from cifar.run.build import Parts
from cifar.run.checkpoint import load_checkpoint
from cifar.run.lifecycle import Diverged, RunStopped
from cifar.run.state import TrainingState
from cifar.run.stopping import as_stop

# Reading the loss back from the device syncs it; do that for the progress bar every this many steps only.
PROGRESS_EVERY = 25


@dataclass(frozen=True)
class FitPlan:
    epochs: int  # the epoch the run ends at (a resumed run starts after its last)
    test_each_best: bool  # prefix_epochs: test each epoch whose validation improved (what a run ending there would report)
    tta: str  # the final test's test-time augmentation: none, flip or flip_translate
    best: Path  # where the best checkpoint is kept (ckpt.pt): what the final test reads back


class Fitted(NamedTuple):
    test: dict | None  # the best checkpoint's test report (None without one): accuracy, per class, confusion, TTA
    test_loss: float | None
    predictions: TestPredictions | None  # the best checkpoint's, image by image (test_predictions.npz); None without one
    stopped: RunStopped | None  # what ended the epochs early (a callback's reason, a stop rule, divergence); None: all ran


def fit(
    parts: Parts,
    state: TrainingState,
    callbacks: CallbackList,
    train_step,
    plan: FitPlan,
    view: RunState,
    ranks: Ranks,
    stopped: Callable[[RunStopped], None],
) -> Fitted:
    """The epochs after `state.epoch` up to `plan.epochs`, then the best checkpoint so far on the test set. A callback's
    reason to stop (a stop rule's included) or a loss that is no longer finite ends the epochs early: `stopped` hears of
    it before the test, so that a run cut during its test still records why its epochs ended."""
    callbacks.on_fit_start(view)
    stop = None
    try:
        for epoch in range(state.epoch + 1, plan.epochs + 1):
            view.at_epoch(epoch)
            record = train_epoch(parts.model, train_step, parts.train_batches, parts.scheduler, callbacks, view, ranks)
            validate(parts, record, ranks)
            if state.record(record) and plan.test_each_best and parts.val_batches:
                record.test_acc = score(
                    parts.evaluated_model, parts.test_batches, parts.precision, len(parts.data.classes), ranks=ranks
                ).acc
            if (reason := callbacks.on_epoch_end(view, record)) and epoch < plan.epochs:  # after the last, nothing to stop
                raise as_stop(reason)
    except RunStopped as early:
        stop = early
    if stop:
        stopped(stop)  # outside the except: a failure in the test is not chained to the stop
    return Fitted(*test_best_checkpoint(parts, state, ranks, plan.best, plan.tta), stopped=stop)


def validate(parts: Parts, record: EpochRecord, ranks: Ranks) -> None:
    """The judged weights (their EMA where on) on the validation split, into `record`, with each configured metric."""
    if parts.val_batches:
        val = score(parts.evaluated_model, parts.val_batches, parts.precision, len(parts.data.classes), ranks=ranks, metrics=parts.metrics)
        record.val_loss, record.val_acc, record.metrics = val.loss, val.acc, val.metrics


def train_epoch(
    model: nn.Module, train_step, batches: DeviceBatches, scheduler, callbacks: CallbackList, state: RunState, ranks: Ranks
) -> EpochRecord:
    """One pass over the training split (epoch `state.epoch`): its metrics. Raises Diverged once the training loss is not finite."""
    epoch, epochs = state.epoch, state.epochs
    model.train()
    callbacks.on_train_epoch_start(state)
    t0 = time.perf_counter()
    # The step's figures are added up on the device and read once an epoch (and the loss every PROGRESS_EVERY steps).
    loss_sum = torch.zeros((), device=batches.images.device)
    correct_sum = torch.zeros((), dtype=torch.int64, device=batches.images.device)
    steps, images_here = len(batches), 0
    with epoch_progress(enabled=ranks.main) as progress:
        bar = progress.add_task(f"epoch {epoch}/{epochs}", total=steps, loss=float("nan"), ips=0.0)
        for step, (x, y) in enumerate(batches.epoch(epoch), start=1):
            loss, correct = step_on(train_step, x, y)
            loss_sum += loss
            correct_sum += correct
            images_here += len(y)
            scheduler.step()
            callbacks.on_train_batch_end(state)  # outside the step: a CUDA graph's replay is never broken by it
            if step % PROGRESS_EVERY == 0 or step == steps:
                # averaged over the ranks, so that all of them take the same decision on divergence
                running_loss = ranks.sum(loss_sum.clone()).item() / ranks.world / step
                if not math.isfinite(running_loss):  # one NaN poisons the sum, so this catches any
                    raise Diverged(epoch)
                seen = min(step * batches.batch_size, len(batches.labels))  # batch_size: the global batch
                progress.update(bar, completed=step, loss=running_loss, ips=seen / (time.perf_counter() - t0))
    callbacks.on_train_epoch_end(state)  # Lookahead, after the last epoch: the final weights are the average
    train_loss = ranks.sum(loss_sum).item() / ranks.world / steps  # waits for the GPU's queue to drain
    correct, images = ranks.sum(torch.stack([correct_sum, torch.tensor(images_here, device=correct_sum.device)])).tolist()
    seconds = time.perf_counter() - t0
    return EpochRecord(
        epoch=epoch,
        train_loss=train_loss,
        train_acc=correct / images,  # of the weights as they were at each step, on the augmented (and mixed) batches
        lr=scheduler.optimizer.param_groups[0]["lr"],
        epoch_seconds=seconds,
        images_per_sec=len(batches.labels) / seconds,
    )


# torch's words when a BatchNorm layer in training mode is given one value per channel (a batch of 1 at a 1x1 map).
ONE_VALUE_PER_CHANNEL = "Expected more than 1 value per channel when training"


def step_on(train_step, x: torch.Tensor, y: torch.Tensor) -> Stepped:
    """One training step; a batch too small for the model's BatchNorm is one line saying which batch and what to change."""
    try:
        return train_step(x, y)
    except ValueError as e:
        if ONE_VALUE_PER_CHANNEL not in str(e):
            raise
        raise UserError(
            f"a training batch of {len(y)} image(s) leaves a BatchNorm layer of this model one value per channel (its feature map "
            "is 1x1 there): use batch_size=2 or more, and a batch_size whose last batch of an epoch holds 2 images or more"
        ) from None


def test_best_checkpoint(
    parts: Parts, state: TrainingState, ranks: Ranks, best: Path, tta: str = "none"
) -> tuple[dict | None, float | None, TestPredictions | None]:
    """The best checkpoint, read back from disk (`best`, the run's ckpt.pt), on the official test set: its report, loss
    and predictions image by image (None, None, None without one). With `tta`, the report also holds the accuracy with
    test-time augmentation (`tta_acc`), beside the plain one, and the predictions those with it."""
    if state.best_epoch is None:
        return None, None, None
    if ranks.main:  # the checkpoint's weights (with weight EMA, their average) into the model
        parts.model.load_state_dict(load_checkpoint(best, map_location=parts.device)["model_state_dict"])
    ranks.broadcast_from_main(parts.model)  # the other ranks need not see rank 0's disk
    classes = parts.data.classes
    test = score(parts.model, parts.test_batches, parts.precision, len(classes), ranks=ranks, probabilities=True)
    report = accuracy_report(test.confusion, list(classes))
    with_tta = None
    if tta_mode(tta):
        with_tta = score(parts.model, parts.test_batches, parts.precision, len(classes), tta, ranks, probabilities=True)
        report["tta"], report["tta_acc"] = tta, with_tta.acc
    return report, test.loss, TestPredictions(test.predictions, with_tta and with_tta.predictions)
