"""The keys runs had before they moved: the augmentation flags before data.augment (data.flip, data.alternate_flip,
data.crop_pad, data.crop_reflect, mixup_alpha, cutmix_alpha) and label_smoothing before the loss was a config group
(loss.label_smoothing). A stored config holding them is read as today's (`with_todays_keys`, from as_written_today in
cifar/config/stored.py), so an old run resumes, continues a sweep and compares as one of today's configs that trains
the same; on the command line each is one line saying today's form (`refuse_old_keys`). The one place that knows them.
"""

from __future__ import annotations

from typing import Any

from cifar.errors import UserError

OLD_DATA_KEYS = ("flip", "alternate_flip", "crop_pad", "crop_reflect")
OLD_TOP_KEYS = ("mixup_alpha", "cutmix_alpha")
CROSS_ENTROPY = "torch.nn.CrossEntropyLoss"  # the loss every run trained with before conf/loss/


def crop(pad: Any, reflect: Any = False) -> dict[str, Any]:
    return {"_target_": "cifar.core.augment.Crop", "pad": pad, "reflect": reflect}


def flip(alternate: Any = False) -> dict[str, Any]:
    return {"_target_": "cifar.core.augment.Flip", "alternate": alternate}


def mix(mixup_alpha: Any = 0.0, cutmix_alpha: Any = 0.0) -> dict[str, Any]:
    return {"_target_": "cifar.core.augment.Mix", "mixup_alpha": mixup_alpha, "cutmix_alpha": cutmix_alpha}


def with_todays_keys(config: dict[str, Any]) -> dict[str, Any]:
    """A stored run config (a plain dict) with every key that has moved since where it lives now."""
    return with_loss_node(with_augment_entries(config))


def with_loss_node(config: dict[str, Any]) -> dict[str, Any]:
    """`config` with its loss as today's holds it: a run written before the loss was a config group trained with cross
    entropy and its top-level `label_smoothing` (0 where even that was absent), now `loss.label_smoothing`."""
    if "loss" in config:
        return config
    today = {key: value for key, value in config.items() if key != "label_smoothing"}
    today["loss"] = {"_target_": CROSS_ENTROPY, "label_smoothing": config.get("label_smoothing", 0.0)}
    return today


def with_augment_entries(config: dict[str, Any]) -> dict[str, Any]:
    """`config` (a stored run config, as a plain dict) with its old augmentation keys made data.augment's entries, in the
    order they applied (crop, flip, then the mixing), each written whole as conf/ writes it: fastnet94's old runs compare
    equal to today's. A config without them (today's, or one from before any augmentation: none) gets what it holds."""
    data = config.get("data")
    if not isinstance(data, dict) or "augment" in data:
        return config
    old = {key: data.pop(key) for key in OLD_DATA_KEYS if key in data}
    alphas = {key: config.pop(key) for key in OLD_TOP_KEYS if key in config}
    augment = {}
    if old.get("crop_pad"):
        augment["crop"] = crop(old["crop_pad"], bool(old.get("crop_reflect")))
    if old.get("flip"):
        augment["flip"] = flip(bool(old.get("alternate_flip")))
    if any(alphas.values()):
        augment["mix"] = mix(float(alphas.get("mixup_alpha", 0.0)), float(alphas.get("cutmix_alpha", 0.0)))
    data["augment"] = augment
    return config


def refuse_old_keys(overrides: list[str]) -> None:
    """One line for the first old key among the command line's `overrides` (`data.crop_pad=4`): today's form of it."""
    given = {}
    for override in overrides:
        key, sep, value = override.lstrip("+~").partition("=")
        given[key] = value if sep else None
    for key, value in given.items():
        if key == "label_smoothing":
            raise UserError(f"label_smoothing={value}: the loss is a config group now (conf/loss/): use loss.label_smoothing={value}")
        if (key.startswith("data.") and key.removeprefix("data.") in OLD_DATA_KEYS) or key in OLD_TOP_KEYS:
            raise UserError(f"{key} is gone: augmentations are data.augment's entries (conf/data/cifar10.yaml): {today(key, value, given)}")


def today(key: str, value: str | None, given: dict[str, str | None]) -> str:
    """What to write instead of `key=value`."""
    off = value is None or value.strip().lower() in ("0", "0.0", "false", "null")
    if key == "data.crop_pad":
        return "data.augment.crop=null" if off else f"++data.augment.crop='{shown(crop(value))}'"
    if key == "data.flip":
        return "data.augment.flip=null" if off else f"++data.augment.flip='{shown(flip())}'"
    if key in ("data.crop_reflect", "data.alternate_flip"):
        entry, argument = ("crop", "reflect") if key == "data.crop_reflect" else ("flip", "alternate")
        return f"data.augment.{entry}.{argument}={value} (with a {entry} entry, as experiment=fastnet94 has)"
    alphas = {name: given.get(name) or "0.0" for name in OLD_TOP_KEYS}
    return f"++data.augment.mix='{shown(mix(alphas['mixup_alpha'], alphas['cutmix_alpha']))}' (data.augment.mix=null: none)"


def shown(entry: dict[str, Any]) -> str:
    """An entry as Hydra's command line takes it: {_target_: cifar.core.augment.Crop, pad: 4, reflect: false}."""
    return "{" + ", ".join(f"{k}: {str(v).lower() if isinstance(v, bool) else v}" for k, v in entry.items()) + "}"
