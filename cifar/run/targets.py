"""What a config's `_target_` may name, checked before anything is imported or called: the one door through which a
config (composed from conf/, or read back from a checkpoint, last.pt or summary.json) becomes code.

A checkpoint is data: `torch.load(weights_only=True)` keeps its pickle from running code, and this module keeps the
config inside it from doing so. It is the one place a config becomes an object, and it calls what `_target_` names
itself: Hydra's `instantiate` would also build a `_target_` nested anywhere in the arguments. A stored
`_target_: shutil.copyfile` is refused in one line, before its module is imported:

    model   a torch.nn.Module class of this package (cifar.*)
    optim   a torch.optim.Optimizer class of torch.optim or of this package
    sched   a function of cifar.core.schedules
    augment a class of this package whose objects are called on training batches (cifar.core.augment's protocol)
    loss    a loss module class of torch.nn (CrossEntropyLoss, ...) or a torch.nn.Module class of this package
    callback  a Callback class of this package (cifar/core/callbacks.py)
    metric  a class of torchmetrics or of this package following torchmetrics' Metric interface (update, compute, reset)

and, for every kind, what the user's plugins define (`plugins=[path/to/file.py]`, cifar/run/plugins.py): a module
imported as a plugin by this command, and the modules inside it. A stored `plugins` is never imported, so a stored
config naming a plugin's class is refused in one line that names the plugin to give (`refuse_unimported`).

A node names a public class or function (no `_helper`), may set no other underscore key than `_partial_` (which only
says what its kind is: a model is built whole, an optimizer and a schedule as partials the run completes), holds no
`_target_` below its own at any depth, names only arguments its class takes (a typo is one line, not a TypeError), gives
every argument the run does not supply (a metric is offered num_classes only where its class takes it by name), and gives each a value of the type the class declares for it (`lr: abc` is one
line). What only building and stepping can tell (`eps: -1`, a flag this device lacks) cifar/run/build.py's
`rehearse_optimizer` tries on a stand-in before the data is read.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from cifar.core.callbacks import Callback
from cifar.errors import UserError
from cifar.run import plugins


@dataclass(frozen=True)
class Rule:
    packages: tuple[str, ...]  # where a target may live: checked on the string before any import, and on what it names
    is_kind: Callable[[Any], bool]  # checked on what the path names, before it is called
    what: str  # how the rule reads in a refusal
    noun: str  # what one such object is called
    partial: bool  # built as a partial that the run completes (an optimizer with its parameters), or whole (a model)
    supplied: tuple[str, ...]  # the arguments the run gives, never the config: the rest without a default the config must give
    offered: tuple[str, ...] = ()  # the arguments the run gives to a class that takes one by name, and to no other

    def inside(self, module: str) -> bool:
        """Whether `module` is one this rule may build from: its packages, or a plugin this command imported."""
        return any(module == p or module.startswith(p + ".") for p in self.packages) or plugins.from_plugin(module)

    def admits(self, obj: Any) -> bool:
        return self.inside(getattr(obj, "__module__", None) or "") and self.is_kind(obj)


RULES = {
    "model": Rule(
        ("cifar",),
        lambda o: inspect.isclass(o) and issubclass(o, nn.Module),
        "a torch.nn.Module class of this project (cifar.*)",
        "a model",
        partial=False,
        supplied=("num_classes",),
    ),
    "optim": Rule(
        ("torch.optim", "cifar"),
        lambda o: inspect.isclass(o) and issubclass(o, torch.optim.Optimizer),
        "a torch.optim.Optimizer class of torch.optim or of this project",
        "an optimizer",
        partial=True,
        supplied=("params",),
    ),
    "sched": Rule(
        ("cifar.core.schedules",),
        inspect.isfunction,
        "a schedule function of cifar.core.schedules",
        "a schedule",
        partial=True,
        supplied=("optimizer", "total_steps"),
    ),
    "augment": Rule(
        ("cifar",),
        lambda o: inspect.isclass(o) and any("__call__" in vars(k) for k in o.__mro__ if k is not object),
        "a transform class of this project (cifar.*, called as cifar/core/augment.py says)",
        "a transform",
        partial=False,
        supplied=(),
        offered=("num_classes", "mean", "std"),  # to the transforms that take them: Mix its labels' classes, Crop its black
    ),
    "loss": Rule(
        ("torch.nn", "cifar"),
        lambda o: inspect.isclass(o) and issubclass(o, nn.Module) and (is_torch_loss(o) or not o.__module__.startswith("torch.")),
        "a loss class of torch.nn (torch.nn.CrossEntropyLoss, ...) or a torch.nn.Module class of this project",
        "a loss",
        partial=False,
        supplied=(),
    ),
    "callback": Rule(
        ("cifar",),
        lambda o: inspect.isclass(o) and issubclass(o, Callback),
        "a Callback class of this project (cifar/core/callbacks.py)",
        "a callback",
        partial=False,
        supplied=(),
    ),
    "metric": Rule(
        ("torchmetrics", "cifar"),
        lambda o: inspect.isclass(o) and all(callable(getattr(o, m, None)) for m in METRIC_INTERFACE),
        "a metric class of torchmetrics or of this project, with torchmetrics' update(preds, target), compute() and reset()",
        "a metric",
        partial=False,
        supplied=(),
        offered=("num_classes",),  # MulticlassAccuracy takes it; BinaryAccuracy would pass it on to Metric, which refuses it
    ),
}
NODE_KINDS = ("model", "optim", "sched", "loss")  # the kinds a run config holds one node of, under the kind's own key
METRIC_INTERFACE = ("update", "compute", "reset")  # torchmetrics.Metric's: what the validation pass calls
ALLOWED_SPECIAL_KEYS = {"_target_", "_partial_"}


def is_torch_loss(cls: type) -> bool:
    """torch.nn's loss modules (all derive from its _Loss): a config may not make torch.nn.Linear the loss."""
    return issubclass(cls, nn.modules.loss._Loss)


