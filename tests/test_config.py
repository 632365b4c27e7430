"""Every config group option and every experiment composes, and builds its objects."""

import dataclasses
import functools
import inspect
import re
import subprocess
import sys

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from cifar.core.steps import optimizer_not_capturable
from cifar.errors import UserError
from cifar.run.build import build_model, build_optimizer
from cifar.run.checks import check
from tests.conftest import CONF

MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
OPTIMIZERS = sorted(p.stem for p in (CONF / "optim").glob("*.yaml"))  # a new one is one file: every test below takes it


GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name != "hydra")
OPTIONS = [(group, f.stem) for group in GROUPS for f in sorted((CONF / group).glob("*.yaml"))]


@pytest.mark.parametrize(("group", "option"), OPTIONS)
def test_every_option_of_every_group_says_what_it_is_and_composes(compose_cfg, group, option):
    # A new option (a dataset, an optimizer, a logger...) is one file in its group: no list here or elsewhere names it.
    assert (CONF / group / f"{option}.yaml").read_text().startswith("#"), "its first line says what it is"
    compose_cfg([f"{group}={option}"])


def own_classes() -> dict[type, list[tuple[str, dict]]]:
    """This project's model and optimizer classes, each with the YAMLs (file name, settings) that build it."""
    import importlib

    found: dict[type, list[tuple[str, dict]]] = {}
    for group in ("model", "optim"):
        for path in sorted((CONF / group).glob("*.yaml")):
            settings = OmegaConf.to_container(OmegaConf.load(path))
            module, _, name = settings["_target_"].rpartition(".")
            if module.startswith("cifar."):
                found.setdefault(getattr(importlib.import_module(module), name), []).append((f"{group}/{path.name}", settings))
    return found


@pytest.mark.parametrize("cls", list(own_classes()), ids=lambda c: c.__name__)
def test_a_classs_python_defaults_are_held_to_its_yaml(cls):
    """A class keeps Python defaults so that a notebook can build it bare; every YAML that builds it lists each of them
    (nothing is left to a default the config does not show), and one YAML is those defaults exactly (its home: the two
    cannot drift apart). num_classes comes from the data."""
    defaults = {k: p.default for k, p in inspect.signature(cls).parameters.items() if p.default is not inspect.Parameter.empty}
    defaults = {k: list(v) if isinstance(v, tuple) else v for k, v in defaults.items() if k != "num_classes"}
    yamls = own_classes()[cls]
    for name, settings in yamls:
        assert set(defaults) <= set(settings), f"{name} leaves {sorted(set(defaults) - set(settings))} to Python's defaults"
    homes = [name for name, settings in yamls if all(settings[k] == pytest.approx(v) for k, v in defaults.items())]
    assert homes, f"no YAML of {cls.__name__} is its Python defaults {defaults}"


def test_the_study_row_files_are_the_studys_runs():
    assert sorted(p.stem for p in (CONF / "study_row").glob("*.yaml")) == sorted(STUDY_RUNS)


# The study's five runs (experiment=study sweeps them) and the rows of its table each gives: (row, study's figure, epochs read)
STUDY_RUNS = {
    "net_baseline": [(1, 0.6419, None)],
    "vgg16_baseline": [(2, 0.7483, None)],
    "lr0.01_20ep": [(3, 0.7099, None)],
    "lr0.005_50ep": [(5, 0.7682, 20), (6, 0.7594, None)],
    "lr0.001_100ep": [(4, 0.7319, 20), (7, 0.769, 50), (8, 0.784, None)],
}


@pytest.mark.parametrize("run", sorted(STUDY_RUNS))
def test_each_study_row_file_carries_its_rows_figures_and_the_runs_settings(compose_cfg, run):
    cfg = compose_cfg([f"study_row={run}"])
    assert [(r.row, r.study_acc, r.epochs) for r in cfg.study_rows] == STUDY_RUNS[run]
    for r in cfg.study_rows:
        assert r.epochs is None or r.epochs in cfg.prefix_epochs, "a row read from a prefix needs that prefix recorded"
        alone = compose_cfg(r.alone.split()[2:])  # `python train.py <overrides>`: the same settings, as far as the row goes
        keys = ("model._target_", "batch_size", "optim.lr", "optim.momentum", "data.val_split")
        assert [OmegaConf.select(alone, k) for k in keys] == [OmegaConf.select(cfg, k) for k in keys]
        assert alone.epochs == (r.epochs or cfg.epochs)


