"""How the code is laid out, as RESULTS.md's "Seams" section reports it: `python scripts/structure.py [root]`.

- the modules of the training entry (train.py, cifar/, cifar/config/, cifar/run/, cifar/core/) with a function that takes the run's
  whole config: a parameter named cfg, config or job, or one typed DictConfig (a node of it, such as `cfg.model`
  given to targets.build, counts too: the count errs high);
- the 10 longest functions and the 10 largest modules of the package and the entry points, in lines.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

CONFIG_NAMES = ("cfg", "config", "job")


def takes_config(function: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    arguments = function.args.posonlyargs + function.args.args + function.args.kwonlyargs
    return any(a.arg in CONFIG_NAMES or (a.annotation is not None and "DictConfig" in ast.unparse(a.annotation)) for a in arguments)


def functions(tree: ast.Module) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)]


def main(root: Path) -> None:
    entry = [
        root / "train.py",
        *sorted(root.glob("cifar/*.py")),
        *sorted(root.glob("cifar/config/*.py")),
        *sorted(root.glob("cifar/run/*.py")),
        *sorted(root.glob("cifar/core/*.py")),
    ]
    trees = {path: ast.parse(path.read_text()) for path in [*entry, root / "evaluate.py", *sorted(root.glob("cifar/*/*.py"))]}
    reached = [path.relative_to(root) for path in entry if any(takes_config(f) for f in functions(trees[path]))]
    print(f"{len(reached)} modules of the training entry take the run's config: {' '.join(map(str, reached))}")

    lengths = [
        (f.end_lineno - f.lineno + 1, f"{path.relative_to(root)}:{f.lineno} {f.name}")
        for path, tree in trees.items()
        for f in functions(tree)
    ]
    print("\nlongest functions (lines):")
    for n, where in sorted(lengths, reverse=True)[:10]:
        print(f"  {n:4d}  {where}")
    print("\nlargest modules (lines):")
    for path in sorted(trees, key=lambda p: -len(p.read_text().splitlines()))[:10]:
        print(f"  {len(path.read_text().splitlines()):4d}  {path.relative_to(root)}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve())
