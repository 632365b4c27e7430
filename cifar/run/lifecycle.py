"""How a run ends, in one place: its status, its summary (summary.json and W&B), W&B's exit code, what reaches the caller.

finished      every epoch ran; the best checkpoint was tested
diverged      the training loss stopped being finite; the best checkpoint so far was tested
out_of_time   this command's max_minutes was reached; the best checkpoint so far was tested (resume= continues)
interrupted   Ctrl-C or SIGTERM; summary.json says so and TrainingInterrupted says how to resume
failed        an error; summary.json says so and why (where the disk still takes it), and the error goes on up; in a
              sweep it stops this job alone, which is recorded as failed with its one-line reason, and the sweep
              (or a hyperparameter search, which needs a value from every trial) goes on

`RunLifecycle` decides the status and is the only writer of summary.json. A run lives inside it from the moment
it holds its folder, and every way of ending reaches it: as the block's end, as a stop the engine reports (Diverged,
OutOfTime, a stop rule's or a callback's: stopped_early), or as an exception (KeyboardInterrupt from Ctrl-C or SIGTERM,
UserError from a mistake).
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from cifar.config.identity import experiment_settings
from cifar.console import print_run_summary, say
from cifar.core.distributed import Ranks
from cifar.core.hardware import comparable_by
from cifar.errors import UserError, first_line
from cifar.predictions import FILE as PREDICTIONS_FILE
from cifar.predictions import TestPredictions, write_predictions
from cifar.records import EpochRecord, read_summary
from cifar.run.build import Parts
from cifar.run.folders import FolderNotOurs
from cifar.run.state import TrainingState, prefix_results, time_to_accuracy
from cifar.run.tensorboard_sink import TensorBoardSink
from cifar.run.tracking import NoRecord, Recorder, run_identity, write_summary

if TYPE_CHECKING:
    from cifar.run.wandb_sink import WandbSink

log = logging.getLogger(__name__)


class TrainingInterrupted(Exception):
    """Ctrl-C or SIGTERM in a run: where it can be resumed from (None if no epoch completed) and the epoch it stopped in
    (0: before training began)."""

    def __init__(self, last: Path | None, epoch: int):
        super().__init__(f"interrupted in epoch {epoch}")
        self.last, self.epoch = last, epoch


class RunStopped(Exception):
    """Training ends early by one of the run's own rules; the best checkpoint so far is still tested."""

    status = "stopped"


class Diverged(RunStopped):
    status = "diverged"

    def __init__(self, epoch: int):
        super().__init__(f"epoch {epoch}: the training loss is not finite: stopping this run as diverged (try a lower optim.lr)")


class OutOfTime(RunStopped):
    status = "out_of_time"

    def __init__(self, epoch: int, epochs: int, max_minutes: float, last: Path):
        super().__init__(
            f"max_minutes={max_minutes:g} reached after epoch {epoch} of {epochs}: continue with the same command plus resume={last}, "
            f"which trains up to max_minutes={max_minutes:g} more"
        )


