"""Files from elsewhere are data: a checkpoint, last.pt or summary.json never chooses what code runs (cifar/run/targets.py),
and a config names only what its classes take."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, compose_config, one_clear_line, run_script, tiny_overrides, write_image_folder
from omegaconf import OmegaConf
from PIL import Image

from cifar.core.data import CIFAR10_CLASSES
from cifar.errors import UserError
from cifar.results.report import report
from cifar.run.build import build_model
from cifar.run.checkpoint import weights_fit
from cifar.run.evaluation import evaluate
from cifar.run.targets import build
from cifar.run.training import train


def crafted(trained, tmp_path, name: str, model: dict) -> str:
    """A copy of the trained run's ckpt.pt whose stored model config is `model`."""
    ckpt = torch.load(trained[0] / "ckpt.pt", weights_only=True)
    ckpt["config"]["model"] = model
    torch.save(ckpt, tmp_path / name)
    return str(tmp_path / name)


COPY = {"_target_": "shutil.copyfile", "src": "SRC", "dst": "DST"}  # what a crafted file asks for: overwrite a file of mine


@pytest.mark.parametrize(
    "model",
    [
        COPY,  # another module: refused on the name, nothing imported
        {**COPY, "_target_": "cifar.core.models.shutil.copyfile"},  # reached through one of ours
        {"_target_": "cifar.files.atomic_write_text", "text": "owned", "path": "DST"},  # ours, but not a model class
        {"_target_": "cifar.core.models.Net", "num_classes": COPY},  # nested: Hydra would build it first
        {"_target_": "cifar.core.models.ResNet", "widths": [[COPY]]},  # nested deeper, in a list of lists
        {"_target_": "cifar.core.models.Net", "_args_": [COPY]},
        {"_target_": "cifar.core.models.Net", "_partial_": True},
        "cifar.core.models.Net",  # not a mapping at all
    ],
    ids=["foreign", "through_ours", "not_a_model", "nested", "nested_deeper", "args", "partial", "a_string"],
)
def test_a_checkpoint_cannot_run_code(trained, tmp_path, model):
    src, dst = tmp_path / "secret", tmp_path / "overwritten"
    src.write_text("the sender's")
    dst.write_text("mine")
    model = json.loads(json.dumps(model).replace('"SRC"', json.dumps(str(src))).replace('"DST"', json.dumps(str(dst))))
    path = crafted(trained, tmp_path, "crafted.pt", model)
    with pytest.raises(UserError, match=r"crafted.pt: its model cannot be built here \(model"):
        evaluate(compose_config([f"ckpt={path}", "samples=0", f"output_dir={tmp_path / 'eval'}"], "evaluate"))
    assert dst.read_text() == "mine"


def test_a_crafted_checkpoint_is_one_line_from_evaluate_and_images(trained, tmp_path):
    dst = tmp_path / "overwritten"
    path = crafted(trained, tmp_path, "crafted.pt", {"_target_": "shutil.copyfile", "src": __file__, "dst": str(dst)})
    photo = tmp_path / "photo.png"
    Image.new("RGB", (40, 30), "red").save(photo)
    for extra in ([], [f"images={photo}"]):
        proc = run_script("evaluate.py", f"ckpt={path}", *extra, cwd=tmp_path, check=False)
        one_clear_line(proc, 2, "model._target_=shutil.copyfile", "refused, nothing was imported or called")
    assert not dst.exists()


def test_a_resume_never_builds_what_its_last_pt_names(trained, tiny_folder, tmp_path):
    last = torch.load(trained[0] / "last.pt", weights_only=True)
    last["config"]["model"] = {"_target_": "shutil.rmtree", "path": str(tmp_path / "keep")}
    (tmp_path / "keep").mkdir()
    (tmp_path / "run").mkdir()
    torch.save(last, tmp_path / "run" / "last.pt")
    with pytest.raises(UserError, match="was trained with other settings"):
        train(compose_config(tiny_overrides(tiny_folder, tmp_path / "x", f"resume={tmp_path / 'run' / 'last.pt'}")))
    assert (tmp_path / "keep").is_dir()


