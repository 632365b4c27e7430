"""A run's life across commands: a last.pt from elsewhere checked whole before a resume writes anything, max_minutes
followed to the letter, a finished run never trained again, and the records of a run that was resumed and interrupted
(summary.json, metrics.jsonl, last.pt and TensorBoard) agreeing with each other and keeping its test result."""

from __future__ import annotations

import hashlib
import re
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch

from cifar.config.compose import compose_config
from cifar.run.training import train
from tests.conftest import (
    finish,
    one_clear_line,
    read_metrics,
    read_summary,
    run_script,
    start_script,
    tiny_overrides,
    wait_held,
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


def slow_steps(seconds: float):
    """Each training step takes `seconds` more: epochs of a known length, for a time budget to cut."""

    def wrap(step):
        return lambda x, y: (time.sleep(seconds), step(x, y))[1]

    return wrap


def test_max_minutes_followed_to_the_letter_gives_each_command_its_budget(tiny_folder, tmp_path):
    """max_minutes is per command: the printed advice (the same command plus resume=), as a batch job under a time limit
    submits it again, trains as long again, not one epoch and a stop because of the time spent before."""
    out = tmp_path / "run"
    # one step an epoch of >= 1 s: the 1.5 s budget passes in each command's second epoch
    command = tiny_overrides(tiny_folder, out, "epochs=6", "limit_batches=1", "max_minutes=0.025")
    cut = train(compose_config(command), wrap_step=slow_steps(1.0))
    assert cut["status"] == "out_of_time" and cut["epochs_completed"] == 2
    advice = re.search(r"continue with the same command plus (resume=\S+),", cut["stopped_early"])
    assert advice, cut["stopped_early"]
    again = train(compose_config([*command, advice[1]]), wrap_step=slow_steps(1.0))
    assert again["status"] == "out_of_time" and again["epochs_completed"] == 4, "two more epochs, as the first command trained"
    last = train(compose_config([*command, advice[1]]), wrap_step=slow_steps(1.0))
    assert last["status"] == "finished" and last["epochs_completed"] == 6


@pytest.mark.slow  # two or more real processes in a row
def test_resuming_a_run_its_own_rule_finished_early_is_one_line_and_changes_nothing(tiny_folder, tmp_path):
    out = tmp_path / "run"
    # stop_below_loss=100: every training loss is below it, so the run finishes after its first epoch, as early_stop's would
    first = args(tiny_folder, out, "epochs=3", "stop_below_loss=100")
    run_script("train.py", *first, cwd=tmp_path)
    assert read_summary(out)["status"] == "finished" and read_summary(out)["epochs_completed"] == 1
    before = contents(out)
    proc = run_script("train.py", *first, f"resume={out / 'last.pt'}", cwd=tmp_path, check=False)
    one_clear_line(proc, 2, "is a finished run, stopped early by its own rule (training loss", "nothing is left to train")
    again = run_script("train.py", *first, cwd=tmp_path, check=False)  # into its folder again: no advice to resume it
    one_clear_line(again, 2, f"{out} already holds a run (finished): one of its own rules finished it, so nothing is left to train")
    assert contents(out) == before


@pytest.mark.slow  # two or more real processes in a row
def test_a_finished_run_resumed_then_interrupted_keeps_its_test_and_one_record(finished, tiny_folder, tmp_path):
    """Resumed for a third epoch and interrupted between that epoch's ckpt.pt and its last.pt: every record says epoch 2,
    as last.pt does, and keeps the finished run's test result; resumed again to the end, TensorBoard holds one HParams
    session and each final figure once."""
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    shutil.rmtree(out / "tensorboard", ignore_errors=True)
    tested = read_summary(out)
    resume = args(tiny_folder, out, "epochs=3", "tensorboard=true", f"resume={out / 'last.pt'}")

    proc = start_script("train.py", *resume, cwd=tmp_path, hold="epoch 3 before last.pt")
    wait_held(proc)
    proc.send_signal(signal.SIGINT)
    output = finish(proc)
    assert proc.returncode == 130 and f"interrupted in epoch 3: resume with the same overrides plus resume={out / 'last.pt'}" in output
    summary = read_summary(out)
    assert summary["status"] == "interrupted"
    assert summary["epochs_completed"] == torch.load(out / "last.pt", weights_only=True)["epoch"] == len(read_metrics(out)) == 2
    assert (summary["test_acc"], summary["test_loss"], summary["tested_epoch"]) == (
        tested["test_acc"],
        tested["test_loss"],
        tested["best_epoch"],
    )
    assert board_of(out)["final/test_acc"] == [tested["test_acc"]], "TensorBoard's record keeps the test result too"

    run_script("train.py", *resume, cwd=tmp_path)
    summary = read_summary(out)
    assert summary["status"] == "finished" and summary["epochs_completed"] == 3
    board = board_of(out)
    assert board["sessions"] == 1 and board["final/test_acc"] == [pytest.approx(summary["test_acc"])]
    assert all(len(board[name]) == 1 for name in board if name.startswith("final/"))


def board_of(run: Path) -> dict:
    """A run's TensorBoard folder as TensorBoard reads it: each final figure's values, and how many HParams sessions its
    event files hold (each one a row of the HParams tab)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    board = EventAccumulator(str(run / "tensorboard"))
    board.Reload()
    finals = {tag: [e.value for e in board.Scalars(tag)] for tag in board.Tags()["scalars"] if tag.startswith("final/")}
    events = [event for file in (run / "tensorboard").iterdir() for event in EventFileLoader(str(file)).Load()]
    sessions = sum(value.tag == "_hparams_/session_start_info" for event in events for value in event.summary.value)
    return finals | {"sessions": sessions}


def test_a_tensorboard_path_that_is_a_file_is_one_line_before_anything_is_written(tiny_folder, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "tensorboard").write_text("notes\n")
    proc = run_script("train.py", *args(tiny_folder, out, "epochs=1", "tensorboard=true"), cwd=tmp_path, check=False)
    one_clear_line(proc, 2, f"{out / 'tensorboard'} is a file")
    assert {p.name for p in out.iterdir()} == {"tensorboard", ".lock"}


def test_a_factored_optimizer_state_resumes(tiny_folder, tmp_path):
    """Adafactor keeps a (3, 1) and a (1, 4) moment for a (3, 4) weight: the check of last.pt's whole state takes what
    broadcasts to a parameter, so such a run resumes (it was refused as a corrupt file)."""
    adafactor = ["optim._target_=torch.optim.Adafactor", "~optim.momentum", "~optim.nesterov"]
    train(compose_config(tiny_overrides(tiny_folder, tmp_path / "run", *adafactor, "epochs=1")))
    summary = train(compose_config(tiny_overrides(tiny_folder, tmp_path / "run", *adafactor, f"resume={tmp_path / 'run' / 'last.pt'}")))
    assert summary["status"] == "finished" and summary["epochs_completed"] == 2
