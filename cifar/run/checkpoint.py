"""Checkpoint files read back (`weights_only=True`; written whole by cifar/files.py); a run folder's other files are
cifar/records.py's to read.

A checkpoint holds the study's keys (`epoch`, `model_state_dict`, `optimizer_state_dict`,
`loss`) plus what is needed to rebuild and resume the run: the resolved config as a plain
dict, `val_acc`, the class names and, in `last.pt`, the training state.
"""

from __future__ import annotations

import collections
import math
import os
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch.overrides import TorchFunctionMode

from cifar.config.schema import SCHEMA_FIELDS
from cifar.config.stored import as_written_today
from cifar.errors import UserError, first_line
from cifar.records import NONE
from cifar.run.targets import build, refuse_unimported

REQUIRED_KEYS = ("epoch", "model_state_dict", "optimizer_state_dict", "loss", "config")


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint written by this project. `weights_only=True`: a file cannot run code."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a run's folder: give the file in it, {path / 'last.pt'} to resume or {path / 'ckpt.pt'} to evaluate")
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint file")
    if kind := not_a_checkpoint(path):
        raise UserError(f"{path}: not a checkpoint: it is {kind}: give a ckpt.pt or last.pt that train.py wrote")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for truncated, foreign or unsafe files
        why = UNSAFE if "Weights only load failed" in str(e) else first_line(e)  # never torch's advice to load it unsafely
        raise UserError(f"{path}: not a readable checkpoint ({why})") from None
    if not isinstance(ckpt, dict) or not all(k in ckpt for k in REQUIRED_KEYS):
        held = sorted(map(str, ckpt))[:8] if isinstance(ckpt, dict) else type(ckpt).__name__  # keys of any type
        raise UserError(f"{path}: not a checkpoint of this project (it holds {held})")
    if isinstance(ckpt.get("config"), dict):
        ckpt["config"] = as_written_today(ckpt["config"])
    return ckpt


UNSAFE = "it holds objects other than tensors, numbers, strings, lists and dicts, which are never loaded: they could run code"
# How files that are not checkpoints begin: a torch checkpoint is a zip archive (PK..) or, in torch's old format, a pickle.
MAGIC = {
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"GIF8": "a GIF image",
    b"%PDF": "a PDF file",
    b"RIFF": "a RIFF file (a WebP image?)",
}


def not_a_checkpoint(path: Path) -> str | None:
    """What `path` is by its first bytes, when that is not a checkpoint (None: it may be one)."""
    with open(path, "rb") as f:
        head = f.read(512)
    if head.startswith((b"PK\x03\x04", b"\x80")):
        return None
    if kind := next((kind for magic, kind in MAGIC.items() if head.startswith(magic)), None):
        return kind
    if not head:
        return "an empty file"
    try:
        head.decode()
        return "a text file"
    except UnicodeDecodeError:
        return None  # some other binary: torch says what it makes of it


# ---- what a file from elsewhere may decide where it is read back (evaluate.py, images=)
#
# A checkpoint is data. Its stored config may decide the model (its class and arguments, through cifar/run/targets.py's
# allow-list), how its inputs are prepared (the dataset's spec and normalisation, its memory format and precision) and
# the class names; each is checked here against the schema, and nothing in it is ever resolved. Where data is read from,
# cached or downloaded, and where W&B records anything, are the reader's choice alone: those keys are never read.
STORED_DECISIONS = {
    "channels_last": bool,
    "amp_dtype": str,
    "data.name": str,
    "data.torchvision": (str, NONE),
    "data.resize": bool,
    "data.mean": list,
    "data.std": list,
}
MAX_CLASS_NAME = 255  # a class is a folder of a folder copy: a file name's length at most


def stored_decisions(ckpt: dict, path: str | os.PathLike) -> DictConfig:
    """The parts of `ckpt`'s stored config that may decide anything (STORED_DECISIONS and the model), checked, as a config
    holding nothing else: no `${...}` in it (a run stores its config resolved, so one is text from elsewhere, and is
    refused rather than resolved: `${oc.env:...}` would read the reader's environment)."""
    stored = ckpt["config"]
    if not isinstance(stored, dict):
        raise UserError(f"{path}: its stored config is a {type(stored).__name__}, not a mapping: not a checkpoint train.py wrote")
    # A plugin's model: refused before anything is imported, naming the plugin its run listed, which only the user may give.
    refuse_unimported({"model": stored.get("model")}, stored.get("plugins"), path, "evaluate it")
    decided: dict[str, Any] = {"model": stored.get("model"), "data": {}}
    for key, types in STORED_DECISIONS.items():
        node, _, name = key.rpartition(".")
        holder = stored.get(node) if node else stored
        value = holder.get(name) if isinstance(holder, dict) else None
        if (
            not isinstance(value, types)
            or (types is not bool and isinstance(value, bool))
            or not (types is not list or all(map(is_number, value)))
        ):
            raise UserError(f"{path}: its stored {key} is {described(value)}, not a value train.py writes: the file was edited or damaged")
        rule = SCHEMA_FIELDS[key].metadata["rule"]
        if rule and not rule(value):
            raise UserError(f"{path}: its stored {key}={described(value)} is refused ({SCHEMA_FIELDS[key].metadata['fix']})")
        (decided["data"] if node else decided)[name] = value
    if found := interpolation(decided):
        raise UserError(
            f"{path}: its stored {found} is an interpolation (${{...}}), which is never resolved from a file: the file was edited"
        )
    try:
        return OmegaConf.create(decided)
    except OmegaConfBaseException as e:  # keys or values no config holds (a tuple key, a complex number): not train.py's
        raise UserError(f"{path}: its stored config holds {first_line(e)}: the file was edited or damaged") from None


