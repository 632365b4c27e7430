"""How a run continues what its folder holds, in one place: `continuation` says whether a run starts anew, resumes or keeps
a finished run (a sweep run again), and `resume=` is checked whole before anything is written.

`resume=<folder>/last.pt`: a run continued in its own folder. Its path is read once, from the config as Hydra parsed
it (quotes, commas and any letters), with `~` expanded and a relative path taken from where the command was started;
every check runs before anything is written (`prepare`, called by the BeforeWriting callback), so a refused resume
changes nothing in the run's folder (comparing data copies reads the one given, which may write its decode cache);
then the state is restored into the run's parts (`restore`; TrainingState.restore reads last.pt's own keys, beside
TrainingState.save that writes them). last.pt is a file from elsewhere: its whole state is checked (state.check_saved
and state.check_fits), and a corrupt, edited or crafted one is one line naming the field. The checks of the data, the
precision and the state need the run's parts built, so a resume builds them once more than a new run (~0.5 s with a
decode cache).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from cifar.config.compose import task_overrides
from cifar.config.identity import differing_settings
from cifar.config.stored import as_written_today
from cifar.core.distributed import Ranks, ranks_from_environment
from cifar.core.hardware import forward_gflop, pick_precision
from cifar.errors import UserError
from cifar.records import read_summary
from cifar.run.build import Parts, build_parts
from cifar.run.checkpoint import load_checkpoint
from cifar.run.folders import FolderNotOurs
from cifar.run.state import NotResumable, TrainingState, check_fits, check_saved
from cifar.run.targets import refuse_unimported

log = logging.getLogger(__name__)

# What a training run leaves in its folder; Hydra's own `.hydra/` and log file do not make a folder a run's.
RUN_FILES = ("summary.json", "last.pt", "ckpt.pt", "metrics.jsonl")


def resume_path(value: str, launched_in: str | Path | None = None) -> Path:
    """The last.pt that `resume=` names, absolute: `~` expanded, a relative path taken from `launched_in` (the folder the
    command was started in, whatever `hydra.job.chdir` does later)."""
    path = Path(value).expanduser()
    return (Path(launched_in or Path.cwd()) / path).resolve() if not path.is_absolute() else path.resolve()


def held_run(folder: Path) -> dict[str, Any] | None:
    """What an earlier run left in `folder`: its status (None if it was killed before writing a summary) and last.pt; None if nothing."""
    if not any((folder / name).exists() for name in RUN_FILES):
        return None
    summary = read_summary(folder) or {}
    last = folder / "last.pt"
    config = as_written_today(summary["config"]) if isinstance(summary.get("config"), dict) else None
    stopped = summary.get("stopped_early")  # why a rule ended its epochs early (early_stop, stop_below_loss, max_minutes)
    return {"status": summary.get("status"), "stopped": stopped, "config": config, "last": last if last.is_file() else None}


def continuation(folder: Path, config: dict, in_sweep: bool) -> tuple[str, Path | None]:
    """What to do with what `folder` holds: ("new", None), ("resume", its last.pt) or ("keep", None). With `resume=` in
    `config` (the run's, resolved), ("resume", the last.pt it names), checked by `prepare` already.

    A single run never reuses a folder that holds a run: it says how to resume it instead. A sweep
    run again with the same `hydra.sweep.dir` continues: a job whose folder holds a finished (or
    diverged) run of the same settings is kept, one that stopped early resumes from its last.pt, one
    that never completed an epoch starts again; a folder holding a run of other settings stops the sweep. A job
    that one of its own rules finished early (early_stop, stop_below_loss) is kept whatever `epochs` now asks for:
    the rule ended it.
    """
    if config.get("resume"):
        return "resume", resume_path(config["resume"])
    held = held_run(folder)
    if held is None:
        return "new", None
    status = held["status"] or "killed"
    if status == "interrupted" and held["last"] is None and not (folder / "ckpt.pt").exists():
        return "new", None  # stopped before its first epoch ended: nothing there to keep or continue
    if not in_sweep:
        how = (
            "one of its own rules finished it, so nothing is left to train"
            if status == "finished" and held["stopped"]
            else f"continue it with resume={held['last']}"
            if held["last"]
            else "it has no last.pt to resume from"
        )
        raise FolderNotOurs(f"{folder} already holds a run ({status}): {how}, or give this run its own folder (hydra.run.dir=...)")
    saved = held["config"] or (load_checkpoint(held["last"])["config"] if held["last"] else None)
    if saved is None:
        return "new", None  # killed before its first epoch ended: nothing to keep or continue
    if detail := differing_settings(saved, config):
        raise FolderNotOurs(f"{folder} holds a run of other settings ({detail}): give this sweep its own hydra.sweep.dir")
    ended_here = status in ("finished", "diverged") and not differing_settings(saved, config, with_epochs=True)
    if ended_here or (status == "finished" and held["stopped"]):
        return "keep", None
    return ("resume", held["last"]) if held["last"] else ("new", None)


def prepare(config: DictConfig) -> None:
    """Before Hydra writes anything: `resume=` checked whole (the file, its settings, what is left to train, its best
    checkpoint, its data and its precision); then the run's folder becomes the resumed run's and `resume` its absolute
    path. `config` is Hydra's whole config (the job's and `hydra`), at the start of a single run."""
    path = resume_path(config.resume)
    given = {o.key_or_group: o for o in task_overrides(list(config.hydra.overrides.hydra))}
    if "hydra.run.dir" in given and resume_path(config.hydra.run.dir) != path.parent:
        raise UserError(
            f"resume={config.resume} continues the run in its own folder, {path.parent}: drop hydra.run.dir={config.hydra.run.dir}"
        )
    with read_write(config), open_dict(config):
        config.hydra.run.dir = str(path.parent)
    make_absolute(config)
    job = copy.deepcopy(config)
    with read_write(job), open_dict(job):
        del job["hydra"]
        job.output_dir = str(path.parent)  # `${hydra:runtime.output_dir}`, which is set only once the job starts
    saved = load_state(str(path), OmegaConf.to_container(job, resolve=True))
    parts = build_parts(job, Ranks())  # in this process alone: under torchrun, rank 0 checks before any rank starts
    check_data(str(path), saved.get("data_id"), parts.data.identity)
    device, world = parts.device, ranks_from_environment().world
    precision = pick_precision(device, job.amp, job.amp_dtype, lambda: forward_gflop(parts.model, job.batch_size // world, device))
    check_precision(str(path), saved.get("precision"), precision.name)
    unfit(str(path), check_fits, saved, parts)


def make_absolute(config: DictConfig) -> None:
    """`resume` as the absolute path of its last.pt: what every rank, and a job that changes folder, reads."""
    with read_write(config), open_dict(config):
        config.resume = str(resume_path(config.resume))


def load_state(path: str, config: dict) -> dict:
    """last.pt of the run to continue, checked against this run's settings and against what is left to do."""
    saved = load_checkpoint(path)
    if isinstance(saved["config"], dict):  # a plugin's class: its file is the user's to give (state.check_saved checks the rest)
        refuse_unimported(saved["config"], saved["config"].get("plugins"), path, "resume it")
    if "scaler_state_dict" not in saved:
        raise UserError(
            f"resume={path} holds the best weights only (ckpt.pt): resume from last.pt in the same folder, which holds the training state"
        )
    unfit(path, check_saved, saved)
    if detail := differing_settings(saved["config"], config):
        raise UserError(f"resume={path} was trained with other settings ({detail}): pass the same overrides as the original run")
    check_epochs(path, saved["epoch"], config["epochs"], held_run(Path(path).parent))
    check_best(path, saved["best_epoch"])
    return saved


