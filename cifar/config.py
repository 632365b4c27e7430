"""The training config's schema and its checks: every rule about what a config may say, in one place.

Types are checked by Hydra when the config is composed (the dataclasses below are registered
as `train_schema` and sit first in `conf/config.yaml`'s defaults), so `epochs=ten` fails before
anything runs. Choices, ranges and facts about this machine are checked by `check(cfg)`, the
first thing `train()` does; `check_writable` follows once the run's folder is known.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from cifar.errors import UserError
from cifar.hardware import pick_device


@dataclass
class DataSchema:
    root: str = MISSING
    format: str = "auto"
    download: bool = True
    cache_dir: str | None = None
    val_split: float = 0.2
    split_seed: int = 42
    subset: int | None = None
    flip: bool = False
    alternate_flip: bool = False
    crop_pad: int = 0
    crop_reflect: bool = False
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])


@dataclass
class WandbSchema:
    mode: str = "offline"
    project: str = "cifar"
    entity: str | None = None
    group: str | None = None
    name: str | None = None
    tags: list[str] = field(default_factory=list)
    log_model: bool = False


@dataclass
class TrainSchema:
    model: Any = MISSING  # built from its _target_; its keys are the model class's arguments
    optim: Any = MISSING  # likewise for the optimizer
    sched: Any = MISSING  # likewise for the learning-rate schedule
    data: DataSchema = field(default_factory=DataSchema)
    wandb: WandbSchema = field(default_factory=WandbSchema)
    epochs: int = 10
    batch_size: int = 4
    eval_batch_size: int = 1000
    label_smoothing: float = 0.0
    decay_norm_and_bias: bool = True
    norm_lr_scale: float = 1.0
    lookahead_every: int = 0
    lookahead_decay: float = 0.95
    test_tta: str = "none"
    seed: int = 0
    threads: int | None = None
    device: str = "auto"
    amp: Any = "auto"  # auto | true | false: OmegaConf 2.3 has no union of str and bool
    amp_dtype: str = "auto"
    channels_last: bool = True
    compile: bool = False
    cuda_graph: Any = "auto"  # auto | true | false
    deterministic: bool = False
    prefix_epochs: list[int] = field(default_factory=list)
    max_minutes: float | None = None
    acc_thresholds: list[float] = field(default_factory=lambda: [0.6419, 0.784, 0.90, 0.94])
    resume: str | None = None
    output_dir: str = MISSING


ConfigStore.instance().store(name="train_schema", node=TrainSchema)
# `${pid:}` in conf/config.yaml's run and sweep folders: two runs started in the same second get folders of their own.
OmegaConf.register_new_resolver("pid", os.getpid, use_cache=True, replace=True)


DATA_FORMATS = ("auto", "torchvision", "folder")


def check(cfg: DictConfig) -> None:
    """Ranges and machine facts; raises UserError naming the key, the value and what would do."""
    rules = [
        (cfg.epochs >= 1, f"epochs={cfg.epochs}: train for at least 1 epoch"),
        (cfg.batch_size >= 1, f"batch_size={cfg.batch_size}: use 1 or more images per step"),
        (cfg.eval_batch_size >= 1, f"eval_batch_size={cfg.eval_batch_size}: use 1 or more"),
        (0 <= cfg.label_smoothing < 1, f"label_smoothing={cfg.label_smoothing}: use a value in [0, 1); 0 = none"),
        (cfg.amp in (True, False, "auto"), f"amp={cfg.amp}: use auto, true or false"),
        (cfg.amp_dtype in ("auto", "bf16", "fp16"), f"amp_dtype={cfg.amp_dtype}: use auto, bf16 or fp16"),
        (cfg.optim.get("lr", 1) > 0, f"optim.lr={cfg.optim.get('lr')}: the learning rate must be positive"),
        (cfg.optim.get("momentum", 0) >= 0, f"optim.momentum={cfg.optim.get('momentum')}: use 0 (none) or a positive value such as 0.9"),
        (cfg.optim.get("weight_decay", 0) >= 0, f"optim.weight_decay={cfg.optim.get('weight_decay')}: must not be negative"),
        (cfg.optim.get("filter_lr", 1) > 0, f"optim.filter_lr={cfg.optim.get('filter_lr')}: Muon's step size must be positive"),
        (
            cfg.optim.get("filter_momentum", 0) >= 0,
            f"optim.filter_momentum={cfg.optim.get('filter_momentum')}: use 0 or a positive value such as 0.6",
        ),
        (
            cfg.optim.get("ns_steps", 1) >= 1,
            f"optim.ns_steps={cfg.optim.get('ns_steps')}: use 1 or more Newton-Schulz rounds (3 is enough)",
        ),
        (cfg.data.format in DATA_FORMATS, f"data.format={cfg.data.format}: use auto, torchvision or folder"),
        (0 <= cfg.data.val_split < 1, f"data.val_split={cfg.data.val_split}: use a fraction in [0, 1); 0 means no validation"),
        (cfg.data.subset is None or cfg.data.subset >= 2, f"data.subset={cfg.data.subset}: use at least 2 images, or null for all"),
        (cfg.data.crop_pad >= 0, f"data.crop_pad={cfg.data.crop_pad}: use 0 (no crop) or a positive padding such as 4"),
        (len(cfg.data.mean) == 3 and len(cfg.data.std) == 3, "data.mean and data.std need 3 values, one per RGB channel"),
        (all(s > 0 for s in cfg.data.std), f"data.std={list(cfg.data.std)}: every value must be positive"),
        (cfg.cuda_graph in (True, False, "auto"), f"cuda_graph={cfg.cuda_graph}: use auto, true or false"),
        (cfg.norm_lr_scale > 0, f"norm_lr_scale={cfg.norm_lr_scale}: use a positive factor (1 = the same lr as the other parameters)"),
        (cfg.lookahead_every >= 0, f"lookahead_every={cfg.lookahead_every}: use 0 (off) or a number of steps such as 5"),
        (0 <= cfg.lookahead_decay <= 1, f"lookahead_decay={cfg.lookahead_decay}: use a value in [0, 1]"),
        (cfg.test_tta in ("none", *TTA_MODES), f"test_tta={cfg.test_tta}: use none, flip or flip_translate"),
        (not cfg.data.alternate_flip or cfg.data.flip, "data.alternate_flip=true needs data.flip=true"),
        (all(n >= 1 for n in cfg.prefix_epochs), f"prefix_epochs={list(cfg.prefix_epochs)}: epoch counts start at 1"),
        (
            cfg.max_minutes is None or cfg.max_minutes > 0,
            f"max_minutes={cfg.max_minutes}: use a positive number of minutes, or null for no limit",
        ),
        (cfg.threads is None or cfg.threads >= 1, f"threads={cfg.threads}: use 1 or more, or null to split the cores evenly"),
        (cfg.wandb.mode in ("online", "offline", "disabled"), f"wandb.mode={cfg.wandb.mode}: use online, offline or disabled"),
    ]
    _raise_first_broken(rules)
    pick_device(cfg.device)  # raises for an unknown device or CUDA on a machine without it


def check_evaluate(cfg: DictConfig) -> None:
    """evaluate.py's config (conf/evaluate.yaml): what Hydra's types cannot say."""
    rules = [
        (cfg.samples >= 0, f"samples={cfg.samples}: must be 0 (no predictions picture) or more"),
        (cfg.amp in (None, True, False, "auto"), f"amp={cfg.amp}: use null (as the checkpoint was tested), auto, true or false"),
        (cfg.data.format in (None, *DATA_FORMATS), f"data.format={cfg.data.format}: use null (as stored), auto, torchvision or folder"),
        (cfg.batch_size >= 1, f"batch_size={cfg.batch_size}: use 1 or more"),
        (cfg.tta in (None, False, True, "none", *TTA_MODES), f"tta={cfg.tta}: use false, true (= flip) or flip_translate"),
        (1 <= cfg.top <= 10, f"top={cfg.top}: list 1 to 10 classes per image"),
    ]
    _raise_first_broken(rules)
    pick_device(cfg.device)


def _raise_first_broken(rules: list[tuple[bool, str]]) -> None:
    for ok, message in rules:
        if not ok:
            raise UserError(message)


def check_global_batch(batch_size: int, processes: int) -> None:
    """Under torchrun, batch_size is the global batch: it is split evenly over the processes."""
    if batch_size % processes:
        raise UserError(
            f"batch_size={batch_size} is the global batch and must split evenly over the {processes} torchrun processes: "
            f"use a multiple of {processes}"
        )


# Test-time augmentation modes (cifar/evaluation.py): the logits of these views of each image are averaged.
TTA_MODES = ("flip", "flip_translate")

# Settings that say where and how a run is carried out or recorded, never what it trains: the one list that run
# names (Hydra's override_dirname, through `${bookkeeping_keys:}` in conf/config.yaml), resume and sweep
# continuation (these may differ) and the report's "what differs" columns all read. Every other key defines the experiment.
BOOKKEEPING_KEYS = (
    "experiment", "resume", "output_dir", "device", "threads", "eval_batch_size", "channels_last", "compile", "cuda_graph",
    "deterministic", "max_minutes", "prefix_epochs", "acc_thresholds", "data.root", "data.format", "data.download", "data.cache_dir",
    "wandb.mode", "wandb.project", "wandb.entity", "wandb.group", "wandb.name", "wandb.tags", "wandb.log_model",
)  # fmt: skip
OmegaConf.register_new_resolver("bookkeeping_keys", lambda: list(BOOKKEEPING_KEYS), replace=True)


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"optim": {"lr": 0.01}} -> {"optim.lr": 0.01}: the dotted keys that overrides and the lists above use."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def experiment_settings(config: dict, with_epochs: bool = False) -> dict:
    """The settings that make a run this experiment. `epochs` only where asked, or where a schedule is laid out over it:
    a constant lr can train on for more epochs."""
    flat = flatten(config)
    keep_epochs = with_epochs or flat["sched._target_"] != "cifar.schedules.none"
    return {k: v for k, v in flat.items() if k not in BOOKKEEPING_KEYS and (k != "epochs" or keep_epochs)}


def differing_settings(saved: dict, current: dict, with_epochs: bool = False) -> str:
    """`key: then vs now` for each experiment setting that differs ("" when none does)."""
    saved, current = experiment_settings(saved, with_epochs), experiment_settings(current, with_epochs)
    keys = sorted(saved.keys() | current.keys())
    return "; ".join(f"{k}: {saved.get(k)} then vs {current.get(k)} now" for k in keys if saved.get(k) != current.get(k))


def check_resume_matches(path: str, saved: dict, current: dict) -> None:
    if detail := differing_settings(saved, current):
        raise UserError(f"resume={path} was trained with other settings ({detail}): pass the same overrides as the original run")


def check_resume_state(path: str, state: dict) -> dict:
    """resume= takes last.pt, which holds the training state; ckpt.pt holds the best weights only."""
    if "scaler_state_dict" not in state:
        raise UserError(
            f"resume={path} holds the best weights only (ckpt.pt): resume from last.pt in the same folder, which holds the training state"
        )
    return state


def check_resume_precision(path: str, saved: str, now: str) -> None:
    """A run continues in the precision it was trained in: fp16's GradScaler state, for one, exists in fp16 runs only."""
    if saved != now:
        flag = "amp=false" if saved == "fp32" else f"amp=true amp_dtype={saved}"
        raise UserError(f"resume={path} was trained in {saved} and this run would train in {now}: pass {flag} (and the device it ran on)")


def check_writable(folder: Path) -> None:
    """Fail at start, not after the first epoch, when the run could not save its checkpoints."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as e:
        raise UserError(
            f"cannot write to the output folder {folder} ({e.strerror or e}): run from a writable folder or set hydra.run.dir=/writable/path"
        ) from None
