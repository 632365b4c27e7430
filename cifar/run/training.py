"""`train(cfg)`: one training run. Read `train` and `run` top to bottom; each step they take is below them.

Costs, per epoch of the study's VGG16 at batch 16 (40,000 images): 2,500 optimizer steps (~1 ms
each replayed from a CUDA graph on an H100-class GPU, ~6 ms eager; ~0.1 s on a 2-core CPU), one
validation pass (10 forward passes of 1,000 images), one last.pt (~120 MB with the momentum) and,
when validation improves, one ckpt.pt of the same size.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from cifar.config.compose import given_keys
from cifar.console import epoch_progress, print_config_tree
from cifar.core.batches import DeviceBatches, sample_indices
from cifar.core.callbacks import CallbackList, Outcome, RunState
from cifar.core.distributed import Ranks, ranks_from_environment, stop
from cifar.core.scoring import accuracy_report, class_probabilities, score
from cifar.core.steps import EagerStep, Stepped
from cifar.core.tta import tta_mode
from cifar.errors import UserError
from cifar.files import atomic_save
from cifar.hold import hold_point
from cifar.records import EpochRecord
from cifar.run import folders, plugins
from cifar.run import resume as resuming
from cifar.run.build import Parts, build_parts, build_train_step, eval_batches
from cifar.run.checkpoint import load_checkpoint
from cifar.run.checks import check, check_global_batch, unused_settings
from cifar.run.lifecycle import Diverged, RunLifecycle, TrainingInterrupted, in_sweep, sweep_of_this_experiment
from cifar.run.profiling import ProfiledSteps
from cifar.run.state import TrainingState, checkpoint
from cifar.run.stopping import as_stop, stop_rules
from cifar.run.targets import build_each
from cifar.run.tracking import run_identity
from cifar.signals import signals_as_ctrl_c

__all__ = ["TrainingInterrupted", "train"]

log = logging.getLogger(__name__)

# Reading the loss back from the device syncs it; do that for the progress bar every this many steps only.
PROGRESS_EVERY = 25


def train(cfg: DictConfig, wrap_step: Callable[[EagerStep], Callable] | None = None) -> dict[str, Any]:
    """One run, holding its folder; its summary. `wrap_step` wraps the training step (a fault to inject in a test, a
    profiler hook). How the run ends, whatever ends it, is the lifecycle's to decide and record (cifar/run/lifecycle.py)."""
    ranks = ranks_from_environment()  # one rank of one without torchrun
    output_dir = resuming.resume_path(cfg.resume).parent if cfg.resume else Path(cfg.output_dir)
    try:
        with (
            signals_as_ctrl_c(),
            folders.hold(output_dir, enabled=ranks.main),
            folders.discarded_if_refused(output_dir),
            RunLifecycle(cfg, output_dir, ranks) as lifecycle,
        ):
            run(cfg, ranks, output_dir, lifecycle, wrap_step)
        return lifecycle.summary
    finally:
        stop(ranks)


def run(cfg: DictConfig, ranks: Ranks, output_dir: Path, lifecycle: RunLifecycle, wrap_step) -> None:
    config = OmegaConf.to_container(cfg, resolve=True)  # plain dict: W&B, checkpoints and summary.json store it
    config["output_dir"] = str(output_dir)
    # Imported again in this process (a sweep's job may run in a fresh worker), before the config is checked; recorded with
    # each file's absolute path, which a refused evaluation or resume of this run names.
    config["plugins"] = plugins.load(cfg.plugins)
    if ranks.main:
        print_config_tree(cfg)

    # ---- what the folder holds: a new run, one to continue, or (a sweep run again) a finished one to keep
    action, resume = resuming.continuation(output_dir, config, in_sweep())
    if action == "keep":
        log.info("%s holds a finished run of these settings: kept (delete the folder to train it again)", output_dir)
        return lifecycle.keep(json.loads((output_dir / "summary.json").read_text()))
    check(cfg)
    check_global_batch(cfg.batch_size, ranks.world)
    if ranks.main:
        for line in unused_settings(cfg, given_keys(), *sweep_of_this_experiment()):
            log.warning(line)
    saved = resuming.load_state(str(resume), config) if resume else None
    chosen = build_each(cfg.callbacks, "callback", "callbacks")  # before the data is read: a refused argument is one line at once

    # ---- set up: hardware, data, model, optimizer; a resumed run takes its state from last.pt
    parts = build_parts(cfg, ranks)
    state = resuming.restore(str(resume), saved, parts) if saved else TrainingState(*run_identity(cfg))
    # Built after resume: a captured graph records the optimizer state that exists when it is captured.
    train_step = training_step(cfg, parts, ranks, output_dir, epochs_left=cfg.epochs - state.epoch)
    train_step = wrap_step(train_step) if wrap_step else train_step
    # The recipe's own first (the model's, the lookahead's, the EMA's), then the stop rules, then the config's callbacks.
    callbacks = CallbackList(*parts.callbacks, *stop_rules(cfg), *chosen.values())
    view = RunState(cfg.epochs, parts.model, parts.optimizer, state.history, output_dir, ranks.main,
                    checkpoint=lambda: checkpoint(state, state.history[-1], parts, config))  # fmt: skip

    # ---- the epochs (Diverged, a stop rule or a callback may end them early), then the best checkpoint on the test set
    lifecycle.start(config, parts, state)
    callbacks.on_fit_start(view)
    with lifecycle.epochs():
        for epoch in range(state.epoch + 1, cfg.epochs + 1):
            view.at_epoch(epoch)
            record = train_epoch(parts.model, train_step, parts.train_batches, parts.scheduler, callbacks, view, ranks)
            if parts.val_batches:
                val = score(
                    parts.evaluated_model, parts.val_batches, parts.precision, len(parts.data.classes), ranks=ranks, metrics=parts.metrics
                )
                record.val_loss, record.val_acc, record.metrics = val.loss, val.acc, val.metrics
            improved = state.record(record)
            if improved and cfg.prefix_epochs and parts.val_batches:  # what a run ending at this epoch would report
                record.test_acc = score(
                    parts.evaluated_model, parts.test_batches, parts.precision, len(parts.data.classes), ranks=ranks
                ).acc
            save_checkpoints(state, record, improved, parts, config, output_dir, ranks)
            lifecycle.log_epoch(record)
            log_epoch_line(record, improved and parts.val_batches is not None)
            hold_point(f"epoch {epoch}")  # tests of signals and kill -9 stop a run here (cifar/hold.py)
            if (reason := callbacks.on_epoch_end(view, record)) and epoch < cfg.epochs:  # after the last, nothing to stop
                raise as_stop(reason)
    test, test_loss = test_best_checkpoint(parts, state, ranks, output_dir, cfg.test_tta)
    to_wandb = cfg.samples and ranks.main and cfg.wandb.mode != "disabled"  # where the sample goes: W&B alone
    lifecycle.tested(test, test_loss, sample_predictions(parts, cfg) if test and to_wandb else None)
    callbacks.on_fit_end(view, outcome(lifecycle, state))