def unfit(path: str, check, *against) -> None:
    """`check(saved, *against)` from cifar/run/state.py, a field it finds wrong one line that names the file and the field."""
    try:
        check(*against)
    except NotResumable as e:
        raise UserError(
            f"resume={path} is not a state train.py saved: {e}; the file is corrupt or was edited: resume from a copy train.py "
            "wrote, or train anew"
        ) from None


def check_epochs(path: str, trained: int, epochs: int, held: dict | None) -> None:
    """A resume trains on to `epochs`: asking for fewer than were trained, or for no more once the run finished, would
    only report the old run again as if it had just finished. A run that one of its own rules finished early
    (early_stop, stop_below_loss) is finished too: resumed, it would train past its own stop and rewrite its records."""
    if trained > epochs:
        raise UserError(f"resume={path} has trained {trained} epochs and epochs={epochs} asks for fewer: pass epochs={trained} or more")
    if held and held["status"] == "finished" and held["stopped"]:
        raise UserError(
            f"resume={path} is a finished run, stopped early by its own rule ({held['stopped']}): nothing is left to train and "
            "its records stay as they are; read it with `python evaluate.py ckpt=...`, or train anew with other settings"
        )
    if trained == epochs and held and held["status"] == "finished":
        raise UserError(
            f"resume={path} is a finished run of {epochs} epochs: nothing is left to train. Pass a larger epochs= to train on "
            "(a run with a constant lr can), or read it with `python evaluate.py ckpt=...`"
        )


def check_best(path: str, best_epoch: int | None) -> None:
    """A run ends by testing its best checkpoint, ckpt.pt beside last.pt: resuming without it would train to the end and
    then have nothing to test, unless a later epoch happened to validate better."""
    if best_epoch is not None and not (Path(path).parent / "ckpt.pt").is_file():
        raise UserError(
            f"resume={path}: its folder has no ckpt.pt, the best checkpoint so far (epoch {best_epoch}), which the run is tested with "
            "at the end: put it back beside last.pt (a run's folder is copied whole), or train anew"
        )


def check_data(path: str, saved: str | None, now: str) -> None:
    """A run continues on the images it started on: another copy would validate on other images (a best checkpoint
    picked across two validation sets) and test on another test set. A last.pt from before copies were told apart
    (`saved` None) continues, with a warning."""
    if saved is None:
        log.warning("%s does not say which copy of the data it was trained on (an older last.pt): continuing on this one", path)
    elif saved != now:
        raise UserError(
            f"resume={path} was trained on another copy of the data (its images hash to {saved}, these to {now}): point "
            "data.root at the copy it started on, or train anew on this one"
        )


def check_precision(path: str, saved: str | None, now: str) -> None:
    """A run continues in the precision it was trained in: fp16's GradScaler state, for one, exists in fp16 runs only.
    A last.pt written before precisions were recorded (`saved` None) continues in this run's, with a warning."""
    if saved is None:
        log.warning("%s does not say which precision it was trained in (an older last.pt): continuing in %s", path, now)
    elif saved != now:
        flag = "amp=false" if saved == "fp32" else f"amp=true amp_dtype={saved}"
        raise UserError(f"resume={path} was trained in {saved} and this run would train in {now}: pass {flag} (and the device it ran on)")


def restore(path: str, saved: dict[str, Any], parts: Parts) -> TrainingState:
    """The checks that need the built run (its data and precision), then last.pt's state loaded into `parts`."""
    check_data(path, saved.get("data_id"), parts.data.identity)
    check_precision(path, saved.get("precision"), parts.precision.name)
    unfit(path, check_fits, saved, parts)
    log.info("Resuming %s at epoch %d", path, saved["epoch"] + 1)
    return TrainingState.restore(saved, parts)