def test_every_class_the_config_names_is_checked(compose_cfg):
    cfg = compose_cfg(["model=resnet18"])
    assert type(build_model(cfg, torch.device("cpu"), 10)).__name__ == "ResNet"
    with pytest.raises(UserError, match=r"optim._target_=os.system: a config may build only a torch.optim.Optimizer class"):
        build({"_target_": "os.system", "_partial_": True, "command": "true"}, "optim")
    with pytest.raises(UserError, match=r"sched._target_=cifar.core.schedules.LambdaLR: a config may build only a schedule"):
        build({"_target_": "cifar.core.schedules.LambdaLR", "_partial_": True}, "sched")
    with pytest.raises(UserError, match=r"model._recursive_: a model config may set only _target_, _partial_"):
        build({"_target_": "cifar.core.models.Net", "_recursive_": False}, "model")


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("+optim.momentun=0.5", "optim.momentun: SGD takes no argument 'momentun' (it takes params, lr, momentum"),
        ("+model.widht=3", "model.widht: Net takes no argument 'widht' (it takes num_classes"),
    ],
)
def test_an_argument_the_class_does_not_take_is_one_line(tiny_folder, tmp_path, override, needle):
    proc = run_script("train.py", override, *tiny_overrides(tiny_folder, tmp_path / "run"), cwd=tmp_path, check=False)
    one_clear_line(proc, 2, needle)
    assert not list(tmp_path.iterdir()), "refused before anything was written"


# ---- a checkpoint decides the model, its class names and how its images are prepared; never a path (issue 41)


def altered(trained, tmp_path, name: str, change) -> str:
    """A copy of the trained run's ckpt.pt, changed by `change(ckpt)`."""
    ckpt = torch.load(trained[0] / "ckpt.pt", weights_only=True)
    change(ckpt)
    torch.save(ckpt, tmp_path / name)
    return str(tmp_path / name)


def data_of_mine(tiny_folder, tmp_path) -> Path:
    """A private copy of the tiny folder: this test may watch every file in it."""
    return Path(shutil.copytree(tiny_folder, tmp_path / "mine", ignore=shutil.ignore_patterns("*.pt")))


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*")}


@pytest.mark.parametrize(
    ("stored", "refusal"),
    [
        ({"cache_dir": "PLANTED"}, None),  # ignored: the cache goes where the user's data.cache_dir says (inside data.root)
        ({"root": "PLANTED", "format": "torchvision", "download": True}, None),  # ignored: nothing made or fetched there
        ({"name": "../x/planted"}, "its stored data.name='../x/planted' is refused (use letters, digits"),  # a path out of the cache folder
        ({"name": "*"}, "its stored data.name='*' is refused"),  # a glob: the stale-cache sweep deleted a file of mine
        ({"mean": [0.5, 0.5]}, "its stored data.mean=[0.5, 0.5] is refused (give 3 values"),
        ({"std": [0.5, 0.5, float("nan")]}, "its stored data.std is [0.5, 0.5, nan], not a value train.py writes"),
        ({"resize": "yes"}, "its stored data.resize is 'yes', not a value train.py writes"),
        ({"torchvision": "ImageNet"}, "its stored data.torchvision='ImageNet' is refused (use cifar10, cifar100 or null)"),
    ],
    ids=["cache_dir", "root_and_download", "name_a_path", "name_a_glob", "mean", "std_nan", "resize", "torchvision"],
)
def test_a_checkpoint_chooses_no_path_and_its_data_spec_is_checked(trained, tiny_folder, tmp_path, stored, refusal):
    mine = data_of_mine(tiny_folder, tmp_path)
    planted = tmp_path / "planted"
    copy = hashlib.sha256(str(mine.resolve()).encode()).hexdigest()[:8]
    unrelated = mine / f"notes-uint8-{copy}-keep.pt"  # what a stored name of '*' made the stale-cache sweep delete
    unrelated.write_text("mine")
    stored = json.loads(json.dumps(stored).replace("PLANTED", str(planted)))
    path = altered(trained, tmp_path, "crafted.pt", lambda ckpt: ckpt["config"]["data"].update(stored))
    before = files_under(tmp_path)
    proc = run_script("evaluate.py", f"ckpt={path}", f"data.root={mine}", "samples=0", f"hydra.run.dir={tmp_path / 'eval'}",
                      cwd=tmp_path, check=False)  # fmt: skip
    made = files_under(tmp_path) - before
    assert unrelated.read_text() == "mine" and not planted.exists() and not (tmp_path / "x").exists()
    if refusal:
        one_clear_line(proc, 2, f"crafted.pt: {refusal}")
        assert not made, "refused before anything was written"
    else:
        assert proc.returncode == 0, proc.stdout[-2000:]
        assert {p.parent for p in made if p.suffix == ".pt"} == {mine}, "the decode cache is written in the user's data.root alone"
        assert all(p.is_relative_to(mine) or p.is_relative_to(tmp_path / "eval") for p in made)


