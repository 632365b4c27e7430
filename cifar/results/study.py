"""The study's table: each of its eight figures beside ours, read from a `python train.py -m experiment=study` sweep.
The rows and the study's figures are in conf/study_row/ (one file a run), and travel in each run's config.

    cifar-study <sweep folder>      # the same table for a sweep on disk, finished or still running (python -m cifar.results.study)

Five runs give the eight figures: with a constant learning rate and batch orders drawn per (seed,
epoch), the first 20 or 50 epochs of a longer run are the 20- or 50-epoch run, so those rows are
read from the longer run's `prefix_results` (marked "paired").
"""

from __future__ import annotations

import functools
import logging
import re
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from cifar.config.compose import CONF, compose_config
from cifar.config.identity import experiment_settings
from cifar.console import console, markdown_cell, printable, user_errors_as_one_line
from cifar.files import atomic_write_text
from cifar.records import train_seconds
from cifar.results.runs import Run, find_runs, mixed_fingerprints
from cifar.results.stats import Spread, spread

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudyRow:
    row: int  # its place in the study's table
    label: str  # what the study compared
    study_acc: float  # the study's test accuracy (original CIFAR-10 files, one run)
    epochs: int | None  # read the run's first this many epochs (prefix_results); None: the whole run
    alone: str  # the command that reproduces this row by itself


def study_rows(runs: list[Run]) -> list[tuple[StudyRow, Run]]:
    """The study's rows these runs give, in the study's order: each conf/study_row/ file names its rows and their
    figures (`study_rows`), which every run of it carries in its config."""
    rows = [(row, run) for run in runs for stored in (run.get("study_rows") or ()) if (row := _study_row(stored, run))]
    return sorted(rows, key=lambda pair: pair[0].row)


STUDY_ROW_TYPES = {"row": int, "label": str, "study_acc": (int, float), "epochs": (int, type(None)), "alone": str}


def _study_row(stored: Any, run: Run) -> StudyRow | None:
    """A row a run's config names, if it is of StudyRow's shape (its file may come from elsewhere); else one warning, and
    the row is left out."""
    if isinstance(stored, dict) and stored.keys() == STUDY_ROW_TYPES.keys():
        if all(isinstance(stored[k], t) and not isinstance(stored[k], bool) for k, t in STUDY_ROW_TYPES.items()):
            return StudyRow(**stored)
    log.warning("%s: a study row of another shape is left out (%s)", run.folder, printable(repr(stored))[:120])
    return None


@functools.cache
def row_settings(study_row: str) -> dict[str, Any]:
    """The experiment settings of conf/study_row/<study_row>.yaml as it stands, composed as train.py composes it."""
    cfg = compose_config([f"study_row={study_row}"])
    with open_dict(cfg):
        del cfg["output_dir"]  # Hydra's runtime folder, unknown outside a run (and bookkeeping)
    return experiment_settings(OmegaConf.to_container(cfg, resolve=True), with_epochs=True)


def off_the_study(run: Run) -> str:
    """`epochs=1 (the study's row: 100), ...` for each experiment setting in which `run` is not its study row's run (a
    debug preset's, say); "" when it is that run, or when the run does not say which row it is. Seeds are an axis: aside."""
    choice = run.choices.get("study_row")  # read from the run's .hydra/hydra.yaml: a file name of conf/study_row/, or nothing
    if not isinstance(choice, str) or not re.fullmatch(r"[\w.-]+", choice) or not (CONF / "study_row" / f"{choice}.yaml").is_file():
        return ""
    study, ours = row_settings(choice), experiment_settings(run.config, with_epochs=True)
    keys = sorted(k for k in study.keys() | ours.keys() if k != "seed" and study.get(k) != ours.get(k))
    shown = ", ".join(f"{k}={ours.get(k)} (the study's row: {study.get(k)})" for k in keys[:4])
    return shown + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")


