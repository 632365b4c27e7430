"""`train(cfg)`: one training run, start to finish. Read it top to bottom."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from cifar import folders
from cifar.checkpoint import atomic_save, atomic_write_text, load_checkpoint
from cifar.config import check, check_global_batch, check_resume_matches, check_resume_precision, check_resume_state
from cifar.console import console, epoch_progress, print_config_tree, print_run_summary
from cifar.data import CLASSES, DeviceBatches, Split, load_cifar10, train_val_split
from cifar.distributed import Ranks, ranks_from_environment, start, stop
from cifar.errors import UserError
from cifar.evaluation import accuracy_report, confusion_matrix, predict
from cifar.hardware import Precision, configure_backends, cpu_threads, device_name, forward_gflop, pick_device, pick_precision
from cifar.steps import EagerStep, build_step
from cifar.tracking import NoRecord, RunRecord, open_run, run_identity

log = logging.getLogger(__name__)

# Reading the loss back from the device syncs it; do that for the progress bar every this many steps only.
PROGRESS_EVERY = 25


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA too


def build_model(cfg: DictConfig, device: torch.device) -> nn.Module:
    model = instantiate(cfg.model)
    return model.to(device, memory_format=torch.channels_last if cfg.channels_last else torch.preserve_format)


def build_optimizer(cfg: DictConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The configured optimizer; with decay_norm_and_bias=false, 1-d parameters (biases, BatchNorm) get no weight decay."""
    params = list(model.parameters())
    if cfg.decay_norm_and_bias:
        return instantiate(cfg.optim)(params)
    groups = [{"params": [p for p in params if p.ndim > 1]}, {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
    return instantiate(cfg.optim)([g for g in groups if g["params"]])


def make_batches(cfg: DictConfig, split: Split, device: torch.device, train: bool, ranks: Ranks | None = None) -> DeviceBatches:
    """Training batches are shuffled and augmented as configured, each rank taking its share of every global batch;
    validation and test batches are neither (each rank is given its own shard of those splits)."""
    return DeviceBatches(
        split, cfg.batch_size if train else cfg.eval_batch_size, device, mean=cfg.data.mean, std=cfg.data.std,
        shuffle=train, seed=cfg.seed, flip=train and cfg.data.flip, crop_pad=cfg.data.crop_pad if train else 0,
        channels_last=cfg.channels_last, rank=ranks.rank if ranks else 0, world=ranks.world if ranks else 1,
    )  # fmt: skip


def time_to_accuracy(history: list[dict], thresholds: list[float]) -> dict[str, dict | None]:
    """For each threshold, the first epoch whose val accuracy reached it and the training seconds until then."""
    reached: dict[str, dict | None] = {}
    for threshold in thresholds:
        seconds, reached[f"{threshold:g}"] = 0.0, None
        for m in history:
            seconds += m["time/epoch_seconds"]
            if m.get("val/acc", -1) >= threshold:
                reached[f"{threshold:g}"] = {"epoch": m["epoch"], "train_seconds": seconds}
                break
    return reached


def prefix_results(history: list[dict], prefix_epochs: list[int]) -> dict[str, dict]:
    """What a run of only the first N epochs would have reported, for each N in `prefix_epochs` this run got through.

    With a constant learning rate and batch orders drawn per (seed, epoch), the first N epochs of a
    longer run are the N-epoch run, step for step; its best-validation checkpoint was tested when it
    was saved (`test/acc` in the history).
    """
    results = {}
    for n in prefix_epochs:
        scored = [m for m in history[:n] if "val/acc" in m]
        if len(history) >= n and scored:
            best = max(scored, key=lambda m: (m["val/acc"], -m["epoch"]))  # the first epoch of the best accuracy, as training keeps it
            results[str(n)] = {"best_epoch": best["epoch"], "best_val_acc": best["val/acc"], "test_acc": best.get("test/acc")}
    return results


def measure(
    model: nn.Module, batches: DeviceBatches, precision: Precision, ranks: Ranks, device: torch.device
) -> tuple[torch.Tensor, float]:
    """Confusion matrix and mean loss of a split, summed over the processes that each hold a shard of it."""
    preds, labels, mean_loss = predict(model, batches, precision)
    k = len(CLASSES)
    totals = torch.cat(
        [confusion_matrix(preds, labels, k).flatten().double(), torch.tensor([mean_loss * len(labels)], dtype=torch.float64)]
    )
    totals = ranks.sum(totals.to(device)).cpu()
    confusion = totals[:-1].round().long().view(k, k)
    return confusion, totals[-1].item() / max(int(confusion.sum()), 1)


def train(cfg: DictConfig, wrap_step: Callable[[EagerStep], Callable] | None = None) -> dict[str, Any]:
    """One run, holding its folder. `wrap_step` wraps the training step (a fault to inject in a test, a profiler hook).

    In a sweep, a mistake that only this job makes (say a batch larger than its split) fails this
    job alone: it is recorded as failed with its one-line reason, and the sweep goes on.
    """
    ranks = ranks_from_environment()  # one rank of one without torchrun
    output_dir = Path(cfg.resume).resolve().parent if cfg.resume else Path(cfg.output_dir)
    try:
        with sigterm_as_ctrl_c(), folders.hold(output_dir, enabled=ranks.main):
            return _train(cfg, ranks, wrap_step, output_dir)
    except UserError as e:
        if not in_sweep() or isinstance(e, folders.FolderNotOurs):
            raise
        return record_failure(output_dir, str(e))
    finally:
        stop(ranks)


def in_sweep() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def record_failure(output_dir: Path, reason: str) -> dict[str, Any]:
    """A sweep job's own mistake: one line, and summary.json says failed and why (the sweep verdict shows it)."""
    console.print(f"[bold red]error:[/bold red] {reason} (this job is marked failed; the sweep goes on)", soft_wrap=True)
    summary_file = output_dir / "summary.json"
    try:
        summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    except (OSError, json.JSONDecodeError):
        summary = {}
    summary = {**summary, "status": "failed", "error": reason}
    with contextlib.suppress(OSError, UserError):  # a full disk may refuse this too: the line above stays
        atomic_write_text(json.dumps(summary, indent=2) + "\n", summary_file)
    return summary


@contextlib.contextmanager
def sigterm_as_ctrl_c():
    """`kill`, a SLURM time limit and torchrun stopping its processes all send SIGTERM: stop as Ctrl-C does,
    so the run is marked interrupted and says how to resume, instead of vanishing without a summary."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _train(cfg: DictConfig, ranks: Ranks, wrap_step, output_dir: Path) -> dict[str, Any]:
    config = OmegaConf.to_container(cfg, resolve=True)  # plain dict: W&B, checkpoints and summary.json store it
    config["output_dir"] = str(output_dir)
    if ranks.main:
        print_config_tree(cfg)

    # ---- what the folder already holds: a new run, one to continue, or (in a sweep run again) a finished one to keep
    action, resume = ("resume", cfg.resume) if cfg.resume else folders.continuation(output_dir, config, in_sweep())
    if action == "keep":
        log.info("%s holds a finished run of these settings: kept (delete the folder to train it again)", output_dir)
        return json.loads((output_dir / "summary.json").read_text())
    check(cfg)
    check_global_batch(cfg.batch_size, ranks.world)
    resume_state = check_resume_state(resume, load_checkpoint(resume)) if resume else None
    if resume_state:
        check_resume_matches(resume, resume_state["config"], config)
        log.info("Resuming %s at epoch %d in %s", resume, resume_state["epoch"] + 1, output_dir)

    # ---- hardware, data, model, optimizer
    seed_everything(cfg.seed)  # the same on every rank: same initial weights, same batch order
    device = pick_device(cfg.device, ranks.local_rank)
    configure_backends(device, cpu_threads(cfg.threads, ranks.local_world), cfg.deterministic)
    start(ranks, device)
    if not ranks.main:
        ranks.barrier()  # rank 0 downloads or decodes the data first; the others then read its cache
    data = load_cifar10(cfg.data.root, cfg.data.format, cfg.data.download, cfg.data.cache_dir)
    if ranks.main:
        ranks.barrier()
    train_set, val_set = train_val_split(data.train, cfg.data.val_split, cfg.data.split_seed, cfg.data.subset)
    if cfg.batch_size > len(train_set):
        raise UserError(f"batch_size={cfg.batch_size} is larger than the {len(train_set)} training images: lower it")

    train_batches = make_batches(cfg, train_set, device, train=True, ranks=ranks)
    val_batches = make_batches(cfg, ranks.shard(val_set), device, train=False) if val_set else None
    test_batches = make_batches(cfg, ranks.shard(data.test), device, train=False)

    model = build_model(cfg, device)
    # DDP averages the gradients over the ranks; checkpoints save `model`'s own, clean parameter names.
    forward = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) if ranks.distributed else model
    forward = torch.compile(forward) if cfg.compile else forward
    optimizer = build_optimizer(cfg, model)
    scheduler = instantiate(cfg.sched)(optimizer, total_steps=cfg.epochs * len(train_batches))  # stepped every optimizer step
    precision = pick_precision(device, cfg.amp, cfg.amp_dtype, forward_gflop(model, cfg.batch_size // ranks.world, device))
    scaler = torch.amp.GradScaler(device.type, enabled=precision.needs_grad_scaler)
    if resume_state:
        check_resume_precision(resume, resume_state["precision"], precision.name)
    n_params = sum(p.numel() for p in model.parameters())
    log.info(
        "%s: %s parameters on %s (%s); %d train / %d val / %d test images from %s%s",
        type(model).__name__, f"{n_params:,}", device, precision.name, len(train_set), len(val_set or ()), len(data.test), data.source,
        f"; {ranks.world} processes, {cfg.batch_size // ranks.world} images each per step" if ranks.distributed else "",
    )  # fmt: skip

    # ---- training state; a resumed run takes it from last.pt
    start_epoch, best_val_acc, best_epoch, history = 1, None, None, []
    name, group = run_identity(cfg)
    if resume_state:
        model.load_state_dict(resume_state["model_state_dict"])
        optimizer.load_state_dict(resume_state["optimizer_state_dict"])
        scaler.load_state_dict(resume_state["scaler_state_dict"])
        scheduler.load_state_dict(resume_state["scheduler_state_dict"])
        torch.set_rng_state(resume_state["rng_state"])
        if device.type == "cuda" and resume_state.get("cuda_rng_state") is not None:
            torch.cuda.set_rng_state(resume_state["cuda_rng_state"], device)  # dropout's stream on the GPU
        start_epoch = resume_state["epoch"] + 1
        best_val_acc, best_epoch, history = resume_state["best_val_acc"], resume_state["best_epoch"], resume_state["history"]
        name, group = resume_state["run_name"], resume_state["run_group"]

    # Built after resume: a captured graph records the optimizer state that exists when it is captured.
    train_step = build_step(cfg, device, precision, ranks.distributed, forward, optimizer, scaler)
    train_step = wrap_step(train_step) if wrap_step else train_step

    started = time.perf_counter()
    train_seconds = sum(m["time/epoch_seconds"] for m in history)
    status, epoch, user_error = "running", start_epoch - 1, None
    with open_run(cfg, name, group, output_dir, config, enabled=ranks.main) as run:
        record = RunRecord(output_dir, run, history) if ranks.main else NoRecord()

        def summarize(test: dict | None = None, test_loss: float | None = None) -> dict[str, Any]:
            summary = {
                "status": status,  # finished | diverged | out_of_time | interrupted | failed
                "name": name,
                "group": group,
                "epochs_completed": len(history),
                "best_epoch": best_epoch,
                "best_val_acc": best_val_acc,
                "test_acc": test and test["acc"],
                "test_loss": test_loss,
                "test_per_class_acc": test and test["per_class_acc"],
                "train_seconds": train_seconds,
                "time_to_val_acc": time_to_accuracy(history, cfg.acc_thresholds),
                "prefix_results": prefix_results(history, cfg.prefix_epochs),
                "wall_seconds": time.perf_counter() - started,
                "precision": precision.name,
                "device": str(device),
                "device_name": device_name(device),
                "processes": ranks.world,  # torchrun processes that trained the model together
                "threads": torch.get_num_threads(),  # CPU threads of each
                "params": n_params,
                "data_source": data.source,
                "output_dir": str(output_dir),
                "config": config,
            }
            record.write_summary(summary)
            return summary

        try:
            for epoch in range(start_epoch, cfg.epochs + 1):
                # ---- one pass over the training split
                model.train()
                t0 = time.perf_counter()
                loss_sum = torch.zeros((), device=device)
                with epoch_progress(enabled=ranks.main) as progress:
                    bar = progress.add_task(f"epoch {epoch}/{cfg.epochs}", total=len(train_batches), loss=float("nan"), ips=0.0)
                    for step, (x, y) in enumerate(train_batches.epoch(epoch), start=1):
                        loss_sum += train_step(x, y)
                        scheduler.step()
                        if step % PROGRESS_EVERY == 0 or step == len(train_batches):
                            # averaged over the ranks, so that all of them take the same decision on divergence
                            running_loss = ranks.sum(loss_sum.clone()).item() / ranks.world / step
                            if not math.isfinite(running_loss):  # one NaN poisons the sum, so this catches any
                                status = "diverged"
                                break
                            seen = min(step * cfg.batch_size, len(train_set))
                            progress.update(bar, completed=step, loss=running_loss, ips=seen / (time.perf_counter() - t0))
                if status == "diverged":
                    log.warning(
                        "epoch %d: the training loss is not finite: stopping this run as diverged (try a lower optim.lr); %s",
                        epoch, f"ckpt.pt from epoch {best_epoch} is kept" if best_epoch else "no epoch completed, so there is no checkpoint",
                    )  # fmt: skip
                    break
                train_loss = ranks.sum(loss_sum).item() / ranks.world / len(train_batches)  # waits for the GPU's queue to drain
                epoch_seconds = time.perf_counter() - t0
                train_seconds += epoch_seconds
                metrics = {
                    "epoch": epoch,
                    "train/loss": train_loss,
                    "lr": optimizer.param_groups[0]["lr"],  # at the epoch's end
                    "time/epoch_seconds": epoch_seconds,
                    "time/images_per_sec": len(train_set) / epoch_seconds,
                }

                # ---- validation picks the checkpoint; with no validation split the last epoch is kept
                if val_batches:
                    confusion, metrics["val/loss"] = measure(model, val_batches, precision, ranks, device)
                    metrics["val/acc"] = (confusion.diag().sum() / confusion.sum()).item()
                improved = val_batches is None or best_val_acc is None or metrics["val/acc"] > best_val_acc
                checkpoint = {
                    "epoch": epoch,
                    "model_state_dict": model.state_dict(),
                    "optimizer_state_dict": optimizer.state_dict(),
                    "loss": metrics["train/loss"],
                    "val_loss": metrics.get("val/loss"),
                    "val_acc": metrics.get("val/acc"),
                    "config": config,
                    "classes": list(CLASSES),
                    "precision": precision.name,
                    "run_name": name,
                }
                if improved:
                    best_val_acc, best_epoch = metrics.get("val/acc"), epoch
                    if cfg.prefix_epochs and val_batches:  # the test accuracy a run ending here would report; it never chooses
                        confusion, _ = measure(model, test_batches, precision, ranks, device)
                        metrics["test/acc"] = (confusion.diag().sum() / confusion.sum()).item()
                    if ranks.main:
                        atomic_save(checkpoint, output_dir / "ckpt.pt")
                history.append(metrics)
                if ranks.main:
                    atomic_save(
                        {
                            **checkpoint,
                            "scaler_state_dict": scaler.state_dict(),
                            "scheduler_state_dict": scheduler.state_dict(),
                            "rng_state": torch.get_rng_state(),
                            "cuda_rng_state": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                            "best_val_acc": best_val_acc,
                            "best_epoch": best_epoch,
                            "history": history,
                            "run_group": group,
                        },
                        output_dir / "last.pt",
                    )
                record.log_epoch(metrics)
                log.info(
                    "epoch %d: train loss %.4f%s, %.0f s, %.0f img/s%s",
                    epoch, metrics["train/loss"],
                    f", val loss {metrics['val/loss']:.4f}, val acc {metrics['val/acc']:.2%}" if val_batches else "",
                    epoch_seconds, metrics["time/images_per_sec"], " (best, saved ckpt.pt)" if improved and val_batches else "",
                )  # fmt: skip
                if cfg.max_minutes and train_seconds > 60 * cfg.max_minutes and epoch < cfg.epochs:
                    status = "out_of_time"
                    log.warning(
                        "max_minutes=%g reached after epoch %d of %d: testing the best checkpoint now; continue with resume=%s",
                        cfg.max_minutes, epoch, cfg.epochs, output_dir / "last.pt",
                    )  # fmt: skip
                    break
        except KeyboardInterrupt:
            # last.pt holds the last completed epoch. A non-zero exit code marks the W&B run failed, not finished.
            status = "interrupted"
            summary = summarize()
            run.finish(exit_code=130)
        except Exception as e:
            status = "failed"  # summary.json says so at once; the error itself is raised on
            with contextlib.suppress(OSError, UserError):  # a full disk may refuse summary.json too: the error still says why
                summarize()
            if not isinstance(e, UserError):
                raise
            user_error = e  # raised out of the W&B block, which would print its traceback: it is one line
            run.finish(exit_code=1)
        else:
            # ---- the best checkpoint, read back from disk, on the official test set
            status = "finished" if status == "running" else status
            if best_epoch is None:
                summary = summarize()
            else:
                if ranks.main:
                    model.load_state_dict(load_checkpoint(output_dir / "ckpt.pt", map_location=device)["model_state_dict"])
                ranks.broadcast_from_main(model)  # the other ranks need not see rank 0's disk
                confusion, test_loss = measure(model, test_batches, precision, ranks, device)
                test = accuracy_report(confusion, list(CLASSES))
                record.log_test(test)
                summary = summarize(test, test_loss)
    if user_error:
        raise user_error
    if status == "interrupted":  # raised out here: inside the W&B block it would print a traceback
        raise TrainingInterrupted(output_dir / "last.pt" if history else None, epoch)
    if ranks.main:
        print_run_summary(summary)
    return summary


class TrainingInterrupted(Exception):
    """Ctrl-C during training: carries where the run can be resumed from (None if no epoch completed)."""

    def __init__(self, last: Path | None, epoch: int):
        super().__init__(f"interrupted in epoch {epoch}")
        self.last, self.epoch = last, epoch
