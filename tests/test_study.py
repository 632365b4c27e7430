"""The whole study as one sweep (`python train.py -m experiment=study`), run small on the CPU, and its table."""

import dataclasses
import json

from cifar.study import ROWS, study_table
from tests.conftest import run_script


def test_the_study_sweep_runs_every_row_and_ends_with_the_studys_table(tiny_folder, tmp_path):
    sweep = tmp_path / "study"
    # model=net, 2 epochs: every row's run, as small as it gets; prefix_epochs=[1] pairs epoch 1 of each run.
    proc = run_script(
        "train.py", "-m", "experiment=study", f"data.root={tiny_folder}", "model=net", "epochs=2", "prefix_epochs=[1]",
        "device=cpu", "wandb.mode=disabled", f"hydra.sweep.dir={sweep}", cwd=tmp_path,
    )  # fmt: skip
    jobs = {json.loads((sweep / str(i) / "summary.json").read_text())["name"] for i in range(5)}
    assert jobs == {f"+study_row={r}" for r in ("lr0.001_100ep", "lr0.005_50ep", "vgg16_baseline", "lr0.01_20ep", "net_baseline")}
    table = (sweep / "study.md").read_text()
    assert table.strip() in proc.stdout.replace("\r", "")
    lines = [line for line in table.splitlines() if line.startswith("| ") and "study row" not in line]
    assert len(lines) == len(ROWS) == 8
    for row, line in zip(ROWS, lines, strict=True):
        assert f"| {row.label} | {row.study_acc:.2%} |" in line and f"`{row.alone}`" in line
    # The 20- and 50-epoch rows read a prefix these 2-epoch runs do not have; the whole-run rows have their figure.
    assert "no result for epoch 20" in lines[3] and "**-**" in lines[3]
    assert "**-**" not in lines[0] and "**-**" not in lines[7]

    # Read as if the study were 1 epoch long where it pairs: the figure is the run's epoch-1 checkpoint's test accuracy.
    one_epoch = [dataclasses.replace(r, epochs=1) if r.epochs else r for r in ROWS]
    paired = study_table(sweep, one_epoch).splitlines()[2 + 3]
    summary = json.loads((sweep / "0" / "summary.json").read_text())  # job 0 is lr0.001_100ep, longest first
    assert f"**{summary['prefix_results']['1']['test_acc']:.2%}**" in paired and "paired: the first 1 epochs of the 2-epoch run" in paired
