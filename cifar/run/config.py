"""The training config's schema and its checks: every rule about what a config may say, in one place.

Types are checked by Hydra when the config is composed (the dataclasses below are registered
as `train_schema` and sit first in `conf/config.yaml`'s defaults), so `epochs=ten` fails before
anything runs. Choices, ranges and facts about this machine are checked by `check(cfg)`, the
first thing `train()` does; `check_writable` follows once the run's folder is known.
"""

from __future__ import annotations

import logging
import math
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from cifar.core.data import CIFAR10, TORCHVISION_DATASETS
from cifar.core.hardware import CPU_FP16, pick_device
from cifar.core.steps import NOT_A_GPU, graph_refusal
from cifar.errors import UserError, refuse_broken
from cifar.run.build import augmentations, rehearse_optimizer
from cifar.run.metrics import check_metrics
from cifar.run.targets import CONSTANT_LR, NODE_KINDS, admit

log = logging.getLogger(__name__)


TTA_MODES = ("flip", "flip_translate")  # test-time augmentation (cifar/core/tta.py): the logits of these views are averaged
DATA_FORMATS = ("auto", "torchvision", "folder")
WANDB_MODES = ("online", "offline", "disabled")
WANDB_MAX_IMAGES = 108  # wandb.Image.MAX_ITEMS: W&B drops the images of a list beyond these, with a warning
SAMPLE_SEED_RULE = "use null (the first test images) or a seed from 0 to 2**64 - 1"
TTA_CHOICES = ("none", *TTA_MODES)
DATASET_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"  # a dataset's name is part of a file's name: never a path
ORIGINAL = object()  # setting(before=...) for a key that runs have held since the first version


def sample_seed_ok(seed: int | None) -> bool:
    """torch.Generator's seeds: 0 to 2**64 - 1; null shows the first test images instead of a seeded draw."""
    return seed is None or 0 <= seed < 2**64


def setting(
    rule: Callable[[Any], bool] | None = None,
    fix: str = "",
    *,
    bookkeeping: bool = False,
    unused: tuple[Callable[[DictConfig], bool], str] | None = None,
    before: Any = ORIGINAL,
) -> Any:
    """A run key's home beside its YAML line (which holds its default and comment):

    - its type is the field's annotation, and `rule` a check of its value alone, with `fix`, what to use instead
      (refused as `key=value: fix`); rules across keys stay in check();
    - `bookkeeping`: it changes where or how a run is carried out or recorded, never what it trains (BOOKKEEPING_KEYS);
    - `unused`: (when this run will not read it, given the whole config; why, and what would use it): given on the command
      line then, it is warned about (unused_settings), and the run goes on;
    - `before`: for a key added since runs were first written, the value that leaves it off: a run written before it
      existed trained that way, so it resumes, continues a sweep and compares as one with this value (ADDED_SETTINGS).
    """
    metadata = {"rule": rule, "fix": fix, "bookkeeping": bookkeeping, "unused": unused, "before": before}
    return field(default=MISSING, metadata=metadata)


def at_least(n: float) -> Callable[[Any], bool]:
    return lambda v: v >= n


def null_or(rule: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or rule(v)


def one_of(*choices: Any) -> Callable[[Any], bool]:
    return lambda v: v in choices


# Why a setting is not read in this run (setting(unused=...)), where several keys share the reason.
NO_VALIDATION = "data.val_split=0 has no validation split"
WANDB_OFF = (lambda cfg: cfg.wandb.mode == "disabled", "W&B is off (wandb.mode=disabled)")


def _no_validation(cfg: DictConfig) -> bool:
    return not cfg.data.val_split


def _on_cpu(cfg: DictConfig) -> bool:
    return cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available())