@pytest.mark.parametrize(
    "change",
    [
        lambda ckpt: ckpt["config"]["data"].update(name="${oc.env:CIFAR_TEST_SECRET}"),
        lambda ckpt: ckpt["config"]["model"].update(num_classes="${oc.env:CIFAR_TEST_SECRET}"),
        lambda ckpt: ckpt["config"].update(amp_dtype="${oc.env:CIFAR_TEST_SECRET}"),
    ],
    ids=["data.name", "model.num_classes", "amp_dtype"],
)
def test_interpolations_in_a_checkpoint_are_never_resolved(trained, tiny_folder, tmp_path, change):
    path = altered(trained, tmp_path, "crafted.pt", change)
    proc = run_script("evaluate.py", f"ckpt={path}", f"data.root={tiny_folder}", f"hydra.run.dir={tmp_path / 'eval'}", cwd=tmp_path,
                      check=False, env={"CIFAR_TEST_SECRET": "hunter2"})  # fmt: skip
    line = one_clear_line(proc, 2, "crafted.pt: its stored")
    assert "hunter2" not in proc.stdout + proc.stderr and "hunter2" not in " ".join(map(str, files_under(tmp_path)))
    assert "interpolation" in line or "${oc.env:CIFAR_TEST_SECRET}" in line, line


def test_a_sweep_folder_from_elsewhere_is_read_as_text(lr_sweep, tmp_path, monkeypatch):
    """A shared sweep's `.hydra/hydra.yaml` naming `${oc.env:...}`: the report shows the text, never the reader's secret."""
    sweep = Path(shutil.copytree(lr_sweep[0], tmp_path / "sweep", ignore=shutil.ignore_patterns("*.pt", "wandb")))
    hydra_yaml = sweep / "0" / ".hydra" / "hydra.yaml"
    hydra_yaml.write_text(hydra_yaml.read_text().replace("    model: net\n", "    model: ${oc.env:CIFAR_TEST_SECRET}\n"))
    overrides = sweep / "0" / ".hydra" / "overrides.yaml"
    overrides.write_text(overrides.read_text() + "- model=net\n")
    monkeypatch.setenv("CIFAR_TEST_SECRET", "hunter2")
    written = report([str(sweep)], tmp_path / "out")
    assert "hunter2" not in written.read_text() and "model=${oc.env:CIFAR_TEST_SECRET}" in written.read_text()