def build(node: DictConfig | dict, kind: str, where: str | None = None, **given: Any) -> Any:
    """The object `node` describes (for an optimizer or a schedule, a partial the run completes), once the rules above admit it (`admit`), with the
    arguments the run supplies (`given`: a model's num_classes, the dataset's) over the config's. Called directly rather
    than through Hydra's `instantiate`, which would build any `_target_` nested in the arguments. `where`: the node's key
    in the config, as refusals name it (`metrics.top3`; the kind's name by default)."""
    where = where or kind
    target, params = admit(node, kind, where)
    given = {key: value for key, value in given.items() if key not in RULES[kind].offered or key in named_arguments(target)}
    for key, value in given.items():  # a config that names one itself (one stored before the run supplied it) must agree
        if params.get(key, value) != value:
            raise UserError(f"{where}.{key}={params[key]} but this run's is {value} (it follows the data): drop {where}.{key}")
    params |= given
    params.pop("_partial_", None)
    return functools.partial(target, **params) if RULES[kind].partial else target(**params)


def build_each(nodes: DictConfig | dict | None, kind: str, where: str | None = None, **given: Any) -> dict[str, Any]:
    """The objects a mapping of name -> node describes (data.augment, metrics, callbacks), built by `build` in the
    mapping's order; an entry set to null is left out (`data.augment.flip=null` turns that one off). `where`: the
    mapping's key in the config (`metrics`), so that a refusal names the entry (`metrics.top3._target_`)."""
    where = where or kind
    if nodes is None:
        return {}
    plain = OmegaConf.to_container(nodes, resolve=True) if isinstance(nodes, DictConfig) else nodes
    if not isinstance(plain, dict):
        raise UserError(f"{where}={plain!r}: a mapping of name -> {{_target_: ..., its arguments}}, or null for none")
    return {name: build(node, kind, f"{where}.{name}", **given) for name, node in plain.items() if node is not None}


