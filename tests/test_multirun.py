"""Real `python train.py -m ...` subprocesses: one folder, checkpoint and W&B run per job, one W&B group per sweep."""

from tests.conftest import read_summary, run_script, wandb_run_of


def run_record(job_dir):
    """The `run` record of the job's offline W&B file: display name and group as W&B stores them."""
    (record,) = [r["run"] for r in wandb_run_of(job_dir, summary=False) if r.get("type") == "run"]
    return record


def test_a_sweep_gives_each_job_its_folder_checkpoint_and_wandb_run_in_one_group(lr_sweep):
    sweep, proc = lr_sweep  # -m optim.lr=0.01,0.001,1000: the third diverges
    assert "config" in proc.stdout and "test accuracy" in proc.stdout  # the config tree and each job's summary table
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0", "1", "2"]
    names, groups = [], set()
    for job in jobs:
        assert (job / "ckpt.pt").is_file() == (job / "last.pt").is_file() == (job.name != "2")  # 2 diverged in its first epoch
        summary, run = read_summary(job), run_record(job)
        assert run["display_name"] == summary["name"]
        names.append(run["display_name"])
        groups |= {run["run_group"], summary["group"]}
    assert names == ["optim.lr=0.01", "optim.lr=0.001", "optim.lr=1000"]  # named by the swept value, not by data.root etc.
    assert groups == {str(sweep)}
    assert not (sweep.parent / "wandb").exists(), "W&B files belong in the job folders, not the launch folder"


def test_an_experiment_carries_its_own_sweep(tiny_folder, tmp_path):
    # `-m experiment=lr_sweep` runs the study's three learning rates; here on the Net to stay fast.
    sweep = tmp_path / "sweep"
    run_script(
        "train.py", "-m", "experiment=lr_sweep", "model=net", f"data.root={tiny_folder}", "epochs=1", "wandb.mode=disabled",
        f"hydra.sweep.dir={sweep}", cwd=tmp_path,
    )  # fmt: skip
    summaries = [read_summary(sweep / str(i)) for i in range(3)]
    assert [s["config"]["optim"]["lr"] for s in summaries] == [0.01, 0.001, 0.005]
    assert {s["config"]["batch_size"] for s in summaries} == {16}
    assert {s["config"]["model"]["_target_"] for s in summaries} == {"cifar.core.models.Net"}