def training_step(cfg: DictConfig, parts: Parts, ranks: Ranks, output_dir: Path, epochs_left: int) -> Callable:
    """One optimizer step on a batch (eager or replayed from a CUDA graph), profiled over its first steps with
    debug=profile."""
    step = build_train_step(cfg, parts.precision, parts.device, ranks.distributed, parts.wrapped_model, parts.optimizer, parts.scaler)
    if cfg.profile_steps and ranks.main:
        step = ProfiledSteps(step, cfg.profile_steps, output_dir, parts.device, epochs_left * len(parts.train_batches), cfg.limit_batches)
    return step


def outcome(lifecycle: RunLifecycle, state: TrainingState) -> Outcome:
    """How the run ended, as on_fit_end is told: the status summary.json will hold, and the test figures."""
    test = lifecycle.test or {}
    status = "finished" if lifecycle.status == "running" else lifecycle.status
    return Outcome(status, lifecycle.stopped, state.best_epoch if test else None, test.get("acc"), lifecycle.test_loss)


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


def save_checkpoints(
    state: TrainingState, record: EpochRecord, improved: bool, parts: Parts, config: dict, output_dir: Path, ranks: Ranks
) -> None:
    """ckpt.pt if this epoch's checkpoint is the one to keep (tested too with prefix_epochs: it never chooses); last.pt."""
    this_epoch = checkpoint(state, record, parts, config)
    if ranks.main:
        if improved:
            atomic_save(this_epoch, output_dir / "ckpt.pt")
        hold_point(f"epoch {record.epoch} before last.pt")
        state.save(output_dir / "last.pt", this_epoch, parts)


def log_epoch_line(record: EpochRecord, saved_best: bool) -> None:
    log.info(
        "epoch %d: train loss %.4f, train acc %.2f%%%s%s, %.0f s, %.0f img/s%s",
        record.epoch, record.train_loss, 100 * record.train_acc,
        f", val loss {record.val_loss:.4f}, val acc {record.val_acc:.2%}" if record.val_acc is not None else "",
        "".join(f", {name} {value:.4g}" for name, value in record.metrics.items()),
        record.epoch_seconds, record.images_per_sec, " (best, saved ckpt.pt)" if saved_best else "",
    )  # fmt: skip


def test_best_checkpoint(
    parts: Parts, state: TrainingState, ranks: Ranks, output_dir: Path, tta: str = "none"
) -> tuple[dict | None, float | None]:
    """The best checkpoint, read back from disk, on the official test set: its report and loss (None, None without one).
    With `tta`, the report also holds the accuracy with test-time augmentation (`tta_acc`), beside the plain one."""
    if state.best_epoch is None:
        return None, None
    if ranks.main:  # the checkpoint's weights (with weight EMA, their average) into the model
        parts.model.load_state_dict(load_checkpoint(output_dir / "ckpt.pt", map_location=parts.device)["model_state_dict"])
    ranks.broadcast_from_main(parts.model)  # the other ranks need not see rank 0's disk
    classes = parts.data.classes
    test = score(parts.model, parts.test_batches, parts.precision, len(classes), ranks=ranks)
    report = accuracy_report(test.confusion, list(classes))
    if tta_mode(tta):
        report["tta"], report["tta_acc"] = tta, score(parts.model, parts.test_batches, parts.precision, len(classes), tta, ranks).acc
    return report, test.loss


def sample_predictions(parts: Parts, cfg: DictConfig) -> dict[str, Any]:
    """The tested weights (in `parts.model` after `test_best_checkpoint`) on `cfg.samples` images of the official test
    set drawn with `cfg.sample_seed` (limit_batches or not): the same images in every run on the same copy of the data,
    and in evaluate.py's predictions.png by default. Costs one forward pass over them."""
    index = sample_indices(len(parts.data.test), cfg.samples, cfg.sample_seed)
    sample = parts.data.test.subset(index)
    probs = class_probabilities(parts.model, eval_batches(cfg, sample, parts.device, cfg.eval_batch_size), parts.precision)
    top_prob, pred = probs.max(1)
    return {
        "index": index.tolist(),
        "images": sample.images,
        "labels": sample.labels.tolist(),
        "preds": pred.tolist(),
        "probs": top_prob.tolist(),
        "classes": list(parts.data.classes),  # their names, label by label
    }
