"""Real `python train.py -m ...` subprocesses: one folder, checkpoint and W&B run per job, one W&B group per sweep."""

import json

from tests.conftest import run_script, wandb_inspect


def run_records(job_dir):
    """The `run` record of the job's offline W&B file: display name and group as W&B stores them."""
    (run_dir,) = (job_dir / "wandb").glob("offline-run-*")
    for line in wandb_inspect(run_dir, summary=False).splitlines():
        record = json.loads(line)
        if record.get("type") == "run":
            return record["run"]
    raise AssertionError(f"no run record in {run_dir}")


def test_lr_sweep_gives_each_job_its_folder_checkpoint_and_wandb_run_in_one_group(tiny_folder, tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_script(
        "train.py", "-m", "optim.lr=0.01,0.001", f"data.root={tiny_folder}", "epochs=1", "batch_size=16", f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )  # fmt: skip
    assert "config" in proc.stdout and "test accuracy" in proc.stdout  # the config tree and the summary table
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0", "1"]
    names, groups = [], set()
    for job in jobs:
        assert (job / "ckpt.pt").is_file() and (job / "last.pt").is_file()
        summary = json.loads((job / "summary.json").read_text())
        run = run_records(job)
        assert run["display_name"] == summary["name"]
        names.append(run["display_name"])
        groups |= {run["run_group"], summary["group"]}
    assert names == ["optim.lr=0.01", "optim.lr=0.001"]  # named by the swept value, not by data.root etc.
    assert groups == {str(sweep)}
    assert not (tmp_path / "wandb").exists(), "W&B files belong in the job folders, not the launch folder"


def test_an_experiment_carries_its_own_sweep(tiny_folder, tmp_path):
    # `-m experiment=lr_sweep` runs the study's three learning rates; here on the Net to stay fast.
    sweep = tmp_path / "sweep"
    run_script(
        "train.py", "-m", "experiment=lr_sweep", "model=net", f"data.root={tiny_folder}", "epochs=1", "wandb.mode=disabled",
        f"hydra.sweep.dir={sweep}", cwd=tmp_path,
    )  # fmt: skip
    summaries = [json.loads((sweep / str(i) / "summary.json").read_text()) for i in range(3)]
    assert [s["config"]["optim"]["lr"] for s in summaries] == [0.01, 0.001, 0.005]
    assert {s["config"]["batch_size"] for s in summaries} == {16}
    assert {s["config"]["model"]["_target_"] for s in summaries} == {"cifar.models.Net"}
