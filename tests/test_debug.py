"""The debug presets (conf/debug/): each composes with every experiment, and does what its comment says."""

from __future__ import annotations

import json

import pytest
from conftest import CONF, compose_config, read_metrics, read_summary, run_script

from cifar.core.distributed import Ranks
from cifar.errors import UserError
from cifar.run.build import load_data
from cifar.run.checks import check
from cifar.run.training import train

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
PRESETS = sorted(p.stem for p in (CONF / "debug").glob("*.yaml"))


def test_the_presets_are_the_documented_ones():
    assert PRESETS == ["fdr", "overfit", "profile"]


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_each_preset_composes_with_each_experiment_and_wins(preset, experiment):
    cfg = compose_config([f"experiment={experiment}", f"debug={preset}", "output_dir=."])
    check(cfg)  # e.g. overfit's unflipped batches turn fastnet94's alternating flips off too
    assert cfg.limit_batches and cfg.wandb.mode == "disabled"
    assert cfg.epochs == {"fdr": 1, "overfit": 500, "profile": 1}[preset], "the preset, not the experiment, sets epochs"


def test_fdr_runs_an_experiment_end_to_end_in_its_own_debug_folder(tiny_folder, tmp_path):
    proc = run_script("train.py", "experiment=net_fast", "debug=fdr", f"data.root={tiny_folder}", cwd=tmp_path)
    (run,) = tmp_path.glob("outputs/debug/*/*")
    summary = read_summary(run)
    assert (summary["status"], summary["epochs_completed"]) == ("finished", 1), proc.stdout
    assert "limit_batches=2: 2 batches of each split" in proc.stdout
    assert (run / "ckpt.pt").is_file() and not (run / "wandb").exists()
    assert not list((tmp_path / "outputs").glob("2*")), "not among real runs"


@pytest.mark.parametrize("preset", PRESETS)
def test_a_preset_on_an_experiment_without_a_validation_split_trains_on_every_class(preset, tiny_folder, tmp_path):
    """fastnet94 keeps every training image (data.val_split=0), in the folder copy's order, class by class: the limited
    batches are drawn from all of them, not the first 2 batches (airplanes alone)."""
    cfg = compose_config(["experiment=fastnet94", f"debug={preset}", f"data.root={tiny_folder}", f"output_dir={tmp_path}", "batch_size=8"])
    _, train_set, val_set, test_set = load_data(cfg, Ranks())
    assert val_set is None and len(train_set) == cfg.limit_batches * 8
    assert len(train_set.labels.unique()) > 1 and len(test_set.labels.unique()) > 1, train_set.labels.tolist()


def debug_run(preset: str, folder, out, *extra: str):
    """A preset on the tiny folder, its epochs and W&B as the preset sets them (tiny_overrides would set them again)."""
    return compose_config([f"debug={preset}", f"data.root={folder}", f"output_dir={out}", "batch_size=8", "device=cpu", *extra])


def test_overfit_drives_the_training_loss_near_zero_and_stops(tiny_folder, tmp_path):
    summary = train(debug_run("overfit", tiny_folder, tmp_path, "optim.lr=0.01"))
    history = read_metrics(tmp_path)
    assert history[-1]["train/loss"] < 0.01 <= history[-2]["train/loss"]
    assert summary["status"] == "finished" and summary["epochs_completed"] == len(history) < 500


def test_profile_prints_the_table_and_writes_a_trace_in_the_run_folder(tiny_folder, tmp_path, capsys):
    train(debug_run("profile", tiny_folder, tmp_path))
    trace = json.loads((tmp_path / "profile" / "trace.json").read_text())
    steps = {e["name"] for e in trace["traceEvents"] if e.get("name", "").startswith("ProfilerStep#")}
    assert steps == {f"ProfilerStep#{n}" for n in range(4, 9)}, "5 steps recorded, after 4 unrecorded"
    table = (tmp_path / "profile" / "table.txt").read_text()
    assert "aten::convolution" in table or "aten::conv2d" in table
    assert "Self CPU" in capsys.readouterr().out

    with pytest.raises(UserError, match="profile_steps=20 records steps 5-24 and this run takes 9"):
        train(debug_run("profile", tiny_folder, tmp_path / "more", "profile_steps=20"))
