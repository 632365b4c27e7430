"""The whole study as one sweep (`python train.py -m experiment=study`), run small on the CPU, and its table."""

import dataclasses
import json

import pytest

from cifar.results.runs import Run, find_runs
from cifar.results.study import row_result, study_rows
from tests.conftest import run_script
from tests.test_config import STUDY_RUNS


@pytest.mark.slow
def test_the_study_sweep_runs_every_row_and_ends_with_the_studys_table(tiny_folder, tmp_path):
    sweep = tmp_path / "study"
    # model=net, 2 epochs of 200 images: every row's run, as small as it gets; prefix_epochs=[1] pairs epoch 1 of each run.
    # hydra.launcher.n_jobs=1: joblib runs the five jobs one after another in this process; five workers would each
    # import torch on this test's one core (tests/test_scaling.py runs joblib's workers).
    proc = run_script(
        "train.py", "-m", "experiment=study", f"data.root={tiny_folder}", "model=net", "epochs=2", "prefix_epochs=[1]",
        "data.subset=200", "hydra.launcher.n_jobs=1", "device=cpu", "wandb.mode=disabled", f"hydra.sweep.dir={sweep}", cwd=tmp_path,
    )  # fmt: skip
    jobs = {json.loads((sweep / str(i) / "summary.json").read_text())["name"] for i in range(5)}
    assert jobs == {f"experiment=study,study_row={r}" for r in STUDY_RUNS}
    table = (sweep / "study.md").read_text()
    assert table.strip() in proc.stdout.replace("\r", "")
    lines = [line for line in table.splitlines() if line.startswith("| ") and "study row" not in line]
    figures = sorted((row, acc) for rows in STUDY_RUNS.values() for row, acc, _ in rows)
    assert len(lines) == 8 and [f"{acc:.2%}" for _, acc in figures] == [line.split(" | ")[1] for line in lines], "the study's order"
    rows = study_rows(find_runs([sweep]))
    for (row, _), line in zip(rows, lines, strict=True):
        assert f"| {row.label} | {row.study_acc:.2%} |" in line and f"`{row.alone}`" in line
    # The 20- and 50-epoch rows read a prefix these 2-epoch runs do not have; the whole-run rows have their figure.
    assert "no result for epoch 20" in lines[3] and "**-**" in lines[3]
    assert "**-**" not in lines[0] and "**-**" not in lines[7]
    # Runs of other settings than the study's (here every one: 2 epochs of the Net) show their figure, never as the study's.
    assert all("NOT the study's settings: " in line for line in lines)
    assert "epochs=2 (the study's row: 100)" in lines[7] and "model._target_=cifar.core.models.Net" in lines[7]
    assert "epochs=2 (the study's row: 10)" in lines[0] and "model" not in lines[0].split("NOT")[1].split("|")[0]

    # Read as if the study were 1 epoch long where it pairs: the figure is the run's epoch-1 checkpoint's test accuracy.
    row, run = rows[3]  # row 4, from job 0 (lr0.001_100ep, longest first)
    paired = row_result(dataclasses.replace(row, epochs=1), run)
    summary = json.loads((sweep / "0" / "summary.json").read_text())
    assert (row.row, run.folder.name) == (4, "0")
    assert paired == {
        "acc": summary["prefix_results"]["1"]["test_acc"],
        "best_epoch": summary["prefix_results"]["1"]["best_epoch"],
        "note": paired["note"],
    }
    assert paired["note"].startswith("NOT the study's settings: ") and paired["note"].endswith(
        "; paired: the first 1 epochs of the 2-epoch run"
    )


def test_a_study_row_of_another_shape_is_left_out_in_one_warning(tmp_path, caplog):
    """A run folder from elsewhere may name any rows: one of another shape failed cifar-study (TypeError, ValueError)."""
    good = {"row": 1, "label": "Net", "study_acc": 0.6419, "epochs": None, "alone": "python train.py experiment=net_baseline"}
    rows = [good, {"row": "x"}, "junk", {**good, "study_acc": "high"}, {**good, "extra": 1}]
    run = Run(tmp_path, {"study_rows": rows}, {}, None, [])
    assert [(row.label, kept) for row, kept in study_rows([run])] == [("Net", run)]
    assert caplog.text.count("a study row of another shape is left out") == 4
