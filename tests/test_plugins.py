"""plugins=[...]: the user's own files and modules, imported before the config is checked, so that a `_target_` may name
what they define; a stored `plugins` never imported (evaluate.py and resume= ask for it); a model that cannot take
num_classes refused before anything is written; an experiment from the user's own config folder (hydra.searchpath)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from cifar.errors import UserError
from cifar.run import plugins
from cifar.run.targets import admit, refuse_unimported
from tests.conftest import one_clear_line, read_summary, run_script

# A plugin as a user writes one: a model that takes num_classes, one that does not, a class from a sibling file; and,
# where PLUGIN_MARKER is set, a line in that file each time it is imported (how a test sees whether it was).
PLUGIN = """
import os

from torch import nn

from {stem}_blocks import Block

if os.environ.get("PLUGIN_MARKER"):
    with open(os.environ["PLUGIN_MARKER"], "a") as f:
        f.write(f"{{os.getpid()}}\\n")


class TinyCNN(nn.Module):
    def __init__(self, num_classes: int, width: int = 8):
        super().__init__()
        self.net = nn.Sequential(Block(3, width), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))

    def forward(self, x):
        return self.net(x)


class NoClasses(nn.Module):
    def __init__(self, width: int = 8):
        super().__init__()
        self.net = nn.Sequential(Block(3, width), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))

    def forward(self, x):
        return self.net(x)
"""
BLOCKS = """
from torch import nn


class Block(nn.Sequential):
    def __init__(self, inputs: int, outputs: int):
        super().__init__(nn.Conv2d(inputs, outputs, 3, padding=1), nn.ReLU())
"""


def write_plugin(folder: Path, stem: str) -> Path:
    """`<folder>/<stem>.py` and its sibling `<stem>_blocks.py`, outside the checkout."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}_blocks.py").write_text(BLOCKS)
    path = folder / f"{stem}.py"
    path.write_text(PLUGIN.format(stem=stem))
    return path


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """This process's plugins, sys.path and the modules imported from tmp_path as they were before the test."""
    monkeypatch.setattr(plugins, "_imported", {})
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield
    for name in [n for n, m in sys.modules.items() if str(getattr(m, "__file__", None) or "").startswith(str(tmp_path))]:
        del sys.modules[name]


def test_a_plugin_file_is_imported_once_under_its_stem_and_admits_its_classes(isolated, tmp_path, monkeypatch):
    path = write_plugin(tmp_path / "research", "plug_once")
    marker = tmp_path / "imported"
    monkeypatch.setenv("PLUGIN_MARKER", str(marker))
    node = {"_target_": "plug_once.TinyCNN", "width": 4}
    with pytest.raises(UserError, match=r"model._target_=plug_once.TinyCNN: .* refused, nothing was imported or called; .* plugins="):
        admit(node, "model")
    assert "plug_once" not in sys.modules and not marker.exists()

    # a relative path is taken from the folder the command was started in
    assert plugins.load(["research/plug_once.py"], start=tmp_path) == [str(path)]
    assert plugins.load([str(path)], start=Path("/")) == [str(path)]  # again: a no-op
    assert marker.read_text().count("\n") == 1
    target, params = admit(node, "model")
    assert target.__module__ == "plug_once" and params == {"width": 4}
    assert target(num_classes=3)(torch.zeros(2, 3, 8, 8)).shape == (2, 3)  # its sibling file imported as plain Python does
    # a class its plugin imported from a file that is no plugin is not the plugin's to offer: defined there, or given itself
    with pytest.raises(UserError, match=r"model._target_=plug_once.Block: .* refused, nothing was called"):
        admit({"_target_": "plug_once.Block"}, "model")
    with pytest.raises(UserError, match=r"model._target_=plug_once.TinyCNX: its plugin plug_once has no such class or function"):
        admit({"_target_": "plug_once.TinyCNX"}, "model")


def test_a_module_name_is_imported_as_python_imports_it(isolated, tmp_path, monkeypatch):
    package = tmp_path / "my_pkg_plug"
    package.mkdir()
    (package / "__init__.py").write_text("")
    write_plugin(package, "models")
    (package / "models.py").write_text(PLUGIN.format(stem="my_pkg_plug.models"))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert plugins.load(["my_pkg_plug.models"]) == ["my_pkg_plug.models"]
    assert admit({"_target_": "my_pkg_plug.models.TinyCNN"}, "model")[0].__name__ == "TinyCNN"
    with pytest.raises(UserError, match=r"plugins=\[no_such_plug.models\]: no module of that name can be imported here"):
        plugins.load(["no_such_plug.models"])


