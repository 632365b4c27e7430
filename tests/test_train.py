"""End to end on a tiny image folder: the files a run leaves, W&B read back, evaluate.py, seeds and resume."""

import json

import pytest
import torch

from cifar.errors import UserError
from cifar.run.evaluation import evaluate
from cifar.run.training import TrainingInterrupted, train
from tests.conftest import (
    compose_config,
    read_metrics,
    read_summary,
    run_script,
    tiny_overrides,
    wandb_inspect,
    wandb_run_of,
    write_image_folder,
)

STUDY_KEYS = {"epoch", "model_state_dict", "optimizer_state_dict", "loss"}

# net_fast's augmentation, as the command line adds it
AUGMENTED = (
    "++data.augment.crop={_target_: cifar.core.augment.Crop, pad: 4, reflect: false}",
    "++data.augment.flip={_target_: cifar.core.augment.Flip}",
)


def test_a_run_leaves_checkpoints_metrics_summary_and_an_offline_wandb_run(trained):
    out, summary = trained  # 2 epochs of the Net, W&B offline
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    assert STUDY_KEYS <= ckpt.keys()
    assert ckpt["config"]["model"]["_target_"] == "cifar.core.models.Net" and ckpt["classes"][0] == "airplane"
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["epoch"] == 2 and len(last["history"]) == 2

    rows = read_metrics(out, times=True)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert {"train/loss", "val/loss", "val/acc", "lr", "time/epoch_seconds", "time/images_per_sec"} <= rows[0].keys()
    best = max(rows, key=lambda r: r["val/acc"])
    assert ckpt["epoch"] == best["epoch"] and ckpt["val_acc"] == best["val/acc"]

    on_disk = read_summary(out)
    assert on_disk == summary and on_disk["status"] == "finished" and on_disk["precision"] in ("bf16", "fp32")
    assert on_disk["best_val_acc"] == best["val/acc"]
    assert on_disk["best_val_acc"] > 0.4, "each class has its own colour: a working pipeline learns it (chance is 10%)"
    assert 0 <= on_disk["test_acc"] <= 1 and set(on_disk["test_per_class_acc"]) == set(ckpt["classes"])
    assert set(on_disk["time_to_val_acc"]) == {"0.6419", "0.784", "0.9", "0.94"}

    logged = wandb_run_of(out)
    assert logged["state"] == "finished"
    assert logged["summary"]["val/acc"]["max"] == best["val/acc"]
    assert logged["summary"]["best_val_acc"] == best["val/acc"] and logged["summary"]["test_acc"] == on_disk["test_acc"]
    assert logged["config"]["optim"]["lr"] == 0.01


def test_evaluate_py_rebuilds_the_model_from_the_checkpoint(trained, tmp_path):
    out, summary = trained
    proc = run_script("evaluate.py", f"ckpt={out / 'ckpt.pt'}", f"data.root={summary['config']['data']['root']}", cwd=tmp_path)
    assert "Total Accuracy" in proc.stdout and "Accuracy per class" in proc.stdout and "Confusion matrix" in proc.stdout
    (report_file,) = tmp_path.glob("outputs/evaluate/*/*/evaluation.json")
    report = json.loads(report_file.read_text())
    assert report["acc"] == summary["test_acc"]  # same weights, same precision, same test set
    assert sum(map(sum, report["confusion"])) == report["n"] == 100
    assert "tta_acc" not in report


def test_flip_tta_averages_an_image_and_its_mirror(tiny_folder):
    from cifar.core.batches import DeviceBatches
    from cifar.core.data import load_dataset
    from cifar.core.hardware import Precision
    from cifar.core.scoring import predict

    class LeftHalfMinusRightHalf(torch.nn.Module):  # mirror-antisymmetric: with TTA every logit becomes 0
        def forward(self, x):
            return (x[..., :16].sum((1, 2, 3)) - x[..., 16:].sum((1, 2, 3)))[:, None].expand(-1, 10) * torch.arange(10)

    test = DeviceBatches(load_dataset(tiny_folder).test, 50, torch.device("cpu"), mean=[0.5] * 3, std=[0.5] * 3, shuffle=False)
    plain = predict(LeftHalfMinusRightHalf(), test, Precision("fp32", "cpu"))
    tta = predict(LeftHalfMinusRightHalf(), test, Precision("fp32", "cpu"), tta=True)
    assert tta.loss == pytest.approx(2.302585, rel=1e-5)  # uniform logits: loss ln(10)
    assert plain.loss != pytest.approx(tta.loss)


