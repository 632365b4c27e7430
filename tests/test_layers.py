"""docs/layout.md's layers hold on the code: cifar/core, cifar/config, cifar/results, cifar/run, cifar/tools, each
importing only the layers before it in that list (so what reads runs back, cifar/results, imports nothing of cifar/run:
a run folder is data, read through cifar/records.py and cifar/config/). Every import counts: a module's own, a
function's, a type checker's; the modules beside the layers (cifar/errors.py, ...) import none."""

import ast
from pathlib import Path

from tests.conftest import REPO

LAYERS = ["core", "config", "results", "run", "tools"]  # docs/layout.md's order


def layer_of(module: str) -> int:
    """-1 for a module beside the layers (cifar.errors), else the layer's place in LAYERS."""
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 2 and parts[1] in LAYERS else -1


def cifar_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from cifar import errors` imports the module cifar.errors; `from cifar.core.data import Split`, cifar.core.data
            found |= (
                {f"{node.module}.{a.name}" for a in node.names}
                if node.module in ("cifar", *(f"cifar.{n}" for n in LAYERS))
                else {node.module}
            )
    return {name for name in found if name == "cifar" or name.startswith("cifar.")}


def test_each_layer_imports_only_the_layers_before_it():
    wrong = []
    for path in sorted((REPO / "cifar").rglob("*.py")):
        where = path.relative_to(REPO).as_posix()
        own = layer_of(".".join(path.relative_to(REPO).with_suffix("").parts))
        for imported in sorted(cifar_imports(path)):
            if layer_of(imported) > own:
                wrong.append(f"{where} imports {imported}")
    assert not wrong, "against docs/layout.md's layers: " + "; ".join(wrong)
