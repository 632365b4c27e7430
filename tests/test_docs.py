"""The README and docs/ stay true: every link leads somewhere; every train.py / evaluate.py command they show composes
as written (its sweeps at their first value) and passes the checks train.py and evaluate.py run before anything is
written, so a reader who copies one gets a run, not an error about a key; every `cifar-*` command's arguments parse; and
no command leans on a path that exists only on this team's machines unless it says so."""

import argparse
import importlib
import importlib.util
import re
import shlex
import sys
import tomllib
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig

from cifar.config.compose import CONF, compose_config, register
from cifar.config.evaluate_schema import check_evaluate
from cifar.run.checks import check
from cifar.run.hydra_callbacks import check_search
from tests.conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SCRIPTS = {"train.py": "config", "evaluate.py": "evaluate", "cifar-train": "config", "cifar-eval": "evaluate"}
CHECKS = {"config": check, "evaluate": check_evaluate}  # what BeforeWriting / EvaluationChecks run before anything is written
TOOLS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]  # cifar-report = "cifar.results.report:main", ...
# Hydra's flags that take a value (`--cfg job`): not overrides
HYDRA_FLAGS_WITH_VALUE = {
    "--cfg",
    "-c",
    "--info",
    "-i",
    "--package",
    "-p",
    "--config-name",
    "-cn",
    "--config-path",
    "-cp",
    "--config-dir",
    "-cd",
}


def headings(page: Path) -> set[str]:
    text = re.sub(r"(?ms)^```.*?^```", "", page.read_text())
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in re.findall(r"(?m)^#+ (.*)$", text)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_link_leads_to_a_file_and_heading(page):
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if re.match(r"\w+://", target):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        assert file.exists(), f"{page.name}: {target} names no file"
        if anchor and file.suffix == ".md":
            assert anchor in headings(file), f"{page.name}: {target} names no heading of {file.name}"


def code_lines(page: Path) -> list[str]:
    """What a reader copies from `page`: each line of its bash blocks (a trailing `  # comment` cut) and each inline code span."""
    text = page.read_text()
    blocks = re.findall(r"(?ms)^```bash\n(.*?)^```", text)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    return lines + re.findall(r"`([^`\n]+)`", re.sub(r"(?ms)^```.*?^```", "", text))


def shown_commands(pattern: str) -> list[tuple[str, str, list[str]]]:
    """(page, program, arguments) of every command `pattern` matches (its last `&&` part) with an argument at least,
    those with a placeholder (<...>, ...) left out."""
    found = []
    for page in PAGES:
        for line in code_lines(page):
            m = re.fullmatch(pattern + r"( .*)?", line.split("&&")[-1].strip())
            if m and m.group(2) and "<" not in line and "..." not in line:
                found.append((page.name, m.group(1), shlex.split(m.group(2))))
    return found


def first_values(args: list[str]) -> list[str]:
    """The overrides as Hydra parses them, each sweep at its first value; -m, --cfg job and the like dropped."""
    flags = {i for i, a in enumerate(args) if a.startswith("-")} | {i + 1 for i, a in enumerate(args) if a in HYDRA_FLAGS_WITH_VALUE}
    overrides = OverridesParser.create().parse_overrides([a for i, a in enumerate(args) if i not in flags])
    out = []
    for o in overrides:
        value = next(o.sweep_string_iterator()) if o.is_sweep_override() else o.get_value_element_as_str()
        out.append(f"{o.input_line.split('=')[0]}={value}")
    return out


# docs/extending.md's commands need the files its sections show: tests/test_extending.py writes them and runs each one.
COMMANDS = [c for c in shown_commands(r"(?:python )?(train\.py|evaluate\.py|cifar-train|cifar-eval)") if c[0] != "extending.md"]
TOOL_COMMANDS = shown_commands(r"(cifar-report|cifar-study|cifar-bench)") + [
    (page.name, tool, shlex.split(re.sub(r"<[^>]*>", "x", args)))  # a placeholder stands for a folder: any name parses
    for page in PAGES
    for line in code_lines(page)
    for tool, args in re.findall(r"^(cifar-report|cifar-study|cifar-bench) (.*<.*)$", line)
]


def test_the_pages_show_commands():
    assert len(COMMANDS) >= 30 and len(TOOL_COMMANDS) >= 10


