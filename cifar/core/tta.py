"""Test-time augmentation: a model's logits averaged over several views of each image."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def tta_mode(value) -> str | None:
    """A config's tta value as a mode: false/none/null -> None, true -> "flip", or the mode's own name."""
    if value in (None, False, "none"):
        return None
    return "flip" if value is True else value


def views_logits(model: nn.Module, x: torch.Tensor, tta) -> torch.Tensor:
    """Logits in fp32 (averaged in bf16 they would tie), over the views of test-time augmentation `tta`."""
    mode = tta_mode(tta)

    def mirrored(images):
        return (model(images).float() + model(images.flip(3)).float()) / 2

    if mode is None:
        return model(x).float()
    if mode == "flip":
        return mirrored(x)
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    shifted = (mirrored(padded[..., :-2, :-2]) + mirrored(padded[..., 2:, 2:])) / 2
    return (mirrored(x) + shifted) / 2
