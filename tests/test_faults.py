"""Faults a new user meets: two runs in one folder, a full disk, a broken cache, the wrong checkpoint, a sweep cut short.

Each through the real entry points (`python train.py ...` in a subprocess) wherever the fault allows.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from cifar.checkpoint import atomic_save, atomic_write_with, load_checkpoint
from cifar.errors import UserError
from tests.conftest import REPO, run_script, wandb_inspect

TINY = ("epochs=2", "batch_size=8", "optim.lr=0.01", "wandb.mode=disabled", "device=cpu")


def one_clear_line(proc, rc: int, *needles: str) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode == rc, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    (line,) = [line for line in out.splitlines() if line.startswith("error:")]
    for needle in needles:
        assert needle in line, line
    return line


def start_train(*args: str, cwd, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True, **kwargs,
    )  # fmt: skip


def wait_for(path, proc: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the run ended before {path} appeared:\n{proc.stdout.read()[-3000:]}"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


# ---- 1. a run's folder is its own


def test_runs_started_in_the_same_second_get_folders_of_their_own(tiny_folder, tmp_path):
    procs = [start_train(f"data.root={tiny_folder}", f"seed={s}", *TINY, cwd=tmp_path) for s in (0, 1)]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stdout.read()[-3000:]
    runs = sorted(tmp_path.glob("outputs/*/*/summary.json"))
    assert len(runs) == 2, "two runs, two folders"
    for summary in runs:
        assert len((summary.parent / "metrics.jsonl").read_text().splitlines()) == 2  # each epoch once


def test_a_folder_in_use_is_refused_in_one_line_and_a_finished_one_is_only_resumed(tiny_folder, tmp_path):
    out = tmp_path / "run"
    first = start_train(f"data.root={tiny_folder}", f"hydra.run.dir={out}", *TINY, "epochs=6", cwd=tmp_path)
    wait_for(out / "metrics.jsonl", first)  # training has started
    second = run_script("train.py", f"data.root={tiny_folder}", f"hydra.run.dir={out}", *TINY, cwd=tmp_path, check=False)
    one_clear_line(second, 2, f"{out} is in use by another run (process {first.pid}")
    assert first.wait(timeout=300) == 0, first.stdout.read()[-3000:]
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4, 5, 6]

    again = run_script("train.py", f"data.root={tiny_folder}", f"hydra.run.dir={out}", *TINY, cwd=tmp_path, check=False)
    one_clear_line(again, 2, f"{out} already holds a run (finished): continue it with resume={out / 'last.pt'}")
    longer = run_script("train.py", f"data.root={tiny_folder}", *TINY, "epochs=7", f"resume={out / 'last.pt'}", cwd=tmp_path)
    assert longer.returncode == 0 and json.loads((out / "summary.json").read_text())["epochs_completed"] == 7


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


def test_a_checkpoint_the_disk_cannot_take_is_one_line_and_loses_nothing(tiny_folder, tmp_path):
    """Epoch 1 is saved; then the disk 'fills': a 300 kB file size limit, under the Net's ~500 kB checkpoints."""
    out = tmp_path / "run"
    run_script("train.py", f"data.root={tiny_folder}", f"hydra.run.dir={out}", *TINY, "epochs=1", cwd=tmp_path)

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))

    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), f"data.root={tiny_folder}", *TINY, "epochs=3", f"resume={out / 'last.pt'}",
         f"hydra.run.dir={tmp_path / 'resume'}"],
        check=False, cwd=tmp_path, env={**os.environ, "COLUMNS": "200"}, capture_output=True, text=True, timeout=300,
        preexec_fn=limit_file_size,
    )  # fmt: skip
    line = one_clear_line(proc, 2, "(the write stopped part-way", "is unchanged")
    assert f"could not write {out / 'ckpt.pt'}" in line or f"could not write {out / 'last.pt'}" in line
    assert load_checkpoint(out / "ckpt.pt")["epoch"] == load_checkpoint(out / "last.pt")["epoch"] == 1, "epoch 1's files are whole"
    assert not list(out.glob(".*.tmp")), "no temporary file is left behind"
    assert json.loads((out / "summary.json").read_text())["status"] == "failed"


# ---- 3. a broken decode cache


def test_a_truncated_decode_cache_is_decoded_again_and_rewritten(tiny_folder, tmp_path):
    cache_dir = tmp_path / "cache"
    args = (f"data.root={tiny_folder}", f"data.cache_dir={cache_dir}", *TINY, "epochs=1")
    run_script("train.py", *args, f"hydra.run.dir={tmp_path / 'a'}", cwd=tmp_path)
    (cache,) = cache_dir.glob("cifar10-uint8-*.pt")
    whole = torch.load(cache, weights_only=True)
    cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2])  # a copy cut short, or a disk that filled up

    proc = run_script("train.py", *args, f"hydra.run.dir={tmp_path / 'b'}", cwd=tmp_path)
    assert f"The decode cache {cache} is unreadable" in proc.stdout + proc.stderr
    rewritten = torch.load(cache, weights_only=True)
    assert torch.equal(rewritten["train_images"], whole["train_images"])
    a, b = (json.loads((tmp_path / f / "summary.json").read_text()) for f in "ab")
    assert a["test_acc"] == b["test_acc"], "the same images, the same run"


