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
from cifar.errors import UserError
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
from cifar.results.stats import spread
from cifar.results.verdicts import best_setting, ensemble_table, image_table, settings, verdicts_table

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


# What the per-image tables measure, said under them.
IMAGE_BY_IMAGE = (
    "Two single runs on the same test images: McNemar's exact test asks whether these two models differ on this "
    "test set (the test set's sampling). It says nothing of whether their settings differ: another seed of either could "
    "move it as much. For a setting's worth, run seeds (seed=0,1,2) and read the verdicts over them."
)
ENSEMBLE = (
    "The ensemble averages the seeds' probabilities image by image. Its gain over the seeds' mean, and how often two seeds "
    "disagree (on far more images than their accuracies differ by), show how much of each run is its seed's: the "
    "variation the verdicts weigh."
)


def report(paths: list[str], out: Path, min_effect: float | None = None) -> Path:
    """Print the tables, write report.md and the PNGs into `out`; returns report.md's path. `min_effect`: the smallest
    difference in test accuracy that matters (a fraction): the verdicts then also say which differences are none in
    practice (TOST)."""
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
    answer = None
    if not is_search(runs):  # a search's trials are not a grid of settings to judge
        if verdicts := verdicts_table(runs, keys, min_effect):
            tables.append(("Is the difference real?", *verdicts))
        if best := best_setting(runs, keys, min_effect):
            answer, best_table = best
            tables.append(("Which setting is best?", *best_table))
        if images := image_table(runs, keys):
            tables.append(("Image by image", *images))
    if ensembles := ensemble_table(runs, keys):
        tables.append(("The seeds as an ensemble", *ensembles))
    tables.append(("Training loss per epoch", *loss_table(runs, keys)))
    notes = {"Which setting is best?": answer, "Image by image": IMAGE_BY_IMAGE, "The seeds as an ensemble": ENSEMBLE}
    for title, header, rows in tables:
        console.print(_rich(title, header, rows))
        if notes.get(title):
            console.print(printable(notes[title]), soft_wrap=True)  # the best setting's answer names stored values

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
        md += [f"## {title}\n", _markdown(header, rows)] + ([printable(notes[title]) + "\n"] if notes.get(title) else [])
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
    parser.add_argument(
        "--min-effect", type=float, metavar="POINTS",
        help="the smallest difference in test accuracy that matters, in points (0.5): settings whose 90%% interval lies "
        "inside it are called equivalent (TOST), others undecided with the seeds it would take",
    )  # fmt: skip
    args = parser.parse_args(argv)
    out = args.out or (Path(args.paths[0]) / "report" if len(args.paths) == 1 else Path("report"))
    with user_errors_as_one_line():
        if args.min_effect is not None and not 0 < args.min_effect < 100:
            raise UserError(
                f"--min-effect {args.min_effect}: give the smallest difference that matters in points, above 0 and below 100 (0.5)"
            )
        report(args.paths, out, args.min_effect / 100 if args.min_effect is not None else None)


if __name__ == "__main__":
    sys.exit(main())
