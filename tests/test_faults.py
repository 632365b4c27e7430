"""Faults a new user meets: two runs in one folder, a full disk, a broken cache, the wrong checkpoint, a sweep cut short.

Through the real entry points (`python train.py ...` in a subprocess) where the fault is about processes, exit
statuses or what is printed; in-process through `train(cfg)` where it is about what a run does.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import resource
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from PIL import Image

from cifar.config.evaluate_schema import check_evaluate
from cifar.errors import UserError
from cifar.files import atomic_save, atomic_write_with
from cifar.run.checkpoint import load_checkpoint
from cifar.run.training import train
from tests.conftest import (
    PIPED,
    REPO,
    compose_config,
    finish,
    one_clear_line,
    read_metrics,
    read_summary,
    release,
    run_script,
    start_script,
    tiny_overrides,
    wait_held,
)

TINY = ("epochs=2", "batch_size=8", "optim.lr=0.01", "wandb.mode=disabled", "device=cpu")


# ---- 1. a run's folder is its own


@pytest.mark.slow
def test_runs_started_in_the_same_second_get_folders_of_their_own(tiny_folder, tmp_path):
    procs = [start_script("train.py", f"data.root={tiny_folder}", f"seed={s}", *TINY, "epochs=1", cwd=tmp_path) for s in (0, 1)]
    for p in procs:
        finish(p)
        assert p.returncode == 0
    runs = sorted(tmp_path.glob("outputs/*/*/summary.json"))
    assert len(runs) == 2, "two runs, two folders"
    for summary in runs:
        assert [row["epoch"] for row in read_metrics(summary.parent)] == [1]  # each epoch once, in one folder


@pytest.mark.slow
def test_a_folder_in_use_is_refused_in_one_line_and_a_finished_one_is_only_resumed(tiny_folder, tmp_path):
    out = tmp_path / "run"
    first = start_script("train.py", f"data.root={tiny_folder}", f"hydra.run.dir={out}", *TINY, cwd=tmp_path, hold="epoch 1")
    wait_held(first)  # training, its folder held
    second = run_script("train.py", f"data.root={tiny_folder}", f"hydra.run.dir={out}", *TINY, cwd=tmp_path, check=False)
    one_clear_line(second, 2, f"{out} is in use by another run (process {first.pid}")
    release(first)
    assert "Traceback" not in finish(first) and first.returncode == 0
    assert [row["epoch"] for row in read_metrics(out)] == [1, 2], "the refused run wrote nothing into the folder"

    records = {p.name: p.read_bytes() for p in [*(out / ".hydra").iterdir(), out / "train.log"]}
    again = run_script("train.py", f"data.root={tiny_folder}", f"hydra.run.dir={out}", *TINY, "seed=1", cwd=tmp_path, check=False)
    one_clear_line(again, 2, f"{out} already holds a run (finished): continue it with resume={out / 'last.pt'}")
    assert {p.name: p.read_bytes() for p in [*(out / ".hydra").iterdir(), out / "train.log"]} == records, "its records untouched"
    longer = train(compose_config(tiny_overrides(tiny_folder, tmp_path / "x", "epochs=3", f"resume={out / 'last.pt'}")))
    assert longer["output_dir"] == str(out) and read_summary(out)["epochs_completed"] == 3


# ---- 2. a full disk


def test_a_write_that_fails_leaves_the_old_file_and_no_temporary_one(tmp_path):
    path = tmp_path / "ckpt.pt"
    atomic_save({"epoch": 1}, path)

    def full_disk(f):
        f.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(UserError, match=r"could not write .*ckpt.pt \(no space left on the disk.*the earlier ckpt.pt is unchanged"):
        atomic_write_with(path, full_disk)
    assert torch.load(path, weights_only=True) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


@pytest.mark.slow
def test_a_checkpoint_the_disk_cannot_take_is_one_line_and_loses_nothing(tiny_folder, tmp_path):
    """Epoch 1 is saved; then the disk 'fills': a 300 kB file size limit, under the Net's ~500 kB checkpoints."""
    out = tmp_path / "run"
    train(compose_config(tiny_overrides(tiny_folder, out, "epochs=1")))

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))

    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), f"data.root={tiny_folder}", *TINY, "epochs=3", f"resume={out / 'last.pt'}"],
        check=False, cwd=tmp_path, env={**os.environ, "COLUMNS": "200"}, capture_output=True, text=True, timeout=300,
        preexec_fn=limit_file_size,
    )  # fmt: skip
    line = one_clear_line(proc, 2, "(the write stopped part-way", "is unchanged")
    assert f"could not write {out / 'ckpt.pt'}" in line or f"could not write {out / 'last.pt'}" in line
    assert load_checkpoint(out / "ckpt.pt")["epoch"] == load_checkpoint(out / "last.pt")["epoch"] == 1, "epoch 1's files are whole"
    assert not list(out.glob(".*.tmp")), "no temporary file is left behind"
    assert read_summary(out)["status"] == "failed"


