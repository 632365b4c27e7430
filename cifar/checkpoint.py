"""Checkpoint files: written atomically, read back with `weights_only=True`.

A checkpoint holds the study's keys (`epoch`, `model_state_dict`, `optimizer_state_dict`,
`loss`) plus what is needed to rebuild and resume the run: the resolved config as a plain
dict, `val_acc`, the class names and, in `last.pt`, the training state.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import signal
import threading
from pathlib import Path
from typing import Any

import torch

from cifar.errors import UserError, first_line

log = logging.getLogger(__name__)


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """`torch.save` so that `path` is always either the old complete file or the new complete one."""
    _atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path: str | os.PathLike) -> None:
    _atomic_write(path, lambda f: f.write(text.encode()))


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
        with _stop_signals_after(), _removing(tmp):
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


def write_failure(path: Path, error: Exception) -> UserError:
    """One line for a file that could not be written: which file, why, and that the earlier copy is intact."""
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
    kept = f"; the earlier {path.name} is unchanged" if path.exists() else ""
    return UserError(f"could not write {path} ({why}){kept}: free space there, or write elsewhere")


@contextlib.contextmanager
def _removing(tmp: Path):
    try:
        yield
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def _stop_signals_after():
    """Hold a Ctrl-C (SIGINT) or SIGTERM that arrives mid-write until the file is complete, then stop as Ctrl-C does.

    A KeyboardInterrupt inside torch.save leaves its zip writer half-closed and turns into a
    confusing RuntimeError; this way the interrupt still stops training, one write later.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if caught:
        raise KeyboardInterrupt


REQUIRED_KEYS = ("epoch", "model_state_dict", "optimizer_state_dict", "loss", "config")


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint written by this project. `weights_only=True`: a file cannot run code."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for truncated, foreign or unsafe files
        raise UserError(f"{path}: not a readable checkpoint ({first_line(e)})") from None
    if not isinstance(ckpt, dict) or not all(k in ckpt for k in REQUIRED_KEYS):
        held = sorted(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise UserError(f"{path}: not a checkpoint of this project (it holds {held})")
    return ckpt


def read_summary(folder: str | os.PathLike, broken: str | None = None) -> dict | None:
    """A run folder's summary.json; None where there is none, or where it is not readable JSON (cut short by a full disk,
    edited by hand): then, with `broken` (what the caller does instead), a warning names the file."""
    path = Path(folder) / "summary.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, json.JSONDecodeError) as e:
        if broken:
            log.warning("%s is not readable JSON (%s): %s", path, first_line(e), broken)
        return None
