"""Bad input, interruptions, divergence and untrusted files: one clear line, a non-zero exit, nothing lost.

Each case runs the real entry point as a subprocess, as a user would.
"""

import json
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image

from cifar.checkpoint import load_checkpoint
from tests.conftest import REPO, run_script, tiny_overrides, wandb_inspect, write_image_folder


def assert_one_clear_line(proc, rc, *needles):
    out = proc.stdout + proc.stderr
    assert proc.returncode == rc, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    for needle in needles:
        assert needle in out, f"{needle!r} not in:\n{out[-3000:]}"


CONFIG_MISTAKES = [  # (overrides, exit status, words the message must hold); 1 = Hydra's own message, 2 = ours
    (["model=resnet999"], 1, ["resnet999"]),
    (["optim.lrr=0.1"], 1, ["lrr"]),
    (["epochs=ten"], 1, ["ten"]),
    (["optim.lr=0"], 2, ["error: optim.lr=0", "positive"]),
    (["optim.lr=-0.1"], 2, ["optim.lr=-0.1"]),
    (["epochs=0"], 2, ["epochs=0"]),
    (["batch_size=0"], 2, ["batch_size=0"]),
    (["batch_size=100000"], 2, ["batch_size=100000", "larger than the 800 training images"]),
    (["data.val_split=1"], 2, ["data.val_split=1.0", "[0, 1)"]),
    (["data.val_split=-0.2"], 2, ["data.val_split=-0.2"]),
    (["optim.momentum=-1"], 2, ["optim.momentum=-1"]),
    (["optim=muon", "optim.filter_lr=0"], 2, ["optim.filter_lr=0", "positive"]),
    (["optim=muon", "optim.ns_steps=0"], 2, ["optim.ns_steps=0"]),
    (["amp=maybe"], 2, ["amp=maybe"]),
    (["wandb.mode=onlin"], 2, ["wandb.mode=onlin"]),
    (["device=tpu"], 2, ["device=tpu"]),
    (["hydra.run.dir=/dev/null/out"], 2, ["cannot write to the output folder /dev/null/out"]),
]
if not torch.cuda.is_available():
    CONFIG_MISTAKES.append((["device=cuda"], 2, ["no CUDA device", "device=cpu"]))


@pytest.mark.parametrize("overrides, rc, needles", CONFIG_MISTAKES, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_config_mistakes_fail_before_training(tiny_folder, tmp_path, overrides, rc, needles):
    proc = run_script("train.py", f"data.root={tiny_folder}", "wandb.mode=disabled", *overrides, cwd=tmp_path, check=False)
    assert_one_clear_line(proc, rc, *needles)
    assert not list(tmp_path.rglob("ckpt.pt")) and "epoch 1" not in proc.stdout


def broken_folder(tmp_path, how):
    root = write_image_folder(tmp_path / "copy", {"train": 3, "test": 1})
    if how == "no test":
        shutil.rmtree(root / "test")
        return root, [str(root / "test"), "is missing"]
    if how == "wrong classes":
        (root / "train" / "cat").rename(root / "train" / "kitten")
        return root, ["kitten", "exactly"]
    bad = root / "train" / "dog" / "0001.jpg"
    if how == "corrupt image":
        bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
        return root, [str(bad), "could not be read"]
    if how == "grayscale":
        Image.new("L", (32, 32)).save(bad)
        return root, [str(bad), "grayscale", "32x32 RGB"]
    Image.new("RGB", (64, 48)).save(bad)  # "wrong size"
    return root, [str(bad), "64x48", "32x32"]


@pytest.mark.parametrize("how", ["no test", "wrong classes", "corrupt image", "grayscale", "wrong size"])
def test_a_broken_folder_copy_names_the_file_or_folder(tmp_path, how):
    root, needles = broken_folder(tmp_path, how)
    proc = run_script("train.py", f"data.root={root}", "data.format=folder", "wandb.mode=disabled", cwd=tmp_path, check=False)
    assert_one_clear_line(proc, 2, *needles)


def test_untrusted_and_mismatched_checkpoints(compose_cfg, tiny_folder, tmp_path):
    from cifar.training import train

    train(compose_cfg(tiny_overrides(tiny_folder, tmp_path / "vgg", "model=vgg16", "epochs=1")))
    vgg_last = tmp_path / "vgg" / "last.pt"
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(vgg_last.read_bytes()[:5000])
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.ones(3)}, foreign)
    cases = [
        ("train.py", [f"resume={truncated}"], [str(truncated), "not a readable checkpoint"]),
        ("train.py", [f"resume={foreign}"], [str(foreign), "not a checkpoint of this project", "weights"]),
        ("train.py", [f"resume={vgg_last}", "model=net"], [str(vgg_last), "cifar.models.VGG16", "cifar.models.Net"]),
        ("train.py", [f"resume={tmp_path / 'nope.pt'}"], ["nope.pt", "no such checkpoint"]),
        ("evaluate.py", [f"ckpt={truncated}"], [str(truncated), "not a readable checkpoint"]),
        ("evaluate.py", [f"ckpt={foreign}"], [str(foreign), "not a checkpoint of this project"]),
    ]
    for script, args, needles in cases:
        extra = [f"data.root={tiny_folder}", "wandb.mode=disabled"] if script == "train.py" else []
        assert_one_clear_line(run_script(script, *args, *extra, cwd=tmp_path, check=False), 2, *needles)


