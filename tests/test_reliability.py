"""Bad input, interruptions, divergence and untrusted files: one clear line, a non-zero exit, nothing lost.

Every rule is checked in-process through the path `train.py` takes (`train(cfg)` raising the UserError that
`train.py` prints as `error: ...`, exit 2); a few cases run the real entry point as a subprocess for the exit
status and the printed line. Signals reach a run held where the test wants it (cifar/hold.py), never at a moment
that depends on the machine's speed.
"""

import os
import shutil
import signal

import pytest
import torch
from hydra.errors import HydraException
from PIL import Image

from cifar.errors import UserError
from cifar.run.checkpoint import load_checkpoint
from cifar.run.checks import check
from cifar.run.evaluation import evaluate
from cifar.run.training import train
from tests.conftest import (
    compose_config,
    finish,
    one_clear_line,
    read_metrics,
    read_summary,
    run_script,
    start_script,
    tiny_overrides,
    wait_held,
    wandb_run_of,
    write_image_folder,
)

HYDRA_MISTAKES = [(["model=resnet999"], "resnet999"), (["optim.lrr=0.1"], "lrr"), (["epochs=ten"], "ten")]
CONFIG_MISTAKES = [  # (overrides, words the one line must hold)
    (["optim.lr=0"], ["optim.lr=0", "positive"]),
    (["optim.lr=-0.1"], ["optim.lr=-0.1"]),
    (["epochs=0"], ["epochs=0"]),
    (["batch_size=0"], ["batch_size=0"]),
    (["batch_size=100000"], ["batch_size=100000", "larger than the 800 training images"]),
    (["data.val_split=1"], ["data.val_split=1.0", "[0, 1)"]),
    (["data.val_split=-0.2"], ["data.val_split=-0.2"]),
    (["optim.momentum=-1"], ["optim=torch.optim.SGD(", "momentum=-1", "Invalid momentum value: -1"]),  # torch's own check
    (["optim=muon", "optim.filter_lr=0"], ["optim.filter_lr=0", "positive"]),
    (["optim=muon", "optim.ns_steps=0"], ["optim.ns_steps=0"]),
    (["amp=maybe"], ["amp=maybe"]),
    (["wandb.mode=onlin"], ["wandb.mode=onlin"]),
    (["device=tpu"], ["device=tpu"]),
    (["seed=-1"], ["seed=-1", "0 to 4294967295"]),
    (["samples=-1"], ["samples=-1"]),
    (["samples=109"], ["samples=109: use 0 (none) to 108, the most images W&B keeps in one step"]),
    (["sample_seed=-1"], ["sample_seed=-1", "null (the first test images) or a seed from 0"]),
    (["data.subset=4", "data.val_split=0.1"], ["data.subset=4 with data.val_split=0.1 leaves 4 training and 0 validation"]),
    (["data.subset=60000"], ["data.subset=60000 is more than the 1000 training images"]),
    (["data.val_split=0.9999"], ["data.val_split=0.9999 of 1000 training images leaves 0 to train on"]),
    (["++data.augment.crop={_target_: cifar.core.augment.Crop, pad: 40}"], ["Crop's pad=40"]),
    (["acc_thresholds=[1.5]"], ["acc_thresholds=[1.5]"]),
    (["optim.nesterov=true", "optim.momentum=0"], ["momentum=0", "nesterov=true", "Nesterov momentum requires a momentum"]),
    (["sched=step", "sched.milestones=[0.5,2]"], ["sched.milestones=[0.5, 2]"]),
    (["sched=onecycle", "sched.peak_at=1.5"], ["sched.peak_at=1.5"]),
    (["sched=step", "sched.gamma=0"], ["sched.gamma=0: the lr multiplier must be positive"]),
    (["sched=cosine", "sched.final=-1"], ["sched.final=-1: a fraction of optim.lr"]),
    (["optim=muon", "optim.filter_momentum=-1"], ["optim.filter_momentum=-1"]),
    (["model=fastnet", "model.whiten=true", "model.stem=16"], ["model.stem=16 with model.whiten=true"]),
    (["model=vgg16", "model.dropout=1.5"], ["model.dropout=1.5"]),
]
if not torch.cuda.is_available():
    CONFIG_MISTAKES += [
        (["device=cuda"], ["no CUDA device", "device=cpu"]),
        (["amp_dtype=fp16"], ["amp_dtype=fp16 is for CUDA"]),
        (["cuda_graph=true"], ["cuda_graph=true but the device is not a GPU"]),
    ]


