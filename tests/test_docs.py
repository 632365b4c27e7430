"""The README and docs/ stay true: every link leads somewhere, and every train.py / evaluate.py command they show composes
as written (its sweeps at their first value), so a reader who copies one gets a run, not an error about a key."""

import re
import shlex
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from cifar.run.config import compose_config
from tests.conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SCRIPTS = {"train.py": "config", "evaluate.py": "evaluate"}


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


def shown_commands() -> list[tuple[str, str, list[str]]]:
    """(page, script, arguments) of every `python train.py ...` / `python evaluate.py ...` line in a bash block, those
    with a placeholder (<...>) left out."""
    found = []
    for page in PAGES:
        for block in re.findall(r"(?ms)^```bash\n(.*?)^```", page.read_text()):
            for shown in block.splitlines():
                command = shown.split("  #")[0].strip()
                m = re.search(r"python (train\.py|evaluate\.py)( .*)?$", command.split("&&")[-1].strip())
                if m and "<" not in command:
                    found.append((page.name, m.group(1), shlex.split(m.group(2) or "")))
    return found


def first_values(args: list[str]) -> list[str]:
    """The overrides as Hydra parses them, each sweep at its first value; -m, --cfg and the like dropped."""
    overrides = OverridesParser.create().parse_overrides([a for a in args if not a.startswith("-")])
    out = []
    for o in overrides:
        value = next(o.sweep_string_iterator()) if o.is_sweep_override() else o.get_value_element_as_str()
        out.append(f"{o.input_line.split('=')[0]}={value}")
    return out


COMMANDS = shown_commands()


def test_the_pages_show_commands():
    assert len(COMMANDS) >= 20


@pytest.mark.parametrize(("page", "script", "args"), COMMANDS, ids=[f"{p}:{' '.join(a)[:60]}" for p, _, a in COMMANDS])
def test_every_command_shown_composes(page, script, args):
    compose_config(first_values(args), SCRIPTS[script])