def start_training(tiny_folder, out, *extra):
    args = [f"data.root={tiny_folder}", "epochs=8", "batch_size=8", "optim.lr=0.01", f"hydra.run.dir={out}", *extra]
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # A test runner started in the background inherits SIGINT ignored, and so would the child, which then never
        # sees Ctrl-C; a handled (not ignored) SIGINT here reaches the child as a terminal's Ctrl-C does.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    return subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *args], cwd=out.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def wait_for(path, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"training ended before {path} appeared:\n{proc.stdout.read()[-3000:]}"
        assert time.monotonic() < deadline
        time.sleep(0.05)


def metrics_without_times(folder):
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


@pytest.fixture(scope="module")
def uninterrupted(tiny_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    proc = start_training(tiny_folder, out, "wandb.mode=disabled")
    assert proc.wait(timeout=600) == 0, proc.stdout.read()[-3000:]
    return out


def test_kill_9_at_several_points_leaves_loadable_checkpoints_and_resume_finishes_exactly(tiny_folder, tmp_path, uninterrupted):
    out = tmp_path / "run"
    for delay in (0.0, 0.4, 0.9):  # three kills, each at a different moment after a checkpoint was written
        resume = [f"resume={out / 'last.pt'}"] if (out / "last.pt").exists() else []
        proc = start_training(tiny_folder, out, "wandb.mode=disabled", *resume)
        epoch_before = load_checkpoint(out / "last.pt")["epoch"] if resume else 0
        while not (out / "last.pt").exists() or load_checkpoint(out / "last.pt")["epoch"] == epoch_before:
            assert proc.poll() is None, "the run finished before it could be killed; give it more epochs"
            time.sleep(0.02)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for name in ("last.pt", "ckpt.pt"):  # whatever moment the kill hit, both load
            assert load_checkpoint(out / name)["epoch"] >= 1
    run_script("train.py", f"data.root={tiny_folder}", "epochs=8", "batch_size=8", "optim.lr=0.01", "wandb.mode=disabled",
               f"resume={out / 'last.pt'}", cwd=tmp_path)  # fmt: skip
    assert metrics_without_times(out) == metrics_without_times(uninterrupted)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])  # SIGTERM: kill, SLURM's time limit
