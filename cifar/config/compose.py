"""Hydra's side of the configs: what conf/ needs registered before it composes (register), conf/ composed outside a run
(compose_config: the bench, cifar-study's rows, the tests) and the overrides a job was given (task_overrides, given_keys)."""

from __future__ import annotations

import os
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from omegaconf import DictConfig, OmegaConf

from cifar.config.evaluate_schema import EvaluateSchema
from cifar.config.schema import BOOKKEEPING_KEYS, TrainSchema

# This checkout's conf/ (the package is installed editable, beside it): what tools outside a run compose.
CONF = Path(__file__).resolve().parents[2] / "conf"


def compose_config(overrides: list[str] | tuple[str, ...] = (), config_name: str = "config") -> DictConfig:
    """conf/<config_name>.yaml with `overrides`, composed as `@hydra.main` would, outside a run: the bench, cifar-study's
    rows and the tests. Hydra's errors (a key, group or value it cannot take) go up to the caller."""
    register()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
            return compose(config_name=config_name, overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()


def register() -> None:
    """What conf/ needs from the code before Hydra composes it: the schemas (`train_schema`, `evaluate_schema`) and the resolvers `${pid:}` (two
    runs started in the same second get folders of their own) and `${bookkeeping_keys:}`. Called by the entry points, the
    tools that compose configs and the tests; importing a module registers nothing."""
    ConfigStore.instance().store(name="train_schema", node=TrainSchema)
    ConfigStore.instance().store(name="evaluate_schema", node=EvaluateSchema)
    OmegaConf.register_new_resolver("pid", os.getpid, use_cache=True, replace=True)
    OmegaConf.register_new_resolver("bookkeeping_keys", lambda: list(BOOKKEEPING_KEYS), replace=True)


def task_overrides(lines: list[str] | None = None) -> list[Override]:
    """Overrides as Hydra parses them: `lines`, or this job's from the command line (a sweep job's: its own values); none
    outside `@hydra.main` (tests, the bench)."""
    if lines is None:
        lines = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    return OverridesParser.create().parse_overrides(lines)


def given_keys(lines: list[str] | None = None) -> set[str]:
    """The keys set on this process's command line (`optim.lr=0.01` -> `optim.lr`; `model=vgg16` -> `model`): what the user
    asked for, as against what the config's defaults and experiments set. `lines`: Hydra's `hydra.overrides.task`."""
    return {o.key_or_group.lstrip("+~") for o in task_overrides(lines)}