def test_evaluate_can_point_at_data_that_moved(tmp_path):
    folder = write_image_folder(tmp_path / "here", {"train": 4, "test": 2})
    summary = train(compose_config(tiny_overrides(folder, tmp_path / "run", "epochs=1")))
    folder.rename(tmp_path / "there")
    cfg = compose_config(
        [f"ckpt={tmp_path / 'run' / 'ckpt.pt'}", f"data.root={tmp_path / 'there'}", f"output_dir={tmp_path / 'eval'}"], "evaluate"
    )
    assert evaluate(cfg)["acc"] == summary["test_acc"]


def test_same_seed_same_numbers_and_resume_continues_exactly(tiny_folder, tmp_path):
    def run(name, *extra):
        return train(compose_config(tiny_overrides(tiny_folder, tmp_path / name, *extra)))

    straight = run("straight", "epochs=3")
    again = run("again", "epochs=3")
    assert read_metrics(tmp_path / "straight") == read_metrics(tmp_path / "again")
    assert straight["test_acc"] == again["test_acc"]

    run("other_seed", "epochs=3", "seed=1")
    assert read_metrics(tmp_path / "other_seed") != read_metrics(tmp_path / "straight")

    run("resumed", "epochs=1")
    resumed = run("ignored", "epochs=3", f"resume={tmp_path / 'resumed' / 'last.pt'}", "wandb.mode=offline")
    # the resumed run continues in its own folder and ends exactly where the uninterrupted one did
    assert resumed["output_dir"] == str(tmp_path / "resumed")
    assert read_metrics(tmp_path / "resumed") == read_metrics(tmp_path / "straight")
    assert (resumed["test_acc"], resumed["best_epoch"]) == (straight["test_acc"], straight["best_epoch"])
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)["model_state_dict"]
    b = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)["model_state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # steps 0-2: all 3 epochs, not only the 2 resumed; step 3: the test set's per-class table and confusion matrix
    assert wandb_run_of(tmp_path / "resumed")["summary"]["_step"] == 3, "the W&B run holds all 3 epochs, not only the 2 resumed"


def test_a_resume_online_continues_its_wandb_run_without_replaying_it(tiny_folder, tmp_path, monkeypatch, caplog):
    import wandb

    run = tmp_path / "run"
    train(compose_config(tiny_overrides(tiny_folder, run, "epochs=1", "wandb.mode=offline")))
    (first,) = (run / "wandb").glob("offline-run-*")
    kept = torch.load(run / "last.pt", weights_only=True)["wandb_run_id"]
    assert first.name.endswith(f"-{kept}"), "last.pt keeps the W&B run's id"

    asked, real_init, server_dir = [], wandb.init, tmp_path / "server"

    def server(**kwargs):  # W&B online continuing the run, played offline (no server here): what was asked is recorded
        asked.append(kwargs)
        server_dir.mkdir(exist_ok=True)
        return real_init(
            **{k: v for k, v in kwargs.items() if k not in ("resume", "settings")} | {"mode": "offline", "dir": str(server_dir)}
        )

    monkeypatch.setattr(wandb, "init", server)
    train(compose_config(tiny_overrides(tiny_folder, tmp_path / "x", "epochs=2", "wandb.mode=online", f"resume={run / 'last.pt'}")))
    assert (asked[0]["id"], asked[0]["resume"]) == (kept, "must")
    (second,) = (server_dir / "wandb").glob("offline-run-*")
    # epoch 2 (step 0) and the test set (step 1) only: epoch 1 is already in the continued run
    assert json.loads(wandb_inspect(second))["summary"]["_step"] == 1
    assert torch.load(run / "last.pt", weights_only=True)["wandb_run_id"] == kept

    monkeypatch.setattr(wandb, "init", real_init)
    with caplog.at_level("INFO"):  # offline: a new W&B run, given the whole history, and the log says why
        train(compose_config(tiny_overrides(tiny_folder, tmp_path / "y", "epochs=3", "wandb.mode=offline", f"resume={run / 'last.pt'}")))
    assert "W&B offline cannot continue a run" in caplog.text


def test_resume_refuses_a_different_experiment(tiny_folder, tmp_path):
    train(compose_config(tiny_overrides(tiny_folder, tmp_path / "run", "epochs=1")))
    with pytest.raises(UserError, match="optim"):
        train(compose_config(tiny_overrides(tiny_folder, tmp_path / "x", "optim.lr=0.5", f"resume={tmp_path / 'run' / 'last.pt'}")))


def test_compile_and_augmentation_train_and_save_plain_state_dicts(tiny_folder, tmp_path):
    summary = train(compose_config(tiny_overrides(tiny_folder, tmp_path, "epochs=1", "compile=true", *AUGMENTED)))
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)["model_state_dict"]
    assert not any(k.startswith("_orig_mod") for k in state)  # loads into an uncompiled Net
    assert summary["status"] == "finished" and summary["best_val_acc"] > 0.1