def test_ctrl_c_saves_marks_the_run_interrupted_and_resume_matches_exactly(tiny_folder, tmp_path, uninterrupted, stop):
    out = tmp_path / "run"
    proc = start_training(tiny_folder, out, "wandb.mode=offline")
    wait_for(out / "last.pt", proc)
    proc.send_signal(stop)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130 and "Traceback" not in output
    assert f"resume={out / 'last.pt'}" in output
    assert json.loads((out / "summary.json").read_text())["status"] == "interrupted"
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    logged = json.loads(wandb_inspect(run_dir))
    assert logged["state"] != "finished" and logged["summary"]["status"] == "interrupted"

    run_script("train.py", f"data.root={tiny_folder}", "epochs=8", "batch_size=8", "optim.lr=0.01", "wandb.mode=disabled",
               f"resume={out / 'last.pt'}", cwd=tmp_path)  # fmt: skip
    # exact: same epochs, same losses and accuracies to the last bit (CPU, same seed)
    assert metrics_without_times(out) == metrics_without_times(uninterrupted)
    summary = json.loads((out / "summary.json").read_text())
    straight = json.loads((uninterrupted / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["test_acc"] == straight["test_acc"]


def test_a_diverged_job_is_recorded_and_the_sweep_goes_on_then_fails(tiny_folder, tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_script("train.py", "-m", "optim.lr=1000,0.01", f"data.root={tiny_folder}", "epochs=2", "batch_size=8",
                      "wandb.mode=offline", f"hydra.sweep.dir={sweep}", cwd=tmp_path, check=False)  # fmt: skip
    assert_one_clear_line(proc, 1, "1 of 2 jobs did not finish", "0 (diverged)")
    diverged, fine = (json.loads((sweep / str(i) / "summary.json").read_text()) for i in (0, 1))
    assert diverged["status"] == "diverged" and diverged["test_acc"] is None
    assert fine["status"] == "finished" and (sweep / "1" / "ckpt.pt").is_file()
    (run_dir,) = (sweep / "0" / "wandb").glob("offline-run-*")
    assert json.loads(wandb_inspect(run_dir))["summary"]["status"] == "diverged"


def test_a_run_that_diverges_later_keeps_its_best_checkpoint(compose_cfg, tiny_folder, tmp_path):
    from cifar import training

    def nan_from_epoch_2(step):
        calls = []

        def faulty(x, y):
            calls.append(1)
            loss = step(x, y)
            return loss * float("nan") if len(calls) > 100 else loss  # 100 steps = one epoch here

        return faulty

    summary = training.train(compose_cfg(tiny_overrides(tiny_folder, tmp_path, "epochs=3")), wrap_step=nan_from_epoch_2)
    assert summary["status"] == "diverged" and summary["epochs_completed"] == 1 and summary["best_epoch"] == 1
    assert load_checkpoint(tmp_path / "ckpt.pt")["epoch"] == 1 and summary["test_acc"] is not None


def test_wandb_online_without_credentials_falls_back_to_offline(tiny_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc, so no API key
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    out = tmp_path / "run"
    proc = run_script("train.py", *tiny_overrides(tiny_folder, out, "epochs=1", "wandb.mode=online")[:-1], "wandb.mode=online",
                      f"hydra.run.dir={out}", cwd=tmp_path, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "W&B online is unavailable" in proc.stdout and "wandb sync" in proc.stdout
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    assert json.loads(wandb_inspect(run_dir))["state"] == "finished"


def test_a_wandb_failure_costs_no_local_record(compose_cfg, tiny_folder, tmp_path, monkeypatch):
    import wandb

    def broken(*args, **kwargs):
        raise RuntimeError("W&B backend went away")

    monkeypatch.setattr(wandb.sdk.wandb_run.Run, "log", broken)
    summary = __import__("cifar.training", fromlist=["train"]).train(
        compose_cfg(tiny_overrides(tiny_folder, tmp_path, "epochs=2", "wandb.mode=offline"))
    )
    assert summary["status"] == "finished"
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "finished"
    assert (tmp_path / "ckpt.pt").is_file() and (tmp_path / "last.pt").is_file()


def test_a_run_that_crashes_says_failed_in_its_summary(compose_cfg, tiny_folder, tmp_path):
    from cifar import training

    def broken(step):
        def fail(x, y):
            raise RuntimeError("out of memory, say")

        return fail

    with pytest.raises(RuntimeError, match="out of memory"):
        training.train(compose_cfg(tiny_overrides(tiny_folder, tmp_path)), wrap_step=broken)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["epochs_completed"] == 0
