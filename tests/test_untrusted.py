"""Files from elsewhere are data: a checkpoint, last.pt or summary.json never chooses what code runs (cifar/run/targets.py),
and a config names only what its classes take."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import compose_config, one_clear_line, run_script, tiny_overrides
from PIL import Image

from cifar.errors import UserError
from cifar.results.evaluation import evaluate
from cifar.run.build import build_model
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