def test_defaults_are_the_tutorial_net(compose_cfg):
    cfg = compose_cfg()
    assert cfg.model._target_ == "cifar.core.models.Net"
    assert (cfg.batch_size, cfg.epochs, cfg.optim.lr, cfg.optim.momentum) == (4, 10, 0.001, 0.9)
    assert cfg.data.val_split == 0.2
    assert cfg.wandb.mode == "offline"  # never prompts for a login


@pytest.mark.parametrize("optim", OPTIMIZERS)
def test_each_optimizer_builds_checks_and_trains_a_step(compose_cfg, optim):
    """Any optimizer is one file in conf/optim/: it builds through the one door (cifar/run/targets.py), passes the config's
    checks, takes a training step that lowers nothing to NaN, and is asked itself whether a CUDA graph could capture it."""
    cfg = compose_cfg([f"optim={optim}", "model=fastnet", "device=cpu", "decay_norm_and_bias=false"])
    check(cfg)
    net = build_model(cfg, torch.device("cpu"), 10)
    opt = build_optimizer(cfg, net)
    assert isinstance(opt, torch.optim.Optimizer) and opt.param_groups[0]["lr"] == cfg.optim.lr
    before = [p.detach().clone() for p in net.parameters()]
    x, y = torch.randn(8, 3, 32, 32).to(memory_format=torch.channels_last), torch.randint(0, 10, (8,))
    torch.nn.functional.cross_entropy(net(x), y).backward()
    opt.step()
    assert all(torch.isfinite(p).all() for p in net.parameters()) and any(
        not torch.equal(a, p) for a, p in zip(before, net.parameters(), strict=True)
    )
    reason = optimizer_not_capturable(opt)
    assert (reason is None) == (optim in ("sgd", "muon")), reason  # AdamW keeps its step count on the CPU unless capturable
    assert optimizer_not_capturable(torch.optim.AdamW(net.parameters(), capturable=True)) is None


SGD_ONLY = ["~optim.momentum", "~optim.weight_decay", "~optim.nesterov"]  # sgd's own keys, which another class may not take


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["optim.lr=abc"], "optim.lr=abc: SGD's lr is a number (its default: 0.001)"),
        (["optim.nesterov=yes"], "optim.nesterov=yes: SGD's nesterov is true or false"),
        (["optim=adamw", "optim.betas=[0.9]"], "optim.betas=[0.9]: AdamW's betas is a list of 2 values, each a number"),
        (["optim=adamw", "optim.eps=-1"], "(ValueError: Invalid epsilon value: -1)"),
        (["optim=adamw", "+optim.differentiable=true"], "differentiable=true) failed a trial step on cpu"),
        (["optim=adamw", "optim.capturable=true"], "capturable=true) failed a trial step on cpu"),
        (["optim._partial_=false"], "optim._partial_=false: an optimizer is built later, given the run's params"),
        (["optim._target_=torch.optim.LBFGS", *SGD_ONLY], "its step must be given a closure that re-evaluates the loss"),
        (["optim._target_=torch.optim.SparseAdam", *SGD_ONLY], "SparseAdam does not support dense gradients"),
        (["sched=step", "~sched.milestones"], "sched.milestones is missing: step needs it (a list, each value a number)"),
        (["sched._target_=cifar.core.schedules._warmup"], "a private helper of its module, not a schedule function"),
        (["sched=cosine", "sched.warmup=abc"], "sched.warmup=abc: cosine's warmup is a number"),
        (["model=vgg16", "model.hidden=abc"], "model.hidden=abc: VGG16's hidden is a whole number"),
    ],
)
def test_what_the_allow_list_admits_runs_or_is_one_line_before_the_data(compose_cfg, overrides, needle):
    """Every value the optimizer, the schedule or the model would refuse only when built or stepped, refused by the checks."""
    with pytest.raises(UserError, match=re.escape(needle)):
        check(compose_cfg(["device=cpu", *overrides]))


TORCH_OPTIMIZERS = sorted(
    name
    for name, c in vars(torch.optim).items()
    if inspect.isclass(c) and issubclass(c, torch.optim.Optimizer) and c is not torch.optim.Optimizer
)
# What docs/ideas.md says the checks refuse, and why: LBFGS's step takes a closure, SparseAdam's sparse gradients, and
# torch's Muon 2-d parameters only (a convolution's filters are 4-d; conf/optim/muon.yaml is this project's own Muon).
REFUSED_OPTIMIZERS = {"LBFGS", "SparseAdam", "Muon"}


