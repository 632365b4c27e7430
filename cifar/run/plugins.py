"""`plugins=[...]`: the user's own Python files and modules, imported before the config is checked, so that a `_target_`
may name what they define (cifar/run/targets.py admits a plugin's modules for every kind).

An entry ending in `.py`, or holding a `/` or a leading `~`, is a file: imported under its stem as module name, its folder
added to sys.path (last), so that `_target_: my_models.TinyCNN` names it, its sibling files import, and a process that
unpickles what it defines (a joblib worker) finds it again. A relative path is taken from the folder the command was
started in. Any other entry is a module name, imported as Python imports it (`my_pkg.models`).

Only the command line and the configs composed from it name plugins: a `plugins` stored in a checkpoint, last.pt or
summary.json is a record of where a run's code came from, never imported. Each process that checks or builds a config
imports them (the Hydra callbacks, train() in a sweep's worker, evaluate()); importing them again is a no-op.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import sysconfig
import traceback
from collections.abc import Iterable
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_original_cwd

from cifar.errors import UserError, first_line

# The modules imported as plugins in this process (name -> the file or module name the user gave): what targets.py admits.
_imported: dict[str, str] = {}


def from_plugin(module: str) -> bool:
    """Whether `module` is a module imported as a plugin, or one inside it (`my_pkg.models.blocks` of `my_pkg.models`)."""
    return any(module == name or module.startswith(name + ".") for name in _imported)


def launched_in() -> Path:
    """The folder the command was started in: Hydra's original working directory inside a job, wherever it has moved."""
    return Path(get_original_cwd()) if HydraConfig.initialized() else Path.cwd()


def load(entries: Iterable[str] | None, start: Path | None = None) -> list[str]:
    """Import each plugin of `entries` (a path from `start`, the command's folder unless told, or a module name); the
    entries as a run records them, each file as its absolute path. One UserError for an entry that cannot be imported."""
    start = start or launched_in()
    return [load_file(entry, start) if is_file(entry) else load_module(entry) for entry in entries or ()]


def is_file(entry: str) -> bool:
    return entry.endswith(".py") or "/" in entry or entry.startswith("~")


def load_file(entry: str, start: Path) -> str:
    """The plugin file `entry` imported as the module of its stem, its folder on sys.path; its absolute path."""
    path = (start / Path(entry).expanduser()).resolve()
    if not path.is_file():
        raise UserError(f"plugins=[{entry}]: no such file ({path}): give the path of a Python file, or an importable module name")
    name = path.stem
    if not name.isidentifier():
        raise UserError(f"plugins=[{entry}]: {name!r} is no Python module name (its file's name): rename the file, e.g. my_models.py")
    if (held := sys.modules.get(name)) is not None and _same_file(getattr(held, "__file__", None), path):
        _imported[name] = str(path)  # imported already: by this process's first call, or as the sibling of another plugin
        return str(path)
    other = (getattr(held, "__file__", None) or "built in") if held is not None else _elsewhere(name, path)
    if held is not None or other:
        where = f" ({other})" if other else ""
        raise UserError(
            f"plugins=[{entry}]: its module name {name!r} is taken by another module{where}, which it would hide: rename the file"
        )
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.append(folder)  # after the installed packages: a sibling file (a wandb.py) never hides one of them
    return _imported_as(name, str(path), entry, path.parent)


def load_module(entry: str) -> str:
    """The plugin module `entry` imported by its name; the name."""
    if not all(part.isidentifier() for part in entry.split(".")):
        raise UserError(f"plugins=[{entry}]: neither a Python file (my_models.py) nor a module name (my_pkg.models)")
    return _imported_as(entry, entry, entry, None)


def _imported_as(name: str, recorded: str, entry: str, home: Path | None) -> str:
    """Import `name` and note it as a plugin; an exception its code raises is one line naming the plugin, the exception's
    first line and where in the user's code it was raised (home: the plugin file's folder, searched first)."""
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name and (name == e.name or name.startswith(e.name + ".")):  # the module itself, not one its code imports
            raise UserError(
                f"plugins=[{entry}]: no module of that name can be imported here: give its file's path, or install its package"
            ) from None
        raise _failed(name, entry, e, home) from None
    except Exception as e:
        raise _failed(name, entry, e, home) from None
    _imported[name] = recorded
    return recorded


def _failed(name: str, entry: str, error: Exception, home: Path | None) -> UserError:
    """The user's code failing as it is imported: which plugin, the exception's first line, and where it was raised."""
    for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[module]  # half-imported: a second try imports it whole, or fails the same way
    return UserError(f"plugins=[{entry}] failed to import: {type(error).__name__}: {first_line(error)} (at {_raised_at(error, home)})")


def _raised_at(error: BaseException, home: Path | None) -> str:
    """`file:line` where `error` was raised in the user's own code: the deepest frame in the plugin's folder, else the
    deepest outside Python's and installed packages' files, else the deepest; a syntax error's own line."""
    if isinstance(error, SyntaxError) and error.filename:
        return f"{error.filename}:{error.lineno}"
    frames = [f for f in traceback.extract_tb(error.__traceback__) if not f.filename.startswith("<")]
    libraries = tuple({sysconfig.get_path(key) for key in ("stdlib", "purelib", "platlib")})
    mine = [f for f in frames if home and Path(f.filename).is_relative_to(home)]
    users = [f for f in frames if not f.filename.startswith(libraries)]
    frame = (mine or users or frames or [None])[-1]
    return f"{frame.filename}:{frame.lineno}" if frame else "an unknown line"


def _elsewhere(name: str, path: Path) -> str | None:
    """The file of a module named `name` that Python would import instead of `path` (the standard library's, an installed
    package's, this project's), if any: found without importing it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    origin = spec.origin if spec else None
    return origin if spec and not _same_file(origin, path) else None


def _same_file(origin: str | None, path: Path) -> bool:
    return origin is not None and Path(origin).resolve() == path
