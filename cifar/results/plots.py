"""Every picture the project draws, as PNG files (matplotlib, no display needed).

Callers pass plain numbers and labels; nothing here reads runs or checkpoints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: works on a headless machine and never opens a window
import matplotlib.pyplot as plt
import torch

from cifar.files import atomic_write_with
from cifar.records import EpochRecord
from cifar.results.runs import sort_key
from cifar.results.stats import spread

# Every label is drawn as the text it is: class names, run names and swept values come from files and folders, and a `$`
# in one made matplotlib read it as mathematics (a class `$^$` failed the whole evaluation at savefig).
matplotlib.rcParams["text.parse_math"] = False

DPI = 110


def plot_curves(runs: list[tuple[str, list[EpochRecord]]], path: Path) -> None:
    """Training loss, and validation (solid) and training (dashed) accuracy per epoch, one colour per (label, history)."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    for label, history in runs:
        marker = "." if len(history) < 30 else None
        (line,) = ax_loss.plot([m.epoch for m in history], [m.train_loss for m in history], marker=marker, label=label)
        val = [(m.epoch, 100 * m.val_acc) for m in history if m.val_acc is not None]
        if val:
            ax_acc.plot(*zip(*val, strict=True), color=line.get_color(), marker=marker, label=label)
        if trained := [(m.epoch, 100 * m.train_acc) for m in history if m.train_acc is not None]:  # runs from before: none
            ax_acc.plot(*zip(*trained, strict=True), color=line.get_color(), linestyle="--", alpha=0.6)
    ax_loss.set(title="training loss per epoch", xlabel="epoch", ylabel="mean training loss")
    ax_acc.set(title="accuracy per epoch: validation (solid), training (dashed)", xlabel="epoch", ylabel="accuracy (%)")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax_loss.legend(fontsize="small", loc="best")
    _save(fig, path)


def plot_sweep(points: dict[str, list[tuple[Any, float]]], key: str, path: Path) -> None:
    """Test accuracy against one swept key: per line (the other keys' setting), every run as a dot, the mean as the line
    and, where a value has several seeds, the mean's 95% interval (Student's t) as an error bar.

    `points` maps a line's label to (value of `key`, test accuracy) pairs. Numbers go on a numeric axis (log
    when they span 10x or more, like learning rates); anything else is a category.
    """
    values = sorted({x for pts in points.values() for x, _ in pts}, key=sort_key)
    numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in values)
    position = (lambda x: x) if numeric else values.index
    fig, ax = plt.subplots(figsize=(6.5, 4.5), constrained_layout=True)
    for label, pts in sorted(points.items()):
        xs = sorted({x for x, _ in pts}, key=sort_key)
        spreads = [spread([100 * acc for x2, acc in pts if x2 == x]) for x in xs]
        means = [s.mean for s in spreads]
        (line,) = ax.plot([position(x) for x in xs], means, marker="o", label=label or None)
        for x, s in zip(xs, spreads, strict=True):
            if s.low is not None:
                ax.errorbar(position(x), s.mean, yerr=[[s.mean - s.low], [s.high - s.mean]], color=line.get_color(), capsize=4)
        ax.scatter([position(x) for x, _ in pts], [100 * acc for _, acc in pts], color=line.get_color(), alpha=0.4, s=14)
        for x, y in zip(xs, means, strict=True):
            ax.annotate(f"{y:.1f}", (position(x), y), textcoords="offset points", xytext=(0, 7), ha="center", fontsize="small")
    if numeric and values and values[0] > 0 and values[-1] / values[0] >= 10:
        ax.set_xscale("log")
    ax.set_xticks([position(x) for x in values], [f"{x:g}" if numeric else str(x) for x in values])
    ax.minorticks_off()
    ax.margins(x=0.1, y=0.15)
    ax.set(title=f"test accuracy against {key}", xlabel=key, ylabel="test accuracy (%)")
    ax.grid(alpha=0.3)
    if any(points):
        ax.legend(fontsize="small")
    _save(fig, path)


# Up to this many classes, each cell of a confusion matrix holds its count and every class is named. Beyond, the counts and
# names cover the picture (200 classes: 40,000 texts, a black square after 50 s): it shows the rates by colour alone.
CONFUSION_COUNTS_UP_TO = 20