@pytest.mark.parametrize("name", TORCH_OPTIMIZERS)
def test_every_torch_optimizer_trains_a_step_or_is_refused_in_one_line(compose_cfg, name):
    """`optim._target_=torch.optim.<any>` with its own defaults: one line from the checks, or a real training step."""
    cfg = compose_cfg(["device=cpu", f"optim._target_=torch.optim.{name}", *SGD_ONLY, "optim.lr=0.01"])
    if name in REFUSED_OPTIMIZERS:
        with pytest.raises(UserError, match=re.escape(f"torch.optim.{name}")):
            check(cfg)
        return
    check(cfg)
    net = build_model(cfg, torch.device("cpu"), 10)
    opt = build_optimizer(cfg, net)
    torch.nn.functional.cross_entropy(net(torch.randn(4, 3, 32, 32)), torch.randint(0, 10, (4,))).backward()
    opt.step()
    assert all(torch.isfinite(p).all() for p in net.parameters())


@pytest.mark.parametrize("model", MODELS)
def test_each_model_builds_with_the_optimizer(compose_cfg, model):
    cfg = compose_cfg([f"model={model}", "optim.lr=0.05"])
    net = instantiate(cfg.model)
    opt = instantiate(cfg.optim)(net.parameters())
    assert isinstance(opt, torch.optim.SGD)
    assert opt.param_groups[0]["lr"] == 0.05
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


STUDY = {  # experiment -> (model target, batch, epochs, lr, val_split, swept lrs)
    "net_baseline": ("cifar.core.models.Net", 4, 10, 0.001, 0, None),
    "vgg16_baseline": ("cifar.core.models.VGG16", 4, 10, 0.001, 0, None),
    "lr_sweep": ("cifar.core.models.VGG16", 16, 20, 0.001, 0.2, "0.01,0.001,0.005"),
    "epochs_50": ("cifar.core.models.VGG16", 16, 50, 0.001, 0.2, "0.005,0.001"),
    "epochs_100": ("cifar.core.models.VGG16", 16, 100, 0.001, 0.2, None),
}


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_each_experiment_composes_and_builds(compose_cfg, experiment):
    cfg = compose_cfg([f"experiment={experiment}", "output_dir=."])
    net = instantiate(cfg.model)
    instantiate(cfg.sched)(instantiate(cfg.optim)(net.parameters()), total_steps=10)
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("ablation", sorted(p.stem for p in (CONF / "ablation").glob("*.yaml")))
def test_each_ablation_changes_its_recipe_and_passes_the_checks(compose_cfg, ablation):
    """Each ablation against the recipe it is written for (no_resize: cpu_speedrun; the others: fastnet94). An entry set to
    null is no entry, so an ablation that only nulls an entry the recipe lacks changes nothing."""
    from cifar.config.identity import experiment_settings
    from cifar.run.checks import check

    experiment = "cpu_speedrun" if ablation == "no_resize" else "fastnet94"
    recipe, changed = (compose_cfg([f"experiment={experiment}", "output_dir=.", *extra]) for extra in ([], [f"ablation={ablation}"]))
    check(changed)

    def settings(cfg):
        container = OmegaConf.to_container(cfg, resolve=True)
        container["data"]["augment"] = {k: v for k, v in container["data"]["augment"].items() if v is not None}
        return experiment_settings(container)

    assert settings(recipe) != settings(changed), f"ablation={ablation} changes nothing"


@pytest.mark.parametrize("experiment", sorted(STUDY))
def test_each_study_experiment_composes_to_the_study_settings(compose_cfg, experiment):
    cfg = compose_cfg([f"experiment={experiment}"])
    target, batch, epochs, lr, val_split, _ = STUDY[experiment]
    assert (cfg.model._target_, cfg.batch_size, cfg.epochs, cfg.optim.lr, cfg.data.val_split) == (target, batch, epochs, lr, val_split)
    assert cfg.optim.momentum == 0.9 and cfg.optim.nesterov is False and cfg.optim.weight_decay == 0
    assert cfg.sched._target_ == "cifar.core.schedules.none" and cfg.loss.label_smoothing == 0 and not cfg.data.augment
    if target.endswith("VGG16"):
        assert cfg.model.batch_norm is False  # plain VGG16, as the study


def test_sweeps_are_declared_in_the_experiment(compose_cfg):
    # `-m experiment=lr_sweep` takes its values from hydra.sweeper.params; check the files say what the study swept.
    from omegaconf import OmegaConf

    for name, (*_, swept) in STUDY.items():
        raw = OmegaConf.load(CONF / "experiment" / f"{name}.yaml")
        params = OmegaConf.select(raw, "hydra.sweeper.params")
        assert (params["optim.lr"] if params else None) == swept, name


