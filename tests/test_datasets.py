"""Datasets as a config group (conf/data/): CIFAR-10, CIFAR-100 and any folder of class folders, each read offline from
small files these tests write in its format, and a run on one that names its classes everywhere it reports them."""

import json
import pickle

import numpy as np
import pytest
import torch

from cifar.core.data import CIFAR10_CLASSES, load_configured
from cifar.errors import UserError
from cifar.run.checkpoint import load_checkpoint
from tests.conftest import read_summary, run_script, wandb_run_of, write_image_folder

SHAPES = ("circle", "square", "triangle")  # a dataset of the user's own: three classes, PNGs of 40x40


def write_cifar100_files(root, n_train=200, n_test=100, seed=0):
    """torchvision's CIFAR-100 layout (cifar-100-python/train, test, meta), with random pixels and every fine label."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for name, n in (("train", n_train), ("test", n_test)):
        rows = rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)  # CHW rows, as the official pickles
        with open(folder / name, "wb") as f:
            pickle.dump({"data": rows, "fine_labels": [i % 100 for i in range(n)], "coarse_labels": [0] * n}, f)
    return folder


def test_cifar100_from_torchvisions_files_has_its_100_classes(compose_cfg, tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR100

    cfg = compose_cfg(["data=cifar100", f"data.root={tmp_path}", "data.download=false"])
    folder = write_cifar100_files(tmp_path)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": list(cfg.data.classes), "coarse_label_names": ["x"] * 20}, f)
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *a, **k: True)  # the official files' MD5s only
    assert CIFAR100.base_folder == folder.name

    data = load_configured(cfg.data)
    assert data.name == "cifar100" and len(data.classes) == 100 and data.classes[:3] == ("apple", "aquarium_fish", "baby")
    assert data.train.images.shape == (200, 3, 32, 32) and data.test.labels.tolist() == list(range(100))
    with open(folder / "test", "rb") as f:
        assert torch.equal(data.test.images[7], torch.from_numpy(pickle.load(f)["data"][7]).view(3, 32, 32))


def test_cifar100_files_whose_names_are_not_cifar100s_are_refused(compose_cfg, tmp_path, monkeypatch):
    folder = write_cifar100_files(tmp_path)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"class{i}" for i in range(100)]}, f)
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *a, **k: True)
    with pytest.raises(UserError, match=r"classes \[class0, class1, .*\(100\); data=cifar100 names \[apple"):
        load_configured(compose_cfg(["data=cifar100", f"data.root={tmp_path}", "data.download=false"]).data)


def test_a_folder_of_any_classes_and_size_is_a_dataset(compose_cfg, tmp_path):
    root = write_image_folder(tmp_path / "shapes", {"train": 4, "test": 2}, classes=SHAPES, size=40, suffix=".png")
    data = load_configured(compose_cfg(["data=folder", f"data.root={root}"]).data)
    assert data.name == "folder" and data.classes == SHAPES  # the folder names, sorted
    assert data.train.images.shape == (12, 3, 32, 32) and data.test.labels.tolist() == [0, 0, 1, 1, 2, 2]
    with pytest.raises(UserError, match=r"0000.png is 40x40, not 32x32 as CIFAR.s images: pass data.resize=true"):
        load_configured(compose_cfg(["data=folder", f"data.root={root}", "data.resize=false"]).data)


def test_a_folder_copy_must_hold_its_datasets_classes_in_both_parts(compose_cfg, tmp_path):
    cifar10 = write_image_folder(tmp_path / "c10", {"train": 1, "test": 1})
    with pytest.raises(
        UserError, match=r"c10/train holds class folders \[airplane, .*\(10\); data=cifar100 needs exactly \[apple.*\(100\): missing"
    ):
        load_configured(compose_cfg(["data=cifar100", f"data.root={cifar10}"]).data)
    shapes = write_image_folder(tmp_path / "shapes", {"train": 1}, classes=SHAPES)
    write_image_folder(shapes, {"test": 1}, classes=SHAPES[:2])
    with pytest.raises(UserError, match=r"shapes/test holds class folders \[circle, square\] \(2\); train/ holds .*: missing \[triangle\]"):
        load_configured(compose_cfg(["data=folder", f"data.root={shapes}"]).data)


@pytest.mark.slow
def test_a_folder_dataset_trains_and_evaluates_with_its_own_class_names(tmp_path):
    """A dataset of the user's own, given as data=folder: the model has its 3 outputs, and the checkpoint, evaluate.py,
    images= and the W&B table all name its classes, not CIFAR-10's."""
    root = write_image_folder(tmp_path / "shapes", {"train": 20, "test": 4}, classes=SHAPES, size=40, suffix=".png")
    out = tmp_path / "run"
    run_script("train.py", "data=folder", f"data.root={root}", "epochs=1", "batch_size=8", "samples=4", "device=cpu",
               f"hydra.run.dir={out}", cwd=tmp_path)  # fmt: skip
    summary, ckpt = read_summary(out), load_checkpoint(out / "ckpt.pt")
    assert ckpt["classes"] == list(SHAPES) and ckpt["dataset"] == "folder" and ckpt["model_state_dict"]["fc3.weight"].shape[0] == 3
    assert summary["dataset"] == "folder" and list(summary["test_per_class_acc"]) == list(SHAPES)
    table = wandb_run_of(out)["summary"]["test/predictions_table"]
    rows = json.loads(next((out / "wandb").glob("offline-run-*/files/" + table["path"])).read_text())["data"]
    assert {row[2] for row in rows} <= set(SHAPES) and {row[3] for row in rows} <= set(SHAPES)

    run_script(
        "evaluate.py",
        f"ckpt={out / 'ckpt.pt'}",
        f"data.root={root}",
        "wandb.mode=disabled",
        f"output_dir={tmp_path / 'eval'}",
        cwd=tmp_path,
    )
    report = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert report["classes"] == list(SHAPES) and report["n"] == 12
    run_script("evaluate.py", f"ckpt={out / 'ckpt.pt'}", f"images={root / 'test' / 'square'}", "wandb.mode=disabled",
               f"output_dir={tmp_path / 'images'}", cwd=tmp_path)  # fmt: skip
    rows = json.loads((tmp_path / "images" / "predictions.json").read_text())["images"]
    assert len(rows) == 4 and all(top["class"] in SHAPES for row in rows for top in row["top"])
    assert not set(CIFAR10_CLASSES) & {top["class"] for row in rows for top in row["top"]}


