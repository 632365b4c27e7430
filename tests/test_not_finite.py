"""Figures that are not numbers are never shown as results: a checkpoint whose weights or normalisation give outputs that
are not finite is refused in one line (it scored "10.00%" and an ECE of nan in silence), and no JSON file the project
writes holds a bare NaN or Infinity (which is not JSON)."""

import json

import pytest

from cifar.files import atomic_write_json, json_text
from cifar.run.record import EpochRecord
from cifar.run.tracking import metrics_line


def strict_json(text: str):
    """JSON as other readers take it: NaN, Infinity and -Infinity are not JSON (Python's json reads them unless told)."""
    return json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in {text[:200]}"))


def test_json_files_never_hold_nan_or_infinity(tmp_path):
    record = {"loss": float("nan"), "acc": 0.5, "nested": {"ece": float("inf"), "bins": [1.0, float("-inf")]}, "n": 3}
    assert "NaN" in json.dumps(record)  # what Python writes unless told: not JSON
    atomic_write_json(record, tmp_path / "evaluation.json")
    assert strict_json((tmp_path / "evaluation.json").read_text()) == {
        "loss": None, "acc": 0.5, "nested": {"ece": None, "bins": [1.0, None]}, "n": 3
    }  # fmt: skip
    assert json_text((1, 2.5)) == "[1, 2.5]"
    with pytest.raises(TypeError):  # what JSON cannot hold otherwise is a bug, not a file
        json_text({"x": object()})
    line = metrics_line(EpochRecord(epoch=3, train_loss=float("nan"), lr=0.1, epoch_seconds=1.0, images_per_sec=2.0))
    assert strict_json(line)["train/loss"] is None and line.endswith("}\n")