def ids(value):
    return " ".join(value) if isinstance(value, list) and all(isinstance(v, str) and "=" in v for v in value) else None


@pytest.mark.parametrize("overrides, needle", HYDRA_MISTAKES, ids=ids)
def test_hydra_refuses_unknown_options_keys_and_types_when_composing(tmp_path, overrides, needle):
    with pytest.raises(HydraException, match=needle):
        compose_config(tiny_overrides(tmp_path, tmp_path / "run", *overrides))


@pytest.mark.parametrize("overrides, needles", CONFIG_MISTAKES, ids=ids)
def test_config_mistakes_fail_before_training(tiny_folder, tmp_path, overrides, needles):
    with pytest.raises(UserError) as e:
        train(compose_config(tiny_overrides(tiny_folder, tmp_path / "run", *overrides)))
    message = str(e.value)
    assert "\n" not in message and all(n in message for n in needles), message
    assert not list(tmp_path.rglob("*.pt")) and not list(tmp_path.rglob("metrics.jsonl")), "nothing was trained"


def test_more_threads_than_cores_is_a_warning(tmp_path, caplog):
    cores = len(os.sched_getaffinity(0))
    check(compose_config(tiny_overrides(tmp_path, tmp_path / "run", f"threads={cores + 1}")))
    assert f"threads={cores + 1} on a machine with {cores} cores" in caplog.text


@pytest.mark.parametrize(
    "overrides, rc, needles",
    [
        (["model=resnet999"], 1, ["resnet999"]),  # Hydra's own message and status
        (["optim.lr=0"], 2, ["error: optim.lr=0: the learning rate must be positive"]),  # ours, printed by train.py
        (["hydra.run.dir=/dev/null/out"], 2, ["cannot write to the output folder /dev/null/out"]),  # a Hydra callback's
    ],
    ids=ids,
)
def test_train_py_prints_the_mistake_as_one_line_and_exits_non_zero(tiny_folder, tmp_path, overrides, rc, needles):
    proc = run_script("train.py", f"data.root={tiny_folder}", "wandb.mode=disabled", *overrides, cwd=tmp_path, check=False)
    one_clear_line(proc, rc, *needles)
    assert not list(tmp_path.rglob("*.pt")) and "epoch 1" not in proc.stdout


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
    with pytest.raises(UserError) as e:
        train(compose_config(tiny_overrides(root, tmp_path / "run", "data.format=folder")))
    assert "\n" not in str(e.value) and all(n in str(e.value) for n in needles), str(e.value)


def test_untrusted_and_mismatched_checkpoints(tiny_folder, tmp_path, trained):
    run, _ = trained
    last = tmp_path / "net" / "last.pt"  # a copy: the shared run's folder stays as it is
    last.parent.mkdir()
    shutil.copy(run / "last.pt", last)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(last.read_bytes()[:5000])
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.ones(3)}, foreign)
    for resume, extra, needles in [
        (truncated, [], [str(truncated), "not a readable checkpoint"]),
        (foreign, [], [str(foreign), "not a checkpoint of this project", "weights"]),
        (last, ["model=vgg16"], [str(last), "cifar.core.models.Net", "cifar.core.models.VGG16"]),
        (tmp_path / "nope.pt", [], ["nope.pt", "no such checkpoint"]),
    ]:
        with pytest.raises(UserError) as e:
            train(compose_config(tiny_overrides(tiny_folder, tmp_path / "x", f"resume={resume}", *extra)))
        assert all(n in str(e.value) for n in needles), str(e.value)
    for ckpt, needles in [(truncated, [str(truncated), "not a readable checkpoint"]), (foreign, [str(foreign), "not a checkpoint of"])]:
        with pytest.raises(UserError) as e:
            evaluate(compose_config([f"ckpt={ckpt}", f"output_dir={tmp_path / 'eval'}"], "evaluate"))
        assert all(n in str(e.value) for n in needles), str(e.value)
    one_clear_line(run_script("evaluate.py", f"ckpt={foreign}", cwd=tmp_path, check=False), 2, str(foreign), "not a checkpoint of")