def row_result(row: StudyRow, run: Run) -> dict[str, Any]:
    """Our test accuracy for the row, the epoch its checkpoint came from, and a note when the run fell short of the row
    or is not the row's run at all (other settings: its figure is shown, with them named, never as the study's)."""
    planned = run.get("epochs")
    notes = [f"NOT the study's settings: {other}"] if (other := off_the_study(run)) else []
    notes += [] if run.finished else [f"{run.status} after {len(run.history)} of {planned} epochs"]
    if row.epochs is None:
        return {"acc": run.summary_value("test_acc"), "best_epoch": run.best_epoch, "note": "; ".join(notes)}
    prefix = (run.summary_value("prefix_results") or {}).get(str(row.epochs))
    if isinstance(prefix, dict) and isinstance(prefix.get("test_acc"), (int, float)):  # a summary edited by hand: no result
        notes.append(f"paired: the first {row.epochs} epochs of the {planned}-epoch run")
        return {"acc": prefix["test_acc"], "best_epoch": prefix.get("best_epoch"), "note": "; ".join(notes)}
    return {
        "acc": None,
        "best_epoch": None,
        "note": "; ".join(notes + ([f"no result for epoch {row.epochs}"] if run.finished else [])),
    }


def study_table(sweep: Path) -> str:
    """The study's table as Markdown, for the rows whose runs are in `sweep`."""
    runs = find_runs([sweep])
    lines = [
        "| study row | study | ours (over seeds) | difference | study's figure within one run of ours (95% prediction interval) | best epoch | train time | note | this row alone |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    seeds: dict[int, list[tuple[StudyRow, Run, dict]]] = {}
    for row, run in study_rows(runs):  # a sweep with seed=0,1,2 gives each row once a seed
        seeds.setdefault(row.row, []).append((row, run, row_result(row, run)))
    for results in seeds.values():
        row = results[0][0]
        accs = [r["acc"] for _, _, r in results if r["acc"] is not None]
        ours = spread(accs) if accs else None
        inside = one_run_holds(ours, row.study_acc) if ours else "-"
        seconds = statistics.fmean(
            run.train_seconds if row.epochs is None else train_seconds(run.history[: row.epochs]) for _, run, _ in results
        )
        notes = "; ".join(dict.fromkeys(r["note"] for _, _, r in results if r["note"]))  # each note once, in order
        lines.append(
            f"| {markdown_cell(row.label)} | {row.study_acc:.2%} | **{ours.text() if ours else '-'}** "
            f"| {f'{(ours.mean - row.study_acc) * 100:+.2f}' if ours else '-'} | {inside} "
            f"| {', '.join(str(r['best_epoch'] or '-') for _, _, r in results)} | {seconds:.0f} s | {markdown_cell(notes)} | `{markdown_cell(row.alone)}` |"
        )
    device = next((run.summary_value("device_name") for run in runs if run.summary_value("device_name")), None)
    lines.append("")
    lines.append(
        f"Test accuracy of the best-validation checkpoint, mean ± std over seeds; {device or 'device not recorded'}; sweep {sweep}."
    )
    if mixed := mixed_fingerprints(runs):
        lines.append(f"Warning: {mixed}.")
    return "\n".join(lines)


def one_run_holds(ours: Spread, study_acc: float) -> str:
    """Whether the study's figure, one run, falls where one run of ours would 95% of the time (the prediction interval
    for one run: the mean's own interval is the wrong yardstick for a single run, sqrt(n + 1) times too narrow)."""
    interval = ours.one_run()
    if interval is None:
        return "- (one seed: no interval)" if ours.n == 1 else "- (identical seeds: no interval)"
    low, high = interval
    return f"{'yes' if low <= study_acc <= high else '**no**'} ({100 * low:.2f}-{100 * high:.2f})"


def printable_lines(text: str) -> str:
    """A Markdown table for the terminal: each line as the text it is (a stored label's control characters written out)."""
    return "\n".join(map(printable, text.splitlines()))


class StudyTable(Callback):
    """After `python train.py -m experiment=study`: the study's table, printed and written to `<sweep>/study.md`."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(config.hydra.sweep.dir)
        with user_errors_as_one_line():
            table = study_table(sweep)
            atomic_write_text(table + "\n", sweep / "study.md")
        console.print(printable_lines(table), soft_wrap=True)


def main() -> None:
    """`cifar-study <sweep folder>` (or `python -m cifar.results.study`): the table for a sweep on disk."""
    with user_errors_as_one_line():
        if len(sys.argv) != 2:
            sys.exit("usage: cifar-study <sweep folder of python train.py -m experiment=study>")
        console.print(printable_lines(study_table(Path(sys.argv[1]))), soft_wrap=True)


if __name__ == "__main__":
    main()