def admit(node: DictConfig | dict, kind: str, where: str | None = None) -> tuple[Any, dict]:
    """What `node`'s `_target_` names and its arguments as a plain dict, if the rules above admit them; one UserError
    naming the key if they do not. Imports only what the rules allow and calls nothing: cifar/run/checks.py check() runs it on the
    model, optimizer and schedule before anything is written. `where`: the node's key, as a refusal names it."""
    where = where or kind
    params = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
    if not isinstance(params, dict):
        raise UserError(f"{where}={params!r}: a {kind} config is a mapping with a _target_ and its arguments")
    params = dict(params)
    target = locate(params.get("_target_"), kind, where)
    rule = RULES[kind]
    if params.get("_partial_", rule.partial) is not rule.partial:  # the kind decides it, never the config
        how = "is built later, given the run's " + " and ".join(rule.supplied) if rule.partial else "is built whole"
        raise UserError(f"{where}._partial_={str(params['_partial_']).lower()}: {rule.noun} {how}: drop {where}._partial_")
    if extra := sorted(k for k in params if k.startswith("_") and k.endswith("_") and k not in ALLOWED_SPECIAL_KEYS):
        raise UserError(f"{where}.{extra[0]}: a {kind} config may set only _target_, _partial_ and its class's arguments: drop it")
    if nested := _nested_target(params):
        raise UserError(f"{where}.{nested}._target_: a {kind}'s arguments are plain values, never other objects to build: drop it")
    check_supplied(target, params["_target_"], kind, where)
    check_arguments(target, params, kind, where)
    del params["_target_"]
    return target, params


def locate(target: Any, kind: str, where: str | None = None) -> Any:
    """The class or function `target` names, if the rules for `kind` admit it; its module is imported only if they may."""
    rule, where = RULES[kind], where or kind
    if not isinstance(target, str) or not rule.inside(target.rpartition(".")[0]):
        raise UserError(
            f"{where}._target_={target}: a config may build only {rule.what}, or a plugin's: refused, nothing was imported or "
            "called; to build your own, import its file with plugins=[path/to/file.py]"
        )
    module, _, name = target.rpartition(".")
    if name.startswith("_"):  # a module's private helper (schedules._warmup) is none of the things a config may build
        raise UserError(
            f"{where}._target_={target}: a private helper of its module, not {rule.what}: refused, nothing was imported or called"
        )
    try:
        obj = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        plugin = f"its plugin {module}" if plugins.from_plugin(module) else "this version of the project"
        raise UserError(f"{where}._target_={target}: {plugin} has no such class or function") from None
    if not rule.admits(obj):
        raise UserError(f"{where}._target_={target}: a config may build only {rule.what}: refused, nothing was called")
    return obj


def refuse_unimported(stored: dict, listed: Any, path: Any, action: str) -> None:
    """The part of a stored config (a checkpoint's, last.pt's) that will be built, if its run listed plugins (`listed`,
    which are never imported from a file) and a `_target_` in it names a module that no rule's packages hold and no
    plugin of this command is: one line naming the target and those plugins, for the user to give (`action`: what they
    then do, `evaluate it`). Read as text, so nothing is imported. A run that listed none had only the project's code:
    its targets go through `admit`, which refuses another module's as any config's."""
    if not (isinstance(listed, list) and listed and all(isinstance(p, str) for p in listed)):
        return
    for key, target in stored_targets(stored):
        module = target.rpartition(".")[0] if isinstance(target, str) else ""
        if not any(rule.inside(module) for rule in RULES.values()):
            raise UserError(
                f"{path}'s {key} is {shown(target)}, from a plugin (its run listed plugins=[{','.join(listed)}]): give it on the "
                f"command line, plugins=[path/to/file.py], to {action}; nothing was imported"
            )


