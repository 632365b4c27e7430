"""Everything the user sees in the terminal: the config tree, the epoch progress bar, result tables."""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from typing import Any

import rich
import torch
from omegaconf import DictConfig, OmegaConf
from rich import get_console
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from cifar.errors import UserError

# Every string the project prints is text, never rich markup: a class `t-shirt [v2]`, a path with `[draft]` or `[/old]`,
# a list `[nan]` in a message are shown as they are (with markup they vanished, or crashed the printer). Styles are
# given as Text's styles instead. Set on rich's one console, which RichHandler logs through too, so log lines and
# progress bars do not collide.
rich.reconfigure(markup=False)
console = get_console()
# Piped into a file, `tee` or a scheduler's log there is no terminal to fit, and rich would assume 80 columns and cut the
# run's folder and statuses short with "…". There, lines may be as long as they need (COLUMNS, when set, still decides);
# tables below fold what is still too long rather than cut it.
PIPED_WIDTH = 200
if not console.is_terminal and not os.environ.get("COLUMNS", "").isdigit():
    console.width = PIPED_WIDTH


def printable(text: object) -> str:
    """`text` with each control character written out (`\\x1b`, `\\n`): a name from a file or a folder can neither
    move, clear or retitle the terminal nor start a line (or a table row) of its own."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def markdown_cell(text: object) -> str:
    """A Markdown table cell (report.md, study.md) as the text it is: a `|` or a new line in a run's name, status or label
    cannot start a cell or a row of its own."""
    return printable(text).replace("|", "\\|")


def say(label: str, style: str, message: object) -> None:
    """`label message` as one line: the label in `style`, the message as the text it is."""
    console.print(Text.assemble((label, style), " ", printable(message)), soft_wrap=True)


class PlainRichHandler(RichHandler):
    """rich's log handler (conf/hydra/job_logging/rich.yaml), each message one line of text: control characters in a
    path or a name written out, as `printable` does."""

    def render_message(self, record, message: str):
        return super().render_message(record, printable(message))


@contextlib.contextmanager
def user_errors_as_one_line():
    """A UserError becomes `error: <message>` on one line and exit status 2: no traceback for a user's mistake."""
    try:
        yield
    except UserError as e:
        say("error:", "bold red", e)
        sys.exit(2)


@contextlib.contextmanager
def stopping_the_command():
    """Hydra turns an exception raised in a callback into a warning and goes on: it would write the run's folder (a
    finished run's `.hydra/` rewritten) and start the job the checks refused. Here any exception stops the command: a
    user's mistake (UserError) in one line and exit status 2, anything else (a bug) with its traceback and exit status 1;
    both before Hydra writes anything, and as SystemExit, which Hydra lets through."""
    try:
        with user_errors_as_one_line():
            yield
    except Exception:
        traceback.print_exc()
        sys.exit(1)


def print_interrupted(epoch: int, last, sweep: str | None = None, search: bool = False) -> None:
    """Ctrl-C: where the run stopped and how to continue it (epoch 0: before training began). A single run continues
    with resume=; a sweep's job by running the sweep again in its folder (`-m` refuses resume=); a search's trials are
    not continued one by one."""
    when = f"in epoch {epoch}" if epoch else "before training began"
    if search:
        where = (
            "a search is not continued trial by trial: start it again (with hydra.sweeper.storage=sqlite:///search.db its "
            "study keeps the finished trials, and the sampler learns from them)"
        )
    elif sweep:
        where = f"continue the sweep by running the same command again with hydra.sweep.dir={sweep} (finished jobs are kept"
        where += ", this one resumes from its last epoch)" if last else ", this one starts again)"
    elif last:
        where = f"resume with the same overrides plus resume={last}"
    else:
        where = "no epoch had completed, so there is nothing to resume" if epoch else "nothing was trained"
    say("interrupted", "bold yellow", f"{when}: {where}")


def print_config_tree(cfg: DictConfig) -> None:
    """The composed config, one branch per group, as the run will use it."""
    tree = Tree(Text("config", style="bold"))
    scalars = {}
    for key, value in cfg.items():
        if isinstance(value, DictConfig):
            tree.add(Text(key, style="bold cyan")).add(Syntax(OmegaConf.to_yaml(value, resolve=True).rstrip(), "yaml", word_wrap=True))
        else:
            scalars[key] = value
    if scalars:
        tree.add(Text("run", style="bold cyan")).add(
            Syntax(OmegaConf.to_yaml(OmegaConf.create(scalars), resolve=True).rstrip(), "yaml", word_wrap=True)
        )
    console.print(tree)


