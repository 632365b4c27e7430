"""Scaling out on existing engines: torchrun DDP on CPU (gloo, 2 ranks), joblib and submitit sweeps as real subprocesses."""

import os

import pytest
import torch

from cifar.core.batches import DeviceBatches
from cifar.core.data import Split
from cifar.predictions import read_predictions
from cifar.run.checkpoint import load_checkpoint
from tests.conftest import REPO, read_metrics, read_summary, run_script, wandb_run_of

# fp32 weights of the Net after 100 SGD steps, 2 ranks against 1 process: DDP sums the two halves' gradient means in
# another order than one process sums the whole batch's, so they agree to rounding (seen: 7.5e-9), not bit for bit.
DDP_ATOL = 1e-6


def net_run(folder, out, *extra):
    """The study's Net in fp32 on the tiny folder: no BatchNorm, no dropout, so ranks only differ in their images."""
    return [f"data.root={folder}", "model=net", "epochs=2", "batch_size=16", "amp=false", "wandb.mode=offline",
            f"hydra.run.dir={out}", *extra]  # fmt: skip


def torchrun(*args, cwd):
    return run_script("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(REPO / "train.py"), *args, cwd=cwd)


def test_each_rank_takes_its_share_of_every_global_batch():
    split = Split(torch.zeros(10, 3, 32, 32, dtype=torch.uint8), torch.arange(10))
    batches = [
        DeviceBatches(split, 4, torch.device("cpu"), mean=[0] * 3, std=[1] * 3, shuffle=True, seed=3, rank=r, world=2) for r in (0, 1)
    ]
    whole = DeviceBatches(split, 4, torch.device("cpu"), mean=[0] * 3, std=[1] * 3, shuffle=True, seed=3)
    assert len(batches[0]) == len(batches[1]) == len(whole) == 3
    for (_, y0), (_, y1), (_, y) in zip(batches[0].epoch(1), batches[1].epoch(1), whole.epoch(1), strict=True):
        assert torch.equal(torch.cat([y0, y1]), y)  # rank 0 the first half of each global batch, rank 1 the second
    # 3 ranks, 10 images, batch 4: the last global batch (2 images) cannot feed every rank, so it is dropped
    assert len(DeviceBatches(split, 4, torch.device("cpu"), mean=[0] * 3, std=[1] * 3, shuffle=True, rank=2, world=3)) == 2


@pytest.mark.slow
def test_two_rank_ddp_matches_one_process_with_the_same_global_batch(tiny_folder, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    top3 = ("+metrics.top3._target_=torchmetrics.classification.MulticlassAccuracy", "+metrics.top3.top_k=3", "+metrics.top3.average=micro")
    run_script("train.py", *net_run(tiny_folder, one, *top3), cwd=tmp_path)
    proc = torchrun(*net_run(tiny_folder, two, *top3), cwd=tmp_path)

    a, b = load_checkpoint(one / "last.pt"), load_checkpoint(two / "last.pt")
    for name, weight in a["model_state_dict"].items():
        torch.testing.assert_close(b["model_state_dict"][name], weight, atol=DDP_ATOL, rtol=0, msg=name)
    s1, s2 = read_summary(one), read_summary(two)
    assert s2["processes"] == 2 and s1["processes"] == 1
    # validation and test accuracy are reduced over both ranks' shards: the whole split is counted once
    assert s2["best_val_acc"] == pytest.approx(s1["best_val_acc"], abs=0.011) and s2["test_acc"] == pytest.approx(s1["test_acc"], abs=0.011)
    assert sum(s2["test_per_class_acc"].values()) == pytest.approx(sum(s1["test_per_class_acc"].values()), abs=0.11)
    # the test predictions, gathered from both ranks' shards back into the test set's order
    gathered, alone = read_predictions(two / "test_predictions.npz"), read_predictions(one / "test_predictions.npz")
    assert (gathered.plain.labels == alone.plain.labels).all() and gathered.plain.acc == pytest.approx(s2["test_acc"], abs=1e-7)
    assert (gathered.plain.predicted == alone.plain.predicted).mean() > 0.95
    # a torchmetrics metric gathers both ranks' states when it computes: the whole split's figure, as in one process
    rows1, rows2 = (read_metrics(folder) for folder in (one, two))
    assert [r["val/top3"] for r in rows2] == pytest.approx([r["val/top3"] for r in rows1], abs=0.006)  # 1 image of 200: 0.005

    # rank 0 alone wrote: one run folder, one W&B run, one progress bar per epoch
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]
    assert len(list((two / "wandb").glob("offline-run-*"))) == 1
    assert proc.stdout.count("epoch 1: train loss") == 1
    assert len((two / "metrics.jsonl").read_text().splitlines()) == 2

    # a DDP checkpoint resumes in one process
    run_script("train.py", *net_run(tiny_folder, two, "epochs=3", f"resume={two / 'last.pt'}"), cwd=tmp_path)
    assert read_summary(two)["epochs_completed"] == 3


@pytest.mark.slow
def test_joblib_sweep_runs_jobs_in_parallel_with_the_cores_split(tiny_folder, tmp_path):
    sweep = tmp_path / "sweep"
    run_script("train.py", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "optim.lr=0.01,0.001", f"data.root={tiny_folder}",
               "epochs=1", "batch_size=16", "wandb.mode=offline", f"hydra.sweep.dir={sweep}", cwd=tmp_path)  # fmt: skip
    cores = len(os.sched_getaffinity(0))
    for job, name in (("0", "optim.lr=0.01"), ("1", "optim.lr=0.001")):
        summary = read_summary(sweep / job)
        assert summary["status"] == "finished" and summary["name"] == name and summary["group"] == str(sweep)
        assert summary["threads"] == max(1, cores // 2)
        assert wandb_run_of(sweep / job)["state"] == "finished"
    # the report reads a joblib sweep as any other
    report = run_script("-m", "cifar.results.report", str(sweep), cwd=tmp_path)
    assert report.stdout.count("finished") == 2, report.stdout


@pytest.mark.slow
def test_submitit_local_sweep_uses_the_cluster_launchers_code_path(tiny_folder, tmp_path):
    sweep = tmp_path / "sweep"
    run_script("train.py", "-m", "hydra/launcher=submitit_local", "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=10",
               "seed=0,1", f"data.root={tiny_folder}", "epochs=1", "batch_size=16", "wandb.mode=offline", f"hydra.sweep.dir={sweep}",
               cwd=tmp_path)  # fmt: skip
    summaries = [read_summary(sweep / job) for job in ("0", "1")]
    assert [s["name"] for s in summaries] == ["seed=0", "seed=1"]
    assert {s["status"] for s in summaries} == {"finished"} and {s["threads"] for s in summaries} == {1}
    assert (sweep / ".submitit").is_dir()  # submitit's own logs, beside the jobs
