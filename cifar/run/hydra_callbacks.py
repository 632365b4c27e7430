"""Hydra callbacks (registered under `hydra.callbacks` in conf/config.yaml and conf/evaluate.yaml) that run before anything
is written: the checks (a resume's, a search's) and the folder lock; and what a sweep's launching process does when it is
interrupted. The sweep's verdict after its last job is cifar/results/sweep_summary.py's."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from cifar import signals
from cifar.config.evaluate_schema import check_evaluate
from cifar.console import say, stopping_the_command
from cifar.errors import UserError
from cifar.run import folders, plugins, resume
from cifar.run.checks import check
from cifar.run.tensorboard_sink import check_folder as check_tensorboard_folder


class BeforeWriting(Callback):
    """Everything that can refuse a run, before Hydra writes anything (the run's folder, `.hydra/`, train.log): a refused
    run leaves nothing on disk. The config's checks; for `resume=`, the whole resume (cifar/run/resume.py), which then
    makes the resumed run's folder this run's; last, the folder's lock (one line if it is unwritable or in use).

    The lock is held until the process ends, which releases it however it ends. Under torchrun only rank 0 has a folder.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        with stopping_the_command():
            plugins.load(config.plugins)  # what a _target_ may name besides the project's, before it is checked
            check(config)
            if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 checks and writes; the others only read resume=
                if config.resume:
                    resume.make_absolute(config)
                return
            if config.resume:
                resume.prepare(config)
            folders.acquire(Path(config.hydra.run.dir))
            if not config.resume:  # a folder holding a run is refused before Hydra rewrites that run's .hydra/ and train.log
                resume.continuation(Path(config.hydra.run.dir), {}, in_sweep=False)
            if config.tensorboard:  # a file where its event files go: one line now, not a traceback once training starts
                check_tensorboard_folder(Path(config.hydra.run.dir))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        with stopping_the_command():
            # What every job shares (the command line's single values), before Hydra writes multirun.yaml and the jobs'
            # folders; a job's own values are checked as it starts (train() checks first).
            plugins.load(config.plugins)
            check(config)
            if "n_trials" in config.hydra.sweeper:  # a hyperparameter search (Optuna's sweeper)
                check_search(config)
            if config.resume:
                raise UserError(
                    f"resume={config.resume} continues one run, and every job of a sweep would continue it: drop -m, or continue a "
                    "cut sweep by running it again with the same hydra.sweep.dir"
                )
            folders.acquire(Path(config.hydra.sweep.dir))
        # this process launches the jobs: Ctrl-C here stops the sweep
        signals.on_stop(functools.partial(stop_the_sweep, Path(config.hydra.sweep.dir).resolve()))


def check_search(config: DictConfig) -> None:
    """A search is refused where it could not rank a trial: no validation split (trials are ranked by best validation
    accuracy, never by the test set), or no trial to run."""
    if not config.data.val_split:
        raise UserError(
            f"data.val_split={config.data.val_split:g}: a search ranks its trials by validation accuracy; "
            "give it a split (data.val_split=0.2) or search over an experiment that holds one out"
        )
    if config.hydra.sweeper.n_trials < 1:
        raise UserError(f"hydra.sweeper.n_trials={config.hydra.sweeper.n_trials}: a search needs 1 trial or more (20 is the default)")


# How long a cut sweep waits for its jobs in other processes (a joblib launcher's) to record where they stopped: first for
# those the signal reached too (a terminal's Ctrl-C reaches every process of the group), then for those it is passed on to.
GRACE_SECONDS, JOBS_STOP_SECONDS = 3, 120


def stop_the_sweep(sweep: Path, signum, frame) -> None:
    """Ctrl-C or SIGTERM reaching the process that launches a sweep's jobs, outside any run of its own. The jobs training in
    other processes of this machine are waited for until each has written its summary.json and released its folder, so
    that none is cut short by this process ending; one still training after a few seconds did not get the signal (`kill`
    of this process alone) and is passed it. Then it says how to go on. A second Ctrl-C stops waiting; jobs on other
    machines (SLURM's) are theirs to stop."""
    signals.second_ctrl_c_exits()
    holders = {p: pid for p in sweep.iterdir() if p.is_dir() and folders.held_elsewhere(p) and (pid := folders.holder_here(p))}
    jobs = list(holders)
    if jobs:
        say("interrupted:", "bold yellow", f"waiting for {len(jobs)} running jobs to record where they stopped")
    if still := wait_for_release(jobs, GRACE_SECONDS):
        for job in still:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(holders[job], signum)
        wait_for_release(still, JOBS_STOP_SECONDS)
    say(
        "interrupted:",
        "bold yellow",
        f"the sweep stopped; continue it by running the same command again with hydra.sweep.dir={sweep} (finished jobs are kept, "
        "cut ones resume from their last epoch)",
    )
    sys.exit(130)


def wait_for_release(jobs: list[Path], seconds: float) -> list[Path]:
    """Wait up to `seconds` while any of `jobs` is held by another process; those still held then."""
    deadline = time.monotonic() + seconds
    while (held := [p for p in jobs if folders.held_elsewhere(p)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    return held


class EvaluationChecks(Callback):
    """evaluate.py's checks before Hydra writes anything: a refused evaluation leaves no folder (nor does one refused
    later, for a checkpoint it cannot read, say: evaluate.py removes the folder it made)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        with stopping_the_command():
            plugins.load(config.plugins)  # where the checkpoint's model may come from, besides the project
            check_evaluate(config)
            folders.note_new(Path(config.hydra.run.dir))
