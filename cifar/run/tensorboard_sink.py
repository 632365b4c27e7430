"""TensorBoard as a second place a run's figures go (`tensorboard=true`, or `logger=tensorboard`): event files in
`<run folder>/tensorboard/`, written through torch's own writer.

Each epoch's figures are scalars at step `epoch`, as in metrics.jsonl and W&B. At the end the run's settings go in as
hyperparameters, with its final figures as their metrics, in the same folder, so TensorBoard's HParams tab lists every
run of a sweep (`tensorboard --logdir <sweep folder>`) as one row to sort and compare, with no server and no account.
The end goes into an event file of its own (`*.final`), which a resumed run's end replaces: one HParams session and
each final figure once, however often the run was resumed.
Costs: one small event file a run (and one a resume), a few kB an epoch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cifar.errors import UserError
from cifar.records import EpochRecord

# The final figures the HParams tab compares runs on: summary.json's key -> the scalar's name.
FINAL_FIGURES = {"test_acc": "final/test_acc", "test_loss": "final/test_loss", "best_val_acc": "final/best_val_acc",
                 "train_seconds": "final/train_seconds", "epochs_completed": "final/epochs"}  # fmt: skip
FOLDER = "tensorboard"  # in the run's folder
FINAL = ".final"  # how the event file of the run's end is named (its last letters)


class TensorBoardSink:
    def __init__(self, output_dir: Path, first_epoch: int, settings: dict[str, Any]):
        """`settings`: the run's experiment settings, flat (config.experiment_settings), which the HParams tab lists."""
        from torch.utils.tensorboard import SummaryWriter  # imported only when asked for: TensorBoard loads ~1 s of modules

        self.folder = check_folder(output_dir)
        # A resumed run writes into the same folder; events from epochs it trains again (after a kill between the event
        # and last.pt) are dropped, so each epoch is there once.
        self.writer = SummaryWriter(str(self.folder), purge_step=first_epoch)
        self.hyperparameters = hyperparameters(settings)

    def log_epoch(self, record: EpochRecord) -> None:
        for name, value in record.row().items():
            if name != "epoch":
                self.writer.add_scalar(name, value, global_step=record.epoch)
        self.writer.flush()  # a kill -9 keeps every finished epoch

    def write_summary(self, summary: dict[str, Any]) -> None:
        """The run's settings as hyperparameters and its final figures as their metrics, in this run's own folder, in
        the event file of its end, which replaces the one an earlier end of this run (before a resume) wrote."""
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        self.writer.close()
        for earlier in self.folder.glob(f"events.out.tfevents.*{FINAL}"):
            earlier.unlink()
        end = SummaryWriter(str(self.folder), filename_suffix=FINAL)
        figures = {name: summary[key] for key, name in FINAL_FIGURES.items() if isinstance(summary.get(key), int | float)}
        # three summaries: the experiment, the session's start and its end
        for summary_proto in hparams(self.hyperparameters | {"status": summary["status"]}, figures):
            end.file_writer.add_summary(summary_proto)
        for name, value in figures.items():
            end.add_scalar(name, value)
        end.close()


def check_folder(output_dir: Path) -> Path:
    """Where a run's event files go, `<run>/tensorboard/`: a file there is one line (a resume's, and a single run's,
    before anything is written: the BeforeWriting callback asks)."""
    folder = output_dir / FOLDER
    if folder.exists() and not folder.is_dir():
        raise UserError(
            f"{folder} is a file, and tensorboard=true writes its event files into a folder of that name: move it, or give this run its own folder"
        )
    return folder


def hyperparameters(settings: dict[str, Any]) -> dict[str, Any]:
    """Each setting as a number, string or bool, as the HParams tab takes them (a list as its text); the class names, too
    long for a cell, left out."""
    return {k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in settings.items() if k != "data.classes"}
