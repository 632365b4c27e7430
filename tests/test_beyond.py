"""What users of Hydra + W&B repositories reach for next: model artifacts, a hyperparameter search, their own images."""

import base64
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from PIL import Image

from cifar.errors import UserError
from cifar.results.report import report as make_report
from cifar.results.runs import find_runs
from cifar.run import images
from cifar.run.evaluation import evaluate
from cifar.run.training import train
from tests.conftest import compose_config, run_script, tiny_overrides, wandb_run_of

# ---- 1. checkpoints as W&B model artifacts


def test_the_best_checkpoint_is_logged_as_a_model_artifact_with_its_figures(trained):
    out, summary = trained
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    records = wandb_run_of(out, summary=False)
    (artifact,) = [r["artifact"] for r in records if r["type"] == "artifact" and r["artifact"]["type"] == "model"]
    assert artifact["name"] == f"model-{run_dir.name.rsplit('-', 1)[1]}" and set(artifact["aliases"]) == {"best", "latest"}
    metadata = json.loads(artifact["metadata"])
    assert metadata["test_acc"] == summary["test_acc"] and metadata["best_epoch"] == summary["best_epoch"]
    assert metadata["model"] == "cifar.core.models.Net"
    # The file waits, staged by wandb, for `wandb sync`: a copy of ckpt.pt as it was at the end of the run
    (entry,) = artifact["manifest"]["contents"]
    staged, ckpt = Path(entry["local_path"]), out / "ckpt.pt"
    assert entry["path"] == "ckpt.pt" and int(entry["size"]) == ckpt.stat().st_size
    md5 = base64.b64encode(hashlib.md5(ckpt.read_bytes()).digest()).decode()
    assert entry["digest"] == md5 and staged.read_bytes() == ckpt.read_bytes()