@dataclass
class DataSchema:
    # Before datasets were a config group, every run was CIFAR-10's (`before`: its spec's values).
    name: str = setting(
        lambda v: re.fullmatch(DATASET_NAME, v) is not None,
        "use letters, digits, '.', '_' or '-' (up to 64): it names the decode cache's file",
        before=CIFAR10.name,
    )
    classes: list[str] | None = setting(
        null_or(lambda v: len(set(v)) == len(v) >= 2),
        "2 or more names, each once (or null for a folder copy's own)",
        before=list(CIFAR10.classes),
    )
    torchvision: str | None = setting(
        one_of(None, *TORCHVISION_DATASETS), f"use {', '.join(TORCHVISION_DATASETS)} or null", before=CIFAR10.torchvision
    )
    resize: bool = setting(before=CIFAR10.resize)
    root: str = setting(bookkeeping=True)
    format: str = setting(one_of(*DATA_FORMATS), "use auto, torchvision or folder", bookkeeping=True)
    download: bool = setting(bookkeeping=True)
    cache_dir: str | None = setting(bookkeeping=True)
    val_split: float = setting(lambda v: 0 <= v < 1, "use a fraction in [0, 1); 0 means no validation")
    split_seed: int = setting(lambda v: 0 <= v < 2**63, "use a whole number from 0 up")
    subset: int | None = setting(null_or(at_least(2)), "use at least 2 images, or null for all")
    augment: Any = MISSING  # name -> transform node, each built from its _target_ (cifar/run/targets.py's rule "augment")
    mean: list[float] = setting(lambda v: len(v) == 3, "give 3 values, one per RGB channel")
    std: list[float] = setting(lambda v: len(v) == 3 and all(x > 0 for x in v), "give 3 positive values, one per RGB channel")


@dataclass
class WandbSchema:
    mode: str = setting(one_of(*WANDB_MODES), "use online, offline or disabled", bookkeeping=True)
    project: str = setting(bookkeeping=True, unused=WANDB_OFF)
    entity: str | None = setting(bookkeeping=True, unused=WANDB_OFF)
    group: str | None = setting(bookkeeping=True, unused=WANDB_OFF)
    name: str | None = setting(bookkeeping=True, unused=WANDB_OFF)
    tags: list[str] = setting(bookkeeping=True, unused=WANDB_OFF)
    log_model: bool = setting(bookkeeping=True, unused=WANDB_OFF)


