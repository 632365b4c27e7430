"""A run held at a named point until a signal ends it: the seam through which tests send Ctrl-C, SIGTERM and kill -9.

With `CIFAR_HOLD_AT=<point>` in its environment, a run that reaches that point writes its process id into the
file named by `CIFAR_HOLD_FILE` and waits there until the file is removed (then it goes on) or a signal ends it.
A test waits for that file, then signals: the signal lands at the moment the test chose, on a fast machine or a
loaded one, instead of racing a run that may end before it (or not yet have started). The points, in the order a
run passes them:

    decode                   a folder copy of the data is about to be decoded (no cache of it yet): before training
    epoch N before last.pt   epoch N trained, validated and ckpt.pt written; last.pt still holds epoch N-1
    epoch N                  epoch N wholly recorded: ckpt.pt, last.pt, metrics.jsonl

Without the variable (always, outside tests) a point costs one look into os.environ.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

POINT, FILE = "CIFAR_HOLD_AT", "CIFAR_HOLD_FILE"


def hold_point(name: str) -> None:
    if os.environ.get(POINT) != name:
        return
    held = Path(os.environ[FILE])
    held.write_text(f"{os.getpid()}\n")
    while held.exists():  # Ctrl-C and SIGTERM raise KeyboardInterrupt out of the sleep; kill -9 ends the process here
        time.sleep(0.05)
