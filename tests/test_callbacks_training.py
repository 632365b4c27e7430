"""The loop's callbacks (cifar/core/callbacks.py) and the loss as a config group: hooks called in order with the run's
state, a callback's stop recorded and the best checkpoint tested, checkpoint_every's files, and old configs' loss.
(tests/test_callbacks.py is Hydra's callbacks'.)"""

import dataclasses
import importlib

import pytest
import torch

from cifar.config.compose import compose_config
from cifar.config.identity import differing_settings
from cifar.config.old_keys import refuse_old_keys
from cifar.config.stored import as_written_today
from cifar.core.callbacks import Callback
from cifar.errors import UserError
from cifar.run import targets
from cifar.run.checkpoint import load_checkpoint
from cifar.run.checks import check
from cifar.run.training import train
from tests.conftest import read_metrics, read_summary, tiny_overrides

CALLS: list[tuple] = []  # what Recorder saw, hook by hook: read through `recorded()`


def recorded() -> list[tuple]:
    """The CALLS of this module as the config's `_target_` imported it (pytest's importlib mode imports its own copy)."""
    return importlib.import_module("tests.test_callbacks_training").CALLS


class Recorder(Callback):
    """Records each hook with what the state said then; asks to stop after epoch `stop_after`."""

    def __init__(self, stop_after: int = 0):
        self.stop_after = stop_after

    def on_fit_start(self, state):
        CALLS.append(("fit_start", state.epoch, len(state.history), state.run_dir.name, state.main))

    def on_train_epoch_start(self, state):
        CALLS.append(("train_epoch_start", state.epoch, len(state.history)))

    def on_train_batch_end(self, state):
        if not CALLS[-1][0] == "train_batch_end":  # one entry an epoch: the steps are counted below
            CALLS.append(("train_batch_end", state.epoch))

    def on_train_epoch_end(self, state):
        CALLS.append(("train_epoch_end", state.epoch, len(state.history)))

    def on_epoch_end(self, state, record):
        CALLS.append(("epoch_end", state.epoch, record.epoch, len(state.history), state.checkpoint()["epoch"]))
        return f"the recorder has seen {state.epoch} epochs" if state.epoch == self.stop_after else None

    def on_fit_end(self, state, outcome):
        CALLS.append(("fit_end", state.epoch, outcome))


@pytest.fixture
def tests_may_name_callbacks(monkeypatch):
    """The callback rule, widened to this module: the recorder goes through the config, as a plugin's would."""
    rule = targets.RULES["callback"]
    monkeypatch.setitem(targets.RULES, "callback", dataclasses.replace(rule, packages=(*rule.packages, "tests")))
    recorded().clear()


def test_a_callbacks_hooks_are_called_in_order_and_its_stop_ends_the_run_as_finished(tiny_folder, tmp_path, tests_may_name_callbacks):
    out = tmp_path / "run"
    node = "+callbacks.recorder._target_=tests.test_callbacks_training.Recorder"
    summary = train(compose_config(tiny_overrides(tiny_folder, out, "epochs=4", node, "+callbacks.recorder.stop_after=2")))
    calls = recorded()
    assert [c for c in calls if c[0] != "fit_end"] == [
        ("fit_start", 0, 0, "run", True),
        *[
            entry
            for epoch in (1, 2)
            for entry in (
                ("train_epoch_start", epoch, epoch - 1),
                ("train_batch_end", epoch),
                ("train_epoch_end", epoch, epoch - 1),  # before validation: the epoch is not in the history yet
                ("epoch_end", epoch, epoch, epoch, epoch),  # recorded, checkpointed: the checkpoint is this epoch's
            )
        ],
    ]
    reason = "the recorder has seen 2 epochs"
    (_, epoch, outcome) = calls[-1]
    assert epoch == 2 and outcome.status == "finished" and outcome.stopped_early == reason
    assert summary["status"] == "finished" and summary["stopped_early"] == reason and summary["epochs_completed"] == 2
    assert outcome.test_acc == summary["test_acc"] is not None and outcome.best_epoch == summary["tested_epoch"] == summary["best_epoch"]
    assert len(read_metrics(out)) == 2 and read_summary(out)["stopped_early"] == reason


def test_a_stop_asked_after_the_last_epoch_changes_nothing(tiny_folder, tmp_path, tests_may_name_callbacks):
    node = "+callbacks.recorder._target_=tests.test_callbacks_training.Recorder"
    summary = train(compose_config(tiny_overrides(tiny_folder, tmp_path / "run", node, "+callbacks.recorder.stop_after=2")))
    assert summary["status"] == "finished" and summary["stopped_early"] is None and summary["epochs_completed"] == 2


