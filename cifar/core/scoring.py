"""How a model is scored on a set of images, the one way: training's validation and test, evaluate.py and images=.

Costs: one forward pass over the split (six with test_tta=flip_translate); the counts are summed over torchrun's
processes, each of which scores its own shard. The config's metrics (torchmetrics' interface) are updated with the same
logits, and a torchmetrics metric gathers the other processes' states itself when it computes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cifar.core.batches import DeviceBatches
from cifar.core.distributed import Ranks
from cifar.core.hardware import Precision
from cifar.core.tta import tta_mode, views_logits
from cifar.errors import UserError
from cifar.predictions import Predictions


class Predicted(NamedTuple):
    """What one pass over a split gives, in batch order, on the CPU."""

    preds: torch.Tensor  # each image's predicted class
    labels: torch.Tensor  # and its true class
    loss: float  # the mean cross-entropy
    probabilities: torch.Tensor | None  # (images, classes) softmax of the logits, where asked for; else None


@torch.no_grad()
def predict(
    model: nn.Module,
    batches: DeviceBatches,
    precision: Precision,
    tta=None,
    metrics: Mapping[str, Any] | None = None,
    probabilities: bool = False,
) -> Predicted:
    """Predicted classes, true labels and mean cross-entropy over every image of `batches` (with `probabilities`, each
    image's class probabilities too: the same logits' softmax, no extra pass); each of `metrics` updated with every
    batch's logits (as float32) and labels, on the device.

    `tta` (test-time augmentation) averages the logits of several views of each image: "flip" (or
    True) the image and its mirror; "flip_translate" also both of them shifted one pixel up-left and
    down-right (reflected at the edges), weighted half and half: 6 forward passes per image.
    """
    mode = tta_mode(tta)
    was_training = model.training
    model.eval()
    preds, labels, probs, loss_sum = [], [], [], 0.0
    for x, y in batches.epoch():
        with precision.autocast():
            logits = views_logits(model, x, mode)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        for metric in (metrics or {}).values():
            metric.update(logits.float(), y)
        preds.append(logits.argmax(1))
        labels.append(y)
        if probabilities:
            probs.append(logits.float().softmax(1))  # on the device: one copy to the CPU at the end, not a sync a batch
    model.train(was_training)
    labels_t = torch.cat(labels)
    return Predicted(torch.cat(preds).cpu(), labels_t.cpu(), loss_sum / len(labels_t), torch.cat(probs).cpu() if probabilities else None)


@torch.no_grad()
def class_probabilities(model: nn.Module, batches: DeviceBatches, precision: Precision, tta=None) -> torch.Tensor:
    """Each image's class probabilities (the softmax of `views_logits`), on the CPU, in batch order: one forward pass
    over `batches` (two with tta=flip, six with flip_translate). For pictures and tables of a few images, not for scoring a split.
    An image whose logits are not all finite has none: its row is NaN (a softmax would give one infinite logit 100%)."""
    was_training = model.training
    model.eval()
    with precision.autocast():
        logits = torch.cat([views_logits(model, x, tta).float().cpu() for x, _ in batches.epoch()])
    model.train(was_training)
    return logits.softmax(1).where(logits.isfinite().all(1, keepdim=True), torch.nan)


def confusion_matrix(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts of (true class, predicted class): rows are the true class."""
    return torch.bincount(labels * num_classes + preds, minlength=num_classes**2).view(num_classes, num_classes)


@dataclass
class Scores:
    """A model scored on a split: what training's validation and test, evaluate.py and its TTA figures all come from."""

    confusion: torch.Tensor  # (true, predicted) counts over the whole split, summed over the processes holding shards
    loss: float  # mean cross-entropy over the whole split
    preds: torch.Tensor  # this process's predicted classes, in batch order (the pictures' rows)
    labels: torch.Tensor  # and their true classes
    metrics: dict[str, float] = field(default_factory=dict)  # each metric scored with, computed over the split
    predictions: Predictions | None = None  # every image's over the whole split, in its order, where asked for

    @property
    def acc(self) -> float:
        return accuracy(self.confusion)


def score(
    model: nn.Module,
    batches: DeviceBatches,
    precision: Precision,
    num_classes: int,
    tta=None,
    ranks: Ranks | None = None,
    metrics: Mapping[str, Any] | None = None,
    probabilities: bool = False,
) -> Scores:
    """The one way a model is scored on batches (at `precision`, with test-time augmentation `tta`), under torchrun too:
    a confusion matrix over the dataset's `num_classes`, and each of `metrics` (update, compute, reset: torchmetrics'
    interface) computed over the split, then reset for the next. With `probabilities`, every image's predicted class and
    probabilities over the whole split (gathered from the processes' shards: one all-reduce of images x (classes + 2))."""
    ranks = ranks or Ranks()
    predicted = predict(model, batches, precision, tta, metrics, probabilities)
    k = num_classes
    totals = torch.cat(
        [confusion_matrix(predicted.preds, predicted.labels, k).flatten().double(),
         torch.tensor([predicted.loss * len(predicted.labels)], dtype=torch.float64)]
    )  # fmt: skip
    totals = ranks.sum(totals.to(batches.images.device)).cpu()
    confusion = totals[:-1].round().long().view(k, k)
    whole = whole_split(predicted, int(confusion.sum()), ranks, batches.images.device) if probabilities else None
    return Scores(
        confusion, totals[-1].item() / max(int(confusion.sum()), 1), predicted.preds, predicted.labels, computed(metrics or {}), whole
    )