def epoch_progress(enabled: bool = True) -> Progress:
    """A bar per epoch: steps done, running loss, images/second, time left (only torchrun's rank 0 shows one)."""
    return Progress(
        TextColumn("{task.description}", style="bold", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TextColumn("{task.fields[ips]:,.0f} img/s"),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled,
    )


def print_run_summary(summary: dict[str, Any]) -> None:
    table = Table(title=f"Run {printable(summary['name'])}", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right", overflow="fold")  # the folder, whole: what resume= needs
    for label, key, fmt in [
        ("status", "status", "{}"),
        ("epochs", "epochs_completed", "{}"),
        ("best val accuracy", "best_val_acc", "{:.2%}"),
        ("best epoch", "best_epoch", "{}"),
        ("test accuracy (best checkpoint)", "test_acc", "{:.2%}"),
        ("test loss", "test_loss", "{:.4f}"),
        ("train time", "train_seconds", "{:.0f} s"),
        ("precision", "precision", "{}"),
        ("device", "device", "{}"),
        ("folder", "output_dir", "{}"),
    ]:
        value = summary.get(key)
        table.add_row(label, "-" if value is None else printable(fmt.format(value)))
    console.print(table)


MATRIX_MOST_CLASSES = 20  # a confusion matrix wider than this does not fit a terminal (CIFAR-100's would print ~30 KB)


def print_evaluation(report: dict[str, Any]) -> None:
    """The study's "Total Accuracy" line, then per-class accuracy and the confusion matrix."""
    classes = report["classes"]
    console.print(Text.assemble(("Total Accuracy", "bold"), f" of the network on the {report['n']} test images: {report['acc']:.2%}"))
    if "tta_acc" in report:
        console.print(f"with horizontal-flip test-time augmentation: {report['tta_acc']:.2%}")
    if "ece" in report:
        console.print(f"expected calibration error (15 bins): {report['ece']:.4f} (reliability.png: accuracy against confidence)")
    per_class = Table(title="Accuracy per class")
    per_class.add_column("class")
    per_class.add_column("accuracy", justify="right")
    per_class.add_column("correct / total", justify="right")
    confusion = torch.tensor(report["confusion"])
    for i, name in enumerate(classes):
        per_class.add_row(printable(name), f"{report['per_class_acc'][name]:.1%}", f"{int(confusion[i, i])} / {int(confusion[i].sum())}")
    console.print(per_class)
    if len(classes) > MATRIX_MOST_CLASSES:
        console.print(
            f"The confusion matrix of {len(classes)} classes is too wide for a terminal: it is in evaluation.json", soft_wrap=True
        )
        return
    matrix = Table(title="Confusion matrix (rows: true class, columns: predicted)")
    matrix.add_column("true \\ pred")
    for name in classes:
        matrix.add_column(printable(name[:5]), justify="right")
    for i, name in enumerate(classes):
        matrix.add_row(printable(name), *(Text(str(v), style="bold green" if j == i else "") for j, v in enumerate(confusion[i].tolist())))
    console.print(matrix)


def print_comparison(reports: list[tuple[str, dict[str, Any]]], images: dict[str, Any]) -> None:
    """Two checkpoints side by side (the baseline first): total and per-class test accuracy, then image by image
    (`images`: evaluation.py's image_by_image of the checkpoint against the baseline)."""
    table = Table(title="Test accuracy, checkpoint by checkpoint")
    table.add_column("class")
    for label, _ in reports:
        table.add_column(printable(label), justify="right")
    for name in reports[0][1]["classes"]:
        table.add_row(printable(name), *(f"{r['per_class_acc'][name]:.1%}" for _, r in reports))
    table.add_section()
    table.add_row(Text("all", style="bold"), *(Text(f"{r['acc']:.2%}", style="bold") for _, r in reports))
    if all("tta_acc" in r for _, r in reports):
        table.add_row("all, flip TTA", *(f"{r['tta_acc']:.2%}" for _, r in reports))
    intervals = (images["baseline_acc_interval"], images["acc_interval"])
    table.add_row("95% CI (test set's size)", *(f"{low:.2%}-{high:.2%}" for low, high in intervals))
    console.print(table)
    (baseline, _), (ckpt, _) = reports
    console.print(
        f"Image by image: only {printable(ckpt)} is right on {images['only_ckpt_right']} images, only {printable(baseline)} on "
        f"{images['only_baseline_right']}: McNemar's exact p={images['mcnemar_p']:.3g} ("
        + ("these two models differ on this test set" if images["differ"] else "they cannot be told apart on this test set")
        + "; that is the test set's sampling, not training's: another seed of either could move it as much)",
        soft_wrap=True,
    )


def print_classified(rows: list[dict[str, Any]]) -> None:
    """Your own images: a row per file, its top classes with their probabilities."""
    table = Table(title="Your images (also in images.png)")
    table.add_column("file", overflow="fold")
    for k in range(len(rows[0]["top"])):
        table.add_column(f"#{k + 1}", no_wrap=True)
    for row in rows:
        shown = [f"{printable(t['class'])} {t['prob']:.0%}" for t in row["top"]]
        table.add_row(printable(row["file"]), *(["unsure: " + shown[0], *shown[1:]] if row["unsure"] else shown))
    Console(width=max(console.width, 120), markup=False).print(table)


def print_predictions(indices: list[int], labels: torch.Tensor, predictions: list[tuple[str, torch.Tensor]], classes: list[str]) -> None:
    """The study's "Ground Truth / Before / After" table: a row per test image, a column per checkpoint."""
    table = Table(title="Predictions on test images (also in predictions.png)")
    table.add_column("test image", justify="right")
    table.add_column("ground truth")
    for label, _ in predictions:
        table.add_column(printable(label))
    for row, index in enumerate(indices):
        truth = int(labels[row])
        cells = []
        for _, preds in predictions:
            guess = int(preds[row])
            cells.append(Text(printable(classes[guess]), style="green" if guess == truth else "red"))
        table.add_row(str(index), printable(classes[truth]), *cells)
    console.print(table)