def test_evaluate_takes_an_artifact_reference_and_says_in_one_line_when_wandb_is_out_of_reach(trained, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc: no W&B login
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    proc = run_script("evaluate.py", "ckpt=wandb:someone/cifar/model-abc123:best", cwd=tmp_path, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in out, out[-2000:]
    assert "ckpt=wandb:someone/cifar/model-abc123:best: could not fetch it from W&B" in out


# ---- 2. a hyperparameter search


def _search(folder: Path, sweep: Path, trials: int, *overrides: str):
    return run_script(
        "train.py", "-m", "hparams_search=net_fast",  # its experiment, net_fast, comes with it
        f"data.root={folder}", "epochs=1", f"hydra.sweeper.n_trials={trials}", "batch_size=choice(16,5000)", "device=cpu",
        "wandb.mode=disabled", f"hydra.sweeper.storage=sqlite:///{sweep.parent / 'search.db'}", f"hydra.sweep.dir={sweep}",
        *overrides, cwd=sweep.parent, check=False,
    )  # fmt: skip


@pytest.mark.slow
def test_a_search_ranks_failed_trials_last_and_runs_to_the_end(tiny_folder, tmp_path):
    sweep = tmp_path / "search"
    proc = _search(tiny_folder, sweep, 6)
    out = proc.stdout + proc.stderr
    assert "Best parameters" in out and "Best value" in out, out[-3000:]
    summaries = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/summary.json"))]
    assert len(summaries) == 6, "every trial ran, the failed ones too"
    failed = [s for s in summaries if s["status"] == "failed"]
    assert failed and all("batch_size=5000 is larger" in s["error"] for s in failed)
    make_report([str(sweep)], tmp_path / "report")
    runs_table = (tmp_path / "report" / "report.md").read_text().split("## Runs")[1].split("##")[0]
    rows = [line.split(" | ") for line in runs_table.strip().splitlines()[2:]]  # under the header and its rule
    reached = [float(r[5].rstrip("%")) for r in rows if r[-1].startswith("finished")]
    assert len(reached) >= 2 and reached == sorted(reached, reverse=True), "the best trial first"
    assert [r[-1].strip(" |") for r in rows] == ["finished"] * len(reached) + ["failed"] * len(failed), "the failed last"
    assert any(run.sweeper == "optuna" for run in find_runs([sweep]))

    # The study is kept in its database: a second search with it adds its trials to the first one's
    _search(tiny_folder, tmp_path / "more", 1, "hydra.sweeper.sampler.seed=1")
    study = optuna.load_study(study_name="net_fast", storage=f"sqlite:///{tmp_path / 'search.db'}")
    assert len(study.trials) == 7 and study.best_value >= max(s["best_val_acc"] for s in summaries if s.get("best_val_acc"))


def test_a_search_over_an_experiment_without_a_val_split_is_refused_in_one_line(tiny_folder, tmp_path):
    proc = run_script(
        "train.py", "-m", "hparams_search=net_fast", "data.val_split=0", f"data.root={tiny_folder}", "wandb.mode=disabled",
        f"hydra.sweep.dir={tmp_path / 'search'}", cwd=tmp_path, check=False,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in out and not list((tmp_path / "search").glob("*/summary.json"))
    assert "data.val_split=0: a search ranks its trials by validation accuracy" in out


# ---- 3. your own images


def test_your_own_images_get_their_top_classes_and_a_bad_file_one_line(trained, tmp_path):
    out, _ = trained
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (640, 480), (200, 30, 30)).save(photos / "red.jpg")  # any size: cut to its centre, shrunk to 32x32
    Image.new("L", (50, 80), 128).save(photos / "grey.png")  # not RGB: converted
    Image.new("RGBA", (64, 64), (0, 0, 255, 0)).save(photos / "clear.png")  # transparent: put on white
    (photos / "broken.jpg").write_bytes(b"not an image")
    proc = run_script("evaluate.py", f"ckpt={out / 'ckpt.pt'}", f"images={photos}", f"output_dir={tmp_path / 'eval'}",
                      "top=3", "wandb.mode=offline", cwd=tmp_path)  # fmt: skip
    text = proc.stdout + proc.stderr
    assert f"{photos / 'broken.jpg'} could not be read as an image" in text and "Traceback" not in text
    result = json.loads((tmp_path / "eval" / "predictions.json").read_text())
    assert [os.path.basename(r["file"]) for r in result["images"]] == ["clear.png", "grey.png", "red.jpg"]
    for row in result["images"]:
        assert len(row["top"]) == 3 and row["top"][0]["prob"] >= row["top"][1]["prob"] >= row["top"][2]["prob"]
        assert 0.0 < sum(t["prob"] for t in row["top"]) <= 1.0 + 1e-6
    assert (tmp_path / "eval" / "images.png").stat().st_size > 0 and result["unreadable"] == [str(photos / "broken.jpg")]
    # wandb.mode=offline: the picture as a W&B image in an evaluation run of its own, the counts as its summary
    logged = wandb_run_of(tmp_path / "eval")
    picture = logged["summary"]["evaluation/images"]
    with (
        Image.open(tmp_path / "eval" / "images.png") as ours,
        Image.open(next((tmp_path / "eval" / "wandb").glob("offline-run-*")) / "files" / picture["path"]) as theirs,
    ):
        assert picture["_type"] == "image-file" and ours.tobytes() == theirs.tobytes()
    assert logged["summary"]["images"] == 3 and logged["summary"]["unreadable"] == 1
    assert logged["config"]["images"] == str(photos) and logged["config"]["top"] == 3 and "baseline" not in logged["config"]


def test_an_image_is_made_as_cifar_made_its_own():
    from cifar.run.images import load_as_cifar

    tall = Image.new("RGB", (40, 80), (0, 0, 0))
    tall.paste((255, 255, 255), (0, 20, 40, 60))  # a white square in the middle of a black strip
    with tempfile.TemporaryDirectory() as d:
        tall.save(Path(d) / "tall.png")
        pixels = load_as_cifar(Path(d) / "tall.png")
    assert pixels.shape == (3, 32, 32) and pixels.dtype == torch.uint8
    assert pixels.float().mean() > 250, "the central square is what is kept: all white"


def test_a_folder_with_no_images_is_one_line(trained, tmp_path):
    with pytest.raises(UserError, match=f"images={tmp_path}: no image files there"):
        evaluate(compose_config([f"ckpt={trained[0] / 'ckpt.pt'}", f"images={tmp_path}", f"output_dir={tmp_path / 'eval'}"], "evaluate"))


def test_each_file_of_a_folder_is_read_as_it_is_or_named_and_left_out(trained, tmp_path, monkeypatch, caplog):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.full((40, 40), 30000, dtype=np.uint16)).save(photos / "deep.png")  # 16-bit grey: I;16
    Image.new("RGB", (33, 33), (0, 200, 0)).save(photos / "anim.gif")  # read from a folder as it is one by one
    Image.new("RGB", (90, 90), (10, 10, 10)).save(photos / "huge.png")  # past the pixel limit set below
    (photos / "notes.txt").write_text("not a picture")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4000)  # 90x90 is over twice this: Pillow's DecompressionBombError
    monkeypatch.setattr(images, "PICTURE_LIMIT", 1)
    caplog.set_level(logging.INFO)

    deep = images.load_as_cifar(photos / "deep.png")
    assert 110 < deep.float().mean() < 125, "30000 of 65535 is mid-grey (117), not clipped to white"
    cfg = compose_config([f"ckpt={trained[0] / 'ckpt.pt'}", f"images={photos}", f"output_dir={tmp_path / 'eval'}"], "evaluate")
    result = evaluate(cfg)
    assert [Path(r["file"]).name for r in result["images"]] == ["anim.gif", "deep.png"]
    assert result["unreadable"] == [str(photos / "huge.png")] and f"{photos / 'huge.png'}: too large to read safely" in caplog.text
    assert "1 files are not images by their names, left out: notes.txt" in caplog.text
    assert "images.png shows the first 1 of the 2 images" in caplog.text