class RunLifecycle:
    """The run's outcome, from holding its folder to its summary; the W&B run and record, opened by `start`.

    The W&B run is closed before an exception leaves, so W&B prints no traceback of its own for a user's
    mistake (a UserError: one line) or for Ctrl-C (TrainingInterrupted: how to resume).
    """

    def __init__(self, cfg: DictConfig, output_dir: Path, ranks: Ranks):
        self.cfg, self.output_dir, self.ranks = cfg, output_dir, ranks
        self.name, self.group = run_identity(cfg)
        self.status, self.started = "running", time.perf_counter()
        self.summary: dict[str, Any] | None = None  # what train() returns
        self.test: dict | None = None  # the best checkpoint's test report, once tested
        self.test_loss: float | None = None
        self.training = False  # set by start(): the W&B run and the record are open
        self.stopped: str | None = None  # why the epochs ended before the last one, when a rule or divergence ended them
        self.recorder: Recorder | NoRecord = NoRecord()
        self.earlier: dict[str, Any] = {}  # the summary of the run a resume continues (its test figures, until it tests again)
        self.logged = 0  # the epochs metrics.jsonl holds

    def __enter__(self) -> RunLifecycle:
        return self

    def keep(self, summary: dict[str, Any]) -> None:
        """A sweep run again, and this job's folder holds a finished run of these settings: it stays as it is."""
        self.status, self.summary = summary["status"], summary

    def start(self, config: dict, parts: Parts, state: TrainingState) -> None:
        """Training begins: the W&B run and the record open, a resumed run's epochs first."""
        self.config, self.parts, self.state = config, parts, state
        self.earlier = (read_summary(self.output_dir) or {}) if state.restored else {}
        self.logged = state.epoch  # the Recorder writes the restored epochs into metrics.jsonl
        self.comparable = comparable_by(parts.device)  # probed once: W&B's config and summary.json both record it
        wandb_sink = None
        if self.ranks.main:  # rank 0 records the run; under torchrun the others keep NoRecord
            wandb_sink, continued = open_wandb(self.cfg.wandb, config, state, self.output_dir)  # online, continues state.wandb_id
            try:
                settings = experiment_settings(config, with_epochs=True)
                board = TensorBoardSink(self.output_dir, state.epoch + 1, settings) if self.cfg.tensorboard else None
                self.recorder = Recorder(self.output_dir, state.history, wandb=wandb_sink, replay=not continued, tensorboard=board)
            except BaseException as e:  # a W&B run opened for a run that never started is closed, as the run ended
                if wandb_sink:
                    wandb_sink.close(type(e), e, e.__traceback__)
                raise
        # last.pt keeps the W&B run's id: a resume online continues that run
        state.wandb_id = wandb_sink.id if wandb_sink else None
        self.recorder.ran_on({"data_id": parts.data.identity, "precision": parts.precision.name} | self.comparable)
        self.training = True

    def log_epoch(self, record: EpochRecord) -> None:
        """An epoch saved in last.pt, into metrics.jsonl and the sinks."""
        self.recorder.log_epoch(record)
        self.logged = record.epoch

    def stopped_early(self, stop: RunStopped) -> None:
        """The epochs ended before the last (a stop rule, a callback's reason, or divergence): the status says which, and
        the best checkpoint so far was tested."""
        self.status, self.stopped = stop.status, str(stop)
        kept = f"ckpt.pt from epoch {self.state.best_epoch} is kept" if self.state.best_epoch else "there is no checkpoint"
        log.log(logging.INFO if stop.status == "finished" else logging.WARNING, "%s; %s", stop, kept)

    def tested(
        self, test: dict | None, test_loss: float | None, predictions: TestPredictions | None = None, sample: dict | None = None
    ) -> None:
        """The best checkpoint's test report and loss (None, None without a checkpoint), its predictions image by image
        (written now, by rank 0, to test_predictions.npz: a test result is on disk the moment it exists), and its classes
        for a few test images (`sample`, see training.sample_predictions; None with samples=0, without a checkpoint, and
        on every torchrun rank but 0)."""
        self.test, self.test_loss = test, test_loss
        if test and predictions and self.ranks.main:
            write_predictions(predictions, self.output_dir / PREDICTIONS_FILE)
        if test:
            self.recorder.log_test(test, sample)

    def __exit__(self, exc_type, exc, tb) -> bool:
        """The run's outcome, written once: a finished (or rule-stopped) run's summary, or how an exception ended it."""
        if exc_type is None:
            if self.summary is None:  # a kept run (a sweep run again) has its summary already, and stays as it was
                self.finish()
            return False
        if isinstance(exc, FolderNotOurs):  # not this run's folder: nothing of it is touched
            return False
        return self.ended_by(exc_type, exc, tb)

    def finish(self) -> None:
        """The epochs ran (or a rule stopped them) and the best checkpoint was tested: summary.json, the model artifact
        with wandb.log_model, the W&B run closed, the summary printed."""
        self.status = "finished" if self.status == "running" else self.status
        self.summary = self.summarize()
        if self.test and self.cfg.wandb.log_model:
            keys = ("best_epoch", "best_val_acc", "test_acc", "test_acc_tta", "test_tta", "precision", "name", "group")
            metadata = {k: self.summary.get(k) for k in keys} | {"model": self.config["model"]["_target_"]}
            self.recorder.log_model(self.output_dir / "ckpt.pt", metadata)
        self.write(self.summary)
        self.recorder.close()
        if self.ranks.main:
            print_run_summary(self.summary)

    def ended_by(self, exc_type, exc, tb) -> bool:
        """Ctrl-C (interrupted: raises how to resume) or an error (failed): what the run got to is written, the W&B run
        closed with a non-zero code. True (swallowed) in a sweep, whose other jobs go on; else the error goes on up."""
        interrupted = issubclass(exc_type, KeyboardInterrupt)
        self.status = "interrupted" if interrupted else "failed"
        error = None if interrupted else str(exc) if isinstance(exc, UserError) else f"{exc_type.__name__}: {first_line(exc)}"
        if self.training and self.ranks.main:  # rank 0 saves last.pt and keeps the record
            with contextlib.suppress(OSError, RuntimeError, UserError):  # last.pt unreadable, a full disk: the record stays
                self.as_last_pt_holds()
        self.summary = self.summarize(error) if self.training else self.summary_before_training(error)
        with contextlib.suppress(OSError, UserError):  # a full disk may refuse summary.json too: the error still says why
            self.write(self.summary)
        if self.training:
            self.recorder.close(exc_type, exc, tb)
        if interrupted:
            raise self.how_to_resume() from None
        if not in_sweep():
            return False  # the error goes on up: one line for a UserError, the traceback for a bug
        if not isinstance(exc, UserError):
            log.error("this job crashed", exc_info=(exc_type, exc, tb))  # a bug's traceback is worth seeing in full
        say("error:", "bold red", f"{error} (this job is marked failed; the sweep goes on)")
        return True

    def as_last_pt_holds(self) -> None:
        """The record of a run that stopped mid-way, made to agree with last.pt, the one way back: an epoch is recorded
        (the state), then saved (ckpt.pt, last.pt), then logged (metrics.jsonl and the sinks), and an interrupt or error
        may land between any two. The state goes back to the epoch last.pt holds, and an epoch it holds that is not yet
        logged is logged now."""
        last = self.output_dir / "last.pt"
        saved = torch.load(last, map_location="cpu", weights_only=True, mmap=True)["epoch"] if last.is_file() else 0
        self.state = self.state.as_of(saved)
        for record in self.state.history[self.logged :]:
            self.log_epoch(record)

    def how_to_resume(self) -> TrainingInterrupted:
        """last.pt holds the last completed epoch: of this run, or (interrupted while setting up a resume) of the one resumed."""
        last = self.output_dir / "last.pt"
        if self.training:
            return TrainingInterrupted(last if self.state.history else None, self.state.epoch + 1)
        return TrainingInterrupted(last if last.is_file() else None, 0)

    def summary_before_training(self, error: str | None) -> dict[str, Any] | None:
        """A run that ended while setting up: a new run's interrupted set-up (decoding the data, say) and a sweep job's
        failure say so (the sweep verdict shows it by name); a resumed run's summary stays as it was, its last.pt still
        the way back; a single run's mistake leaves nothing behind (its one line says it)."""
        before = read_summary(self.output_dir)
        if self.status == "interrupted":
            return (
                None if before else {"name": self.name, "status": "interrupted", "epochs_completed": 0, "output_dir": str(self.output_dir)}
            )
        if not in_sweep():
            return None
        return {"name": self.name, **(before or {}), "status": "failed", "error": error}

    def summarize(self, error: str | None = None) -> dict[str, Any]:
        state, parts = self.state, self.parts
        return {
            "status": self.status,
            "error": error,  # a failed run's one-line reason
            "name": state.run_name,
            "group": state.run_group,
            "epochs_completed": len(state.history),
            "stopped_early": self.stopped,  # why, when the epochs ended before the last (early_stop, stop_below_loss, ...)
            "best_epoch": state.best_epoch,
            "best_val_acc": state.best_val_acc,
            **self.test_figures(),
            "train_seconds": state.train_seconds,
            "time_to_val_acc": time_to_accuracy(state.history, self.cfg.acc_thresholds),
            "prefix_results": prefix_results(state.history, self.cfg.prefix_epochs),
            "wall_seconds": time.perf_counter() - self.started,
            "precision": parts.precision.name,
            "device": str(parts.device),
            **self.comparable,  # device_name, cpu_class, torch_version, torchvision_version, cuda_version
            "processes": self.ranks.world,  # torchrun processes that trained the model together
            "threads": torch.get_num_threads(),  # CPU threads of each
            "params": parts.n_params,
            "dataset": parts.data.name,
            "data_source": parts.data.source,
            "data_id": parts.data.identity,  # a hash of the images themselves: runs with the same one saw the same data
            "output_dir": str(self.output_dir),
            "config": self.config,
        }

    def test_figures(self) -> dict[str, Any]:
        """The best checkpoint's test figures, and the epoch of the checkpoint they are of. A resumed run that ends
        untested (interrupted, failed) keeps those of the run it continued: a test result is never erased from its
        record, only replaced by a later one."""
        if self.test is None and self.earlier.get("test_acc") is not None:
            return {key: self.earlier.get(key) for key in TEST_FIGURES} | {
                "tested_epoch": self.earlier.get("tested_epoch", self.earlier.get("best_epoch"))  # a summary from before tested_epoch
            }
        test = self.test or {}
        return {
            "test_acc": test.get("acc"),
            "test_loss": self.test_loss,
            "test_per_class_acc": test.get("per_class_acc"),
            "test_acc_tta": test.get("tta_acc"),  # with test_tta's test-time augmentation, beside the plain test_acc
            "test_tta": test.get("tta"),
            "tested_epoch": self.state.best_epoch if self.test else None,
        }

    def write(self, summary: dict[str, Any]) -> None:
        """summary.json, by rank 0; W&B's summary too once the W&B run is open."""
        if summary is None or not self.ranks.main:
            return
        if self.training:
            self.recorder.write_summary(summary)
        else:
            write_summary(self.output_dir, summary)


