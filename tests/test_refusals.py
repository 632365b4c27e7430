"""A refused run changes nothing on disk: every check, a resume's included, runs before Hydra writes its folder, its
`.hydra/` or train.log (cifar/run/hydra_callbacks.py's BeforeWriting); and `resume=` is read once, as Hydra parses it."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from conftest import one_clear_line, read_summary, run_script
from PIL import Image

from cifar.core.data import load_dataset
from cifar.errors import UserError
from cifar.tools import bench

TINY = ("epochs=1", "batch_size=8", "optim.lr=0.01", "wandb.mode=disabled", "device=cpu")


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folder`, with its size and modification time: what a refused command must leave as it was."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tiny_folder, tmp_path_factory) -> Path:
    """A finished one-epoch run, a sweep folder of one job beside it, and a picture and a text file in a folder of their own."""
    launch = tmp_path_factory.mktemp("refusals")
    run_script("train.py", f"data.root={tiny_folder}", *TINY, f"hydra.run.dir={launch / 'run'}", cwd=launch)
    run_script("train.py", "-m", f"data.root={tiny_folder}", *TINY, f"hydra.sweep.dir={launch / 'sweep'}", cwd=launch)
    (launch / "files").mkdir()
    Image.new("RGB", (8, 8), "blue").save(launch / "files" / "picture.png")
    (launch / "files" / "notes.txt").write_text("not a checkpoint\n")
    return launch


@pytest.mark.parametrize(
    ("resume", "extra", "needle"),
    [
        ("run/last.pt", ["optim.lr=0.1"], "was trained with other settings (optim.lr: 0.01 then vs 0.1 now)"),
        ("run/last.pt", ["epochs=1"], "is a finished run of 1 epochs: nothing is left to train"),
        ("run/ckpt.pt", ["epochs=2"], "holds the best weights only (ckpt.pt)"),
        ("run/last.pt", ["epochs=2", "hydra.run.dir=elsewhere"], "continues the run in its own folder"),
        ("run/last.pt", ["epochs=2", "-m"], "every job of a sweep would continue it"),
        ("files/picture.png", ["epochs=2"], "picture.png: not a checkpoint: it is a PNG image"),
        ("files/notes.txt", ["epochs=2"], "notes.txt: not a checkpoint: it is a text file"),
        ("sweep/multirun.yaml", ["epochs=2"], "multirun.yaml: not a checkpoint: it is a text file"),
        ("run/last.pt", ["epochs=2", "+epoch=3"], "the config has no key epoch"),
    ],
    ids=["settings", "finished", "ckpt", "run_dir", "multirun", "picture", "text", "sweep_yaml", "unknown_key"],
)
def test_a_refused_resume_changes_nothing_on_disk(finished_run, tiny_folder, resume, extra, needle):
    before = snapshot(finished_run)
    proc = run_script(
        "train.py", f"resume={finished_run / resume}", f"data.root={tiny_folder}", *TINY[1:], *extra, cwd=finished_run, check=False
    )
    one_clear_line(proc, 2, needle)
    assert snapshot(finished_run) == before
    assert not (finished_run / "outputs").exists() and not (finished_run / "elsewhere").exists()


@pytest.mark.parametrize(
    "override",
    [
        "epochs=0",
        "+epoch=3",
        "+data.augment.mix={_target_: cifar.core.augment.Mix, mixup_alpha: inf}",
        "optim.lr=nan",
        "+data.flips=true",
        "data.mean=[nan,0.5,0.5]",
        "+model.widht=3",
        "data.crop_pad=4",
    ],
)
def test_a_run_refused_for_its_config_leaves_no_folder(tiny_folder, tmp_path, override):
    proc = run_script("train.py", f"data.root={tiny_folder}", *TINY, override, cwd=tmp_path, check=False)
    one_clear_line(proc, 2, override.lstrip("+").split("=")[0])
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("where", "overrides", "needle"),
    [
        ("run", ["optim.lr=abc"], "optim.lr=abc: SGD's lr is a number"),  # the optim node is untyped: the class's hints type it
        ("run", ["optim=adamw", "optim.eps=-1"], "failed a trial step on cpu (ValueError: Invalid epsilon value: -1)"),
        ("sweep", ["optim.lr=abc"], "optim.lr=abc: SGD's lr is a number"),  # -m: before Hydra rewrites multirun.yaml
    ],
    ids=["lr_abc", "eps_negative", "sweep"],
)
def test_a_run_refused_for_its_optimizer_leaves_a_finished_runs_folder_as_it_was(finished_run, tiny_folder, where, overrides, needle):
    """Aimed at a finished run's (or sweep's) folder, a value only the optimizer refuses: nothing there is rewritten,
    not even the `.hydra/` that Hydra writes once the callbacks are done."""
    before = snapshot(finished_run)
    folder = f"hydra.{where}.dir={finished_run / where}"
    multirun = ["-m"] if where == "sweep" else []
    proc = run_script("train.py", *multirun, f"data.root={tiny_folder}", *TINY, folder, *overrides, cwd=finished_run, check=False)
    one_clear_line(proc, 2, needle)
    assert snapshot(finished_run) == before


@pytest.mark.parametrize(
    ("override", "rc", "needle"),
    [
        ("top=abc", 1, "full_key: top"),  # Hydra's own refusal of a type, as train.py's epochs=ten
        ("min_confidence=abc", 1, "full_key: min_confidence"),
        ("samples=abc", 1, "full_key: samples"),
        ("batch_size=abc", 1, "full_key: batch_size"),
        ("top=3.5", 1, "full_key: top"),
        ("+toop=3", 2, "toop=3: the config has no key toop (a typo?)"),
        ("min_confidence=nan", 2, "min_confidence=nan: use finite numbers"),
    ],
)
def test_an_evaluation_refused_for_its_options_leaves_no_folder(trained, tmp_path, override, rc, needle):
    proc = run_script("evaluate.py", f"ckpt={trained[0] / 'ckpt.pt'}", override, cwd=tmp_path, check=False)
    one_clear_line(proc, rc, needle)
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_a_resume_path_is_read_once_as_hydra_parses_it(tiny_folder, tmp_path):
    """Quotes, a comma and non-ASCII letters in the folder's name, `~`, and hydra.job.chdir: one folder, the run's own."""
    home = tmp_path / "home"
    out = home / "a,b ü"
    run_script("train.py", f"data.root={tiny_folder}", *TINY, f"hydra.run.dir='{out}'", cwd=tmp_path, env={"HOME": str(home)})
    launch = tmp_path / "launch"
    launch.mkdir()
    for resume in ("'~/a,b ü/last.pt'", f"'{os.path.relpath(out, launch)}/last.pt'"):
        epochs = read_summary(out)["epochs_completed"] + 1
        run_script("train.py", f"resume={resume}", f"data.root={tiny_folder}", *TINY[1:], f"epochs={epochs}", "hydra.job.chdir=true",
                   cwd=launch, env={"HOME": str(home)})  # fmt: skip
        assert read_summary(out)["epochs_completed"] == epochs
    assert [p.name for p in home.iterdir() if not p.name.startswith(".")] == ["a,b ü"] and not list(launch.iterdir())
    assert "resume=" in (out / ".hydra" / "overrides.yaml").read_text()


@pytest.mark.slow
def test_a_resume_on_another_copy_of_the_data_is_refused(finished_run, tiny_folder, tmp_path):
    copy = shutil.copytree(tiny_folder, tmp_path / "copy")
    shutil.copy2(copy / "train" / "cat" / "0001.jpg", copy / "train" / "cat" / "0000.jpg")  # one image changed, its time kept
    run = shutil.copytree(finished_run / "run", tmp_path / "run")
    before = snapshot(run)
    proc = run_script("train.py", f"resume={run / 'last.pt'}", f"data.root={copy}", *TINY[1:], "epochs=2", cwd=tmp_path, check=False)
    one_clear_line(proc, 2, "was trained on another copy of the data")
    assert snapshot(run) == before
    moved = shutil.copytree(tiny_folder, tmp_path / "moved")  # the same images elsewhere: the same data
    run_script("train.py", f"resume={run / 'last.pt'}", f"data.root={moved}", *TINY[1:], "epochs=2", cwd=tmp_path)
    assert read_summary(run)["epochs_completed"] == 2


def test_a_folder_copy_that_would_score_wrong_or_crash_is_one_line(tiny_folder, tmp_path):
    def broken(name: str, change) -> Path:
        copy = shutil.copytree(tiny_folder, tmp_path / name, symlinks=True)
        change(copy)
        return copy

    def emptied(copy):  # a test class with no images: it would score 0% without a word
        shutil.rmtree(copy / "test" / "cat")
        (copy / "test" / "cat").mkdir()

    def deeper(copy):  # its images one folder deeper
        (copy / "test" / "cat" / "more").mkdir()
        for f in (copy / "test" / "cat").glob("*.jpg"):
            f.rename(copy / "test" / "cat" / "more" / f.name)

    cases = [
        (broken("empty", emptied), "test/cat holds no images: add its .jpg or .png files"),
        (broken("deeper", deeper), "test/cat holds no images: they are one folder deeper, in"),
        (broken("dangling", lambda c: (c / "train" / "dog" / "9999.jpg").symlink_to(c / "gone.jpg")), "9999.jpg: No such file"),
        (broken("loop", lambda c: (c / "train" / "dog" / "loop.jpg").symlink_to(c / "train" / "dog" / "loop.jpg")), "loop.jpg: Too many"),
    ]
    for copy, needle in cases:
        with pytest.raises(UserError, match=re.escape(needle)):
            load_dataset(copy, "folder")


def test_images_through_a_link_loop_are_each_read_once(trained, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for colour in ("red", "green"):
        Image.new("RGB", (40, 30), colour).save(photos / f"{colour}.png")
    (photos / "again").symlink_to(photos)  # photos/again/again/... : a loop
    proc = run_script(
        "evaluate.py", f"ckpt={trained[0] / 'ckpt.pt'}", f"images={photos}/**/*.png", f"hydra.run.dir={tmp_path / 'eval'}", cwd=tmp_path
    )
    result = json.loads((tmp_path / "eval" / "predictions.json").read_text())
    assert sorted(Path(r["file"]).name for r in result["images"]) == ["green.png", "red.png"]
    assert "lead to 2 files through links: each image is read once" in " ".join(proc.stdout.split())


@pytest.mark.slow
def test_a_report_over_files_edited_by_hand_warns_and_goes_on(lr_sweep, tmp_path, caplog):
    sweep = shutil.copytree(lr_sweep[0], tmp_path / "sweep")
    (sweep / "0" / "summary.json").write_text(json.dumps({**read_summary(sweep / "0"), "test_acc": "high"}))  # valid JSON, wrong
    (sweep / "1" / "summary.json").write_text("[]")
    with (sweep / "1" / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"epoch": "four", "train/loss": 0.1}) + "\n")
    for command in ("cifar.results.report", "cifar.results.study"):
        proc = run_script("-m", command, str(sweep), cwd=tmp_path, check=False)
        assert "Traceback" not in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[-3000:]
    proc = run_script("-m", "cifar.results.report", str(sweep), "--out", str(tmp_path / "report"), cwd=tmp_path)
    text = " ".join((proc.stdout + proc.stderr).split())
    assert "summary.json is not a readable summary (test_acc is 'high')" in text
    assert "metrics.jsonl, line 4, is not an epoch's record (epoch is 'four')" in text


def test_a_batch_too_small_for_batchnorm_is_one_line(tiny_folder, tmp_path):
    proc = run_script("train.py", "model=resnet18", "model.widths=[8,8,8,8,8,8]", "model.depths=[1,1,1,1,1,1]", "model.stem=8",
                      "batch_size=1", "data.subset=20", f"data.root={tiny_folder}", *TINY[:1], *TINY[2:], cwd=tmp_path, check=False)  # fmt: skip
    one_clear_line(proc, 2, "a training batch of 1 image(s) leaves a BatchNorm layer of this model one value per channel")


def test_a_single_run_that_diverged_exits_1(tiny_folder, tmp_path):
    proc = run_script(
        "train.py", f"data.root={tiny_folder}", *TINY, "optim.lr=1000", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, check=False
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stdout + proc.stderr
    assert read_summary(tmp_path / "run")["status"] == "diverged"


@pytest.mark.slow
def test_the_profilers_advice_names_only_what_would_help(tiny_folder, tmp_path):
    base = (f"data.root={tiny_folder}", *TINY, "data.subset=40", "batch_size=16")  # 2 steps an epoch
    proc = run_script("train.py", *base, "profile_steps=5", cwd=tmp_path, check=False)
    line = one_clear_line(proc, 2, "give the run 9 steps or more")
    assert "limit_batches" not in line and "lower profile_steps" not in line
    proc = run_script("train.py", *base, "epochs=3", "limit_batches=2", "profile_steps=5", cwd=tmp_path, check=False)
    one_clear_line(proc, 2, "lower profile_steps to 2 or raise limit_batches (now 2)")


def test_an_unsafe_pickle_never_gets_torchs_advice_to_load_it_anyway(tmp_path):
    import datetime

    import torch

    torch.save({"epoch": 1, "when": datetime.datetime(2026, 1, 1)}, tmp_path / "unsafe.pt")
    proc = run_script("evaluate.py", f"ckpt={tmp_path / 'unsafe.pt'}", cwd=tmp_path, check=False)
    line = one_clear_line(proc, 2, "unsafe.pt: not a readable checkpoint", "never loaded: they could run code")
    assert "weights_only" not in line


def test_every_error_of_the_bench_is_one_line(tmp_path, capsys):
    """One as a user meets it (a real `python -m cifar.tools.bench` process); the rest through the same main() in this
    process, which prints the same line and exits the same way, without paying torch's start-up again for each."""
    proc = run_script("-m", "cifar.tools.bench", "--cases", "net4", "--windows", "0", cwd=tmp_path, check=False)
    one_clear_line(proc, 2, "--windows 0: time 1 window or more")
    (tmp_path / "a_file").write_text("a file, not a folder")
    for args, needle in [
        (["--images", "10", "--cases", "vgg128"], "--images 10: fewer than one batch of vgg128"),
        (["--override", "epoch=3"], "--override epoch=3: "),
        (["--override", "amp=maybe"], "amp=maybe: use auto, true or false"),
        (["--device", "cuda:7"], "cuda"),
        (["--json", str(tmp_path / "a_file" / "x.json")], "cannot write to the output folder"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            bench.main(["--cases", "net4", "--windows", "1", "--warmup", "0", *args])
        out = capsys.readouterr()
        (line,) = [line for line in out.out.splitlines() if line.startswith("error:")]
        assert exit_.value.code == 2 and needle in line and not out.err, (args, out)


@pytest.mark.slow
def test_a_refused_run_removes_only_its_own_folder(tiny_folder, tmp_path):
    """Refused after Hydra made its folder (here: no data where data.root points): that folder goes, and the dated
    folder above it only while it is empty; a run that started in it meanwhile keeps its files."""
    sibling = tmp_path / "outputs" / "today" / "another-run"
    sibling.mkdir(parents=True)
    (sibling / "ckpt.pt").write_text("a result")
    proc = run_script("train.py", f"data.root={tmp_path / 'nowhere'}", "data.download=false", *TINY,
                      "hydra.run.dir=outputs/today/refused", cwd=tmp_path, check=False)  # fmt: skip
    one_clear_line(proc, 2, "cifar10 (torchvision's CIFAR10 files) is not in")
    assert sorted(p.name for p in (tmp_path / "outputs" / "today").iterdir()) == ["another-run"]
    assert (sibling / "ckpt.pt").read_text() == "a result"
    proc = run_script("train.py", f"data.root={tmp_path / 'nowhere'}", "data.download=false", *TINY,
                      "hydra.run.dir=fresh/today/refused", cwd=tmp_path, check=False)  # fmt: skip
    one_clear_line(proc, 2, "cifar10 (torchvision's CIFAR10 files) is not in")
    assert not (tmp_path / "fresh").exists(), "the dated folders it made, empty, go with it"


def test_a_folder_given_where_a_file_is_due_and_an_unwritable_report_are_one_line(trained, lr_sweep, tmp_path):
    proc = run_script("train.py", f"resume={trained[0]}", cwd=tmp_path, check=False)
    one_clear_line(proc, 2, f"{trained[0]} is a run's folder: give the file in it, {trained[0] / 'last.pt'} to resume")
    (tmp_path / "a_file").write_text("not a folder")
    proc = run_script(
        "-m", "cifar.results.report", str(lr_sweep[0]), "--out", str(tmp_path / "a_file" / "report"), cwd=tmp_path, check=False
    )
    one_clear_line(proc, 2, "cannot write to the output folder", "give --out a writable folder")
