"""docs/extending.md runs as written: each section's files go into a folder outside the checkout (`~/research`, in a
temporary home), each of its commands runs as a real `python train.py` from there on the tiny image folder, and what the
section promises is checked in the run folder it leaves."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, read_metrics, read_summary, run_script

PAGE = REPO / "docs" / "extending.md"
FILE = re.compile(r"^`~/research/(?P<path>[^`]+)`:\n\n```\w+\n(?P<body>.*?)^```", re.M | re.S)
COMMAND = re.compile(r"^```bash\n(?P<body>.*?)^```", re.M | re.S)
# What a command shown on the page runs with here: the tiny folder, two short epochs, no W&B, a folder of its own.
TINY = ("epochs=2", "batch_size=8", "optim.lr=0.01", "wandb.mode=disabled", "device=cpu")


def sections() -> dict[str, str]:
    """The page's `## ` sections by their titles."""
    parts = re.split(r"^## (.+)$", PAGE.read_text(), flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def write_files(title: str, research: Path) -> str:
    """The section's files, written under `research`; the section's text."""
    text = sections()[title]
    for match in FILE.finditer(text):
        path = research / match["path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(match["body"])
    return text


def run_section(title: str, research: Path, data: Path, *extra: str, instead: tuple[str, str] = ("", "")) -> list[Path]:
    """Write the section's files under `research`, run each of its commands from `research`'s parent (with `instead`'s
    first text replaced by its second), and return the run folders, one a command."""
    runs, home = [], research.parent  # `~` is this home: the plugins' paths, in commands and YAML alike
    for i, match in enumerate(COMMAND.finditer(write_files(title, research))):
        line = match["body"].strip().replace(*instead).replace("$HOME", str(home))  # as the shell expands it
        args = [a for a in shlex.split(line)[2:] if not a.startswith("data.root=")]  # after `python train.py`
        out = home / f"run{i}"
        runs.append(out)
        run_script("train.py", *args, f"data.root={data}", f"hydra.run.dir={out}", *TINY, *extra, cwd=home, env={"HOME": str(home)})
    return runs


@pytest.fixture
def research(tmp_path) -> Path:
    folder = tmp_path / "research"
    folder.mkdir()
    return folder


def stored_config(run: Path) -> dict:
    return torch.load(run / "ckpt.pt", map_location="cpu", weights_only=True)["config"]


def test_the_page_covers_the_eight_kinds():
    assert {"A dataset", "An optimizer", "A model", "A schedule", "A loss", "An augmentation", "A metric", "A callback"} <= set(sections())


def test_a_dataset(research, tiny_folder):
    (run,) = run_section("A dataset", research, tiny_folder)
    assert read_summary(run)["status"] == "finished"
    assert stored_config(run)["data"]["name"] == "shapes"


def test_an_optimizer(research, tiny_folder):
    (run,) = run_section("An optimizer", research, tiny_folder, "optim.lr=0.0001")
    assert stored_config(run)["optim"]["_target_"] == "my_optim.SignSGD"
    first, last = (row["train/loss"] for row in read_metrics(run))
    assert last < first  # it trains


def test_a_model(research, tiny_folder):
    (run,) = run_section("A model", research, tiny_folder)
    weights = torch.load(run / "ckpt.pt", map_location="cpu", weights_only=True)["model_state_dict"]
    assert weights["head.weight"].shape == (10, 32)  # num_classes from the data, width from the command line


def test_a_schedule(research, tiny_folder):
    (run,) = run_section("A schedule", research, tiny_folder)
    first, last = (row["lr"] for row in read_metrics(run))
    assert last < first


def test_a_loss(research, tiny_folder):
    (run,) = run_section("A loss", research, tiny_folder)
    assert stored_config(run)["loss"] == {"_target_": "my_losses.FocalLoss", "gamma": 2.0}
    assert read_summary(run)["status"] == "finished"


def test_an_augmentation(research, tiny_folder):
    (run,) = run_section("An augmentation", research, tiny_folder)
    assert stored_config(run)["data"]["augment"] == {"cutout": {"_target_": "my_augment.Cutout", "size": 8}}
    assert read_summary(run)["status"] == "finished"


def test_a_metric(research, tiny_folder):
    top3, worst = run_section("A metric", research, tiny_folder)
    for row in read_metrics(top3):
        assert row["val/acc"] <= row["val/top3"] <= 1
    for row in read_metrics(worst):
        assert 0 <= row["val/worst"] <= row["val/acc"]


def test_a_callback(research, tiny_folder):
    # The tiny folder's accuracy is not the example's concern: a target of 0 stops after the first epoch, whatever it is.
    stop, every = run_section("A callback", research, tiny_folder, "epochs=4", instead=("target=0.5", "target=0.0"))
    summary = read_summary(stop)
    assert summary["status"] == "finished"
    assert "reached" in json.dumps(summary)
    assert sorted(p.name for p in every.glob("epoch_*.pt")) == ["epoch_2.pt", "epoch_4.pt"]


def test_an_experiment_of_your_own(research, tiny_folder):
    write_files("A model", research)  # my_models.py
    write_files("A loss", research)  # my_losses.py and conf/loss/focal.yaml
    (run,) = run_section("An experiment of your own", research, tiny_folder)
    config = stored_config(run)
    assert (config["model"]["_target_"], config["loss"]["_target_"]) == ("my_models.TinyCNN", "my_losses.FocalLoss")