# ---- 3. a broken decode cache


def test_a_truncated_decode_cache_is_decoded_again_and_rewritten(tiny_folder, tmp_path, caplog):
    cache_dir = tmp_path / "cache"

    def run(name):
        return train(compose_config(tiny_overrides(tiny_folder, tmp_path / name, f"data.cache_dir={cache_dir}", "epochs=1")))

    first = run("a")
    (cache,) = cache_dir.glob("cifar10-uint8-*.pt")
    whole = torch.load(cache, weights_only=True)
    cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2])  # a copy cut short, or a disk that filled up

    with caplog.at_level(logging.WARNING):
        second = run("b")
    assert f"The decode cache {cache} is unreadable" in caplog.text
    assert torch.equal(torch.load(cache, weights_only=True)["train_images"], whole["train_images"])
    assert first["test_acc"] == second["test_acc"], "the same images, the same run"


# ---- 4. resume from the wrong file


def test_resume_from_ckpt_pt_says_to_use_last_pt(tiny_folder, tmp_path, trained):
    run, _ = trained
    shutil.copy(run / "ckpt.pt", tmp_path / "ckpt.pt")
    with pytest.raises(UserError, match=r"holds the best weights only \(ckpt.pt\): resume from last.pt"):
        train(compose_config(tiny_overrides(tiny_folder, tmp_path / "x", f"resume={tmp_path / 'ckpt.pt'}")))


def test_resume_from_a_folder_without_its_ckpt_pt_is_refused_before_training(tiny_folder, tmp_path, trained):
    """last.pt copied without ckpt.pt: the run would train to the end, then have no best checkpoint to test."""
    run, _ = trained
    shutil.copy(run / "last.pt", tmp_path / "last.pt")
    best = torch.load(tmp_path / "last.pt", weights_only=True)["best_epoch"]
    with pytest.raises(UserError, match=re.escape(f"its folder has no ckpt.pt, the best checkpoint so far (epoch {best})")):
        train(compose_config(tiny_overrides(tiny_folder, tmp_path / "x", "epochs=3", f"resume={tmp_path / 'last.pt'}")))
    assert {p.name for p in tmp_path.iterdir()} == {"last.pt", ".lock"}, "nothing was trained or written (.lock: the folder's lock)"


