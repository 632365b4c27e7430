"""Compare runs with no W&B server: `cifar-report <multirun folder or run folders> [--out DIR]` (python -m cifar.results.report).

Prints the study's comparisons as tables (one row per run, named by what differs between the
runs; training loss per epoch) and writes them to `report.md` with PNG plots beside it: loss and
validation accuracy per epoch for every run, and test accuracy against each swept value.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

from rich.table import Table

from cifar.console import console, markdown_cell, printable, say, user_errors_as_one_line
from cifar.files import atomic_write_text, check_writable
from cifar.results.plots import plot_curves, plot_sweep
from cifar.results.runs import (
    Run,
    by_what_they_reached,
    find_runs,
    fmt_pct,
    fmt_value,
    is_search,
    mean_std,
    metric_names,
    mixed_fingerprints,
    sort_key,
    swept_keys,
    test_columns,
)
from cifar.results.stats import compare, spread

LOSS_COLUMNS = 10  # the per-epoch loss table shows at most this many epochs, spread evenly, first and last included


def run_label(run: Run, keys: list[str]) -> str:
    """`optim.lr=0.01, seed=1`: the run's values of the keys that differ; its own name when nothing differs."""
    if keys:
        return ", ".join(f"{k}={fmt_value(run.get(k))}" for k in keys)
    return run.summary_value("name") or run.folder.name


def shown_epochs(n: int) -> list[int]:
    """The epochs the loss table shows for runs of `n` epochs."""
    if n <= LOSS_COLUMNS:
        return list(range(1, n + 1))
    return sorted({round(1 + i * (n - 1) / (LOSS_COLUMNS - 1)) for i in range(LOSS_COLUMNS)})


def runs_table(runs: list[Run], keys: list[str]) -> tuple[list[str], list[list[str]]]:
    """One row per run: the differing keys (or the run's name), then accuracies (and the config's metrics at the best
    epoch), epochs, time and status."""
    tests, metrics = test_columns(runs), metric_names(runs)  # a column per configured metric, where a run has one
    header = [*(keys or ["run"]), "best val acc", "best epoch", *(f"val {name}" for name in metrics), *(name for name, _ in tests)]
    header += ["epochs", "train time", "wall time", "status"]
    rows = []
    for run in runs:
        wall = run.summary_value("wall_seconds")
        rows.append(
            [
                *([fmt_value(run.get(k)) for k in keys] or [run_label(run, keys)]),
                fmt_pct(run.best_val_acc),
                fmt_value(run.best_epoch),
                *("-" if (value := run.best_metric(name)) is None else f"{value:.4g}" for name in metrics),
                *(fmt_pct(run.summary_value(key)) for _, key in tests),
                f"{len(run.history)}/{run.get('epochs')}",  # done of planned: a running or stopped job shows how far it got
                f"{run.train_seconds:.0f} s",
                "-" if wall is None else f"{wall:.0f} s",
                run.status,
            ]
        )
    return header, rows


def settings(runs: list[Run], keys: list[str], finished: bool = True) -> dict[tuple, list[Run]]:
    """The finished runs (every run with `finished` False) grouped by their values of the swept keys other than `seed`:
    a setting and its seeds."""
    others = [k for k in keys if k != "seed"]
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        if run.finished or not finished:
            groups[tuple(fmt_value(run.get(k)) for k in others)].append(run)
    return groups


def seeds_table(runs: list[Run], keys: list[str]) -> tuple[list[str], list[list[str]]] | None:
    """Each setting over its seeds, when the runs differ in `seed` (single runs mislead): mean ± std, n and the mean's
    95% interval (Student's t) of every figure."""
    if "seed" not in keys:
        return None
    others = [k for k in keys if k != "seed"]
    tests = test_columns(runs)
    header = [*(others or ["setting"]), "seeds", "best val acc", *(name for name, _ in tests)]
    rows = []
    for setting, members in settings(runs, keys).items():
        rows.append(
            [
                *(setting or ("all",)),
                ", ".join(sorted((fmt_value(r.get("seed")) for r in members), key=sort_key)),
                spread_text([r.best_val_acc for r in members]),
                *(spread_text([r.summary_value(key) for r in members]) for _, key in tests),
            ]
        )
    return header, rows