def test_every_config_key_has_a_comment():
    # The config files are the documentation of every knob: a key without a comment is a bug.
    leaf = re.compile(r"^\s*(?!_target_|_partial_)[A-Za-z_][\w.]*:\s*[^\s#]")
    for path in [*CONF.glob("*.yaml"), *CONF.glob("*/*.yaml")]:
        if path.parent.name in ("experiment", "job_logging"):
            continue  # experiments set keys documented here (their header says why); logging is Python's schema
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if leaf.match(line):
                assert "#" in line or lines[i - 1].strip().startswith("#"), f"{path.name}: '{line.strip()}' has no comment"


@pytest.mark.parametrize("experiment", [None, *EXPERIMENTS])
def test_values_live_in_the_yaml_and_only_types_in_the_schema(compose_cfg, experiment):
    """The dataclasses of cifar/config/schema.py say what type each key is; conf/ says what it is. A default written in both would
    let the two drift apart, the YAML silently winning."""
    from omegaconf import OmegaConf

    from cifar.config.schema import DataSchema, TrainSchema, WandbSchema

    schema = OmegaConf.structured(TrainSchema)
    leaves = {f"{group}.{f.name}" for group, kind in (("data", DataSchema), ("wandb", WandbSchema)) for f in dataclasses.fields(kind)}
    leaves |= {f.name for f in dataclasses.fields(TrainSchema) if f.name not in ("data", "wandb")}
    assert set(OmegaConf.missing_keys(schema)) == leaves, "a value in the schema"
    cfg = compose_cfg(["output_dir=.", *([f"experiment={experiment}"] if experiment else [])])
    assert not OmegaConf.missing_keys(cfg), "every key has its value in conf/"


def test_evaluate_py_has_a_schema_of_types_and_its_values_in_the_yaml(compose_cfg):
    """conf/evaluate.yaml as conf/config.yaml: its keys typed by a schema (so `top=abc` is refused as Hydra composes), their
    values and comments in the YAML only; ckpt alone is the user's to give."""
    from cifar.config.evaluate_schema import EVALUATE_SCHEMAS
    from cifar.config.schema import settings

    leaves = {key for key, _ in settings(EVALUATE_SCHEMAS)}
    assert set(OmegaConf.missing_keys(OmegaConf.structured(EVALUATE_SCHEMAS[""]))) == leaves, "a value in the schema"
    cfg = compose_cfg(["output_dir=."], "evaluate")
    assert set(OmegaConf.missing_keys(cfg)) == {"ckpt"}, "every other key has its value in conf/evaluate.yaml"
    assert OmegaConf.get_type(cfg) is EVALUATE_SCHEMAS[""]


def test_importing_the_core_loads_no_hydra_and_registers_nothing():
    """cifar.core is torch only (no Hydra, no OmegaConf: a core function takes values, not a config), and no module registers
    anything on import: the entry points and the tests do."""
    registered = "from hydra.core.config_store import ConfigStore; print('train_schema.yaml' in ConfigStore.instance().repo)"
    code = f"import cifar.config.compose; {registered}; cifar.config.compose.register(); {registered}"
    core = "import sys, cifar.core.models, cifar.core.data, cifar.core.steps; print(any(m.split('.')[0] in ('hydra', 'omegaconf') for m in sys.modules))"
    run = functools.partial(subprocess.run, capture_output=True, text=True, check=True, cwd=CONF.parent)
    assert run([sys.executable, "-c", core]).stdout.split() == ["False"]
    # importing cifar.config.compose registers nothing (False); its register() does (True)
    assert run([sys.executable, "-c", code]).stdout.split() == ["False", "True"]


def test_each_setting_given_and_not_read_gets_one_warning(compose_cfg):
    """setting(unused=...) in the schema: each key given on the command line where this run will not read it is one line
    saying why; where the run reads it, none."""
    from cifar.config.schema import settings
    from cifar.run.checks import unused_settings

    keys = {key for key, f in settings() if f.metadata["unused"]} | {"model.whiten_bias_epochs"}
    off = ["lookahead_every=0", "data.val_split=0", "device=cpu", "wandb.mode=disabled"]
    lines = unused_settings(compose_cfg(["output_dir=.", *off]), keys, {}, multirun=False)
    assert sorted(line.split("=")[0] for line in lines) == sorted(keys)
    assert all(" has no effect in this run: " in line for line in lines)
    on = ["lookahead_every=5", "data.val_split=0.2", "wandb.mode=offline", "experiment=fastnet94"]
    assert [line.split("=")[0] for line in unused_settings(compose_cfg(["output_dir=.", *on]), keys, {}, multirun=False)] == [
        "deterministic"  # on this machine's CPU
    ] * (not torch.cuda.is_available())
