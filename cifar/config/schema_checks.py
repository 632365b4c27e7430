"""A config held to its schema: keys no schema has, numbers that are not finite, and each key's own rule (setting()),
for a run's config (cifar/config/schema.py) and evaluate.py's (cifar/config/evaluate_schema.py) alike."""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from cifar.config.identity import flatten
from cifar.config.schema import SCHEMAS, settings
from cifar.errors import UserError


def refuse_by_own_rules(cfg: DictConfig, schemas: dict[str, type]) -> None:
    """Each key's own rule (its home: setting() in the schema): the first it breaks is refused as `key=value: fix`."""
    for key, schema_field in settings(schemas):
        rule = schema_field.metadata["rule"]
        if rule and not rule(value := OmegaConf.select(cfg, key)):
            raise UserError(f"{key}={shown(value)}: {schema_field.metadata['fix']}")


def shown(value: Any) -> Any:
    """A config node as plain data for a one-line message (`[1, 2]`, not a ListConfig); any other value as it is."""
    return OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value


def odd_values(cfg: DictConfig, schemas: dict[str, type] = SCHEMAS, script: str = "train.py") -> list[tuple[str, Any, str]]:
    """(key, value, why) for each key no schema has (`+epoch=3` would train and ignore it) and each number that is not
    finite (`optim.lr=inf` would train on infinities). Hydra's own `hydra` node is not the run's. `schemas`: a run's, unless
    told evaluate.py's (`script`)."""
    config = {k: v for k, v in OmegaConf.to_container(cfg, resolve=False).items() if k != "hydra"}
    odd = []
    for node, schema in schemas.items():
        keys = config.get(node, {}) if node else config
        prefix = f"{node}." if node else ""
        known = {f.name for f in fields(schema)}
        odd += [
            (
                f"{prefix}{key}",
                keys[key],
                f"the config has no key {prefix}{key} (a typo?): drop it; `python {script} --cfg job` lists every key",
            )
            for key in keys
            if key not in known
        ]
    for key, value in flatten(config).items():
        numbers = value if isinstance(value, list) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in numbers):
            odd.append((key, value, "use finite numbers"))
    return odd
