"""Files written whole or not at all: a temporary file renamed into place, Ctrl-C held off until the rename, and a failed
write (a full disk, a read-only folder) one line that names the file, with the old file intact. Used by every layer."""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from cifar.errors import UserError
from cifar.signals import held_until_written


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """`torch.save` so that `path` is always either the old complete file or the new complete one."""
    _atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path: str | os.PathLike) -> None:
    _atomic_write(path, lambda f: f.write(text.encode()))


def atomic_write_json(obj: Any, path: str | os.PathLike) -> None:
    """`obj` as JSON (`json_text`, indented), atomically: how every JSON file of the project is written."""
    atomic_write_text(json_text(obj, indent=2) + "\n", path)


def json_text(obj: Any, indent: int | None = None) -> str:
    """`obj` as strict JSON. Python's json writes a NaN or an infinity bare (`NaN`, `Infinity`), which is not JSON: other
    readers refuse the file, and Python's reads it back as a number. A figure that is not a finite number is written as
    null (no figure) at any depth; anything else that JSON cannot hold is a bug, and fails."""
    return json.dumps(_finite_or_null(obj), indent=indent, allow_nan=False)


def _finite_or_null(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: _finite_or_null(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_null(value) for value in obj]
    return obj


def atomic_write_with(path: str | os.PathLike, write) -> None:
    """`write(f)` to a binary file object, atomically (see `_atomic_write`): for writers such as matplotlib's savefig."""
    _atomic_write(path, write)


def _atomic_write(path: str | os.PathLike, write) -> None:
    """The bytes go to a temporary file in the same folder, are flushed to disk, and only then
    renamed over `path` (a rename within one file system is atomic). A crash or `kill -9` at
    any moment leaves at worst a stray `.tmp` file, never a truncated one. A write that fails (a
    full disk, a file size limit) removes the temporary file, leaves `path` as it was, and is
    one UserError naming the file and the reason.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with held_until_written(), _removing(tmp):
            with open(tmp, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
    except OSError as e:
        raise write_failure(path, e) from None
    except RuntimeError as e:
        if not any(mark in str(e) for mark in TORCH_WRITE_ERRORS):
            raise  # not the file: an object that cannot be saved is a bug to see in full
        raise write_failure(path, e) from None
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


# How torch.save's zip writer reports a write that failed underneath it (a full disk, a file size limit).
TORCH_WRITE_ERRORS = ("inline_container", "PytorchStreamWriter", "unexpected pos", "file write failed")
# Under this much free space, a failed write is taken for a full disk whatever error the writer reported.
FULL_DISK_BYTES = 64 * 2**20


def write_failure(path: Path, error: Exception, whole: bool = True) -> UserError:
    """One line for a file that could not be written: which file, why, and (`whole`: it was written by a rename) that the
    earlier copy is intact; an appended file may end in a cut line instead, which its readers skip."""
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    if getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or (free is not None and free < FULL_DISK_BYTES):
        why = f"no space left on the disk, {free / 2**20:.0f} MiB free" if free is not None else "no space left on the disk"
    elif isinstance(error, OSError):
        why = error.strerror or str(error)
    else:
        detail = re.sub(r"^\[enforce fail at [^\]]*\][\s.]*", "", str(error).strip().splitlines()[0] if str(error).strip() else "")
        why = f"the write stopped part-way{f': {detail}' if detail else ''}"
    kept = f"; the earlier {path.name} is unchanged" if whole else f"; {path.name} may end in a cut line, which readers skip"
    kept = kept if path.exists() else ""
    return UserError(f"could not write {path} ({why}){kept}: free space there, or write elsewhere")


@contextlib.contextmanager
def _removing(tmp: Path):
    try:
        yield
    finally:
        tmp.unlink(missing_ok=True)


def check_writable(folder: Path, instead: str = "run from a writable folder or set hydra.run.dir=/writable/path") -> None:
    """Fail at start, not after the first epoch, when the run (or a tool: `instead` says what the user can do) could not
    write its files."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as e:
        raise UserError(f"cannot write to the output folder {folder} ({e.strerror or e}): {instead}") from None
