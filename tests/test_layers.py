"""docs/layout.md's layers hold on the code: cifar/core, cifar/run, cifar/results, cifar/tools, each importing only the
layers before it in that list (every import counts: a module's own, a function's, a type checker's), the modules beside
them (cifar/errors.py, ...) none; the one import against the order is the one docs/layout.md names."""

import ast
from pathlib import Path

from tests.conftest import REPO

LAYERS = ["core", "run", "results", "tools"]  # docs/layout.md's order
# (importing module, imported module): named in docs/layout.md with its reason
AGAINST_THE_ORDER = {("cifar/run/callbacks.py", "cifar.results.report")}


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
            if layer_of(imported) > own and (where, imported) not in AGAINST_THE_ORDER:
                wrong.append(f"{where} imports {imported}")
    assert not wrong, "against docs/layout.md's layers: " + "; ".join(wrong)


def test_the_one_import_against_the_order_is_still_there_and_named_in_the_docs():
    layout = (REPO / "docs" / "layout.md").read_text()
    for where, imported in AGAINST_THE_ORDER:
        assert imported in cifar_imports(REPO / where), f"{where} no longer imports {imported}: drop it here and in docs/layout.md"
        assert f"`{where}`" in layout and imported.rsplit(".", 1)[1] in layout