@dataclass
class TrainSchema:
    model: Any = MISSING  # built from its _target_; its keys are the model class's arguments
    optim: Any = MISSING  # likewise for the optimizer
    sched: Any = MISSING  # likewise for the learning-rate schedule
    loss: Any = MISSING  # likewise for the training loss (conf/loss/); a stored label_smoothing becomes it (checkpoint.py)
    data: DataSchema = field(default_factory=DataSchema)
    wandb: WandbSchema = field(default_factory=WandbSchema)
    epochs: int = setting(at_least(1), "train for at least 1 epoch")
    batch_size: int = setting(at_least(1), "use 1 or more images per step")
    eval_batch_size: int = setting(at_least(1), "use 1 or more", bookkeeping=True)
    decay_norm_and_bias: bool = setting()
    norm_lr_scale: float = setting(lambda v: v > 0, "use a positive factor (1 = the same lr as the other parameters)")
    lookahead_every: int = setting(at_least(0), "use 0 (off) or a number of steps such as 5")
    lookahead_decay: float = setting(
        lambda v: 0 <= v <= 1,
        "use a value in [0, 1]",
        unused=(lambda cfg: cfg.lookahead_every == 0, "lookahead is off (lookahead_every=0); lookahead_every=5 turns it on"),
    )
    ema_decay: float = setting(lambda v: 0 <= v < 1, "use 0 (off) or a value in (0, 1) such as 0.999", before=0.0)
    test_tta: str = setting(one_of(*TTA_CHOICES), "use none, flip or flip_translate")
    samples: int = setting(
        lambda v: 0 <= v <= WANDB_MAX_IMAGES, f"use 0 (none) to {WANDB_MAX_IMAGES}, the most images W&B keeps in one step", bookkeeping=True,
        unused=WANDB_OFF,
    )  # fmt: skip
    sample_seed: int | None = setting(sample_seed_ok, SAMPLE_SEED_RULE, bookkeeping=True, unused=WANDB_OFF)
    seed: int = setting(lambda v: 0 <= v < 2**32, "use a whole number from 0 to 4294967295 (numpy's generator takes no other)")
    threads: int | None = setting(null_or(at_least(1)), "use 1 or more, or null to split the cores evenly", bookkeeping=True)
    device: str = setting(bookkeeping=True)  # checked against the machine in check()
    amp: Any = setting(one_of(True, False, "auto"), "use auto, true or false")  # OmegaConf 2.3 has no union of str and bool
    amp_dtype: str = setting(one_of("auto", "bf16", "fp16"), "use auto, bf16 or fp16")
    channels_last: bool = setting(bookkeeping=True)
    compile: bool = setting(bookkeeping=True)
    cuda_graph: Any = setting(one_of(True, False, "auto"), "use auto, true or false", bookkeeping=True)
    deterministic: bool = setting(bookkeeping=True, unused=(_on_cpu, "CPU runs repeat to the bit either way"))
    prefix_epochs: list[int] = setting(
        lambda v: all(n >= 1 for n in v),
        "epoch counts start at 1",
        bookkeeping=True,
        unused=(_no_validation, f"prefix results come from the best-validation checkpoints, and {NO_VALIDATION}"),
    )
    limit_batches: int | None = setting(null_or(at_least(1)), "use 1 or more, or null for all", before=None)
    stop_below_loss: float | None = setting(
        null_or(lambda v: v > 0), "use a positive loss such as 0.01, or null to train every epoch", before=None
    )
    early_stop: int | None = setting(
        null_or(at_least(1)),
        "use a patience of 1 epoch or more, or null",
        unused=(_no_validation, f"it waits for validation accuracy to stop improving, and {NO_VALIDATION}"),
        before=None,
    )
    profile_steps: int = setting(at_least(0), "use 0 (off) or a number of steps such as 5", bookkeeping=True)
    max_minutes: float | None = setting(
        null_or(lambda v: v > 0), "use a positive number of minutes, or null for no limit", bookkeeping=True
    )
    acc_thresholds: list[float] = setting(
        lambda v: all(0 < t <= 1 for t in v),
        "accuracies are fractions in (0, 1]",
        bookkeeping=True,
        unused=(_no_validation, f"they are validation accuracies, and {NO_VALIDATION}"),
    )
    study_rows: Any = setting(bookkeeping=True)  # a list of {row, label, study_acc, epochs, alone}: set by conf/study_row/
    resume: str | None = setting(bookkeeping=True)
    output_dir: str = setting(bookkeeping=True)
    tensorboard: bool = setting(bookkeeping=True)
    # name -> a Callback's node (cifar/core/callbacks.py). Bookkeeping: a callback watches or saves, and one added on resume
    # (checkpoint_every, say) is welcome; a callback that stops a run early changes its figures as early_stop does, and is
    # the user's to keep the same across a resume. Runs written before callbacks had none.
    callbacks: Any = setting(bookkeeping=True, before={})
    # name -> a torchmetrics-like class's node (cifar/run/targets.py's "metric"), computed on validation each epoch
    metrics: Any = setting(
        bookkeeping=True, unused=(_no_validation, f"metrics are computed on the validation split, and {NO_VALIDATION}"), before={}
    )
    # Where code came from, not what trains (the `_target_`s say that): a plugin's file may move between a run and its resume.
    plugins: list[str] = setting(bookkeeping=True, before=[])


def check(cfg: DictConfig) -> None:
    """Keys, ranges and machine facts; raises UserError naming the key, the value and what would do."""
    if odd := odd_values(cfg):
        key, value, why = odd[0]
        raise UserError(f"{key}={value}: {why}")
    for kind in NODE_KINDS:  # what the model, optimizer, schedule and loss name, and their arguments: before anything is built
        admit(cfg[kind], kind)
    if not isinstance(cfg.callbacks, DictConfig | None):
        raise UserError(
            f"callbacks={_shown(cfg.callbacks)}: a mapping of name -> {{_target_: ..., its arguments}} (callbacks=checkpoint_every)"
        )
    for name, node in (cfg.callbacks or {}).items():
        if node is not None:  # callbacks.<name>=null leaves one out
            admit(node, "callback", f"callbacks.{name}")
    # data.augment's transforms built once, as a rehearsal (their own checks: a crop's padding, a mix's alphas); a folder
    # copy counts its classes only once read, and no transform's checks depend on the count
    augmentations(cfg.data, num_classes=len(cfg.data.classes) if cfg.data.classes else 2)
    check_metrics(cfg.metrics)
    refuse_by_own_rules(cfg, SCHEMAS)
    rules = [  # rules across keys
        *_optimizer_rules(cfg.optim),
        *_data_rules(cfg.data),
        *_schedule_rules(cfg.sched),
    ]
    refuse_broken(rules)
    # raises for an unknown device or CUDA on a machine without it; under torchrun, this process's own GPU
    device = pick_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cpu":  # what only a GPU does, refused now rather than after the data is read
        refuse_broken([(cfg.amp_dtype != "fp16", CPU_FP16), (cfg.cuda_graph is not True, graph_refusal(NOT_A_GPU))])
    rehearse_optimizer(cfg, device)
    cores = len(os.sched_getaffinity(0))
    if cfg.threads and cfg.threads > cores:
        log.warning(
            "threads=%d on a machine with %d cores: the threads take turns and training slows down; leave threads=null", cfg.threads, cores
        )


