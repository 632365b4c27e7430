"""evaluate.py's config: its schema (conf/evaluate.yaml holds the values and comments), what Hydra's types cannot say
(check_evaluate) and the options given that this evaluation will not read (unused_evaluate_settings)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cifar.config.schema import (
    DATA_FORMATS,
    SAMPLE_SEED_RULE,
    TTA_MODES,
    WANDB_MAX_IMAGES,
    WANDB_MODES,
    at_least,
    one_of,
    sample_seed_ok,
    setting,
)
from cifar.config.schema_checks import odd_values, refuse_by_own_rules, shown
from cifar.core.hardware import pick_device
from cifar.errors import UserError


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
        raise UserError(f"{key}={shown(value)}: {why}")
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