def test_checkpoint_every_keeps_the_epochs_checkpoints_as_ckpt_pt_holds_them(tiny_folder, tmp_path):
    out = tmp_path / "run"
    train(compose_config(tiny_overrides(tiny_folder, out, "epochs=3", "callbacks=checkpoint_every", "callbacks.checkpoint_every.every=2")))
    assert sorted(p.name for p in out.glob("epoch_*.pt")) == ["epoch_2.pt", "epoch_3.pt"], "every 2 epochs, and the last"
    kept, last = load_checkpoint(out / "epoch_3.pt"), load_checkpoint(out / "last.pt")
    assert kept["epoch"] == 3 and kept.keys() == load_checkpoint(out / "ckpt.pt").keys()
    assert all(torch.equal(kept["model_state_dict"][k], v) for k, v in last["model_state_dict"].items())
    assert load_checkpoint(out / "epoch_2.pt")["epoch"] == 2


def test_callbacks_are_admitted_before_anything_is_built(compose_cfg):
    with pytest.raises(UserError, match="a config may build only a Callback class of this project"):
        check(compose_cfg(["output_dir=.", "+callbacks.x._target_=os.system"]))
    with pytest.raises(UserError, match="takes no argument 'evry'"):
        check(compose_cfg(["output_dir=.", "callbacks=checkpoint_every", "+callbacks.checkpoint_every.evry=2"]))
    with pytest.raises(UserError, match="keep a checkpoint every 1 epoch or more"):
        targets.build_each(
            compose_cfg(["output_dir=.", "callbacks=checkpoint_every", "callbacks.checkpoint_every.every=0"]).callbacks, "callback"
        )


def test_the_loss_is_any_torch_nn_loss_and_nothing_else(compose_cfg):
    check(compose_cfg(["output_dir=.", "loss._target_=torch.nn.MultiMarginLoss", "~loss.label_smoothing"]))
    with pytest.raises(UserError, match=r"a config may build only a loss class of torch\.nn"):
        check(compose_cfg(["output_dir=.", "loss._target_=torch.nn.Identity", "~loss.label_smoothing"]))
    with pytest.raises(UserError, match=r"loss\.label_smoothing=abc"):
        check(compose_cfg(["output_dir=.", "loss.label_smoothing=abc"]))


def test_a_stored_label_smoothing_reads_as_todays_loss_and_compares_equal():
    """Every run written before conf/loss/ stored a top-level label_smoothing: it resumes and compares as today's loss."""
    old = {"label_smoothing": 0.2, "sched": {"_target_": "cifar.core.schedules.none"}}
    today = as_written_today(old)
    assert "label_smoothing" not in today and today["loss"] == {"_target_": "torch.nn.CrossEntropyLoss", "label_smoothing": 0.2}
    assert today["callbacks"] == {}, "runs written before callbacks had none"
    assert as_written_today({"sched": old["sched"]})["loss"]["label_smoothing"] == 0.0
    assert as_written_today(today) == today
    new = today | {"callbacks": {"every": {"_target_": "cifar.core.callbacks.CheckpointEvery", "every": 2}}}
    assert differing_settings(today, new) == "", "callbacks are bookkeeping: one added on resume changes no experiment"


def test_label_smoothing_on_the_command_line_says_where_it_lives_now():
    with pytest.raises(UserError, match=r"^label_smoothing=0.1: .* use loss\.label_smoothing=0.1$"):
        refuse_old_keys(["epochs=2", "label_smoothing=0.1"])
    refuse_old_keys(["loss.label_smoothing=0.1"])


@pytest.mark.parametrize(
    ("overrides", "said"),
    [
        (
            ["loss.label_smoothing=1.5"],
            r"^loss=torch.nn.CrossEntropyLoss\(label_smoothing=1.5\) failed a trial step on cpu \(RuntimeError: label_smoothing",
        ),
        (
            ["+loss.reduction=none"],
            r"^loss=.*reduction=none\) failed a trial step on cpu \(ValueError: it gave \(2,\), not one finite number\)",
        ),
        (
            ["+callbacks.x._target_=cifar.core.callbacks.CheckpointEvery", "+callbacks.x.every=0"],
            r"^CheckpointEvery\(every=0\): keep a checkpoint",
        ),
        (["+loss.weight=[1,2]"], r"^loss.weight=\[1, 2\]: CrossEntropyLoss's weight is a tensor, which a config cannot give"),
        (["loss._target_=torch.nn.MSELoss"], r"^loss.label_smoothing: MSELoss takes no argument .* drop it \(~loss.label_smoothing\)$"),
    ],
)
def test_a_loss_or_callback_that_fails_when_built_or_called_is_one_line_before_anything_is_written(compose_cfg, overrides, said):
    """check() builds the loss and calls it on a stand-in batch, and builds each callback, as the run would: what torch
    or the class refuses only then is one line, not a traceback after the data is read."""
    with pytest.raises(UserError, match=said):
        check(compose_cfg([*overrides, "device=cpu", "output_dir=."]))