def stored_targets(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(the dotted key of its node, the `_target_`) for every `_target_` in a stored config, at any depth."""
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    found = []
    for key, child in children:
        if key == "_target_":
            found.append((prefix.rstrip(".") or "config", child))
        else:
            found += stored_targets(child, f"{prefix}{key}.")
    return found


# What the run gives each kind's object, as a refusal names it: a target that cannot take one is refused before the run.
SUPPLIED = {
    "num_classes": "the dataset's class count",
    "params": "the model's parameters",
    "optimizer": "the optimizer",
    "total_steps": "the run's count of steps",
}


def check_supplied(target: Any, name: str, kind: str, where: str) -> None:
    """`target` takes each argument the run supplies to its kind (a model its num_classes), by name or through **kwargs:
    one line now rather than a TypeError once the data is read."""
    signature = inspect.signature(target)
    takes_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    named = {n for n, p in signature.parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    if not takes_any and (missing := [arg for arg in RULES[kind].supplied if arg not in named]):
        place = "its __init__" if inspect.isclass(target) else "its arguments"
        raise UserError(
            f"{where}._target_={name}: {RULES[kind].noun} takes {missing[0]} from the run ({SUPPLIED.get(missing[0], 'the run gives it')}): "
            f"add a {missing[0]} argument to {place}"
        )


def check_arguments(target: Any, params: dict, kind: str, where: str | None = None) -> None:
    """Every key of `params` names an argument of `target` (one that takes **kwargs takes any), each argument the run does
    not supply and `target` has no default for is given, and each value is of the type `target` declares for it."""
    signature, where = inspect.signature(target), where or kind
    named = named_arguments(target)
    if not any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
        if unknown := sorted(k for k in params if k not in ALLOWED_SPECIAL_KEYS and k not in named):
            raise UserError(
                f"{where}.{unknown[0]}: {target.__name__} takes no argument {unknown[0]!r} (it takes {', '.join(named)}): "
                f"check the spelling, or drop it (~{where}.{unknown[0]})"
            )
    hints = declared_types(target)
    for name, p in named.items():
        if name in params or name in RULES[kind].supplied or name in RULES[kind].offered:
            continue
        if p.default is p.empty:
            wanted = f" ({described(hints[name])})" if name in hints else ""
            raise UserError(f"{where}.{name} is missing: {target.__name__} needs it{wanted}: give it, e.g. +{where}.{name}=...")
    for name, value in params.items():
        if name in hints and not fits(value, hints[name]):
            default = named[name].default
            was = "" if default is inspect.Parameter.empty else f" (its default: {shown(default)})"
            raise UserError(f"{where}.{name}={shown(value)}: {target.__name__}'s {name} is {described(hints[name])}{was}")


def named_arguments(target: Any) -> dict[str, inspect.Parameter]:
    """The arguments `target` takes by name (not those a **kwargs would swallow and pass on)."""
    parameters = inspect.signature(target).parameters
    return {name: p for name, p in parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def shown(value: Any) -> str:
    """A config value as YAML writes it: `true`, `null`, `[0.9, 0.999]`; a string as it is."""
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value)
    return value if isinstance(value, str) else json.dumps(value, default=str)


def declared_types(target: Any) -> dict[str, Any]:
    """The type hints of `target`'s arguments (a class's `__init__`'s); none where they cannot be resolved."""
    try:
        return typing.get_type_hints(target.__init__ if inspect.isclass(target) else target)
    except Exception:  # a hint naming what its module imports only for type checkers: no types, and the trial step judges
        return {}


def fits(value: Any, hint: Any) -> bool:
    """Whether a config value (YAML's: a number, a bool, a string, null or a list) can be what `hint` says. A hint this
    does not read admits anything: building and stepping the object on a stand-in judges those (build.rehearse_optimizer)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(fits(value, a) for a in args)
    if origin in (tuple, list) and args:
        if not isinstance(value, (list, tuple)):
            return False
        hints = args if origin is tuple and args[-1] is not Ellipsis else (args[0],) * len(value)  # fixed length, or any
        return len(value) == len(hints) and all(fits(v, h) for v, h in zip(value, hints, strict=True))
    if hint in (int, float):  # YAML's 1 is a float's value too; true is no number
        return isinstance(value, (int, float) if hint is float else int) and not isinstance(value, bool)
    if hint in (bool, str, type(None)):
        return isinstance(value, hint)
    return hint is not torch.Tensor  # a config holds no tensor (lr: float | Tensor takes a float)


def described(hint: Any) -> str:
    """`hint` as a refusal says it: `a number`, `a list of 2 values, each a number`, `true or false or null`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if set(args) <= {torch.Tensor, type(None)}:  # a class weight: only code can give one
            return "a tensor, which a config cannot give (null: none)"
        return " or ".join(dict.fromkeys(d for a in args if (d := described(a))))
    if origin in (tuple, list) and args:
        each = described(args[0])
        if origin is tuple and args[-1] is not Ellipsis:
            kinds = {described(a) for a in args}
            return f"a list of {len(args)} values" + (f", each {each}" if len(kinds) == 1 else "")
        return f"a list, each value {each}"
    names = {int: "a whole number", float: "a number", bool: "true or false", str: "a string", type(None): "null", torch.Tensor: ""}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def _nested_target(value: Any, prefix: str = "") -> str | None:
    """The dotted key of the first `_target_` below the top of `value`, at any depth of mappings and lists, if any."""
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) else ()
    for key, child in children:
        if isinstance(child, dict) and "_target_" in child:
            return f"{prefix}{key}"
        if found := _nested_target(child, f"{prefix}{key}."):
            return found
    return None