# ---- 4. resume from the wrong file


def test_resume_from_ckpt_pt_says_to_use_last_pt(tiny_folder, tmp_path):
    out = tmp_path / "run"
    run_script("train.py", f"data.root={tiny_folder}", f"hydra.run.dir={out}", *TINY, "epochs=1", cwd=tmp_path)
    proc = run_script("train.py", f"data.root={tiny_folder}", *TINY, f"resume={out / 'ckpt.pt'}", cwd=tmp_path, check=False)
    one_clear_line(proc, 2, "holds the best weights only (ckpt.pt): resume from last.pt")


# ---- 5. the tests' own tools


def test_reading_wandb_back_uses_this_interpreters_wandb(tiny_folder, tmp_path, monkeypatch):
    out = tmp_path / "run"
    run_script("train.py", f"data.root={tiny_folder}", f"hydra.run.dir={out}", *TINY, "epochs=1", "wandb.mode=offline", cwd=tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))  # a venv's python run without activating the venv
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    assert json.loads(wandb_inspect(run_dir))["state"] == "finished"


# ---- 6. one job's mistake in a sweep


def test_a_mistake_in_one_job_of_a_sweep_fails_that_job_alone(tiny_folder, tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_script(
        "train.py", "-m", "batch_size=2000,8", f"data.root={tiny_folder}", *TINY[2:], "epochs=1", f"hydra.sweep.dir={sweep}",
        cwd=tmp_path, check=False,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "Traceback" not in out, out[-3000:]
    assert "error: batch_size=2000 is larger than the 800 training images: lower it (this job is marked failed" in out
    failed, fine = (json.loads((sweep / job / "summary.json").read_text()) for job in "01")
    assert failed["status"] == "failed" and failed["error"].startswith("batch_size=2000 is larger")
    assert fine["status"] == "finished", "the job after the failed one still ran"
    assert "1 of 2 jobs did not finish: 0 (failed: batch_size=2000 is larger than the 800 training images" in out


# ---- 7. repeatable runs


def test_deterministic_changes_nothing_on_the_cpu(compose_cfg, tiny_folder, tmp_path):
    from cifar.training import train
    from tests.conftest import tiny_overrides

    a, b = (
        train(compose_cfg(tiny_overrides(tiny_folder, tmp_path / name, f"deterministic={flag}")))
        for name, flag in (("a", False), ("b", True))
    )
    assert (a["best_val_acc"], a["test_acc"], a["test_loss"]) == (b["best_val_acc"], b["test_acc"], b["test_loss"])


# ---- 8. a sweep cut short, run again


def test_a_sweep_run_again_keeps_finished_jobs_resumes_the_cut_one_and_refuses_a_second_sweep(tiny_folder, tmp_path):
    sweep = tmp_path / "sweep"
    # 40 short epochs: job 1 is still training while the rival sweep starts
    args = ("-m", "optim.lr=0.01,0.005", f"data.root={tiny_folder}", "batch_size=8", "wandb.mode=disabled", "device=cpu", "epochs=40",
            f"hydra.sweep.dir={sweep}")  # fmt: skip
    first = start_train(*args, cwd=tmp_path)
    wait_for(sweep / "1" / "last.pt", first)  # job 0 has finished, job 1 has completed an epoch
    rival = run_script("train.py", *args, cwd=tmp_path, check=False)
    one_clear_line(rival, 2, f"{sweep} is in use by another run")
    os.killpg(first.pid, signal.SIGKILL)  # a power cut, a SLURM kill -9
    first.wait()
    finished_summary = (sweep / "0" / "summary.json").read_text()
    assert not (sweep / "1" / "summary.json").exists()

    again = run_script("train.py", *args, cwd=tmp_path)
    out = again.stdout + again.stderr
    assert "holds a finished run of these settings: kept" in out and "Resuming" in out
    assert (sweep / "0" / "summary.json").read_text() == finished_summary, "the finished job was not trained again"
    resumed = json.loads((sweep / "1" / "summary.json").read_text())
    assert resumed["status"] == "finished" and resumed["epochs_completed"] == 40
    assert [json.loads(line)["epoch"] for line in (sweep / "1" / "metrics.jsonl").read_text().splitlines()] == list(range(1, 41))

    other = run_script("train.py", *args[:-1], f"hydra.sweep.dir={sweep}", "seed=1", cwd=tmp_path, check=False)
    one_clear_line(other, 2, "holds a run of other settings (seed: 0 then vs 1 now)")
    shutil.rmtree(sweep)
