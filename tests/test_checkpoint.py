import json
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from cifar.config.old_keys import refuse_old_keys
from cifar.config.stored import as_written_today
from cifar.errors import UserError
from cifar.files import atomic_save
from cifar.results.runs import find_runs
from cifar.run.checkpoint import load_checkpoint
from cifar.run.training import train
from tests.conftest import compose_config, read_metrics, run_script, tiny_overrides


def a_checkpoint():
    return {"epoch": 3, "model_state_dict": {"w": torch.ones(2)}, "optimizer_state_dict": {}, "loss": 0.5, "config": {"seed": 0}}


def test_round_trip_with_weights_only(tmp_path):
    atomic_save(a_checkpoint(), tmp_path / "ckpt.pt")
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert ckpt["epoch"] == 3 and torch.equal(ckpt["model_state_dict"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary file left behind


def test_a_failed_write_leaves_the_previous_file_intact(tmp_path):
    path = tmp_path / "last.pt"
    atomic_save(a_checkpoint(), path)
    before = path.read_bytes()

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom mid-write")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_save({"x": Unpicklable()}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no such checkpoint"),
        (b"definitely not a checkpoint", "not a checkpoint: it is a text file"),
        (b"\x89PNG\r\n\x1a\n....", "not a checkpoint: it is a PNG image"),
        (b"\x00\x01\x02\xff", "not a readable checkpoint"),
        ("truncated", "not a readable checkpoint"),
        ({"weights": torch.ones(1)}, "not a checkpoint of this project"),
    ],
)
def test_bad_files_give_one_clear_error_naming_the_file(tmp_path, content, message):
    path = tmp_path / "x.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "truncated":
        atomic_save(a_checkpoint(), path)
        path.write_bytes(path.read_bytes()[:100])
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(UserError, match=message) as e:
        load_checkpoint(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_a_file_that_would_run_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "evil.pt"
    torch.save({**a_checkpoint(), "payload": Evil()}, path)
    with pytest.raises(UserError, match="not a readable checkpoint"):
        load_checkpoint(path)


# A run written before cifar/ took its layers (at 33332dc: `python train.py data.root=<tiny folder> epochs=1 batch_size=8
# optim.lr=0.01 device=cpu wandb.mode=disabled amp=false threads=1`), whose files name cifar.models.Net and
# cifar.schedules.none. The tiny folder is drawn from the same seed as tests/conftest.py's `tiny_folder`.
BEFORE_LAYERS = Path(__file__).parent / "data" / "run_before_layers"


def test_a_run_written_before_the_layers_still_evaluates_resumes_and_compares(tiny_folder, tmp_path):
    run = tmp_path / "old"
    shutil.copytree(BEFORE_LAYERS, run)
    stored = json.loads((run / "summary.json").read_text())
    assert stored["config"]["model"]["_target_"] == "cifar.models.Net", "the fixture holds the old names"
    ckpt = load_checkpoint(run / "ckpt.pt")
    assert (ckpt["config"]["model"]["_target_"], ckpt["config"]["sched"]["_target_"]) == (
        "cifar.core.models.Net",
        "cifar.core.schedules.none",
    )

    proc = run_script("evaluate.py", f"ckpt={run / 'ckpt.pt'}", f"data.root={tiny_folder}", "device=cpu", cwd=tmp_path)
    (report,) = tmp_path.glob("outputs/evaluate/*/*/evaluation.json")
    assert json.loads(report.read_text())["acc"] == stored["test_acc"], proc.stdout  # the same weights on the same images

    (old,) = find_runs([run])
    assert old.get("model._target_") == "cifar.core.models.Net", "compared with today's runs under today's names"

    resumed = train(compose_config(tiny_overrides(tiny_folder, run, "amp=false", f"resume={run / 'last.pt'}")))
    assert (resumed["status"], resumed["epochs_completed"]) == ("finished", 2)
    assert read_metrics(run)[0] == read_metrics(BEFORE_LAYERS)[0], "epoch 1 is the old run's"


def test_an_old_runs_augmentation_keys_are_read_as_todays_entries():
    """A stored config from before data.augment: fastnet94 with MixUp/CutMix reads as today's recipe does (so it resumes,
    continues its sweep and compares as one), entries in the order they applied; one with every flag off as none."""
    old = {"data": {"flip": True, "alternate_flip": True, "crop_pad": 2, "crop_reflect": True, "val_split": 0}, "mixup_alpha": 0.8,
           "cutmix_alpha": 1.0, "epochs": 10}  # fmt: skip
    today = as_written_today(old)
    recipe = OmegaConf.to_container(compose_config(["experiment=fastnet94", "ablation=with_mixup_cutmix"]).data.augment)
    assert today["data"]["augment"] == recipe and list(today["data"]["augment"]) == ["crop", "flip", "mix"]
    assert "mixup_alpha" not in today and "flip" not in today["data"] and old["data"]["flip"] is True, "a copy, the old keys gone"
    plain = {
        "data": {"flip": False, "alternate_flip": False, "crop_pad": 0, "crop_reflect": False},
        "mixup_alpha": 0.0,
        "cutmix_alpha": 0.0,
    }
    assert as_written_today(plain)["data"]["augment"] == {} and "mixup_alpha" not in as_written_today(plain)
    net_fast = as_written_today({"data": {"flip": True, "alternate_flip": False, "crop_pad": 4, "crop_reflect": False}})
    assert net_fast["data"]["augment"] == OmegaConf.to_container(compose_config(["experiment=net_fast"]).data.augment)


@pytest.mark.parametrize(
    ("old", "entry"),
    [("data.crop_pad=4", {"crop": {"_target_": "cifar.core.augment.Crop", "pad": 4, "reflect": False}}),
     ("data.flip=true", {"flip": {"_target_": "cifar.core.augment.Flip", "alternate": False}}),
     ("mixup_alpha=0.8", {"mix": {"_target_": "cifar.core.augment.Mix", "mixup_alpha": 0.8, "cutmix_alpha": 0.0}})],
)  # fmt: skip
def test_an_old_augmentation_key_on_the_command_line_is_one_line_whose_form_composes(old, entry):
    with pytest.raises(UserError) as refused:
        refuse_old_keys(["epochs=1", old])
    said = str(refused.value).split("(conf/data/cifar10.yaml): ", 1)[1]
    form = said.split(" (")[0].replace("'", "")  # the shell's quotes are gone by the time argv holds it
    assert OmegaConf.to_container(compose_config([form]).data.augment) == entry
    refuse_old_keys(["data.augment.flip=null", "+data.augment.crop.pad=4", "mixup=0"])  # today's keys pass