def test_a_checkpoint_from_elsewhere_is_read_as_it_is_or_named(trained, tiny_folder, tmp_path, caplog):
    def evaluate_copy(name, change):
        ckpt = torch.load(trained[0] / "ckpt.pt", weights_only=True)
        change(ckpt)
        torch.save(ckpt, tmp_path / name)
        return evaluate(
            compose_config(
                [f"ckpt={tmp_path / name}", f"data.root={tiny_folder}", "samples=0", f"output_dir={tmp_path / name[:-3]}"], "evaluate"
            )
        )

    report = evaluate_copy("old.pt", lambda ckpt: ckpt.pop("precision"))  # written before precision was recorded
    assert report["precision"] == "fp32" and "does not say which precision it was tested in" in caplog.text
    with pytest.raises(
        UserError,
        match=r"gone.pt: its model cannot be built here \(model._target_=cifar.core.models.Gone: this version of the project has no such",
    ):
        evaluate_copy("gone.pt", lambda ckpt: ckpt["config"]["model"].update(_target_="cifar.core.models.Gone"))

    old_last = torch.load(trained[0] / "last.pt", weights_only=True)  # and resumed: it continues, saying so
    del old_last["precision"]
    (tmp_path / "old_run").mkdir()
    torch.save(old_last, tmp_path / "old_run" / "last.pt")
    shutil.copy(trained[0] / "ckpt.pt", tmp_path / "old_run")  # the folder whole: epoch 3 need not beat the best, whose ckpt.pt is tested
    cfg = compose_config(tiny_overrides(tiny_folder, tmp_path / "x", "epochs=3",
                                        f"resume={tmp_path / 'old_run' / 'last.pt'}"))  # fmt: skip
    assert train(cfg)["epochs_completed"] == 3 and "does not say which precision it was trained in" in caplog.text