def test_resume_accepts_the_same_data_in_another_place(tmp_path):
    import shutil

    folder = write_image_folder(tmp_path / "here", {"train": 4, "test": 2})
    train(compose_config(tiny_overrides(folder, tmp_path / "run", "epochs=1")))
    shutil.copytree(folder, tmp_path / "there")
    resumed = train(
        compose_config(tiny_overrides(tmp_path / "there", tmp_path / "x", "epochs=2", f"resume={tmp_path / 'run' / 'last.pt'}"))
    )
    assert resumed["epochs_completed"] == 2 and resumed["data_source"] == f"folder:{tmp_path / 'there'}"


def test_a_scheduled_run_resumes_exactly(tiny_folder, tmp_path):

    def run(name, *extra, wrap_step=None):
        overrides = tiny_overrides(tiny_folder, tmp_path / name, "sched=onecycle", "epochs=3", *extra)
        return train(compose_config(overrides), wrap_step=wrap_step)

    run("straight")

    def ctrl_c_in_epoch_2(step):
        calls = []

        def faulty(x, y):
            calls.append(1)
            if len(calls) == 150:  # 100 steps per epoch here
                raise KeyboardInterrupt
            return step(x, y)

        return faulty

    with pytest.raises(TrainingInterrupted):
        run("resumed", wrap_step=ctrl_c_in_epoch_2)
    run("x", f"resume={tmp_path / 'resumed' / 'last.pt'}")
    straight = read_metrics(tmp_path / "straight")
    assert straight == read_metrics(tmp_path / "resumed")
    assert len({row["lr"] for row in straight}) == 3  # the schedule moved the learning rate
    with pytest.raises(UserError, match="epochs"):  # a schedule is laid out over `epochs`: it cannot grow on resume
        run("y", "epochs=5", f"resume={tmp_path / 'resumed' / 'last.pt'}")


def test_no_weight_decay_reaches_biases_and_batchnorm_when_exempted():
    from cifar.run.build import build_optimizer

    for exempt in (True, False):
        cfg = compose_config(
            ["model=vgg16", "model.batch_norm=true", "optim.weight_decay=0.5", f"decay_norm_and_bias={not exempt}", "output_dir=."]
        )
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.Linear(4, 2))
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        optimizer = build_optimizer(cfg, model)
        for p in model.parameters():
            p.grad = torch.zeros_like(p)  # only weight decay moves anything
        optimizer.step()
        moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
        one_d = {n for n, p in model.named_parameters() if p.ndim == 1}
        assert moved == (set(before) - one_d if exempt else {n for n in before if before[n].abs().sum() > 0})


def test_label_smoothing_reaches_the_training_loss(tiny_folder, tmp_path):
    plain = train(compose_config(tiny_overrides(tiny_folder, tmp_path / "a", "epochs=1")))
    smooth = train(compose_config(tiny_overrides(tiny_folder, tmp_path / "b", "epochs=1", "loss.label_smoothing=0.2")))
    assert read_metrics(tmp_path / "a")[0]["train/loss"] != read_metrics(tmp_path / "b")[0]["train/loss"]
    assert plain["status"] == smooth["status"] == "finished"


def test_time_to_accuracy_is_the_first_epoch_at_or_over_each_threshold():
    from cifar.records import EpochRecord
    from cifar.run.state import time_to_accuracy

    rows = [
        {"epoch": 1, "val/acc": 0.5, "time/epoch_seconds": 10.0},
        {"epoch": 2, "val/acc": 0.7, "time/epoch_seconds": 11.0},
        {"epoch": 3, "val/acc": 0.65, "time/epoch_seconds": 9.0},
        {"epoch": 4, "val/acc": 0.8, "time/epoch_seconds": 10.0},
    ]
    reached = time_to_accuracy([EpochRecord.from_row(row) for row in rows], [0.6419, 0.784, 0.9])
    assert reached == {"0.6419": {"epoch": 2, "train_seconds": 21.0}, "0.784": {"epoch": 4, "train_seconds": 40.0}, "0.9": None}
    no_val = [EpochRecord.from_row({"epoch": 1, "time/epoch_seconds": 1.0})]
    assert time_to_accuracy(no_val, [0.5]) == {"0.5": None}  # no validation split