def with_hydra_node(args: list[str]) -> DictConfig:
    """The config a command's sweep starts with, its `hydra` node included (check_search reads hydra.sweeper.n_trials)."""
    register()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
            return compose("config", overrides=first_values(args), return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()


@pytest.mark.parametrize(("page", "script", "args"), COMMANDS, ids=[f"{p}:{' '.join(a)[:60]}" for p, _, a in COMMANDS])
def test_every_command_shown_composes_and_passes_the_checks(page, script, args):
    cfg = compose_config(first_values(args), SCRIPTS[script])
    CHECKS[SCRIPTS[script]](cfg)
    if "-m" in args and any(a.startswith("hparams_search=") for a in args):  # a search's own checks, as on_multirun_start runs them
        check_search(with_hydra_node(args))


class Parsed(Exception):
    """Raised where a tool has read its arguments, before it reads or writes anything."""


@pytest.mark.parametrize(("page", "tool", "args"), TOOL_COMMANDS, ids=[f"{p}:{t} {' '.join(a)[:50]}" for p, t, a in TOOL_COMMANDS])
def test_every_tool_command_shown_parses(page, tool, args, monkeypatch):
    module, function = TOOLS[tool].split(":")
    main = getattr(importlib.import_module(module), function)
    parse_args = argparse.ArgumentParser.parse_args

    def parsed(parser, argv=None, namespace=None):
        parse_args(parser, argv, namespace)  # a wrong argument exits 2 here, with argparse's line
        raise Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parsed)
    monkeypatch.setattr("cifar.results.study.study_table", lambda sweep: (_ for _ in ()).throw(Parsed))  # cifar-study: no argparse
    monkeypatch.setattr(sys, "argv", [tool, *args])
    with pytest.raises(Parsed):
        main(args) if "argv" in main.__code__.co_varnames else main()


# A path that only this team's machines hold: a reader elsewhere has neither, so the line says so
TEAM_ONLY = re.compile(r"\.\./shared/|/work/")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_no_path_only_this_team_has_unless_marked(page):
    unmarked = [line.strip() for line in page.read_text().splitlines() if TEAM_ONLY.search(line) and "this team's" not in line]
    assert not unmarked, f"{page.name}: paths that exist only on this team's machines, not marked as this team's example: {unmarked}"


REPORTS = sorted((REPO / "docs").glob("*/report.md"))  # committed reports: each says the command that made it


@pytest.mark.parametrize("page", PAGES + REPORTS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_program_named_exists(page):
    """`python -m <module>` names a module of this checkout, `cifar-<tool>` a console script of pyproject.toml."""
    modules = [m for line in code_lines(page) for m in re.findall(r"python -m ([\w.]+)", line)]
    tools = [t for line in code_lines(page) for t in re.findall(r"(?<![\w/-])(cifar-[a-z]+)\b", line)]
    assert all(importlib.util.find_spec(m) is not None for m in modules if m.startswith("cifar")), (page.name, modules)
    assert all(t in TOOLS for t in tools), (page.name, tools)


# A measured figure: a percentage, a time, a speed-up, a size, a throughput, a difference in points
FIGURE = re.compile(
    r"(?<![\w.\-/=])\d[\d,]*(?:\.\d+)?(?:-\d[\d,]*(?:\.\d+)?)? ?(?:%|x\b|s\b|min\b|minutes\b|seconds\b|GB\b|MB\b|img/s|GFLOP/s| points\b)"
)
# What backs one: RESULTS.md, a committed report, or the command that measured it
BACKING = re.compile(
    r"RESULTS\.md|report\.md|\]\((?:\.\./)?docs/[\w-]+/|\]\([\w-]+/[\w.-]+\)|`(?:python|cifar-|bash|/usr/bin/time|git clone)[^`]*`"
)
NOT_MEASURED = {  # figures that are a setting, a limit or a name, not a measurement
    ("README.md", "95%"),  # the interval's confidence
    ("compare.md", "95%"),
    ("faults.md", "30 s"),  # W&B's connection timeout
    ("gpu.md", "15 minutes"),  # the loan's terms
    ("gpu.md", "10 minutes"),
    ("layout.md", "94%"),  # the recipe's name
}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_figure_has_its_command_or_results_line(page):
    """A figure's paragraph (a table's row, or the paragraph leading into the table) names RESULTS.md, a committed report
    or the command that measured it, or sits beside the bash block that shows that command."""
    blocks = re.split(r"\n\s*\n", page.read_text())
    unbacked = []
    for i, block in enumerate(blocks):
        if block.lstrip().startswith("```"):
            continue
        table = block.lstrip().startswith("|")
        before, after = (blocks[i - 1] if i else ""), (blocks[i + 1] if i + 1 < len(blocks) else "")
        if before.lstrip().startswith("```bash") or after.lstrip().startswith("```bash") or (table and BACKING.search(before)):
            continue
        for unit in block.splitlines() if table else [block]:
            figures = FIGURE.findall(re.sub(r"`[^`]*`", "", unit))
            if not BACKING.search(unit):
                unbacked += [f for f in figures if (page.name, f) not in NOT_MEASURED]
    assert not unbacked, f"{page.name}: figures with no command or RESULTS.md line beside them: {unbacked}"