@pytest.mark.slow
def test_a_resume_continues_in_the_runs_own_folder_logs_and_all(tiny_folder, tmp_path):
    out = tmp_path / "run"
    run_script("train.py", f"data.root={tiny_folder}", f"hydra.run.dir={out}", *TINY, "epochs=1", cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    resume = (f"data.root={tiny_folder}", *TINY[1:], f"resume={out / 'last.pt'}")
    run_script("train.py", *resume, "epochs=2", cwd=elsewhere)  # one more
    log = (out / "train.log").read_text()
    assert "epoch 1: train loss" in log and "epoch 2: train loss" in log, "train.log holds both parts of the run"
    assert f"resume={out / 'last.pt'}" in (out / ".hydra" / "overrides.yaml").read_text()
    assert not list(elsewhere.iterdir()), "nothing was written where the resume was started"

    last = out / "last.pt"
    for epochs, needle in ((2, f"resume={last} is a finished run of 2 epochs: nothing is left to train"), (1, "asks for fewer")):
        with pytest.raises(UserError, match=re.escape(needle)):
            train(compose_config(tiny_overrides(tiny_folder, tmp_path / "x", f"epochs={epochs}", f"resume={last}")))
    assert read_summary(out)["epochs_completed"] == 2 and not list(elsewhere.iterdir())


@pytest.mark.slow
def test_no_argument_is_silently_ignored(tiny_folder, tmp_path, trained):
    out = tmp_path / "run"
    proc = run_script("train.py", "experiment=lr_sweep", "model=net", "epochs=1", "lookahead_decay=0.9", "wandb.project=mine",
                      f"data.root={tiny_folder}", "wandb.mode=disabled", f"hydra.run.dir={out}", cwd=tmp_path)  # fmt: skip
    text = " ".join(proc.stdout.split())  # the warnings as the log prints them, folded
    assert "lookahead_decay=0.9 has no effect in this run: lookahead is off (lookahead_every=0)" in text
    assert "wandb.project=mine has no effect in this run: W&B is off (wandb.mode=disabled)" in text
    assert "this experiment declares a sweep (optim.lr over 0.01,0.001,0.005), which only -m runs" in text
    assert read_summary(out)["config"]["optim"]["lr"] == 0.001, "one run, of the experiment's defaults"

    ckpt = trained[0] / "ckpt.pt"  # harmless settings evaluate.py will not read: one warning each, and it goes on
    Image.new("RGB", (40, 30), "red").save(tmp_path / "photo.png")
    proc = run_script("evaluate.py", f"ckpt={ckpt}", f"images={tmp_path / 'photo.png'}", f"baseline={ckpt}", "data.root=x", "top=2",
                      "wandb.project=mine", f"hydra.run.dir={tmp_path / 'eval'}", cwd=tmp_path)  # fmt: skip
    text = " ".join(proc.stdout.split())
    assert f"baseline={ckpt} has no effect: it is for the test set, and images= classifies your images" in text
    assert "data.root=x has no effect: it is for the test set" in text
    assert "wandb.project=mine has no effect: W&B is off here (wandb.mode=disabled" in text
    proc = run_script("evaluate.py", f"ckpt={ckpt}", f"data.root={trained[1]['config']['data']['root']}", "top=5", "samples=0",
                      f"hydra.run.dir={tmp_path / 'eval2'}", cwd=tmp_path)  # fmt: skip
    assert "top=5 has no effect" in " ".join(proc.stdout.split())
    for overrides, needle in [
        (["wandb.mode=on"], "wandb.mode=on: use online, offline or disabled"),
        (["samples=2000"], "samples=2000: use 0 (no predictions picture) to 108"),
    ]:
        with pytest.raises(UserError, match=re.escape(needle)):
            check_evaluate(compose_config([f"ckpt={ckpt}", *overrides], "evaluate"))
    proc = run_script("evaluate.py", cwd=tmp_path, check=False)  # no ckpt=: one line, not Hydra's missing-value message
    one_clear_line(proc, 2, "no checkpoint given: name the one to evaluate, e.g. python evaluate.py ckpt=")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval", "eval2", "photo.png", "run"], "a refused evaluation leaves no folder"


@pytest.mark.slow
def test_piped_output_keeps_folders_and_statuses_whole(lr_sweep, tmp_path):
    """No terminal and no COLUMNS (`| tee`, a batch scheduler): nothing a user needs back is cut at 80 columns."""
    sweep, proc = lr_sweep  # run piped, in a folder with a long name
    unwrapped = proc.stdout.replace("\n", "")
    assert all(str(sweep / job) in unwrapped for job in "012"), "each job's folder, whole (folded at worst, never cut)"
    assert "…" not in proc.stdout
    report = run_script("-m", "cifar.results.report", str(sweep), "--out", str(tmp_path / "report"), cwd=tmp_path, env=PIPED).stdout
    assert "…" not in report and "optim.lr" in report and report.count("finished") == 2 and "diverged" in report


# ---- 5. one job's mistake in a sweep


@pytest.mark.slow
def test_a_mistake_in_one_job_of_a_sweep_fails_that_job_alone(tiny_folder, tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_script(
        "train.py", "-m", "batch_size=2000,8", f"data.root={tiny_folder}", *TINY[2:], "epochs=1", f"hydra.sweep.dir={sweep}",
        cwd=tmp_path, check=False,
    )  # fmt: skip
    out = one_clear_line(proc, 1)
    assert "error: batch_size=2000 is larger than the 800 training images: lower it (this job is marked failed" in out
    failed, fine = read_summary(sweep / "0"), read_summary(sweep / "1")
    assert failed["status"] == "failed" and failed["error"].startswith("batch_size=2000 is larger")
    assert fine["status"] == "finished", "the job after the failed one still ran"
    assert "1 of 2 jobs did not finish: 0 (failed: batch_size=2000 is larger than the 800 training images" in out


# ---- 6. repeatable runs


def test_deterministic_changes_nothing_on_the_cpu(tiny_folder, tmp_path):
    a, b = (
        train(compose_config(tiny_overrides(tiny_folder, tmp_path / name, f"deterministic={flag}")))
        for name, flag in (("a", False), ("b", True))
    )
    assert read_metrics(tmp_path / "a") == read_metrics(tmp_path / "b")
    assert (a["best_val_acc"], a["test_acc"], a["test_loss"]) == (b["best_val_acc"], b["test_acc"], b["test_loss"])


# ---- 7. a sweep cut short, run again


@pytest.mark.slow
def test_a_sweep_run_again_keeps_finished_jobs_resumes_the_cut_one_and_refuses_a_second_sweep(tiny_folder, tmp_path):
    sweep = tmp_path / "sweep"
    # job 0 trains 1 epoch and finishes; job 1 (3 epochs) is held after its epoch 2, then the whole sweep is killed
    args = ("-m", "epochs=1,3", f"data.root={tiny_folder}", "batch_size=8", "wandb.mode=disabled", "device=cpu", f"hydra.sweep.dir={sweep}")
    first = start_script("train.py", *args, cwd=tmp_path, hold="epoch 2")
    wait_held(first)
    rival = run_script("train.py", *args, cwd=tmp_path, check=False)
    one_clear_line(rival, 2, f"{sweep} is in use by another run")
    os.killpg(first.pid, signal.SIGKILL)  # a power cut, a SLURM kill -9
    first.wait()
    finished_summary = (sweep / "0" / "summary.json").read_text()
    assert not (sweep / "1" / "summary.json").exists()

    again = run_script("train.py", *args, cwd=tmp_path)
    out = again.stdout + again.stderr
    assert "holds a finished run of these settings: kept" in out and "Resuming" in out and "at epoch 3" in out
    assert (sweep / "0" / "summary.json").read_text() == finished_summary, "the finished job was not trained again"
    assert read_summary(sweep / "1")["status"] == "finished" and [row["epoch"] for row in read_metrics(sweep / "1")] == [1, 2, 3]

    other = run_script("train.py", *args[:-1], f"hydra.sweep.dir={sweep}", "seed=1", cwd=tmp_path, check=False)
    one_clear_line(other, 2, "holds a run of other settings (seed: 0 then vs 1 now)")