SCHEMAS = {"": TrainSchema, "data": DataSchema, "wandb": WandbSchema}  # nodes whose keys are fixed; model, optim, sched: their classes'


def settings(schemas: dict[str, type] = SCHEMAS) -> list[tuple[str, Any]]:
    """(dotted key, its schema field) for every key the `schemas` hold (a run's, unless told evaluate.py's)."""
    return [
        (f"{node}.{f.name}" if node else f.name, f)
        for node, schema in schemas.items()
        for f in fields(schema)
        if f.metadata  # a setting(); model, optim, sched, data and wandb are nodes, not settings
    ]


def refuse_by_own_rules(cfg: DictConfig, schemas: dict[str, type]) -> None:
    """Each key's own rule (its home: setting() in the schema): the first it breaks is refused as `key=value: fix`."""
    for key, schema_field in settings(schemas):
        rule = schema_field.metadata["rule"]
        if rule and not rule(value := OmegaConf.select(cfg, key)):
            raise UserError(f"{key}={_shown(value)}: {schema_field.metadata['fix']}")


def _shown(value: Any) -> Any:
    return OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value


def odd_values(cfg: DictConfig, schemas: dict[str, type] = SCHEMAS, script: str = "train.py") -> list[tuple[str, Any, str]]:
    """(key, value, why) for each key no schema has (`+epoch=3` would train and ignore it) and each number that is not
    finite (`optim.lr=inf` would train on infinities). Hydra's own `hydra` node is not the run's. `schemas`: a run's, unless
    told evaluate.py's (`script`)."""
    config = {k: v for k, v in OmegaConf.to_container(cfg, resolve=False).items() if k != "hydra"}
    odd = []
    for node, schema in schemas.items():
        keys = config.get(node, {}) if node else config
        prefix = f"{node}." if node else ""
        known = {f.name for f in fields(schema)}
        odd += [
            (
                f"{prefix}{key}",
                keys[key],
                f"the config has no key {prefix}{key} (a typo?): drop it; `python {script} --cfg job` lists every key",
            )
            for key in keys
            if key not in known
        ]
    for key, value in flatten(config).items():
        numbers = value if isinstance(value, list) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in numbers):
            odd.append((key, value, "use finite numbers"))
    return odd


def _optimizer_rules(optim: DictConfig) -> list[tuple[bool, str]]:
    """The optimizer's keys, each where the chosen optimizer has it (sgd's lr, momentum, nesterov, weight_decay; muon's filter_*)."""
    return [
        (optim.get("lr", 1) > 0, f"optim.lr={optim.get('lr')}: the learning rate must be positive"),
        (optim.get("momentum", 0) >= 0, f"optim.momentum={optim.get('momentum')}: use 0 (none) or a positive value such as 0.9"),
        (optim.get("weight_decay", 0) >= 0, f"optim.weight_decay={optim.get('weight_decay')}: must not be negative"),
        (optim.get("filter_lr", 1) > 0, f"optim.filter_lr={optim.get('filter_lr')}: Muon's step size must be positive"),
        (
            optim.get("filter_momentum", 0) >= 0,
            f"optim.filter_momentum={optim.get('filter_momentum')}: use 0 or a positive value such as 0.6",
        ),
        (optim.get("ns_steps", 1) >= 1, f"optim.ns_steps={optim.get('ns_steps')}: use 1 or more Newton-Schulz rounds (3 is enough)"),
        (
            not (optim.get("nesterov") and optim.get("momentum", 1) <= 0),
            "optim.nesterov=true needs momentum: set optim.momentum (0.9, say) or optim.nesterov=false",
        ),
    ]


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


