"""TensorBoard as a second place a run's figures go (`tensorboard=true`, or `logger=tensorboard`): event files in
`<run folder>/tensorboard/`, written through torch's own writer.

Each epoch's figures are scalars at step `epoch`, as in metrics.jsonl and W&B. At the end the run's settings go in as
hyperparameters, with its final figures as their metrics, in the same folder, so TensorBoard's HParams tab lists every
run of a sweep (`tensorboard --logdir <sweep folder>`) as one row to sort and compare, with no server and no account.
Costs: one small event file a run, a few kB an epoch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cifar.run.record import EpochRecord

# The final figures the HParams tab compares runs on: summary.json's key -> the scalar's name.
FINAL_FIGURES = {"test_acc": "final/test_acc", "test_loss": "final/test_loss", "best_val_acc": "final/best_val_acc",
                 "train_seconds": "final/train_seconds", "epochs_completed": "final/epochs"}  # fmt: skip


class TensorBoardSink:
    def __init__(self, output_dir: Path, first_epoch: int, settings: dict[str, Any]):
        """`settings`: the run's experiment settings, flat (config.experiment_settings), which the HParams tab lists."""
        from torch.utils.tensorboard import SummaryWriter  # imported only when asked for: TensorBoard loads ~1 s of modules

        # A resumed run writes into the same folder; events from epochs it trains again (after a kill between the event
        # and last.pt) are dropped, so each epoch is there once.
        self.writer = SummaryWriter(str(output_dir / "tensorboard"), purge_step=first_epoch)
        self.hyperparameters = hyperparameters(settings)

    def log_epoch(self, record: EpochRecord) -> None:
        for name, value in record.row().items():
            if name != "epoch":
                self.writer.add_scalar(name, value, global_step=record.epoch)
        self.writer.flush()  # a kill -9 keeps every finished epoch

    def write_summary(self, summary: dict[str, Any]) -> None:
        """The run's settings as hyperparameters and its final figures as their metrics, in this run's own folder."""
        from torch.utils.tensorboard.summary import hparams

        figures = {name: summary[key] for key, name in FINAL_FIGURES.items() if isinstance(summary.get(key), int | float)}
        # three summaries: the experiment, the session's start and its end
        for summary_proto in hparams(self.hyperparameters | {"status": summary["status"]}, figures):
            self.writer.file_writer.add_summary(summary_proto)
        for name, value in figures.items():
            self.writer.add_scalar(name, value)
        self.writer.close()


def hyperparameters(settings: dict[str, Any]) -> dict[str, Any]:
    """Each setting as a number, string or bool, as the HParams tab takes them (a list as its text); the class names, too
    long for a cell, left out."""
    return {k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in settings.items() if k != "data.classes"}
