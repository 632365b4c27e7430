"""`train(cfg)`: one training run, assembled. Read `train` and `run` top to bottom: the config is checked and read here
alone; the parts, the step and the callbacks built from it go to the engine (cifar/run/engine.py, the loop), and what
each epoch leaves on disk is `RunRecords`' to write."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cifar.config.compose import given_keys
from cifar.console import print_config_tree
from cifar.core.batches import sample_indices
from cifar.core.callbacks import Callback, CallbackList, Outcome, RunState
from cifar.core.distributed import Ranks, ranks_from_environment, stop
from cifar.core.scoring import class_probabilities
from cifar.core.steps import EagerStep
from cifar.files import atomic_save
from cifar.hold import hold_point
from cifar.records import EpochRecord
from cifar.run import folders, plugins
from cifar.run import resume as resuming
from cifar.run.build import Parts, build_parts, build_train_step, eval_batches
from cifar.run.checks import check, check_global_batch, unused_settings
from cifar.run.engine import FitPlan, fit
from cifar.run.lifecycle import RunLifecycle, TrainingInterrupted, in_sweep, sweep_of_this_experiment
from cifar.run.profiling import ProfiledSteps
from cifar.run.state import TrainingState, checkpoint
from cifar.run.stopping import stop_rules
from cifar.run.targets import build_each
from cifar.run.tracking import run_identity
from cifar.signals import signals_as_ctrl_c

__all__ = ["TrainingInterrupted", "train"]

log = logging.getLogger(__name__)


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
    # What each epoch leaves on disk first (the checkpoints, metrics.jsonl and the sinks), then the recipe's own (the
    # model's, the lookahead's, the EMA's), then the stop rules, then the config's callbacks.
    records = RunRecords(state, parts, config, output_dir, ranks, lifecycle)
    callbacks = CallbackList(records, *parts.callbacks, *stop_rules(cfg), *chosen.values())
    view = RunState(cfg.epochs, parts.model, parts.optimizer, state.history, output_dir, ranks.main,
                    checkpoint=lambda: checkpoint(state, state.history[-1], parts, config))  # fmt: skip

    # ---- the epochs (Diverged, a stop rule or a callback may end them early), then the best checkpoint on the test set
    lifecycle.start(config, parts, state)
    plan = FitPlan(cfg.epochs, test_each_best=bool(cfg.prefix_epochs), tta=cfg.test_tta, best=output_dir / "ckpt.pt")
    fitted = fit(parts, state, callbacks, train_step, plan, view, ranks, stopped=lifecycle.stopped_early)
    to_wandb = cfg.samples and ranks.main and cfg.wandb.mode != "disabled"  # where the sample goes: W&B alone
    lifecycle.tested(
        fitted.test, fitted.test_loss, fitted.predictions, sample_predictions(parts, cfg) if fitted.test and to_wandb else None
    )
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


class RunRecords(Callback):
    """What each epoch leaves behind, before any other callback hears of it: ckpt.pt where validation improved, last.pt,
    metrics.jsonl and the sinks (the lifecycle's), and the epoch's log line."""

    def __init__(self, state: TrainingState, parts: Parts, config: dict, output_dir: Path, ranks: Ranks, lifecycle: RunLifecycle):
        self.state, self.parts, self.config, self.output_dir, self.ranks, self.lifecycle = (
            state,
            parts,
            config,
            output_dir,
            ranks,
            lifecycle,
        )

    def on_epoch_end(self, state: RunState, record: EpochRecord) -> None:
        improved = self.state.best_epoch == record.epoch
        save_checkpoints(self.state, record, improved, self.parts, self.config, self.output_dir, self.ranks)
        self.lifecycle.log_epoch(record)
        log_epoch_line(record, improved and self.parts.val_batches is not None)
        hold_point(f"epoch {record.epoch}")  # tests of signals and kill -9 stop a run here (cifar/hold.py)


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
