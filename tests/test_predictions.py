"""Every tested run keeps its test predictions image by image (test_predictions.npz): what the per-image comparisons and
the seeds-as-an-ensemble figures of cifar-report are made from. The file is data: one of another shape is left out."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cifar.config.compose import compose_config
from cifar.core.data import load_dataset
from cifar.predictions import FILE, read_predictions
from cifar.run.training import train
from tests.conftest import tiny_overrides


def test_a_run_keeps_each_test_images_class_and_probabilities_and_they_give_its_test_figures(tiny_folder, tmp_path):
    out = tmp_path / "run"
    summary = train(compose_config(tiny_overrides(tiny_folder, out, "test_tta=flip")))
    kept = read_predictions(out / FILE)
    test_labels = load_dataset(tiny_folder).test.labels.numpy()
    assert (kept.plain.labels == test_labels).all(), "in the test set's order, with its labels"
    assert kept.plain.acc == pytest.approx(summary["test_acc"], abs=1e-7)
    assert kept.tta.acc == pytest.approx(summary["test_acc_tta"], abs=1e-7)
    assert kept.plain.probabilities.shape == (len(test_labels), 10)
    assert np.allclose(kept.plain.probabilities.sum(1), 1, atol=2e-3), "a softmax, stored as float16"
    assert (kept.plain.probabilities.argmax(1) == kept.plain.predicted).mean() > 0.9, "the probabilities are the predictions' own"
    assert not (kept.plain.probabilities == kept.tta.probabilities).all(), "TTA's are of the averaged views"
    assert json.loads((out / "summary.json").read_text())["status"] == "finished"


@pytest.mark.parametrize(
    ("arrays", "said"),
    [
        ({"labels": np.zeros(3, np.uint8), "predicted": np.zeros(3, np.uint8)}, "not labels, predicted and probabilities"),
        ({"labels": np.zeros(3, np.uint8), "predicted": np.full(3, 12, np.uint8), "probabilities": np.zeros((3, 10), np.float16)}, "not one class an image among 10"),
        ({"labels": np.zeros(3, np.uint8), "predicted": np.zeros(3, np.uint8), "probabilities": np.zeros((2, 10), np.float16)}, "not one row an image"),
        ({"labels": np.zeros(3, np.uint8), "predicted": np.zeros(3, np.uint8), "probabilities": np.full((3, 10), np.nan, np.float16)}, "not finite"),
    ],
)  # fmt: skip
def test_a_predictions_file_of_another_shape_is_one_warning_and_left_out(tmp_path, caplog, arrays, said):
    np.savez(tmp_path / FILE, **arrays)
    assert read_predictions(tmp_path / FILE) is None
    assert said in caplog.text and "left out" in caplog.text


def test_a_file_that_is_no_npz_or_holds_a_pickle_is_never_loaded_as_one(tmp_path, caplog):
    (tmp_path / FILE).write_bytes(b"not a zip")
    assert read_predictions(tmp_path / FILE) is None
    np.savez(tmp_path / "p.npz", labels=np.array([object()]), predicted=np.zeros(1), probabilities=np.zeros((1, 10)))
    assert read_predictions(tmp_path / "p.npz") is None, "an object array would need a pickle: refused, never unpickled"
    assert caplog.text.count("left out") == 2


def test_a_damaged_or_odd_archive_is_left_out_with_one_warning(tmp_path, caplog):
    from cifar.predictions import Predictions, TestPredictions, write_predictions

    labels = np.arange(200) % 10
    write_predictions(TestPredictions(Predictions(labels, labels, np.eye(10)[labels]), None), tmp_path / FILE)
    data = bytearray((tmp_path / FILE).read_bytes())
    data[200:260] = bytes(60)  # inside a compressed member: zlib's error, not numpy's
    (tmp_path / FILE).write_bytes(bytes(data))
    assert read_predictions(tmp_path / FILE) is None
    import zipfile

    with zipfile.ZipFile(tmp_path / "odd.npz", "w") as archive:  # members that are no .npy come back as bytes
        for name in ("labels", "predicted", "probabilities"):
            archive.writestr(name, b"not an array")
    assert read_predictions(tmp_path / "odd.npz") is None
    assert caplog.text.count("left out") == 2
