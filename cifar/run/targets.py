"""What a config's `_target_` may name, checked before anything is imported or called: the one door through which a
config (composed from conf/, or read back from a checkpoint, last.pt or summary.json) becomes code.

A checkpoint is data: `torch.load(weights_only=True)` keeps its pickle from running code, and this module keeps the
config inside it from doing so. It is the one place a config becomes an object, and it calls what `_target_` names
itself: Hydra's `instantiate` would also build a `_target_` nested anywhere in the arguments. A stored
`_target_: shutil.copyfile` is refused in one line, before its module is imported:

    model   a torch.nn.Module class of this package (cifar.*)
    optim   a torch.optim.Optimizer class of torch.optim or of this package
    sched   a function of cifar.core.schedules

A node may set no other underscore key than `_partial_` (a model not even that), hold no `_target_` below its own at
any depth, and name only arguments that its class takes (a typo is one line, not a TypeError).
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from cifar.errors import UserError


@dataclass(frozen=True)
class Rule:
    packages: tuple[str, ...]  # where a target may live: checked on the string before any import, and on what it names
    is_kind: Callable[[Any], bool]  # checked on what the path names, before it is called
    what: str  # how the rule reads in a refusal

    def inside(self, module: str) -> bool:
        return any(module == p or module.startswith(p + ".") for p in self.packages)

    def admits(self, obj: Any) -> bool:
        return self.inside(getattr(obj, "__module__", None) or "") and self.is_kind(obj)


RULES = {
    "model": Rule(
        ("cifar",), lambda o: inspect.isclass(o) and issubclass(o, nn.Module), "a torch.nn.Module class of this project (cifar.*)"
    ),
    "optim": Rule(
        ("torch.optim", "cifar"),
        lambda o: inspect.isclass(o) and issubclass(o, torch.optim.Optimizer),
        "a torch.optim.Optimizer class of torch.optim or of this project",
    ),
    "sched": Rule(("cifar.core.schedules",), inspect.isfunction, "a schedule function of cifar.core.schedules"),
}
ALLOWED_SPECIAL_KEYS = {"_target_", "_partial_"}


def build(node: DictConfig | dict, kind: str, **given: Any) -> Any:
    """The object `node` describes (a partial with `_partial_: true`), once the rules above admit it (`admit`), with the
    arguments the run supplies (`given`: a model's num_classes, the dataset's) over the config's. Called directly rather
    than through Hydra's `instantiate`, which would build any `_target_` nested in the arguments."""
    target, params = admit(node, kind)
    for key, value in given.items():  # a config that names one itself (one stored before the run supplied it) must agree
        if params.get(key, value) != value:
            raise UserError(f"{kind}.{key}={params[key]} but this run's is {value} (it follows the data): drop {kind}.{key}")
    params |= given
    partial = params.pop("_partial_", False)
    return functools.partial(target, **params) if partial else target(**params)


def admit(node: DictConfig | dict, kind: str) -> tuple[Any, dict]:
    """What `node`'s `_target_` names and its arguments as a plain dict, if the rules above admit them; one UserError
    naming the key if they do not. Imports only what the rules allow and calls nothing: config.check runs it on the
    model, optimizer and schedule before anything is written."""
    params = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
    if not isinstance(params, dict):
        raise UserError(f"{kind}={params!r}: a {kind} config is a mapping with a _target_ and its arguments")
    params = dict(params)
    target = locate(params.get("_target_"), kind)
    if kind == "model" and params.get("_partial_"):
        raise UserError(f"{kind}._partial_: a model is built whole: drop it")
    if extra := sorted(k for k in params if k.startswith("_") and k.endswith("_") and k not in ALLOWED_SPECIAL_KEYS):
        raise UserError(f"{kind}.{extra[0]}: a {kind} config may set only _target_, _partial_ and its class's arguments: drop it")
    if nested := _nested_target(params):
        raise UserError(f"{kind}.{nested}._target_: a {kind}'s arguments are plain values, never other objects to build: drop it")
    check_arguments(target, params, kind)
    del params["_target_"]
    return target, params


def locate(target: Any, kind: str) -> Any:
    """The class or function `target` names, if the rules for `kind` admit it; its module is imported only if they may."""
    rule = RULES[kind]
    if not isinstance(target, str) or not rule.inside(target.rpartition(".")[0]):
        raise UserError(f"{kind}._target_={target}: a config may build only {rule.what}: refused, nothing was imported or called")
    module, _, name = target.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        raise UserError(f"{kind}._target_={target}: this version of the project has no such class or function") from None
    if not rule.admits(obj):
        raise UserError(f"{kind}._target_={target}: a config may build only {rule.what}: refused, nothing was called")
    return obj


def check_arguments(target: Any, params: dict, kind: str) -> None:
    """Every key of `params` names an argument of `target`; one that takes **kwargs takes any."""
    signature = inspect.signature(target)
    if any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
        return
    takes = [name for name, p in signature.parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if unknown := sorted(k for k in params if k not in ALLOWED_SPECIAL_KEYS and k not in takes):
        raise UserError(
            f"{kind}.{unknown[0]}: {target.__name__} takes no argument {unknown[0]!r} (it takes {', '.join(takes)}): "
            f"check the spelling, or drop +{kind}.{unknown[0]}"
        )


def _nested_target(value: Any, prefix: str = "") -> str | None:
    """The dotted key of the first `_target_` below the top of `value`, at any depth of mappings and lists, if any."""
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) else ()
    for key, child in children:
        if isinstance(child, dict) and "_target_" in child:
            return f"{prefix}{key}"
        if found := _nested_target(child, f"{prefix}{key}."):
            return found
    return None