def test_a_stored_width_far_beyond_its_weights_is_refused_before_any_memory_is_taken(trained, tiny_folder, tmp_path):
    """A VGG16 whose stored hidden width is 20000 (a 1.6 GB classifier; the file holds the small one): refused from the
    tensors' shapes, the process never holding more than a plain evaluation does."""
    vgg = compose_config(["model=vgg16", "model.hidden=64"])
    weights = build_model(vgg, torch.device("cpu"), 10).state_dict()

    def as_vgg(ckpt):
        ckpt["config"]["model"] = OmegaConf.to_container(vgg.model) | {"hidden": 20000}
        ckpt["model_state_dict"] = weights

    path = altered(trained, tmp_path, "wide.pt", as_vgg)
    # The process's own peak (VmHWM; ru_maxrss would carry pytest's over the fork), printed however evaluate.py exits.
    peak = "import re, runpy, sys\nsys.argv = sys.argv[1:]\ntry:\n    runpy.run_path(sys.argv[0], run_name='__main__')\nfinally:\n"
    peak += "    print('peak', int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1]) // 1024, 'MB')"
    proc = subprocess.run([sys.executable, "-c", peak, str(REPO / "evaluate.py"), f"ckpt={path}", f"data.root={tiny_folder}",
                           f"hydra.run.dir={tmp_path / 'eval'}"], check=False, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    one_clear_line(proc, 2, "wide.pt: its weights do not fit the model stored with it (classifier.")
    peak_mb = int(proc.stdout.split("peak ")[1].split()[0])
    assert peak_mb < 1000, f"{peak_mb} MB: the wide model was built before it was refused"


@pytest.mark.parametrize(
    ("classes", "needle"),
    [
        (["cat\x1b]0;owned\x07", *CIFAR10_CLASSES[1:]], "is not a class folder's name"),  # retitles the terminal
        (["cat\n| dog | 100% |", *CIFAR10_CLASSES[1:]], "is not a class folder's name"),  # forges a table row
        (["cat"] * 10, "it names 'cat' twice"),
        (list(CIFAR10_CLASSES[:9]), "its weights do not fit the model stored with it (fc3.weight is [10, 84] in the file but [9, 84]"),
        (["../../etc", *CIFAR10_CLASSES[1:]], "is not a class folder's name"),
    ],
    ids=["escape", "newline", "duplicates", "fewer_than_outputs", "a_path"],
)
def test_a_checkpoints_class_names_are_checked(trained, tiny_folder, tmp_path, classes, needle):
    path = altered(trained, tmp_path, "crafted.pt", lambda ckpt: ckpt.update(classes=classes))
    proc = run_script("evaluate.py", f"ckpt={path}", f"data.root={tiny_folder}", f"hydra.run.dir={tmp_path / 'eval'}", cwd=tmp_path,
                      check=False)  # fmt: skip
    one_clear_line(proc, 2, "crafted.pt: ", needle)
    assert "\x1b]" not in proc.stdout and not (tmp_path / "eval").exists()


@pytest.mark.slow  # two or more real processes in a row
def test_a_folder_checkpoint_scores_another_copy_by_class_name_or_refuses_it(tiny_folder, tmp_path):
    """Labels follow the checkpoint's class names: a copy without one of them, or with one more, is refused in one line
    (it scored labels shifted by one before); a copy of the same classes scores as the run's own test set did."""
    classes = ("circle", "square", "triangle")
    root = write_image_folder(tmp_path / "shapes", {"train": 12, "test": 3}, classes=classes)
    summary = train(compose_config(tiny_overrides(root, tmp_path / "run", "data=folder", "epochs=1", "data.val_split=0")))

    def evaluate_on(copy):
        return run_script("evaluate.py", f"ckpt={tmp_path / 'run' / 'ckpt.pt'}", f"data.root={copy}", "samples=0",
                          f"hydra.run.dir={tmp_path / 'eval' / copy.name}", cwd=tmp_path, check=False)  # fmt: skip

    no_circles = write_image_folder(tmp_path / "no_circles", {"train": 1, "test": 3}, classes=classes[1:])
    one_clear_line(evaluate_on(no_circles), 2, "holds class folders [square, triangle] (2)", "missing [circle] (1)")
    four = write_image_folder(tmp_path / "four", {"train": 1, "test": 3}, classes=(*classes, "hexagon"))
    one_clear_line(evaluate_on(four), 2, "holds class folders [circle, hexagon, square, triangle] (4)", "not theirs [hexagon] (1)")
    assert evaluate_on(root).returncode == 0
    report = json.loads((tmp_path / "eval" / "shapes" / "evaluation.json").read_text())
    assert report["classes"] == list(classes) and report["acc"] == summary["test_acc"]


def test_a_class_name_with_dollars_is_drawn_as_text(trained, tiny_folder, tmp_path):
    """matplotlib read `$^$` as mathematics and failed the evaluation at savefig, after the figures were printed."""
    path = altered(trained, tmp_path, "dollars.pt", lambda ckpt: ckpt.update(classes=["$^$", "a_$b$", *CIFAR10_CLASSES[2:]]))
    tiny = data_of_mine(tiny_folder, tmp_path)
    for old, new in (("airplane", "$^$"), ("automobile", "a_$b$")):  # a copy whose class folders are named so
        for part in ("train", "test"):
            (tiny / part / old).rename(tiny / part / new)
    proc = run_script("evaluate.py", f"ckpt={path}", f"data.root={tiny}", f"hydra.run.dir={tmp_path / 'eval'}", cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert (tmp_path / "eval" / "confusion.png").stat().st_size > 0 and "$^$" in proc.stdout


def test_a_stored_depth_far_beyond_its_tensors_is_refused_in_a_moment(trained, tmp_path):
    """Built on the meta device a model takes no memory for its tensors, but 500,000 stored blocks took minutes of Python."""
    ckpt = torch.load(trained[0] / "ckpt.pt", weights_only=True)
    deep = OmegaConf.create({"_target_": "cifar.core.models.ResNet", "widths": [8], "depths": [500_000]})
    started = time.monotonic()
    with pytest.raises(UserError, match=r"deep.pt: the model stored with it is far larger than its 10 tensors"):
        weights_fit(deep, ckpt["model_state_dict"], 10, "deep.pt")
    assert time.monotonic() - started < 10
    assert torch.is_grad_enabled(), "the refusal leaves the caller's grad mode as it was (the tests after it train)"


def test_a_baseline_read_otherwise_is_refused_naming_what_differs(trained, tiny_folder, tmp_path):
    resized = altered(trained, tmp_path, "resized.pt", lambda ckpt: ckpt["config"]["data"].update(resize=True))
    proc = run_script("evaluate.py", f"ckpt={trained[0] / 'ckpt.pt'}", f"baseline={resized}", f"data.root={tiny_folder}",
                      f"hydra.run.dir={tmp_path / 'eval'}", cwd=tmp_path, check=False)  # fmt: skip
    one_clear_line(proc, 2, f"baseline={resized} read its images with data.resize=True", "compare checkpoints of one dataset")