# A summary's test figures: of the best checkpoint, tested at the run's end.
TEST_FIGURES = ("test_acc", "test_loss", "test_per_class_acc", "test_acc_tta", "test_tta", "tested_epoch")


def open_wandb(settings: DictConfig, config: dict, state: TrainingState, output_dir: Path) -> tuple[WandbSink | None, bool]:
    """The run's W&B run (None with wandb.mode=disabled), and whether it continues the resumed run's W&B run (online)."""
    if settings.mode == "disabled":
        return None, False
    from cifar.run.wandb_sink import WandbSink, open_wandb_run  # wandb's ~0.7 s of imports, only for runs that record to it

    run, continued = open_wandb_run(settings, state.run_name, state.run_group, output_dir, config, continue_id=state.wandb_id)
    return WandbSink(run), continued


def search_value(summary: dict) -> float:
    """What a hyperparameter search maximises (train.py returns it): the best validation accuracy; 0 for a trial
    that reached none (failed, or diverged in its first epoch), so that the search ranks it last instead of stopping."""
    return summary.get("best_val_acc") or 0.0


def in_sweep() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def sweep_and_search() -> tuple[str | None, bool]:
    """This job's sweep folder (None outside a sweep) and whether the sweep is a hyperparameter search (Optuna's)."""
    if not in_sweep():
        return None, False
    hc = HydraConfig.get()
    return hc.sweep.dir, hc.runtime.choices.get("hydra/sweeper") == "optuna"


def sweep_of_this_experiment() -> tuple[dict, bool]:
    """The sweep an experiment declares (`hydra.sweeper.params`, which only `-m` runs) and whether this is a multirun."""
    if not HydraConfig.initialized():
        return {}, False
    params = HydraConfig.get().sweeper.get("params") or {}
    return dict(params), in_sweep()
