"""Accuracy of a model on a set of images, and `evaluate(cfg)` behind `evaluate.py`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from cifar.checkpoint import atomic_write_text, load_checkpoint
from cifar.console import print_evaluation
from cifar.data import CLASSES, DeviceBatches, load_cifar10
from cifar.errors import UserError
from cifar.hardware import Precision, forward_gflop, pick_device, pick_precision


@torch.no_grad()
def predict(model: nn.Module, batches: DeviceBatches, precision: Precision, tta: bool = False) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Predicted classes, true labels and mean cross-entropy over every image of `batches`.

    `tta=True` averages the logits of each image and its mirror image (horizontal-flip test-time augmentation).
    """
    was_training = model.training
    model.eval()
    preds, labels, loss_sum = [], [], 0.0
    for x, y in batches.epoch():
        with precision.autocast():
            logits = model(x)
            if tta:
                logits = (logits + model(x.flip(3))) / 2
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").item()
        preds.append(logits.argmax(1))
        labels.append(y)
    model.train(was_training)
    labels_t = torch.cat(labels)
    return torch.cat(preds).cpu(), labels_t.cpu(), loss_sum / len(labels_t)


def accuracy_report(preds: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> dict[str, Any]:
    """Total accuracy, accuracy per class and the confusion matrix (rows: true class)."""
    k = len(classes)
    confusion = torch.bincount(labels * k + preds, minlength=k * k).view(k, k)
    per_class = confusion.diag() / confusion.sum(1).clamp(min=1)
    return {
        "n": len(labels),
        "acc": (preds == labels).float().mean().item(),
        "per_class_acc": {name: per_class[i].item() for i, name in enumerate(classes)},
        "confusion": confusion.tolist(),
        "classes": list(classes),
    }


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Test-set accuracy of a checkpoint; the model and data settings come from the config stored in it."""
    ckpt = load_checkpoint(cfg.ckpt)
    stored = OmegaConf.create(ckpt["config"])
    data_cfg = OmegaConf.merge(stored.data, {k: v for k, v in cfg.data.items() if v is not None})
    device = pick_device(cfg.device)
    model = instantiate(stored.model)
    try:
        model.load_state_dict(ckpt["model_state_dict"])
    except RuntimeError as e:
        raise UserError(f"{cfg.ckpt}: its weights do not fit the model stored with it ({str(e).splitlines()[0]})") from None
    model.to(device, memory_format=torch.channels_last)
    # By default, the precision the run was tested with at the end of training, so the figures agree.
    amp = cfg.amp if cfg.amp is not None else ckpt["precision"] != "fp32"
    precision = pick_precision(device, amp, stored.amp_dtype, forward_gflop(model, cfg.batch_size, device))
    data = load_cifar10(data_cfg.root, data_cfg.format, data_cfg.download, data_cfg.cache_dir)
    test = DeviceBatches(data.test, cfg.batch_size, device, mean=data_cfg.mean, std=data_cfg.std, shuffle=False, channels_last=True)
    preds, labels, loss = predict(model, test, precision)
    report = accuracy_report(preds, labels, ckpt.get("classes", list(CLASSES)))
    report.update(loss=loss, ckpt=str(Path(cfg.ckpt).resolve()), epoch=ckpt["epoch"], precision=precision.name)
    if cfg.tta:  # reported beside the plain figure, never instead of it
        tta_preds, _, report["tta_loss"] = predict(model, test, precision, tta=True)
        report["tta_acc"] = (tta_preds == labels).float().mean().item()
    print_evaluation(report)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps(report, indent=2) + "\n", out / "evaluation.json")
    return report