def plot_confusion(matrices: list[tuple[str, list[list[int]]]], classes: list[str], path: Path) -> None:
    """Confusion matrices side by side (rows: true class, coloured by the share of the row): each cell's count written in
    it, up to CONFUSION_COUNTS_UP_TO classes; beyond, every k-th class named and no counts (evaluation.json holds them)."""
    n = len(classes)
    step = 1 if n <= CONFUSION_COUNTS_UP_TO else -(-n // CONFUSION_COUNTS_UP_TO)  # ceil: at most 20 names an axis
    fig, axes = plt.subplots(1, len(matrices), figsize=(6.2 * len(matrices), 5.6), constrained_layout=True, squeeze=False)
    for ax, (label, matrix) in zip(axes[0], matrices, strict=True):
        m = torch.tensor(matrix, dtype=torch.float64)
        rates = m / m.sum(1, keepdim=True).clamp(min=1)
        ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
        if step == 1:
            for i in range(n):
                for j in range(n):
                    ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=7, color="white" if rates[i, j] > 0.5 else "black")
        named = range(0, n, step)
        ax.set_xticks(named, [classes[i] for i in named], rotation=45, ha="right")
        ax.set_yticks(named, [classes[i] for i in named])
        title = f"{label}: confusion matrix" + ("" if step == 1 else f"\n{n} classes, one in {step} named; counts in evaluation.json")
        ax.set(title=title, xlabel="predicted class", ylabel="true class")
    _save(fig, path)


def plot_classified(images: torch.Tensor, tops: list[dict], names: list[str], path: Path) -> None:
    """Your own images as the model saw them (32x32), each titled with its file name and the model's top class."""
    cols = min(8, len(images))
    rows = -(-len(images) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.8 * cols, 2.2 * rows + 0.5), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= len(images):
            continue
        ax.imshow(images[k].permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(names[k] if len(names[k]) <= 18 else names[k][:15] + "...", fontsize=8, pad=3)
        said = f"{'unsure: ' if tops[k].get('unsure') else ''}{tops[k]['class']} {tops[k]['prob']:.0%}"
        ax.text(0.5, -0.04, said, transform=ax.transAxes, ha="center", va="top", fontsize=9)
    fig.suptitle("your images at 32x32, as the model saw them; its top class below each", fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def plot_predictions(
    images: torch.Tensor, labels: torch.Tensor, predictions: list[tuple[str, torch.Tensor]], classes: list[str], path: Path
) -> None:
    """A grid of test images (uint8, N x 3 x 32 x 32), each titled with its true class and every model's prediction.

    A prediction is green when right and red when wrong, so "before / after" reads at a glance.
    """
    cols = min(8, len(images))
    rows = -(-len(images) // cols)
    lines = len(predictions)  # text lines under each image
    fig, axes = plt.subplots(rows, cols, figsize=(1.8 * cols, (1.9 + 0.22 * lines) * rows + 0.6), squeeze=False)
    height = fig.get_figheight()
    fig.subplots_adjust(
        left=0.01, right=0.99, bottom=(0.1 + 0.22 * lines) / height, top=1 - 0.7 / height, wspace=0.1, hspace=0.2 + 0.13 * lines
    )
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= len(images):
            continue
        ax.imshow(images[k].permute(1, 2, 0).numpy(), interpolation="nearest")
        truth = int(labels[k])
        ax.set_title(classes[truth], fontsize=9, fontweight="bold", pad=3)
        for n, (_, preds) in enumerate(predictions):
            guess = int(preds[k])
            ax.text(0.5, -0.04 - 0.14 * n, classes[guess], transform=ax.transAxes, ha="center", va="top", fontsize=8.5,
                    color="tab:green" if guess == truth else "tab:red")  # fmt: skip
    legend = "   ".join(f"line {n + 1}: {label}" for n, (label, _) in enumerate(predictions))
    fig.suptitle(f"true class above each image; predictions below (green right, red wrong)\n{legend}", fontsize=9)
    _save(fig, path)


def _save(fig, path: Path) -> None:
    """Written like the checkpoints: no half-written picture is left behind, and a full disk is one line."""
    try:
        atomic_write_with(path, lambda f: fig.savefig(f, dpi=DPI, format="png"))
    finally:
        plt.close(fig)


def plot_reliability(curves: list[tuple[str, dict]], path: Path) -> None:
    """Reliability diagram: each bin's accuracy against its mean confidence, one line per checkpoint (its ECE in the
    legend), the diagonal where a calibrated model's bins sit; below, how many images each bin holds."""
    fig, (ax, ax_count) = plt.subplots(2, 1, figsize=(6, 6.5), height_ratios=[3, 1], sharex=True, constrained_layout=True)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="calibrated")
    for label, cal in curves:
        filled = [b for b in cal["bins"] if b["count"]]
        (line,) = ax.plot(
            [b["confidence"] for b in filled], [b["accuracy"] for b in filled], marker="o", label=f"{label}: ECE {cal['ece']:.3f}"
        )
        ax_count.bar([(b["low"] + b["high"]) / 2 for b in cal["bins"]], [b["count"] for b in cal["bins"]],
                     width=1 / len(cal["bins"]), alpha=0.4, color=line.get_color())  # fmt: skip
    ax.set(title="reliability: accuracy against confidence (15 bins)", ylabel="accuracy in the bin", xlim=(0, 1), ylim=(0, 1))
    ax_count.set(xlabel="confidence (the top class's probability)", ylabel="images")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper left")
    _save(fig, path)