@pytest.mark.parametrize(
    ("source", "name", "needles"),
    [
        (None, "missing.py", ["plugins=[missing.py]: no such file"]),
        (
            "import os\n\nraise ValueError('bad width\\nmore')\n",
            "raising.py",
            ["raising.py] failed to import: ValueError: bad width (at ", "raising.py:3)"],
        ),
        (
            "import no_such_module_anywhere\n",
            "needs.py",
            ["needs.py] failed to import: ModuleNotFoundError: No module named 'no_such_module_anywhere'"],
        ),
        ("def broken(:\n", "syntax.py", ["syntax.py] failed to import: SyntaxError", "syntax.py:1)"]),
        ("", "json.py", ["its module name 'json' is taken by another module", "json/__init__.py", "rename the file"]),
        ("", "cifar.py", ["its module name 'cifar' is taken by another module"]),
        ("", "my-models.py", ["'my-models' is no Python module name"]),
    ],
    ids=["missing", "raising", "imports_missing", "syntax", "shadows_stdlib", "shadows_project", "not_a_name"],
)
def test_a_plugin_that_cannot_be_imported_is_one_line(isolated, tmp_path, source, name, needles):
    if source is not None:
        (tmp_path / name).write_text(source)
    with pytest.raises(UserError) as refused:
        plugins.load([name], start=tmp_path)
    message = str(refused.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, message
    assert Path(name).stem not in plugins._imported


def test_a_stored_config_naming_a_plugin_is_refused_naming_the_plugin_it_listed(isolated):
    stored = {"model": {"_target_": "far_away.TinyCNN"}, "optim": {"_target_": "torch.optim.SGD"}}
    with pytest.raises(UserError, match=r"^run/ckpt.pt's model is far_away.TinyCNN, from a plugin \(its run listed "
                       r"plugins=\[/home/u/far_away.py\]\): give it on the command line.*to evaluate it; nothing was imported$"):  # fmt: skip
        refuse_unimported(stored, ["/home/u/far_away.py"], "run/ckpt.pt", "evaluate it")
    assert "far_away" not in sys.modules
    with pytest.raises(UserError, match=r"last.pt's metrics.top3 is evil.thing, from a plugin \(its run listed plugins=\[a.py,b\]\)"):
        refuse_unimported({"metrics": {"top3": {"_target_": "evil.thing"}}}, ["a.py", "b"], "last.pt", "resume it")
    refuse_unimported({"model": {"_target_": "cifar.core.models.Net"}}, ["a.py"], "ckpt.pt", "evaluate it")  # the project's: admitted
    # a run that listed none had only the project's code: admit refuses another module's as it refuses any config's
    refuse_unimported(stored, [], "ckpt.pt", "evaluate it")


def test_a_model_that_cannot_take_num_classes_is_refused_in_one_line(isolated, tmp_path):
    plugins.load([str(write_plugin(tmp_path, "plug_classes"))])
    with pytest.raises(UserError, match=r"^model._target_=plug_classes.NoClasses: a model takes num_classes from the run \(the dataset's class "
                       r"count\): add a num_classes argument to its __init__$"):  # fmt: skip
        admit({"_target_": "plug_classes.NoClasses"}, "model")


def test_a_run_of_a_model_without_num_classes_is_refused_before_anything_is_written(tiny_folder, tmp_path):
    # Before the check, this run read the data and died in the model's constructor: TypeError: ... 'num_classes'.
    path = write_plugin(tmp_path / "mine", "plug_run")
    launch = tmp_path / "launch"
    launch.mkdir()
    proc = run_script("train.py", f"plugins=[{path}]", "model._target_=plug_run.NoClasses", f"data.root={tiny_folder}", "device=cpu",
                      "wandb.mode=disabled", cwd=launch, check=False)  # fmt: skip
    one_clear_line(proc, 2, "model._target_=plug_run.NoClasses: a model takes num_classes from the run", "add a num_classes argument")
    assert not list(launch.iterdir())


def test_a_plugin_raising_on_import_stops_train_py_in_one_line(tmp_path):
    (tmp_path / "plug_raises.py").write_text("raise RuntimeError('the GPU is on fire')\n")
    proc = run_script("train.py", "plugins=[plug_raises.py]", "model._target_=plug_raises.Net", "device=cpu", cwd=tmp_path, check=False)
    one_clear_line(proc, 2, "plugins=[plug_raises.py] failed to import: RuntimeError: the GPU is on fire", "plug_raises.py:1)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plug_raises.py"]


TINY = ("batch_size=8", "optim.lr=0.01", "wandb.mode=disabled", "device=cpu")


@pytest.fixture(scope="module")
def plugin_run(tmp_path_factory, tiny_folder) -> tuple[Path, Path]:
    """A real `python train.py plugins=[<file outside the checkout>] model._target_=...` run of 2 epochs: its folder and the plugin."""
    root = tmp_path_factory.mktemp("plugin_run")
    path = write_plugin(root / "research", "plug_tiny")
    run_script("train.py", "plugins=[research/plug_tiny.py]", "model._target_=plug_tiny.TinyCNN", f"data.root={tiny_folder}", "epochs=2",
               *TINY, "hydra.run.dir=run", cwd=root)  # fmt: skip
    return root / "run", path


@pytest.mark.slow
def test_evaluate_and_resume_ask_for_the_plugin_a_checkpoint_names_and_import_nothing_else(plugin_run, tiny_folder, tmp_path):
    run, path = plugin_run
    summary = read_summary(run)
    assert summary["status"] == "finished" and summary["config"]["plugins"] == [str(path)]  # recorded as the absolute path
    marker = tmp_path / "imported"
    marked = {"PLUGIN_MARKER": str(marker)}

    launch = tmp_path / "launch"
    launch.mkdir()
    proc = run_script("evaluate.py", f"ckpt={run / 'ckpt.pt'}", f"data.root={tiny_folder}", cwd=launch, check=False, env=marked)
    one_clear_line(proc, 2, f"ckpt.pt's model is plug_tiny.TinyCNN, from a plugin (its run listed plugins=[{path}])", "to evaluate it")
    assert not marker.exists() and not list(launch.iterdir())
    proc = run_script("evaluate.py", f"ckpt={run / 'ckpt.pt'}", f"data.root={tiny_folder}", f"plugins=[{path}]", "output_dir=eval", cwd=launch,
                      env=marked)  # fmt: skip
    assert json.loads((launch / "eval" / "evaluation.json").read_text())["acc"] == summary["test_acc"]
    assert marker.exists()
    marker.unlink()

    copy = shutil.copytree(run, tmp_path / "copy")
    again = ("model._target_=plug_tiny.TinyCNN", f"data.root={tiny_folder}", "epochs=3", *TINY, f"resume={copy / 'last.pt'}")
    before = sorted(p.name for p in copy.iterdir())
    proc = run_script("train.py", *again[1:], cwd=launch, check=False, env=marked)
    one_clear_line(proc, 2, "last.pt's model is plug_tiny.TinyCNN, from a plugin", f"plugins=[{path}]", "to resume it")
    proc = run_script("train.py", *again, cwd=launch, check=False, env=marked)  # its target on the command line, its plugin not
    one_clear_line(proc, 2, "model._target_=plug_tiny.TinyCNN", "plugins=[path/to/file.py]")
    assert not marker.exists() and sorted(p.name for p in copy.iterdir()) == before
    moved = shutil.copy(path.with_name("plug_tiny_blocks.py"), launch) and shutil.copy(path, launch)  # a plugin's file may move
    run_script("train.py", *again, f"plugins=[{Path(moved).name}]", cwd=launch, env=marked)
    resumed = read_summary(copy)
    assert (resumed["status"], resumed["epochs_completed"], resumed["config"]["plugins"]) == ("finished", 3, [str(launch / "plug_tiny.py")])


EXPERIMENT = """# @package _global_
# An experiment kept outside the checkout, beside the plugin it trains.
plugins: [{plugin}]
defaults:
  - override /sched: none
model:
  _target_: plug_exp.TinyCNN
  width: 4
epochs: 1
batch_size: 8
"""


@pytest.mark.slow
def test_an_experiment_from_your_own_config_folder_trains_and_a_refused_one_leaves_no_folder(tiny_folder, tmp_path):
    conf = tmp_path / "myconf" / "experiment"
    conf.mkdir(parents=True)
    plugin = write_plugin(tmp_path / "research", "plug_exp")
    (conf / "mine.yaml").write_text(EXPERIMENT.format(plugin=plugin))
    (conf / "broken.yaml").write_text(EXPERIMENT.format(plugin=plugin).replace("width: 4", "width: -4\n  depth: 3"))
    searchpath = f"hydra.searchpath=[file://{tmp_path / 'myconf'}]"
    launch = tmp_path / "launch"
    launch.mkdir()
    proc = run_script("train.py", searchpath, "experiment=broken", f"data.root={tiny_folder}", *TINY, cwd=launch, check=False)
    one_clear_line(proc, 2, "model.depth: TinyCNN takes no argument 'depth'")
    assert not list(launch.iterdir())
    run_script("train.py", searchpath, "experiment=mine", f"data.root={tiny_folder}", *TINY, "hydra.run.dir=run", cwd=launch)
    summary = read_summary(launch / "run")
    assert (summary["status"], summary["epochs_completed"]) == ("finished", 1)
    assert summary["config"]["model"] == {"_target_": "plug_exp.TinyCNN", "width": 4}


@pytest.mark.slow
def test_a_sweep_imports_a_relative_plugin_in_each_worker_process(tiny_folder, tmp_path):
    # joblib's workers are fresh processes: each imports the plugin again, its relative path taken from where the command
    # was started.
    write_plugin(tmp_path / "research", "plug_sweep")
    launch = tmp_path / "launch"
    launch.mkdir()
    run_script("train.py", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "plugins=[../research/plug_sweep.py]",
               "model._target_=plug_sweep.TinyCNN", "+model.width=4,8", f"data.root={tiny_folder}", "epochs=1", *TINY,
               "hydra.sweep.dir=sweep", cwd=launch)  # fmt: skip
    for job, width in enumerate((4, 8)):
        summary = read_summary(launch / "sweep" / str(job))
        assert summary["status"] == "finished" and summary["config"]["model"]["width"] == width
        assert summary["config"]["plugins"] == [str(tmp_path / "research" / "plug_sweep.py")]
