"""Figures that are not numbers are never shown as results: a checkpoint whose weights or normalisation give outputs that
are not finite is refused in one line (it scored "10.00%" and an ECE of nan in silence), and no JSON file the project
writes holds a bare NaN or Infinity (which is not JSON)."""

import json
import math

import pytest
import torch

from cifar.core.batches import DeviceBatches
from cifar.core.data import Split
from cifar.errors import UserError
from cifar.files import atomic_write_json, json_text
from cifar.records import EpochRecord
from cifar.run.tracking import metrics_line
from tests.conftest import one_clear_line, run_script


def strict_json(text: str):
    """JSON as other readers take it: NaN, Infinity and -Infinity are not JSON (Python's json reads them unless told)."""
    return json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in {text[:200]}"))


def altered(ckpt_path, out, change) -> str:
    """A copy of a checkpoint with `change(ckpt)` applied, as a corrupt or crafted file would be."""
    ckpt = torch.load(ckpt_path, weights_only=True)
    change(ckpt)
    torch.save(ckpt, out)
    return str(out)


def evaluate(ckpt: str, tiny_folder, out):
    return run_script("evaluate.py", f"ckpt={ckpt}", f"data.root={tiny_folder}", f"output_dir={out}", "device=cpu",
                      cwd=out.parent, check=False)  # fmt: skip


@pytest.mark.slow  # two or more real processes in a row
def test_a_checkpoint_that_scores_nothing_is_refused_in_one_line_naming_it(trained, tiny_folder, tmp_path):
    run, _ = trained
    weights = torch.load(run / "ckpt.pt", weights_only=True)["model_state_dict"]

    def one_nan(ckpt):
        ckpt["model_state_dict"]["conv1.weight"][0, 0, 0, 0] = float("nan")

    nan = altered(run / "ckpt.pt", tmp_path / "nan.pt", one_nan)
    proc = evaluate(nan, tiny_folder, tmp_path / "eval-nan")
    one_clear_line(proc, 2, f"{nan}: its weights hold NaN (conv1.weight; 1 of {len(weights)} tensors)", "cannot be scored")
    assert not (tmp_path / "eval-nan" / "evaluation.json").exists()

    def std_of_zero(ckpt):
        ckpt["config"]["data"]["std"] = [0.0, 0.25, 0.25]

    zero = altered(run / "ckpt.pt", tmp_path / "zero.pt", std_of_zero)
    proc = evaluate(zero, tiny_folder, tmp_path / "eval-zero")
    one_clear_line(proc, 2, f"{zero}: its stored data.std=[0.0, 0.25, 0.25] is refused (give 3 positive values")
    assert not (tmp_path / "eval-zero" / "evaluation.json").exists()

    # Finite weights whose outputs overflow float32: the last layer's logits are infinite, the loss too.
    def too_large(ckpt):
        ckpt["model_state_dict"]["fc3.weight"] *= 1e38

    large = altered(run / "ckpt.pt", tmp_path / "large.pt", too_large)
    proc = evaluate(large, tiny_folder, tmp_path / "eval-large")
    one_clear_line(proc, 2, f"{large}: its outputs on these images are not finite (a mean loss of ", "cannot be scored")
    assert not (tmp_path / "eval-large" / "evaluation.json").exists()
    photos = tiny_folder / "test" / "*" / "*.jpg"  # the same through images= (the test images whose outputs overflowed above)
    proc = run_script("evaluate.py", f"ckpt={large}", f"images={photos}", f"output_dir={tmp_path / 'images-large'}", "device=cpu",
                      cwd=tmp_path, check=False)  # fmt: skip
    one_clear_line(proc, 2, f"{large}: its outputs on your images are not finite")
    assert not (tmp_path / "images-large" / "predictions.json").exists()

    proc = evaluate(str(run / "ckpt.pt"), tiny_folder, tmp_path / "eval")  # the checkpoint as trained: scored, strict JSON
    assert proc.returncode == 0, proc.stdout[-2000:]
    report = strict_json((tmp_path / "eval" / "evaluation.json").read_text())
    assert math.isfinite(report["loss"]) and 0 <= report["ece"] <= 1


def test_the_normalisation_refuses_a_std_of_zero_where_it_is_built():
    split = Split(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.zeros(2, dtype=torch.long))
    for std in ([0.0, 0.5, 0.5], [1e-45, 0.5, 0.5], [float("nan"), 0.5, 0.5]):
        with pytest.raises(UserError, match=r"normalise no image to finite numbers \(a std of 0 divides by zero\)"):
            DeviceBatches(split, 2, torch.device("cpu"), mean=[0.5] * 3, std=std, shuffle=False)
    (x, _), *_ = DeviceBatches(split, 2, torch.device("cpu"), mean=[0.5] * 3, std=[0.5] * 3, shuffle=False).epoch()
    assert torch.equal(x, torch.full_like(x, -1.0))  # (0/255 - 0.5) / 0.5


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