def test_the_first_epochs_of_a_longer_run_are_the_shorter_run(tiny_folder, tmp_path):
    """What the study's paired rows rely on: a constant lr and per-(seed, epoch) batches make epochs 1..N the N-epoch run."""
    slow = ("optim.lr=0.0005",)  # slow enough that validation still improves in epoch 2
    long = train(compose_config(tiny_overrides(tiny_folder, tmp_path / "long", "epochs=3", "prefix_epochs=[2,5]", *slow)))
    short = train(compose_config(tiny_overrides(tiny_folder, tmp_path / "short", "epochs=2", *slow)))
    assert set(long["prefix_results"]) == {"2"}, "a prefix longer than the run has no result"
    paired = long["prefix_results"]["2"]
    assert paired == {"best_epoch": short["best_epoch"], "best_val_acc": short["best_val_acc"], "test_acc": short["test_acc"]}
    assert short["best_epoch"] == 2, "validation improved in epoch 2: the pairing is tested on a later checkpoint, not the first"
    long_rows = [{k: v for k, v in row.items() if k != "test/acc"} for row in read_metrics(tmp_path / "long")]
    assert long_rows[:2] == read_metrics(tmp_path / "short")


def test_max_minutes_stops_after_the_epoch_tests_the_best_checkpoint_and_resume_finishes(tiny_folder, tmp_path):
    out = tmp_path / "run"
    cut = train(compose_config(tiny_overrides(tiny_folder, out, "epochs=3", "max_minutes=0.00001")))
    assert cut["status"] == "out_of_time" and cut["epochs_completed"] == 1 and cut["test_acc"] is not None
    resumed = train(compose_config(tiny_overrides(tiny_folder, out, "epochs=3", f"resume={out / 'last.pt'}")))
    assert resumed["status"] == "finished" and resumed["epochs_completed"] == 3


def test_a_runs_outcome_is_written_once_by_its_lifecycle_whatever_ends_it(tiny_folder, tmp_path, monkeypatch):
    """summary.json has one writer, the lifecycle, and each ending writes it once: finished, diverged, out of time, and a
    crash in a sweep job (recorded as failed, with its reason, and the sweep goes on)."""
    from cifar.run import lifecycle, tracking

    writes = []
    real_write = tracking.atomic_write_json

    def counting_write(record, path):  # summary.json's writes
        if path.name == "summary.json":
            writes.append(path.parent.name)
        return real_write(record, path)

    monkeypatch.setattr(tracking, "atomic_write_json", counting_write)

    def crash_at_step_3(step):
        calls = iter(range(1, 10**6))
        return lambda x, y: step(x, y) if next(calls) != 3 else (_ for _ in ()).throw(RuntimeError("a bug in step 3"))

    def nan_at_step_3(step):
        calls = iter(range(1, 10**6))

        def nan_loss(x, y):
            out = step(x, y)
            return out._replace(loss=out.loss * (float("nan") if next(calls) == 3 else 1.0))

        return nan_loss

    finished = train(compose_config(tiny_overrides(tiny_folder, tmp_path / "finished")))
    out_of_time = train(compose_config(tiny_overrides(tiny_folder, tmp_path / "out_of_time", "max_minutes=0.00001")))
    diverged = train(compose_config(tiny_overrides(tiny_folder, tmp_path / "diverged")), wrap_step=nan_at_step_3)
    monkeypatch.setattr(lifecycle, "in_sweep", lambda: True)  # a sweep job: a crash fails this job alone
    failed = train(compose_config(tiny_overrides(tiny_folder, tmp_path / "failed")), wrap_step=crash_at_step_3)
    for summary in (finished, out_of_time, diverged, failed):
        assert read_summary(tmp_path / summary["status"]) == summary, "what train() returns is what summary.json holds"
    assert [s["status"] for s in (finished, out_of_time, diverged, failed)] == ["finished", "out_of_time", "diverged", "failed"]
    assert sorted(writes) == sorted(["finished", "out_of_time", "diverged", "failed"]), "one write a run"
    assert failed["error"] == "RuntimeError: a bug in step 3" and failed["epochs_completed"] == 0 and finished["error"] is None
    assert diverged["epochs_completed"] == 0 and diverged["test_acc"] is None and out_of_time["test_acc"] is not None


def test_early_stop_ends_a_run_whose_validation_stopped_improving_and_says_why(tiny_folder, tmp_path):
    """early_stop=N: once the best validation accuracy is N epochs old the run stops, finished, and tests its best
    checkpoint; summary.json says why it stopped before its last epoch."""
    summary = train(compose_config(tiny_overrides(tiny_folder, tmp_path / "run", "epochs=30", "early_stop=2", "optim.lr=0.05")))
    history = read_metrics(tmp_path / "run")
    assert summary["status"] == "finished" and len(history) < 30 and summary["test_acc"] is not None
    assert len(history) == summary["best_epoch"] + 2, "stopped two epochs after its best"
    assert max(m["val/acc"] for m in history[summary["best_epoch"] :]) <= summary["best_val_acc"]
    assert summary["stopped_early"].startswith("early_stop=2: validation accuracy has not improved for 2 epochs")
    whole = train(compose_config(tiny_overrides(tiny_folder, tmp_path / "whole", "epochs=3")))
    assert whole["stopped_early"] is None and whole["epochs_completed"] == 3
