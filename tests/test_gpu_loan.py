"""scripts/gpu_loan.sh, the one command a GPU loan runs, end to end on the CPU at a dry-run size: every part runs its
real commands, in its budget, and leaves what a loan brings back, so that nothing is debugged on borrowed time."""

import os
import subprocess
import tarfile

import pytest

from tests.conftest import REPO, write_image_folder

REFERENCE = REPO.parent / "shared" / "reference"  # airbench94's published code: an instrument, not in the repository


@pytest.mark.slow
@pytest.mark.skipif(not (REFERENCE / "airbench_ref.py").is_file(), reason="needs ../shared/reference (airbench94's code)")
def test_the_loan_script_runs_every_part_at_a_dry_run_size(tmp_path):
    data = write_image_folder(tmp_path / "data", {"train": 110, "test": 10})  # fastnet94's batch is 1,024 images
    out, work = tmp_path / "out", tmp_path / "work"
    env = {**os.environ, "DRY": "1", "DATA": str(data), "OUT": str(out), "WORK": str(work), "REF": str(REFERENCE)}
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_loan.sh")], check=False, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    loan = (out / "loan.md").read_text()
    assert [line.split(":")[0] for line in loan.splitlines()[1:]] == [f"- part {n}, " + name for n, name in (
        (1, "airbench94's code and fastnet94, alternating, 1 runs each"), (2, "experiment=resnet18 under its budget"),
        (3, "the Net and VGG16 baseline rows, seeds 0-2"), (4, "cifar-bench, CUDA graph beside eager"))]  # fmt: skip
    assert loan.count(": done after") == 4, loan
    figures = (work / "part1-figures.txt").read_text().splitlines()
    assert figures[0].startswith("reference round 1: Mean: ") and figures[1].startswith("fastnet94 round 1: 0.")
    assert '"0.9302"' in (work / "part2-resnet18" / "summary.json").read_text()  # when validation reached kuangliu's figure
    assert len(list((work / "part3-rows").glob("*/summary.json"))) == 6 and (work / "part4-bench.json").is_file()
    with tarfile.open(out / "runs.tar.gz") as archive:  # what comes back: every run's record, no checkpoint
        names = archive.getnames()
    assert "./part3-rows/5/summary.json" in names and "./part2.log" in names and not any(n.endswith(".pt") for n in names)
    assert sorted(p.name for p in out.iterdir()) == ["loan.md", "runs.tar.gz"]

    again = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_loan.sh")], check=False, env=env | {"PARTS": "4"}, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0 and (out / "loan.md").read_text().count("- part 4,") == 2, "a second call repeats only its parts"