# ---- signals, at moments the test chooses


def train_args(folder, out, *extra):
    return [f"data.root={folder}", "epochs=3", "batch_size=8", "optim.lr=0.01", "wandb.mode=disabled", f"hydra.run.dir={out}", *extra]


@pytest.fixture(scope="module")
def uninterrupted(tiny_folder, tmp_path_factory):
    """The 3-epoch run that the interrupted and killed runs must end up equal to, to the bit."""
    out = tmp_path_factory.mktemp("straight") / "run"
    run_script("train.py", *train_args(tiny_folder, out), cwd=out.parent)
    return out


@pytest.mark.slow
def test_kill_9_leaves_loadable_checkpoints_wherever_it_lands_and_resume_finishes_exactly(tiny_folder, tmp_path, uninterrupted):
    out = tmp_path / "run"
    # killed after epoch 1 was recorded; then, resumed, between epoch 2's ckpt.pt and its last.pt (the two disagree there)
    for point, resume, last_epoch in (("epoch 1", [], 1), ("epoch 2 before last.pt", [f"resume={out / 'last.pt'}"], 1)):
        proc = start_script("train.py", *train_args(tiny_folder, out, *resume), cwd=tmp_path, hold=point)
        wait_held(proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert load_checkpoint(out / "last.pt")["epoch"] == last_epoch and load_checkpoint(out / "ckpt.pt")["epoch"] >= 1
        assert not list(out.glob(".*.tmp")), "no half-written file is left"
    run_script("train.py", *train_args(tiny_folder, out, f"resume={out / 'last.pt'}"), cwd=tmp_path)
    assert read_metrics(out) == read_metrics(uninterrupted)
    assert read_summary(out)["test_acc"] == read_summary(uninterrupted)["test_acc"]


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])  # SIGTERM: kill, SLURM's time limit
def test_ctrl_c_marks_the_run_interrupted_and_resume_matches_exactly(tiny_folder, tmp_path, uninterrupted, stop):
    out = tmp_path / "run"
    proc = start_script("train.py", *train_args(tiny_folder, out, "wandb.mode=offline"), cwd=tmp_path, hold="epoch 2")
    wait_held(proc)
    proc.send_signal(stop)
    output = finish(proc)
    assert proc.returncode == 130 and "Traceback" not in output, output[-3000:]
    assert f"interrupted in epoch 3: resume with the same overrides plus resume={out / 'last.pt'}" in output
    assert read_summary(out)["status"] == "interrupted"
    logged = wandb_run_of(out)
    assert logged["state"] != "finished" and logged["summary"]["status"] == "interrupted"

    run_script("train.py", *train_args(tiny_folder, out, f"resume={out / 'last.pt'}"), cwd=tmp_path)
    # the same epochs, losses and accuracies to the last bit (CPU, same seed)
    assert read_metrics(out) == read_metrics(uninterrupted)
    summary, straight = read_summary(out), read_summary(uninterrupted)
    assert summary["status"] == "finished" and summary["test_acc"] == straight["test_acc"]


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupt_before_training_is_the_interrupted_line_too(tiny_folder, tmp_path, stop):
    """Held while the first decode of the folder copy runs: train.py, then evaluate.py (reading the same folder afresh)."""
    out = tmp_path / "run"
    proc = start_script("train.py", *train_args(tiny_folder, out, f"data.cache_dir={tmp_path / 'cache'}"), cwd=tmp_path, hold="decode")
    wait_held(proc)
    proc.send_signal(stop)
    output = finish(proc)
    assert proc.returncode == 130 and "Traceback" not in output, output[-3000:]
    assert "interrupted before training began: nothing was trained" in output
    assert read_summary(out)["status"] == "interrupted" and not list(out.glob("*.pt"))
    if stop == signal.SIGTERM:
        return  # the rest is the same for both signals
    again = run_script("train.py", *train_args(tiny_folder, out, "epochs=1"), cwd=tmp_path)  # nothing was trained: it may start again
    assert "Traceback" not in again.stdout and read_summary(out)["status"] == "finished"

    args = [
        f"ckpt={out / 'ckpt.pt'}",
        f"data.root={tiny_folder}",
        f"data.cache_dir={tmp_path / 'other_cache'}",
        f"output_dir={tmp_path / 'eval'}",
    ]
    proc = start_script("evaluate.py", *args, cwd=tmp_path, hold="decode")
    wait_held(proc)
    proc.send_signal(stop)
    output = finish(proc)
    assert proc.returncode == 130 and "Traceback" not in output and "interrupted: the evaluation stopped" in output, output[-3000:]
    assert not (tmp_path / "eval" / "evaluation.json").exists()