def test_a_cifar100_folder_copy_trains_a_model_with_100_outputs(compose_cfg, tmp_path):
    classes = tuple(compose_cfg(["data=cifar100"]).data.classes)
    root = write_image_folder(tmp_path / "c100", {"train": 2, "test": 1}, classes=classes)
    out = tmp_path / "run"
    run_script("train.py", "data=cifar100", f"data.root={root}", "epochs=1", "batch_size=20", "wandb.mode=disabled",
               "device=cpu", f"hydra.run.dir={out}", cwd=tmp_path)  # fmt: skip
    summary = read_summary(out)
    assert summary["dataset"] == "cifar100" and list(summary["test_per_class_acc"]) == list(classes)
    assert load_checkpoint(out / "ckpt.pt")["classes"] == list(classes)


def test_a_confusion_matrix_of_200_classes_is_drawn_readable_and_quickly(tmp_path):
    """200 classes (a dataset of your own): counts in 40,000 cells and 200 names an axis made a black square in 50 s.
    The rates by colour and one name in ten are drawn instead; a picture mostly white, as a 10-class one is."""
    from PIL import Image

    from cifar.results.plots import plot_confusion

    n = 200
    matrix = [[50 if i == j else (1 if j == (i + 1) % n else 0) for j in range(n)] for i in range(n)]
    plot_confusion([("ckpt", matrix)], [f"class_{i:03d}" for i in range(n)], tmp_path / "confusion.png")
    with Image.open(tmp_path / "confusion.png") as picture:
        pixels = np.asarray(picture.convert("L"), dtype=np.float64)
    assert (pixels < 64).mean() < 0.1, f"{(pixels < 64).mean():.0%} of the picture is dark"
