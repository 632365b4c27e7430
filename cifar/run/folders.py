"""A run's folder belongs to one run: a lock while it trains, and nothing left behind by a refused command. What a folder
already holds, and how a run continues it, is cifar/run/resume.py's.

The lock is `flock` on `<folder>/.lock`: the kernel releases it when the process ends, however it
ends (a crash, Ctrl-C, `kill -9`), so a folder is never left locked and a killed run can be resumed.
It is taken before Hydra writes anything into a single run's folder (the `BeforeWriting` callback, after the checks)
and again, re-entrantly, by `train()`, which also covers the folder of `resume=` and each sweep job.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
from pathlib import Path

from cifar.errors import UserError
from cifar.files import check_writable

LOCK_NAME = ".lock"

_held: dict[Path, tuple[int, int]] = {}  # folder -> (file descriptor, how many holders in this process)
_made: dict[Path, Path] = {}  # a folder this process made for its run -> the outermost folder made with it


class FolderNotOurs(UserError):
    """The folder belongs to another run (one that is running, or one of other settings): nothing may be written into it."""


@contextlib.contextmanager
def hold(folder: Path, enabled: bool = True):
    """Hold `folder` for this process while the block runs; one line and exit 2 if another process holds it."""
    if not enabled:
        yield
        return
    acquire(folder)
    try:
        yield
    finally:
        release(folder)


def note_new(folder: Path) -> None:
    """Before Hydra makes `folder`: remember it (and the folders made above it) as this command's, which a refusal removes."""
    folder = Path(folder).resolve()
    if not folder.exists():
        _made[folder] = next(p for p in [*reversed(folder.parents), folder] if not p.exists())


@contextlib.contextmanager
def discarded_if_refused(folder: Path):
    """A UserError (a mistake the command refuses) leaves nothing behind: the folder this command made is removed again if
    it holds nothing but Hydra's records (`.hydra/`, its log) and the lock, and so are the folders made above it while
    they are empty (another run may have started in one since)."""
    try:
        yield
    except UserError:
        folder = Path(folder).resolve()
        if folder in _made and folder.is_dir() and all(p.name in (".hydra", LOCK_NAME) or p.suffix == ".log" for p in folder.iterdir()):
            shutil.rmtree(folder, ignore_errors=True)
            made = _made.pop(folder)
            for parent in folder.parents:  # the dated folders made with it, while nothing else is in them
                if not parent.is_relative_to(made) or any(parent.iterdir()):
                    break
                parent.rmdir()
        raise


def acquire(folder: Path) -> None:
    folder = Path(folder).resolve()
    note_new(folder)
    if folder in _held:
        fd, holders = _held[folder]
        _held[folder] = (fd, holders + 1)
        return
    check_writable(folder)
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise FolderNotOurs(
            f"{folder} is in use by another run ({holder}): wait for it to end, or give this run its own folder (hydra.run.dir=...)"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    _held[folder] = (fd, 1)


def held_elsewhere(folder: Path) -> bool:
    """Whether another process holds `folder` now (a run training in it): its lock cannot be taken."""
    try:
        fd = os.open(folder / LOCK_NAME, os.O_RDONLY)
    except OSError:
        return False  # no lock file: nothing ever ran there
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases a lock taken here


def holder_here(folder: Path) -> int | None:
    """The process id that holds `folder`, if that process runs on this machine (the lock file says whose it is)."""
    try:
        words = (folder / LOCK_NAME).read_text().split()
    except OSError:
        return None
    if len(words) == 4 and words[0] == "process" and words[1].isdigit() and words[3] == socket.gethostname():
        return int(words[1])
    return None


def release(folder: Path) -> None:
    folder = Path(folder).resolve()
    fd, holders = _held[folder]
    if holders > 1:
        _held[folder] = (fd, holders - 1)
        return
    del _held[folder]
    os.close(fd)  # closing the descriptor releases the lock