def spread_text(values: list[float | None]) -> str:
    values = [v for v in values if v is not None]
    return spread(values).text() if values else "-"


def verdicts_table(runs: list[Run], keys: list[str]) -> tuple[list[str], list[list[str]]] | None:
    """Every pair of settings that differ in one swept key, on test accuracy: the difference with its 95% interval,
    Welch's p-value and the verdict (real, within the noise and what it would take, or none possible with one seed)."""
    others = [k for k in keys if k != "seed"]
    groups = {setting: [r.summary_value("test_acc") for r in members] for setting, members in settings(runs, keys).items()}
    groups = {setting: [v for v in values if v is not None] for setting, values in groups.items()}
    groups = {setting: values for setting, values in groups.items() if values}
    if len(groups) < 2 or not others:
        return None
    ran = {setting: len(members) for setting, members in settings(runs, keys, finished=False).items()}  # diverged ones too
    seeds_run = {run.get("seed") for run in runs}
    rows = []
    ordered = sorted(groups, key=lambda s: [sort_key(v) for v in s])
    for i, a in enumerate(ordered):
        for b in ordered[i + 1 :]:
            differing = [k for k, x, y in zip(others, a, b, strict=True) if x != y]
            if len(differing) != 1:
                continue
            name_a, name_b = (", ".join(f"{k}={v}" for k, v in zip(others, s, strict=True)) for s in (a, b))
            v = compare(name_a, groups[a], name_b, groups[b], seeds_run=seeds_run, ran=(ran[a], ran[b]))
            rows.append([
                f"{name_b} vs {name_a}", f"{100 * v.diff:+.2f}",
                "-" if v.low is None else f"{100 * v.low:+.2f} to {100 * v.high:+.2f}",
                "-" if v.p is None else f"{v.p:.3g}", v.sentence,
            ])  # fmt: skip
    return ["comparison", "test acc difference (points)", "95% CI", "p (Welch)", "verdict"], rows


def loss_table(runs: list[Run], keys: list[str]) -> tuple[list[str], list[list[str]]]:
    """The study's table: training loss per epoch, one row per run."""
    epochs = shown_epochs(max((len(r.history) for r in runs), default=0))
    rows = []
    for run in runs:
        by_epoch = {m.epoch: m.train_loss for m in run.history}
        rows.append([run_label(run, keys), *("-" if by_epoch.get(e) is None else f"{by_epoch[e]:.3f}" for e in epochs)])
    return ["run", *(f"epoch {e}" for e in epochs)], rows


def _rich(title: str, header: list[str], rows: list[list[str]]) -> Table:
    table = Table(title=title)
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i == 0 or name in ("status", "run") else "right", overflow="fold")  # never cut
    for row in rows:
        table.add_row(*map(printable, row))
    return table


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(markdown_cell, row)) + " |" for row in rows]) + "\n"


