"""The config's `metrics` (name -> a class with torchmetrics' Metric interface: update(preds, target), compute(), reset()),
checked before anything is written and built for the run: what validation computes besides its loss and accuracy, each
recorded as val/<name> (cifar/records.py). Importing torchmetrics costs ~1-2 s (scipy.signal, through its audio
metrics), paid only by a run that configures a metric: the import happens where cifar/run/targets.py admits one.

Under torchrun every process updates its metrics with its own shard and computes them at the same point; a torchmetrics
Metric gathers the other processes' states as it computes (its sync_on_compute), so every rank records the split's
figure. A cifar.* metric that is not a torchmetrics Metric computes its own shard's.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from cifar.errors import UserError, first_line
from cifar.run.targets import admit, build_each, shown

RESERVED_METRICS = ("loss", "acc")  # val/loss and val/acc: the run's own figures
METRIC_NAME = r"[A-Za-z0-9_-]+"  # a metric's name is part of a figure's name (val/<name>) and of a TensorBoard tag


def check_metrics(metrics: DictConfig | None) -> None:
    """Each entry of `metrics` names a metric class the rules admit (importing torchmetrics, ~1-2 s, only here, where one
    is configured), with arguments it takes, under a name that is its own figure's."""
    if metrics is not None and not isinstance(metrics, DictConfig):
        raise UserError(f"metrics={shown(metrics)}: a mapping of name -> {{_target_: ..., its arguments}}, or {{}} for none")
    for name, node in (metrics or {}).items():
        if name in RESERVED_METRICS:
            raise UserError(f"metrics.{name}: val/{name} is the run's own figure already: give the metric another name")
        if not re.fullmatch(METRIC_NAME, str(name)):
            raise UserError(f"metrics.{name}: a metric's name is part of its figure's (val/<name>): use letters, digits, _ or -")
        if node is not None:
            admit(node, "metric", f"metrics.{name}")


def build_metrics(metrics: DictConfig | None, num_classes: int, device: torch.device) -> dict[str, Any]:
    """The config's metrics (cifar/run/targets.py's "metric"; `num_classes` given to a class that takes it), on `device`,
    each updated once with a stand-in batch (two images' logits, all zero, of class 0), computed and reset: what a class
    refuses only then (top_k above the classes, a binary metric given ten classes' logits) and a compute() that is not one
    number (a confusion matrix: only one number goes in a row of metrics.jsonl) are one line before the first epoch."""
    built = {}
    for name, node in (metrics or {}).items():  # one at a time, so that a class's refusal names its entry
        with metric_trial(f"metrics.{name}", device):
            built |= build_each({name: node}, "metric", "metrics", num_classes=num_classes)
    for name, metric in built.items():
        if isinstance(metric, nn.Module):  # a torchmetrics Metric: its state on the device the logits are on
            metric.to(device)
        with metric_trial(f"metrics.{name}", device):
            metric.update(torch.zeros(2, num_classes, device=device), torch.zeros(2, dtype=torch.long, device=device))
            value = metric.compute()
            metric.reset()
        if not is_one_number(value):
            held = f"a tensor of shape {tuple(value.shape)}" if torch.is_tensor(value) else f"a {type(value).__name__}"
            raise UserError(
                f"metrics.{name}: {type(metric).__name__}.compute() gives {held}, not one number, and an epoch's row records "
                f"numbers: choose a metric of one number (an average= other than none), or drop metrics.{name}"
            )
    return built


def is_one_number(value: Any) -> bool:
    """A tensor of one element, or a Python number (not a bool): what a row of metrics.jsonl records."""
    if torch.is_tensor(value):
        return value.numel() == 1
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@contextlib.contextmanager
def metric_trial(where: str, device: torch.device):
    """What a metric class raises when built, updated or computed (torchmetrics' ValueError for top_k=0, a RuntimeError
    for logits of another shape) as one line naming the metric."""
    try:
        yield
    except UserError:
        raise
    except Exception as e:
        raise UserError(
            f"{where}: {type(e).__name__}: {first_line(e)} (on {device}; a metric is given each validation batch's logits, "
            "(images, classes), and labels): change its settings, or choose a metric of multiclass logits"
        ) from None
