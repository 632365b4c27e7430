"""Where a run's figures go, as a config group (conf/logger/): W&B (the default), TensorBoard, or neither. Read back
as their users read them: TensorBoard's event files with TensorBoard's own reader, from a real sweep."""

import pytest

from cifar.errors import UserError
from tests.conftest import read_metrics, read_summary, run_script

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2


def read_board(folder):
    """A run's TensorBoard folder as TensorBoard reads it: its scalars by tag, and the hyperparameters of its session."""
    board = EventAccumulator(str(folder / "tensorboard"))
    board.Reload()
    scalars = {tag: [(e.step, e.value) for e in board.Scalars(tag)] for tag in board.Tags()["scalars"]}
    hparams = {}
    for content in board.PluginTagToContent("hparams").values():
        data = plugin_data_pb2.HParamsPluginData.FromString(content)
        if data.HasField("session_start_info"):
            hparams = {k: getattr(v, v.WhichOneof("kind")) for k, v in data.session_start_info.hparams.items()}
    return scalars, hparams


def test_a_sweep_with_logger_tensorboard_is_one_tensorboard_folder_of_comparable_runs(tiny_folder, tmp_path):
    sweep = tmp_path / "sweep"
    run_script("train.py", "-m", "logger=tensorboard", "optim.lr=0.01,0.001", f"data.root={tiny_folder}", "epochs=2",
               "batch_size=8", "device=cpu", f"hydra.sweep.dir={sweep}", cwd=tmp_path)  # fmt: skip
    lrs = set()
    for job in ("0", "1"):
        folder = sweep / job
        assert not (folder / "wandb").exists(), "logger=tensorboard: no W&B run"
        scalars, hparams = read_board(folder)
        for row in read_metrics(folder):  # every epoch's figures, at its epoch, as metrics.jsonl holds them
            for key in ("train/loss", "train/acc", "val/acc", "val/loss", "lr"):
                assert (row["epoch"], pytest.approx(row[key])) in scalars[key]
        summary = read_summary(folder)
        assert scalars["final/test_acc"][0][1] == pytest.approx(summary["test_acc"])
        assert hparams["epochs"] == 2 and hparams["model._target_"] == "cifar.core.models.Net" and hparams["status"] == "finished"
        lrs.add(round(hparams["optim.lr"], 6))
    assert lrs == {0.01, 0.001}, "the HParams tab tells the runs apart by what the sweep varied"


def test_logger_none_writes_the_runs_own_files_only(tiny_folder, tmp_path):
    proc = run_script("train.py", "logger=none", f"data.root={tiny_folder}", "epochs=1", "batch_size=8", "device=cpu",
                      f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, env={"PYTHONPROFILEIMPORTTIME": "1"})  # fmt: skip
    left = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"metrics.jsonl", "summary.json", "ckpt.pt"} <= left and not {"wandb", "tensorboard"} & left
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "torch" in imported and "wandb" not in imported, "a run without W&B does not pay for importing it (~0.7 s)"
    assert "torchmetrics" not in imported, "a run without metrics does not pay for importing torchmetrics (~1-2 s)"


class RecordedRun:
    """Stands in for a wandb Run where only the calls matter: what closing it was told."""

    id = "run-id"

    def __init__(self):
        self.calls = []

    def define_metric(self, *args, **kwargs):
        pass

    def finish(self, exit_code=None):
        self.calls.append(("finish", exit_code))

    def __exit__(self, exc_type, exc, tb):
        self.calls.append(("exit", exc_type))


@pytest.mark.parametrize(
    ("error", "calls"),
    [
        (None, [("exit", None)]),  # finished
        (KeyboardInterrupt(), [("finish", 130), ("exit", None)]),  # Ctrl-C: not "finished" in W&B, and no traceback of W&B's
        (UserError("a mistake"), [("finish", 1), ("exit", None)]),  # a user's mistake: its one line, no traceback of W&B's
        (RuntimeError("a bug"), [("exit", RuntimeError)]),  # a bug: W&B records its traceback
    ],
    ids=["finished", "ctrl-c", "user_error", "bug"],
)
def test_the_wandb_run_ends_as_the_run_did(error, calls):
    from cifar.run.wandb_sink import WandbSink

    run = RecordedRun()
    WandbSink(run).close(*((type(error), error, None) if error else ()))
    assert run.calls == calls