def stored_classes(ckpt: dict, path: str | os.PathLike, default: tuple[str, ...]) -> list[str]:
    """The class names of a checkpoint's dataset, label by label (`default` for one written before they were kept), checked:
    2 or more distinct names, each printable on one line and usable as a class folder's name."""
    classes = ckpt.get("classes", list(default))
    if not isinstance(classes, (list, tuple)) or not all(isinstance(name, str) for name in classes):
        raise UserError(f"{path}: its class names are {described(classes)}, not a list of names: the file was edited or damaged")
    odd = next((name for name in classes if not _class_name_ok(name)), None)
    twice = next((name for name, count in collections.Counter(classes).items() if count > 1), None)
    refusals = [
        (len(classes) >= 2, f"it names {len(classes)} class(es); a classifier has 2 or more"),
        (twice is None, f"it names {twice!r} twice"),
        (odd is None, f"{odd!r} is not a class folder's name (empty, a control character, a '/', or over {MAX_CLASS_NAME} characters)"),
    ]
    if why := next((why for ok, why in refusals if not ok), None):
        raise UserError(f"{path}: its class names are refused: {why}")
    return list(classes)


def _class_name_ok(name: str) -> bool:
    return 0 < len(name) <= MAX_CLASS_NAME and name.isprintable() and "/" not in name and "\\" not in name and name not in (".", "..")


# Building a model on the meta device takes no memory for its tensors, but a stored depth of 500,000 would still take
# minutes of Python: each tensor of this project's models costs 4 to 12 torch calls to make and initialise, so a model
# that makes more than 32 a tensor the file holds is not the model of these weights.
TENSOR_OPS_PER_TENSOR = 32


class TensorBudget(TorchFunctionMode):
    """Counts the torch calls made inside it, and stops at `most`."""

    class Spent(Exception):
        pass

    def __init__(self, most: int):
        super().__init__()
        self.left = most

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.left -= 1
        if self.left < 0:
            raise TensorBudget.Spent
        return func(*args, **(kwargs or {}))


def weights_fit(model_config: DictConfig, state_dict: Any, num_classes: int, path: str | os.PathLike) -> None:
    """The model `model_config` describes, with `num_classes` outputs, has exactly the tensors `state_dict` holds, shape for
    shape. Checked on the meta device, where building allocates nothing: a stored width or class count far beyond the
    file's own tensors (the cost grows with its square) is refused before any memory is taken for it."""
    if not isinstance(state_dict, dict) or not all(isinstance(t, torch.Tensor) for t in state_dict.values()):
        raise UserError(f"{path}: its model_state_dict is not a mapping of tensors: the file was edited or damaged")
    try:
        # no_grad outside the budget: a budget spent inside a layer's own no_grad (its init) leaves that one unrestored,
        # and this one puts the caller's grad mode back
        with torch.device("meta"), torch.no_grad(), TensorBudget(TENSOR_OPS_PER_TENSOR * len(state_dict) + 256):
            shell = build(model_config, "model", num_classes=num_classes).state_dict()
    except TensorBudget.Spent:
        raise UserError(f"{path}: the model stored with it is far larger than its {len(state_dict)} tensors: the file was edited") from None
    except (UserError, TypeError, ValueError) as e:  # a class gone, one no file may name, arguments it does not take
        raise UserError(f"{path}: its model cannot be built here ({first_line(e)})") from None
    described = {key: tuple(t.shape) for key, t in shell.items()}
    held = {key: tuple(t.shape) for key, t in state_dict.items()}
    if described == held:
        return
    if missing := sorted(described.keys() - held.keys()):
        why = f"it has no {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
    elif extra := sorted(held.keys() - described.keys()):
        why = f"it holds {extra[0]}, which the model has not" + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")
    else:
        key = next(key for key in described if described[key] != held[key])
        why = f"{key} is {list(held[key])} in the file but {list(described[key])} in the model it describes with {num_classes} classes"
    raise UserError(f"{path}: its weights do not fit the model stored with it ({why})")


# ---- stored values in checks and messages


def interpolation(value: Any, key: str = "config") -> str | None:
    """The first `key: value` in `value` (a stored config, walked whole) whose text holds `${`, or None."""
    if isinstance(value, dict):
        return next((found for k, v in value.items() if (found := interpolation(v, f"{key}.{k}"))), None)
    if isinstance(value, list | tuple):
        return next((found for i, v in enumerate(value) if (found := interpolation(v, f"{key}[{i}]"))), None)
    return f"{key}: {value!r}" if isinstance(value, str) and "${" in value else None


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def described(value: Any) -> str:
    """A stored value in a message: a tensor by its shape and type, anything else as Python writes it, cut short."""
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)} ({str(value.dtype).removeprefix('torch.')})"
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."