def _schedule_rules(sched: DictConfig) -> list[tuple[bool, str]]:
    """The schedules' fractions of training (cifar/core/schedules.py): each within the run it describes."""
    rules = []
    if "milestones" in sched:
        rules.append(
            (all(0 < m <= 1 for m in sched.milestones), f"sched.milestones={list(sched.milestones)}: fractions of training in (0, 1]")
        )
    if "gamma" in sched:
        rules.append((sched.gamma > 0, f"sched.gamma={sched.gamma}: the lr multiplier must be positive (0.1 is the usual)"))
    if "warmup" in sched:
        rules.append((0 <= sched.warmup < 1, f"sched.warmup={sched.warmup}: a fraction of training in [0, 1)"))
    if "peak_at" in sched:
        rules.append((0 <= sched.peak_at < 1, f"sched.peak_at={sched.peak_at}: a fraction of training in [0, 1)"))
    for key in ("start", "final"):
        if key in sched:
            rules.append((sched[key] >= 0, f"sched.{key}={sched[key]}: a fraction of optim.lr, 0 or more"))
    return rules


@dataclass
class EvaluateDataSchema:
    """Where the test images are read from: the user's alone (a checkpoint never says, cifar/run/checkpoint.py)."""

    root: str = setting()
    format: str = setting(one_of(*DATA_FORMATS), "use auto, torchvision or folder")
    download: bool = setting()
    cache_dir: str | None = setting()


@dataclass
class EvaluateWandbSchema:
    mode: str = setting(one_of(*WANDB_MODES), "use online, offline or disabled")
    project: str | None = setting()


@dataclass
class EvaluateSchema:
    """evaluate.py's keys (conf/evaluate.yaml holds their values and comments), registered as `evaluate_schema`: Hydra
    refuses `top=abc` or `top=3.5` as it composes, before anything is written, as it does `epochs=ten` for a run."""

    ckpt: str = setting()
    baseline: str | None = setting()
    device: str = setting()  # checked against the machine in check_evaluate()
    amp: Any = setting(one_of(None, True, False, "auto"), "use null (as the checkpoint was tested), auto, true or false")
    tta: Any = setting(one_of(None, False, True, "none", *TTA_MODES), "use false, true (= flip) or flip_translate")
    images: str | None = setting()
    top: int = setting(lambda v: 1 <= v <= 10, "list 1 to 10 classes per image")
    min_confidence: float = setting(lambda v: 0 <= v <= 1, "a probability in [0, 1] (0: every image gets a class)")
    samples: int = setting(
        lambda v: 0 <= v <= WANDB_MAX_IMAGES, f"use 0 (no predictions picture) to {WANDB_MAX_IMAGES} test images in the predictions picture"
    )
    sample_seed: int | None = setting(sample_seed_ok, SAMPLE_SEED_RULE)
    batch_size: int = setting(at_least(1), "use 1 or more")
    output_dir: str = setting()
    plugins: list[str] = setting()
    wandb: EvaluateWandbSchema = field(default_factory=EvaluateWandbSchema)
    data: EvaluateDataSchema = field(default_factory=EvaluateDataSchema)


EVALUATE_SCHEMAS = {"": EvaluateSchema, "data": EvaluateDataSchema, "wandb": EvaluateWandbSchema}


def check_evaluate(cfg: DictConfig) -> None:
    """evaluate.py's config (conf/evaluate.yaml): what Hydra's types cannot say."""
    if OmegaConf.is_missing(cfg, "ckpt") or not cfg.ckpt:
        raise UserError("no checkpoint given: name the one to evaluate, e.g. python evaluate.py ckpt=outputs/<date>/<time>/ckpt.pt")
    if odd := odd_values(cfg, EVALUATE_SCHEMAS, "evaluate.py"):
        key, value, why = odd[0]
        raise UserError(f"{key}={_shown(value)}: {why}")
    refuse_by_own_rules(cfg, EVALUATE_SCHEMAS)
    pick_device(cfg.device)


def unused_evaluate_settings(cfg: DictConfig, given: set[str]) -> list[str]:
    """A line for each option `given` on evaluate.py's command line that this evaluation will not read: legal (the README
    has offline users add data.root to every command), so warnings, and the evaluation goes on."""
    test_set_only = sorted(k for k in given if k in ("baseline", "samples", "sample_seed") or k.startswith("data."))
    lines = []
    if cfg.images:  # your own images: no test set is read, so nothing about it applies
        lines += [
            f"{key}={OmegaConf.select(cfg, key)} has no effect: it is for the test set, and images= classifies your images"
            for key in test_set_only
        ]
    if cfg.wandb.mode == "disabled" and "wandb.project" in given:
        lines.append(f"wandb.project={cfg.wandb.project} has no effect: W&B is off here (wandb.mode=disabled; offline or online records)")
    for key in ("top", "min_confidence"):
        if not cfg.images and key in given:
            lines.append(f"{key}={cfg[key]} has no effect: it is for your own images (images=...); the test set gets per-class accuracy")
    return lines


