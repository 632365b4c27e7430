"""MixUp and CutMix: each training batch mixed with itself, labels and all, on the device where the batch already is.

torchvision.transforms.v2's MixUp (Zhang et al. 2018: images and labels blended, weight ~ Beta(alpha, alpha)) and
CutMix (Yun et al. 2019: a box of each image pasted from its neighbour in the batch, labels weighted by area) take a
whole batch and return soft labels (one probability per class); F.cross_entropy takes those as they are, label
smoothing included. With both on, each batch gets one of the two at random, as timm does. Their random draws come
from torch's global generator, which last.pt saves, so a resumed run mixes as an uninterrupted one. Cost: one pass
over the batch's pixels; validation and test batches are never mixed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from torchvision.transforms import v2

Step = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def batch_mixer(mixup_alpha: float, cutmix_alpha: float, num_classes: int) -> v2.Transform | None:
    """What mixes a batch with these alphas (0 = that one off); None when both are off."""
    if not (mixup_alpha or cutmix_alpha):
        return None
    # Imported here, by runs that mix only: torchvision.transforms.v2 imports torchvision's models and torch._dynamo,
    # ~2 s of every run's start (and of every refused command's one line) on a 2-core CPU.
    from torchvision.transforms import v2

    mixers = [v2.MixUp(alpha=mixup_alpha, num_classes=num_classes)] if mixup_alpha else []
    mixers += [v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes)] if cutmix_alpha else []
    return mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)


def with_mixing(train_step: Step, mixer: v2.Transform | None) -> Step:
    """`train_step` fed mixed batches (unchanged when `mixer` is None)."""
    if mixer is None:
        return train_step
    return lambda x, y: train_step(*mixer(x, y))
