"""A run's life across commands: a last.pt from elsewhere checked whole before a resume writes anything, max_minutes
followed to the letter, a finished run never trained again, and the records of a run that was resumed and interrupted
(summary.json, metrics.jsonl, last.pt and TensorBoard) agreeing with each other and keeping its test result."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import (
    one_clear_line,
    run_script,
)


def contents(folder: Path) -> dict[str, str]:
    """Every file under `folder` by its bytes' hash (the lock file aside, which only says who holds the folder)."""
    return {
        str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file() and p.name != ".lock"
    }


def args(folder: Path, out: Path, *extra: str) -> list[str]:
    return [f"data.root={folder}", "batch_size=8", "optim.lr=0.01", "wandb.mode=disabled", "device=cpu", f"hydra.run.dir={out}", *extra]


@pytest.fixture(scope="module")
def finished(tiny_folder, tmp_path_factory) -> Path:
    """A finished 2-epoch run, as train.py leaves it (.hydra/ and train.log too); tests copy it before touching it."""
    out = tmp_path_factory.mktemp("finished") / "run"
    run_script("train.py", *args(tiny_folder, out, "epochs=2"), cwd=out.parent)
    return out


def edited(*path, value):
    """An edit of last.pt: the value at `path` (keys, list indexes) replaced."""

    def edit(last: dict) -> None:
        node = last
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return edit


# Each a field resume restores, as a corrupt or crafted last.pt holds it, and what the one line names.
CRAFTED = {
    "rng_state": (edited("rng_state", value=torch.zeros(10, dtype=torch.uint8)), "rng_state is a tensor of shape (10,)"),
    "history": (edited("history", 0, "train/loss", value="x"), "history's row 1 is not epoch 1's figures (train/loss is 'x')"),
    "epoch": (edited("epoch", value="2"), "epoch is '2', not a count of completed epochs"),
    "weights": (
        edited("model_state_dict", "fc3.weight", value=torch.zeros(3, 3)),
        "model_state_dict's fc3.weight is a tensor of shape (3, 3)",
    ),
    "momentum": (edited("optimizer_state_dict", "state", 0, "momentum_buffer", value=torch.zeros(2)), "momentum_buffer of parameter 0"),
    "base_lrs": (
        edited("scheduler_state_dict", "base_lrs", value=[1000.0]),
        "base_lrs is [1000.0] where this run's settings make it [0.01]",
    ),
    "interpolation": (
        edited("config", "data", "root", value="${oc.env:CIFAR_TEST_SECRET}"),
        "config.data.root: '${oc.env:CIFAR_TEST_SECRET}'",
    ),
}


@pytest.mark.parametrize("field", CRAFTED)
def test_a_crafted_last_pt_is_one_line_and_its_folder_stays_as_it_was(finished, tiny_folder, tmp_path, field):
    """Each field resume restores is checked before anything is written: no traceback, no summary.json rewritten as
    failed, no training at a base lr of 1000 that then reads as diverged, and a stored interpolation never resolved."""
    edit, needle = CRAFTED[field]
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    last = torch.load(out / "last.pt", weights_only=True)
    edit(last)
    torch.save(last, out / "last.pt")
    before = contents(out)
    proc = run_script("train.py", *args(tiny_folder, out, "epochs=3", f"resume={out / 'last.pt'}"), cwd=tmp_path, check=False,
                      env={"CIFAR_TEST_SECRET": "hunter2"})  # fmt: skip
    one_clear_line(proc, 2, f"resume={out / 'last.pt'} is not a state train.py saved", needle)
    assert "hunter2" not in proc.stdout + proc.stderr
    assert contents(out) == before, "summary.json, metrics.jsonl, .hydra/, train.log and the checkpoints are as they were"
