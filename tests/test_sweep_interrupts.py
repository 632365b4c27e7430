"""A sweep or a search cut short says how to go on (`-m` refuses resume=), and a search's stored study keeps no trial
RUNNING; a search that could not rank a trial is refused before the first."""

from __future__ import annotations

import os
import signal

import optuna
import pytest
from conftest import finish, one_clear_line, read_summary, run_script, start_script, wait_held

TINY = ("batch_size=8", "wandb.mode=disabled", "device=cpu")


@pytest.mark.slow
def test_a_cut_sweep_job_says_to_run_the_sweep_again(tiny_folder, tmp_path):
    sweep = tmp_path / "sweep"
    args = ("-m", "epochs=2", "seed=0,1", f"data.root={tiny_folder}", *TINY, f"hydra.sweep.dir={sweep}")
    proc = start_script("train.py", *args, cwd=tmp_path, hold="epoch 1")
    wait_held(proc)
    os.killpg(proc.pid, signal.SIGINT)
    out = " ".join(finish(proc).split())
    assert proc.returncode == 130
    assert f"continue the sweep by running the same command again with hydra.sweep.dir={sweep}" in out and "resume=" not in out
    assert read_summary(sweep / "0")["status"] == "interrupted"


@pytest.mark.slow
def test_a_cut_search_fails_its_running_trial_in_the_stored_study(tiny_folder, tmp_path):
    db = tmp_path / "search.db"
    args = ("-m", "hparams_search=net_fast", "epochs=2", "hydra.sweeper.n_trials=3", f"hydra.sweeper.storage=sqlite:///{db}",
            f"data.root={tiny_folder}", *TINY[1:], "batch_size=16", f"hydra.sweep.dir={tmp_path / 'search'}")  # fmt: skip
    proc = start_script("train.py", *args, cwd=tmp_path, hold="epoch 1")
    wait_held(proc)
    os.killpg(proc.pid, signal.SIGINT)
    out = " ".join(finish(proc).split())
    assert proc.returncode == 130 and "a search is not continued trial by trial" in out and "resume=" not in out
    states = [t.state for t in optuna.load_study(study_name="net_fast", storage=f"sqlite:///{db}").trials]
    assert states == [optuna.trial.TrialState.FAIL], "the cut trial is a failure, not RUNNING forever"


def test_a_search_of_no_trials_is_one_line(tiny_folder, tmp_path):
    proc = run_script("train.py", "-m", "hparams_search=net_fast", "hydra.sweeper.n_trials=0", f"data.root={tiny_folder}", *TINY,
                      f"hydra.sweep.dir={tmp_path / 'search'}", cwd=tmp_path, check=False)  # fmt: skip
    one_clear_line(proc, 2, "hydra.sweeper.n_trials=0: a search needs 1 trial or more")


@pytest.mark.slow
@pytest.mark.parametrize("to_group", [True, False], ids=["ctrl_c_to_all", "sigterm_to_the_launcher_alone"])
def test_a_parallel_sweep_cut_short_waits_for_its_jobs_to_record_where_they_stopped(tiny_folder, tmp_path, to_group):
    sweep = tmp_path / "sweep"
    args = ("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1", "epochs=30", f"data.root={tiny_folder}", *TINY,
            f"hydra.sweep.dir={sweep}")  # fmt: skip
    proc = start_script("train.py", *args, cwd=tmp_path, hold="epoch 1")
    wait_held(proc)  # one job holds after its first epoch; the other trains on in its own process
    if to_group:
        os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the launcher and both jobs
    else:
        os.kill(proc.pid, signal.SIGTERM)  # `kill <pid>`: the launcher alone, which passes it on
    out = " ".join(finish(proc).split())
    assert proc.returncode == 130 and "no run was training" not in out
    assert f"the sweep stopped; continue it by running the same command again with hydra.sweep.dir={sweep}" in out
    assert [read_summary(sweep / job)["status"] for job in "01"] == ["interrupted", "interrupted"], "no job cut short unrecorded"