# ---- divergence, W&B failures, crashes


def test_a_diverged_job_is_recorded_and_the_sweep_goes_on_then_fails(lr_sweep):
    sweep, proc = lr_sweep  # -m optim.lr=0.01,0.001,1000
    one_clear_line(proc, 1, "1 of 3 jobs did not finish", "2 (diverged)")
    diverged = read_summary(sweep / "2")
    assert diverged["status"] == "diverged" and diverged["test_acc"] is None and not (sweep / "2" / "ckpt.pt").exists()
    assert [read_summary(sweep / job)["status"] for job in "01"] == ["finished", "finished"], "the jobs around it ran"
    assert wandb_run_of(sweep / "2")["summary"]["status"] == "diverged"


def test_a_run_that_diverges_later_keeps_its_best_checkpoint(tiny_folder, tmp_path):
    def nan_from_epoch_2(step):
        calls = []

        def faulty(x, y):
            calls.append(1)
            out = step(x, y)
            return out._replace(loss=out.loss * float("nan")) if len(calls) > 100 else out  # 100 steps = one epoch here

        return faulty

    summary = train(compose_config(tiny_overrides(tiny_folder, tmp_path, "epochs=3")), wrap_step=nan_from_epoch_2)
    assert summary["status"] == "diverged" and summary["epochs_completed"] == 1 and summary["best_epoch"] == 1
    assert load_checkpoint(tmp_path / "ckpt.pt")["epoch"] == 1 and summary["test_acc"] is not None


@pytest.mark.slow
def test_wandb_online_without_credentials_falls_back_to_offline(tiny_folder, tmp_path):
    out = tmp_path / "run"
    no_login = {"HOME": str(tmp_path), "WANDB_API_KEY": ""}  # no ~/.netrc, no key
    proc = run_script("train.py", *train_args(tiny_folder, out, "epochs=1", "wandb.mode=online"), cwd=tmp_path, env=no_login)
    assert "W&B online is unavailable" in proc.stdout and "wandb sync" in proc.stdout
    assert wandb_run_of(out)["state"] == "finished"


def test_a_wandb_failure_costs_no_local_record(tiny_folder, tmp_path, monkeypatch):
    import wandb

    def broken(*args, **kwargs):
        raise RuntimeError("W&B backend went away")

    monkeypatch.setattr(wandb.sdk.wandb_run.Run, "log", broken)
    summary = train(compose_config(tiny_overrides(tiny_folder, tmp_path, "epochs=2", "wandb.mode=offline")))
    assert summary["status"] == "finished" and read_summary(tmp_path)["status"] == "finished"
    assert [row["epoch"] for row in read_metrics(tmp_path)] == [1, 2]
    assert (tmp_path / "ckpt.pt").is_file() and (tmp_path / "last.pt").is_file()


def test_a_run_that_crashes_says_failed_in_its_summary(tiny_folder, tmp_path):
    def broken(step):
        def fail(x, y):
            raise RuntimeError("out of memory, say")

        return fail

    with pytest.raises(RuntimeError, match="out of memory"):
        train(compose_config(tiny_overrides(tiny_folder, tmp_path)), wrap_step=broken)
    summary = read_summary(tmp_path)
    assert summary["status"] == "failed" and summary["epochs_completed"] == 0