def whole_split(shard: Predicted, images: int, ranks: Ranks, device: torch.device) -> Predictions:
    """Each process's rows (its shard: every `world`-th image from its rank on, cifar/core/distributed.py) put back in
    the split's order, on every process. Classes travel as float32, exact below 2^24."""
    rows = torch.cat([shard.probabilities, shard.labels[:, None].float(), shard.preds[:, None].float()], 1)
    whole = torch.zeros(images, rows.shape[1], device=device)
    whole[ranks.rank :: ranks.world] = rows.to(device)
    whole = ranks.sum(whole).cpu().numpy()
    return Predictions(labels=whole[:, -2].astype(np.int64), predicted=whole[:, -1].astype(np.int64), probabilities=whole[:, :-2])


def computed(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Each metric's value over what it was updated with, as a number, and the metric reset. One whose compute() gives
    more than one number (a confusion matrix) is refused before training (cifar/run/metrics.py's build_metrics)."""
    values = {}
    for name, metric in metrics.items():
        values[name] = float(metric.compute())
        metric.reset()
    return values


def refuse_unscorable(source: str, weights: Mapping[str, Any]) -> None:
    """Refuse, naming `source`, a model that cannot be scored: weights (a state dict) holding NaN or Infinity give every
    image outputs that are not finite, whose argmax is one class: 10% on CIFAR-10 and an ECE of NaN, in silence. Checked
    from the state dict, before any data is read. (A stored std of 0 is refused with the stored config's other values.)"""
    broken = {name: "NaN" if t.isnan().any() else "Infinity" for name, t in weights.items()
              if torch.is_tensor(t) and t.is_floating_point() and not t.isfinite().all()}  # fmt: skip
    if broken:
        kinds = " and ".join(sorted(set(broken.values()), reverse=True))  # NaN before Infinity
        names = ", ".join(list(broken)[:3]) + (f" and {len(broken) - 3} more" if len(broken) > 3 else "")
        raise UserError(
            f"{source}: its weights hold {kinds} ({names}; {len(broken)} of {len(weights)} tensors), which gives every image "
            "outputs that are not finite: it cannot be scored; evaluate another checkpoint"
        )


def refuse_not_finite(source: str, scores: Scores) -> Scores:
    """`scores` when every image's outputs were finite; else a refusal naming `source`. The mean loss is finite exactly
    when no image's logits held NaN or +Infinity (or -Infinity for its own class), which make accuracy and calibration
    meaningless: weights too large for the precision, or inputs normalised to infinity."""
    if not math.isfinite(scores.loss):
        raise UserError(
            f"{source}: its outputs on these images are not finite (a mean loss of {scores.loss}): its weights overflow or are "
            "broken, so it cannot be scored; evaluate another checkpoint (or with amp=false, if it ran in half precision)"
        )
    return scores


def accuracy(confusion: torch.Tensor) -> float:
    return (confusion.diag().sum() / confusion.sum()).item()


def accuracy_report(confusion: torch.Tensor, classes: list[str]) -> dict[str, Any]:
    """Total accuracy and accuracy per class, from the confusion matrix (which may sum several processes' shares)."""
    per_class = confusion.diag() / confusion.sum(1).clamp(min=1)
    return {
        "n": int(confusion.sum()),
        "acc": accuracy(confusion),
        "per_class_acc": {name: per_class[i].item() for i, name in enumerate(classes)},
        "confusion": confusion.tolist(),
        "classes": list(classes),
    }


CALIBRATION_BINS = 15  # the usual count for CIFAR-10 (Guo et al. 2017): bins of 1/15 of confidence each


def calibration(probs: torch.Tensor, labels: torch.Tensor, bins: int = CALIBRATION_BINS) -> dict[str, Any]:
    """How sure the model is against how often it is right: the images binned by their top class's probability, each
    bin's accuracy and mean confidence, and the expected calibration error (ECE: the bins' |accuracy - confidence|
    weighted by their share of the images; 0 is perfectly calibrated). `probs` (N, classes) are softmax outputs."""
    confidence, predicted = probs.max(1)
    right = (predicted == labels).double()
    edges = torch.linspace(0, 1, bins + 1)
    which = torch.bucketize(confidence, edges[1:-1], right=True)  # bin i holds (edges[i], edges[i+1]]; 0 falls in bin 0
    table, ece = [], 0.0
    for i in range(bins):
        member = which == i
        count = int(member.sum())
        acc = right[member].mean().item() if count else None
        conf = confidence[member].double().mean().item() if count else None
        if count:
            ece += count / len(labels) * abs(acc - conf)
        table.append({"low": edges[i].item(), "high": edges[i + 1].item(), "count": count, "accuracy": acc, "confidence": conf})
    return {"ece": ece, "bins": table}
