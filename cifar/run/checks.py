"""The run config's checks across keys and against this machine: check(cfg), the first thing `train()` does, refuses in
one line before anything is written (each key's own rule: cifar/config/schema_checks.py); unused_settings warns of
what the user gave that this run will not read; check_global_batch holds torchrun's split."""

from __future__ import annotations

import logging
import os

import torch
from omegaconf import DictConfig, OmegaConf

from cifar.config.schema import SCHEMAS, settings
from cifar.config.schema_checks import odd_values, refuse_by_own_rules, shown
from cifar.core.augment import Mix
from cifar.core.hardware import CPU_FP16, pick_device
from cifar.core.steps import NOT_A_GPU, graph_refusal
from cifar.errors import UserError, refuse_broken
from cifar.run.build import augmentations, build_loss, rehearse_optimizer, trial
from cifar.run.metrics import check_metrics
from cifar.run.targets import NODE_KINDS, admit, build

log = logging.getLogger(__name__)


def check(cfg: DictConfig) -> None:
    """Keys, ranges and machine facts; raises UserError naming the key, the value and what would do."""
    if odd := odd_values(cfg):
        key, value, why = odd[0]
        raise UserError(f"{key}={value}: {why}")
    for kind in NODE_KINDS:  # what the model, optimizer, schedule and loss name, and their arguments: before anything is built
        admit(cfg[kind], kind)
    if not isinstance(cfg.callbacks, DictConfig | None):
        raise UserError(
            f"callbacks={shown(cfg.callbacks)}: a mapping of name -> {{_target_: ..., its arguments}} (callbacks=checkpoint_every)"
        )
    for name, node in (cfg.callbacks or {}).items():
        if node is not None:  # callbacks.<name>=null leaves one out
            admit(node, "callback", f"callbacks.{name}")
            with trial(f"callbacks.{name}", node, "cpu"):  # built once: its own checks (every: 0), before writing
                build(node, "callback", f"callbacks.{name}")
    # data.augment's transforms built once, as a rehearsal (their own checks: a crop's padding, a mix's alphas); a folder
    # copy counts its classes only once read, and no transform's checks depend on the count
    transforms = augmentations(cfg.data, num_classes=len(cfg.data.classes) if cfg.data.classes else 2)
    check_metrics(cfg.metrics)
    refuse_by_own_rules(cfg, SCHEMAS)
    rules = [  # rules across keys
        *_optimizer_rules(cfg.optim),
        *_data_rules(cfg.data),
    ]
    refuse_broken(rules)
    # raises for an unknown device or CUDA on a machine without it; under torchrun, this process's own GPU
    device = pick_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cpu":  # what only a GPU does, refused now rather than after the data is read
        refuse_broken([(cfg.amp_dtype != "fp16", CPU_FP16), (cfg.cuda_graph is not True, graph_refusal(NOT_A_GPU))])
    rehearse_optimizer(cfg, device)
    rehearse_loss(cfg, device, soft_labels=any(isinstance(t, Mix) for t in transforms))
    cores = len(os.sched_getaffinity(0))
    if cfg.threads and cfg.threads > cores:
        log.warning(
            "threads=%d on a machine with %d cores: the threads take turns and training slows down; leave threads=null", cfg.threads, cores
        )


def rehearse_loss(cfg: DictConfig, device: torch.device, soft_labels: bool) -> None:
    """The loss built as a run builds it and called once on a stand-in batch (zero logits for 2 classes, class indices,
    and one probability per class too where a mixing transform gives those): what torch refuses only then
    (label_smoothing=1.5, reduction=none's batch of losses) is one line before the data is read, not a traceback after it."""
    with trial("loss", cfg.loss, device):
        loss_fn = build_loss(cfg, device)
        logits = torch.zeros(2, 2, device=device, requires_grad=True)
        hard, soft = torch.zeros(2, dtype=torch.int64, device=device), torch.full((2, 2), 0.5, device=device)
        for labels in (hard, soft) if soft_labels else (hard,):
            value = loss_fn(logits, labels)
            if not (isinstance(value, torch.Tensor) and value.ndim == 0 and value.isfinite()):
                raise ValueError(
                    f"it gave {tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__}, not one finite number"
                )
            value.backward()


def _optimizer_rules(optim: DictConfig) -> list[tuple[bool, str]]:
    """The run's one rule on the optimizer: a positive lr (the schedules scale it; torch's optimizers refuse a negative
    one but take 0, which trains nothing). Each optimizer checks its other arguments as it is built (torch's, Muon's own):
    the rehearsal (cifar/run/build.py) refuses what it raises in one line."""
    return [(optim.get("lr", 1) > 0, f"optim.lr={optim.get('lr')}: the learning rate must be positive")]


def _data_rules(data: DictConfig) -> list[tuple[bool, str]]:
    """How the images are split, where one key's value depends on another's (conf/data/)."""
    return [
        (data.subset is None or _split_leaves_both(data.subset, data.val_split), _split_message(data) if data.subset else ""),
    ]


def _split_leaves_both(n: int, val_split: float) -> bool:
    """`random_split` of n images at val_split leaves at least one training image, and one validation image if any are asked for."""
    n_val = round(n * val_split)
    return n - n_val >= 1 and (val_split == 0 or n_val >= 1)


def _split_message(data: DictConfig) -> str:
    n, split = data.subset, data.val_split
    return (
        f"data.subset={n} with data.val_split={split:g} leaves {n - round(n * split)} training and {round(n * split)} validation "
        "images: take a larger subset or another split, so that each side gets at least one"
    )


def unused_settings(cfg: DictConfig, given: set[str], sweep_params: dict, multirun: bool) -> list[str]:
    """A line for each setting the user gave that this run will not use, saying why and what would use it. Legal, so
    warnings: the run goes on. `sweep_params` is the experiment's own sweep (`hydra.sweeper.params`)."""
    rules = [(key, *f.metadata["unused"]) for key, f in settings() if f.metadata["unused"]]
    # a model's keys are its class's arguments, with no schema line of their own
    rules.append(
        (
            "model.whiten_bias_epochs",
            lambda cfg: not cfg.model.get("whiten"),
            "the model has no whitening stem (model.whiten=true gives one)",
        )
    )
    lines = [
        f"{key}={OmegaConf.select(cfg, key)} has no effect in this run: {why}"
        for key, unused, why in rules
        if given_under(key, given) and unused(cfg)
    ]
    if sweep_params and not multirun:
        left = {key: values for key, values in sweep_params.items() if key.lstrip("+~") not in given}
        if left:
            swept = "; ".join(f"{key} over {values}" for key, values in left.items())
            lines.append(
                f"this experiment declares a sweep ({swept}), which only -m runs: this is one run of its defaults; add -m to run the sweep"
            )
    return lines


def given_under(key: str, given: set[str]) -> bool:
    """`key` or a key below it (`+metrics.top3._target_=...` gives `metrics`) is among the `given` ones."""
    return any(g == key or g.startswith(key + ".") for g in given)


def check_global_batch(batch_size: int, processes: int) -> None:
    """Under torchrun, batch_size is the global batch: it is split evenly over the processes."""
    if batch_size % processes:
        raise UserError(
            f"batch_size={batch_size} is the global batch and must split evenly over the {processes} torchrun processes: "
            f"use a multiple of {processes}"
        )
