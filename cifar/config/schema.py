"""The run config's schema: every key's type, its own rule, whether it is bookkeeping, when it goes unused and what it
meant before it existed, each on one line (setting()).

Types are checked by Hydra when the config is composed (the dataclasses below are registered as `train_schema` by
cifar/config/compose.py and sit first in `conf/config.yaml`'s defaults), so `epochs=ten` fails before anything runs.
Each key's own rule is applied by cifar/config/schema_checks.py; the rules across keys, and facts about this machine,
by cifar/run/checks.py's check(cfg), the first thing `train()` does.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from omegaconf import MISSING, DictConfig

from cifar.core.data import CIFAR10, TORCHVISION_DATASETS

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
    loss: Any = MISSING  # likewise for the training loss (conf/loss/); a stored label_smoothing becomes it (cifar/config/old_keys.py)
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


SCHEMAS = {"": TrainSchema, "data": DataSchema, "wandb": WandbSchema}  # nodes whose keys are fixed; model, optim, sched: their classes'


def settings(schemas: dict[str, type] = SCHEMAS) -> list[tuple[str, Any]]:
    """(dotted key, its schema field) for every key the `schemas` hold (a run's, unless told evaluate.py's)."""
    return [
        (f"{node}.{f.name}" if node else f.name, f)
        for node, schema in schemas.items()
        for f in fields(schema)
        if f.metadata  # a setting(); model, optim, sched, data and wandb are nodes, not settings
    ]


# Settings that say where and how a run is carried out or recorded, never what it trains (setting(bookkeeping=True)
# in the schemas above, and the groups that only choose those): the one list that run names (Hydra's override_dirname,
# through `${bookkeeping_keys:}` in conf/config.yaml), resume and sweep continuation (these may differ) and the
# report's "what differs" columns all read. Every other key defines the experiment.
BOOKKEEPING_KEYS = ("experiment", "logger", *(key for key, f in settings() if f.metadata["bookkeeping"]))
# Keys added since runs were first written, with the value a run written before then trained with (setting(before=...)):
# what cifar/config/stored.py's as_written_today fills into a stored config.
ADDED_SETTINGS = {key: f.metadata["before"] for key, f in settings() if f.metadata["before"] is not ORIGINAL}
SCHEMA_FIELDS = dict(settings())  # dotted key -> its schema field: a stored config's values are held to the same rules


def is_bookkeeping(key: str) -> bool:
    """A dotted key that says how a run is recorded, never what it trains: one of BOOKKEEPING_KEYS or a key below one
    (`metrics.top3.top_k`)."""
    return any(key == b or key.startswith(b + ".") for b in BOOKKEEPING_KEYS)