def report(paths: list[str], out: Path) -> Path:
    """Print the tables, write report.md and the PNGs into `out`; returns report.md's path."""
    runs = find_runs(paths)
    check_writable(out, "give --out a writable folder")  # one line before any table is printed
    keys = swept_keys(runs)  # what the user varied: an ablation's name, not every key it sets
    if is_search(runs):
        runs = by_what_they_reached(runs)  # a search's trials: the best first
    else:
        runs.sort(key=lambda r: [sort_key(r.get(k)) for k in keys])  # the swept values in order, as in the study's tables

    if mixed := mixed_fingerprints(runs):
        say("warning:", "yellow", mixed)
    tables = [("Runs", *runs_table(runs, keys))]
    if seeds := seeds_table(runs, keys):
        tables.append(("Each setting over its seeds", *seeds))
    if not is_search(runs) and (verdicts := verdicts_table(runs, keys)):
        tables.append(("Is the difference real?", *verdicts))
    tables.append(("Training loss per epoch", *loss_table(runs, keys)))
    for title, header, rows in tables:
        console.print(_rich(title, header, rows))

    plot_curves([(run_label(run, keys) + ("" if run.finished else f" ({run.status})"), run.history) for run in runs], out / "curves.png")
    pictures = [("Loss and validation accuracy per epoch", "curves.png")]
    swept = [k for k in keys if k != "seed"]  # seeds are the spread around each point, not an axis
    for key in swept:
        points = defaultdict(list)
        for run in runs:
            if run.summary_value("test_acc") is not None:
                others = ", ".join(f"{k}={fmt_value(run.get(k))}" for k in swept if k != key)
                value = run.get(key)
                value = fmt_value(value) if value is None or isinstance(value, (list, dict)) else value  # an axis needs hashable values
                points[others].append((value, run.summary_value("test_acc")))
        name = f"test_acc_vs_{key}.png"
        plot_sweep(points, key, out / name)
        pictures.append((f"Test accuracy against {key}", name))

    unfinished = [f"{r.folder} ({r.status})" for r in runs if not r.finished]
    md = [f"# Report: {len(runs)} runs\n", "Made with `cifar-report " + " ".join(paths) + "`.\n"]
    md += [f"**Warning:** {mixed}.\n"] if mixed else []
    for title, header, rows in tables:
        md += [f"## {title}\n", _markdown(header, rows)]
    md += [f"## {title}\n\n![{title}]({name})\n" for title, name in pictures]
    if unfinished:
        md.append("Not finished: " + ", ".join(unfinished) + "\n")
    atomic_write_text("\n".join(md), out / "report.md")
    console.print(f"wrote {out / 'report.md'} and {', '.join(name for _, name in pictures)}", soft_wrap=True)
    return out / "report.md"


def sweep_verdict(sweep: Path) -> bool:
    """Print the sweep's table; True if every job finished (diverged, interrupted and failed jobs are named)."""
    runs = find_runs([sweep])
    search = is_search(runs)
    if search:
        runs = by_what_they_reached(runs)  # the best trial first
    table = Table(title=f"{'Search' if search else 'Sweep'} {sweep}")
    # The figures the runs have: no validation column for recipes without a split (fastnet94), a TTA one where tested so
    figures = [("best val acc", lambda run: run.best_val_acc)] if any(run.best_val_acc is not None for run in runs) else []
    figures += [(name, lambda run, key=key: run.summary_value(key)) for name, key in test_columns(runs)]
    for col in ("job", "run", "status", *(name for name, _ in figures), "train time"):
        table.add_column(col, justify="left" if col in ("job", "run", "status") else "right", no_wrap=col != "run", overflow="fold")
    for run in runs:
        table.add_row(
            printable(run.folder.name),
            printable(run.summary_value("name") or "?"),
            printable(run.status),
            *(fmt_pct(value(run)) for _, value in figures),
            f"{run.train_seconds:.0f} s",
        )
    finished = [run for run in runs if run.finished]
    # Single runs mislead: over seeds, the spread is part of the result. Other sweeps: `cifar-report`.
    if len(finished) > 1 and swept_keys(runs) == ["seed"]:
        table.add_section()
        table.add_row("", f"mean ± std ({len(finished)})", "", *(mean_std([value(r) for r in finished]) for _, value in figures), "")
    console.print(table)
    unfinished = [
        f"{run.folder.name} ({run.status}{f': {e}' if (e := run.summary_value('error')) else ''})" for run in runs if not run.finished
    ]
    if unfinished:
        say(f"{len(unfinished)} of {len(runs)} jobs did not finish:", "bold red", ", ".join(unfinished))
    return not unfinished


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="cifar-report", description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="a multirun folder (multirun/<date>/<time>), or run folders, or both")
    parser.add_argument("--out", type=Path, help="where report.md and the PNGs go (default: <the folder>/report, or ./report for several)")
    args = parser.parse_args(argv)
    out = args.out or (Path(args.paths[0]) / "report" if len(args.paths) == 1 else Path("report"))
    with user_errors_as_one_line():
        report(args.paths, out)


if __name__ == "__main__":
    sys.exit(main())