def task_overrides(lines: list[str] | None = None) -> list[Override]:
    """Overrides as Hydra parses them: `lines`, or this job's from the command line (a sweep job's: its own values); none
    outside `@hydra.main` (tests, the bench)."""
    if lines is None:
        lines = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    return OverridesParser.create().parse_overrides(lines)


def given_keys(lines: list[str] | None = None) -> set[str]:
    """The keys set on this process's command line (`optim.lr=0.01` -> `optim.lr`; `model=vgg16` -> `model`): what the user
    asked for, as against what the config's defaults and experiments set. `lines`: Hydra's `hydra.overrides.task`."""
    return {o.key_or_group.lstrip("+~") for o in task_overrides(lines)}


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


# Settings that say where and how a run is carried out or recorded, never what it trains (setting(bookkeeping=True)
# in the schemas above, and the groups that only choose those): the one list that run names (Hydra's override_dirname,
# through `${bookkeeping_keys:}` in conf/config.yaml), resume and sweep continuation (these may differ) and the
# report's "what differs" columns all read. Every other key defines the experiment.
BOOKKEEPING_KEYS = ("experiment", "logger", *(key for key, f in settings() if f.metadata["bookkeeping"]))
# Keys added since runs were first written, with the value a run written before then trained with (setting(before=...)):
# what cifar/run/checkpoint.py's as_written_today fills into a stored config.
ADDED_SETTINGS = {key: f.metadata["before"] for key, f in settings() if f.metadata["before"] is not ORIGINAL}
SCHEMA_FIELDS = dict(settings())  # dotted key -> its schema field: a stored config's values are held to the same rules


# This checkout's conf/ (the package is installed editable, beside it): what tools outside a run compose.
CONF = Path(__file__).resolve().parents[2] / "conf"


def compose_config(overrides: list[str] | tuple[str, ...] = (), config_name: str = "config") -> DictConfig:
    """conf/<config_name>.yaml with `overrides`, composed as `@hydra.main` would, outside a run: the bench, cifar-study's
    rows and the tests. Hydra's errors (a key, group or value it cannot take) go up to the caller."""
    register()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
            return compose(config_name=config_name, overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()


def register() -> None:
    """What conf/ needs from the code before Hydra composes it: the schemas (`train_schema`, `evaluate_schema`) and the resolvers `${pid:}` (two
    runs started in the same second get folders of their own) and `${bookkeeping_keys:}`. Called by the entry points, the
    tools that compose configs and the tests; importing a module registers nothing."""
    ConfigStore.instance().store(name="train_schema", node=TrainSchema)
    ConfigStore.instance().store(name="evaluate_schema", node=EvaluateSchema)
    OmegaConf.register_new_resolver("pid", os.getpid, use_cache=True, replace=True)
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
    keep_epochs = with_epochs or flat.get("sched._target_") != CONSTANT_LR  # a record from elsewhere may lack it
    return {k: v for k, v in flat.items() if not is_bookkeeping(k) and (k != "epochs" or keep_epochs)}


def is_bookkeeping(key: str) -> bool:
    """A dotted key that says how a run is recorded, never what it trains: one of BOOKKEEPING_KEYS or a key below one
    (`metrics.top3.top_k`)."""
    return any(key == b or key.startswith(b + ".") for b in BOOKKEEPING_KEYS)


def differing_settings(saved: dict, current: dict, with_epochs: bool = False) -> str:
    """`key: then vs now` for each experiment setting that differs ("" when none does)."""
    saved, current = experiment_settings(saved, with_epochs), experiment_settings(current, with_epochs)
    keys = sorted(saved.keys() | current.keys())
    return "; ".join(f"{k}: {saved.get(k)} then vs {current.get(k)} now" for k in keys if saved.get(k) != current.get(k))


def check_writable(folder: Path, instead: str = "run from a writable folder or set hydra.run.dir=/writable/path") -> None:
    """Fail at start, not after the first epoch, when the run (or a tool: `instead` says what the user can do) could not
    write its files."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as e:
        raise UserError(f"cannot write to the output folder {folder} ({e.strerror or e}): {instead}") from None
