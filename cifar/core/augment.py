"""Training-batch augmentations: the transforms `data.augment` lists (name -> `_target_` node), applied in the mapping's
order to each training batch on the device, never to validation or test batches (nor to the whitening sample).

The protocol. A transform is an object called `transform(images, labels, generator) -> (images, labels)`:

- `images`: the float batch as the model will see it: normalised (data.mean, data.std), in the loader's memory format
  (channels_last when configured); hand it back in that format (the loader makes it so otherwise, at one copy);
- `labels`: class indices (int64), or soft labels (one probability per class) after a mixing transform;
- `generator`: a CPU torch.Generator seeded by (seed, epoch), so that a resumed run draws as an uninterrupted one; the
  transforms without `draw` share it, in the mapping's order. Their per-batch draws are each process's own: under
  torchrun a rank draws for its share of the batch, so the images differ from a one-process run's.

Draws up front. A transform may have `draw(epoch: EpochDraw) -> Tensor` (EpochDraw: cifar/core/batches.py): every random
choice of the epoch at once, on the CPU, one row per position of the epoch's order. The loader moves them to the device once an epoch (one transfer, no
per-step sync) and passes each batch's rows in place of the generator. Every torchrun rank draws the same and takes the
rows of its share of each global batch, so step k trains on the same images however many processes share it.

The epoch's draws come from its one generator in a fixed order, whatever the mapping's: the order of the images, then
each transform's `draw` by its `draw_rank` (Flip 0, Crop 1, the others after them in the mapping's order: batches.py's
drawn_up_front). That is the order runs have always drawn in (the order, flips, crops), so a recipe keeps its figures;
the mapping's order says only how the transforms apply (crop then flip, as runs always have: with the same numbers, flip then crop is another image).

Costs, per CIFAR-10 epoch on a 2-core CPU: RESULTS.md's "DeviceBatches, s an epoch"; crop and flip are one gather and
one select over the float batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from omegaconf import ListConfig

from cifar.core.batches import EpochDraw, epoch_generator, normalisation
from cifar.errors import UserError


class Flip:
    """A horizontal flip of each image with probability 1/2. With `alternate`, each image is mirrored on every other
    epoch (which half starts mirrored is drawn once a run): none goes unmirrored, or mirrored, for epochs on end, as a
    fresh coin each epoch allows (airbench94)."""

    draw_rank = 0

    def __init__(self, alternate: bool = False):
        self.alternate = alternate

    def draw(self, epoch: EpochDraw) -> torch.Tensor:
        n = len(epoch.order)
        coins = torch.rand(n, generator=epoch.generator) < 0.5  # drawn when alternating too: the crops' draws stay as they were
        if not self.alternate:
            return coins
        first = torch.rand(n, generator=epoch_generator(epoch.seed, 0)) < 0.5  # by image, once a run
        return (first ^ bool(epoch.number % 2))[epoch.order]

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, flips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.where(flips.view(-1, 1, 1, 1), images.flip(3), images), labels


class Crop:
    """A random 32x32 crop of each image padded by `pad` pixels: torchvision's RandomCrop(32, padding=pad), per batch
    instead of per image. The padding is black (the normalised value of a 0 pixel, as padding the uint8 image with
    zeros gives), or with `reflect` the image mirrored at its edges. `mean` and `std` (data.mean, data.std) come from the run."""

    draw_rank = 1

    def __init__(self, pad: int, mean: list[float], std: list[float], reflect: bool = False):
        if not 0 < pad < 32:
            raise UserError(f"data.augment: Crop's pad={pad}: use a padding of 1 to 31 pixels (4 is the usual), or drop the entry")
        self.pad, self.reflect, self.mean, self.std = pad, reflect, mean, std
        self.black: dict[torch.device, torch.Tensor] = {}  # the padding's value, made once a device

    def draw(self, epoch: EpochDraw) -> torch.Tensor:
        return torch.randint(0, 2 * self.pad + 1, (len(epoch.order), 2), generator=epoch.generator)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, shifts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.reflect:
            return random_crop(images, shifts, self.pad, None), labels
        if images.device not in self.black:
            self.black[images.device] = normalised_black(self.mean, self.std, images.device)
        return random_crop(images, shifts, self.pad, self.black[images.device]), labels


def normalised_black(mean: list[float], std: list[float], device: torch.device) -> torch.Tensor:
    """A 0 pixel as DeviceBatches.normalize makes it, (1, 3, 1, 1): the same bits as padding the uint8 image with zeros."""
    scale, shift = normalisation(mean, std, device)
    return torch.zeros((), device=device) * scale + shift


def random_crop(images: torch.Tensor, shifts: torch.Tensor, pad: int, black: torch.Tensor | None) -> torch.Tensor:
    """Crop each image of the batch from its padded copy at offset `shifts[i] = (dy, dx)`, each in [0, 2*pad]: one gather
    for the whole batch. Padded with `black` (per channel), or reflected at the edges when it is None (the reflection is
    in the indices)."""
    b, c, h, w = images.shape
    rows = (shifts[:, 0, None] + torch.arange(h, device=images.device) - pad)[:, :, None]  # (B, H, 1), in the unpadded image
    cols = (shifts[:, 1, None] + torch.arange(w, device=images.device) - pad)[:, None, :]  # (B, 1, W)
    batch = torch.arange(b, device=images.device)[:, None, None]
    if black is None:
        return images.permute(0, 2, 3, 1)[batch, _reflect(rows, h), _reflect(cols, w)].permute(0, 3, 1, 2)
    padded = black.expand(b, c, h + 2 * pad, w + 2 * pad).clone(memory_format=torch.contiguous_format)
    padded[:, :, pad : pad + h, pad : pad + w] = images
    return padded.permute(0, 2, 3, 1)[batch, rows + pad, cols + pad].permute(0, 3, 1, 2)


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """-1 -> 1, size -> size - 2: numpy's and PyTorch's 'reflect' padding, for offsets under the image size."""
    index = index.abs()
    return torch.where(index >= size, 2 * (size - 1) - index, index)


class Resize:
    """Progressive resizing: each training batch of epoch k made `sizes[k-1]` pixels a side; the last size listed holds
    for the epochs after it, and a size equal to the images' own leaves the batch as it is. By default the whole image is
    scaled down (bilinear with antialiasing, as PIL scales, and fast ImageNet recipes train their early epochs); with
    `crop`, a random window of that size is cut from it instead, so that objects keep the scale the test sees them at.
    A convolution's work scales with the pixels: on a 2-core CPU a FastNet step at 24x24 takes 0.49 of one at 32x32, at
    16x16 0.24 (RESULTS.md, the CPU speedrun). The network must take any size (FastNet's global max-pool does);
    validation and test images keep theirs, so the last epochs should train at full size, where BatchNorm's statistics
    are then measured.

    The epoch's size is kept on the CPU by `draw` (called once an epoch, before its batches), so no step reads a value
    back from a GPU; with `crop`, `draw` hands every position of the epoch its window's place, drawn after the flips and
    crops, so that a resumed run crops as an uninterrupted one and every torchrun rank alike. Cost: one interpolation or
    gather over the batch's pixels (~1% of a step)."""

    def __init__(self, sizes: list[int], crop: bool = False):
        sizes = list(sizes) if isinstance(sizes, (list, tuple, ListConfig)) else [sizes]
        if not sizes or not all(type(s) is int and 8 <= s <= 1024 for s in sizes):
            raise UserError(
                f"data.augment: Resize's sizes={sizes}: give one image size a side per epoch, each a whole number of 8 to "
                "1024 pixels (e.g. [20, 24, 28, 32]; the last holds for the epochs after it)"
            )
        self.sizes, self.crop = sizes, crop
        self.epoch_size = sizes[0]  # the size of the epoch being drawn (set by `draw`)

    def size(self, epoch: int) -> int:
        return self.sizes[min(max(epoch, 1), len(self.sizes)) - 1]

    def draw(self, epoch: EpochDraw) -> torch.Tensor:
        """The epoch's size, kept here; per position, with `crop`, where its window starts, as fractions of the room the
        image leaves (no columns without)."""
        self.epoch_size = self.size(epoch.number)
        n = len(epoch.order)
        return torch.rand(n, 2, generator=epoch.generator) if self.crop else torch.empty(n, 0)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, places: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        size, (height, width) = self.epoch_size, images.shape[2:]
        if (size, size) == (height, width):
            return images, labels
        if not self.crop:
            return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False), labels
        if size > min(height, width):
            raise UserError(f"data.augment: Resize's crop of {size} pixels is larger than the {height}x{width} images: crop smaller sizes")
        room = torch.tensor([height - size + 1, width - size + 1], device=places.device)
        top_left = (places * room).long().clamp(max=room - 1)  # (B, 2)
        rows = (top_left[:, 0, None] + torch.arange(size, device=images.device))[:, :, None]
        cols = (top_left[:, 1, None] + torch.arange(size, device=images.device))[:, None, :]
        batch = torch.arange(len(images), device=images.device)[:, None, None]
        return images.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2), labels


class Mix:
    """MixUp (Zhang et al. 2018: images and labels blended, weight ~ Beta(alpha, alpha)) and CutMix (Yun et al. 2019: a
    box of each image pasted from its neighbour in the batch, labels weighted by area), torchvision.transforms.v2's, on
    the whole batch; 0 turns one off. With both on, each batch gets one of the two at random, as timm does. The labels
    become soft (one probability per class: `num_classes`, from the run), which F.cross_entropy takes as they are.

    Their random draws come from torch's global generator, as runs have always mixed: last.pt saves it, so a resumed run
    mixes as an uninterrupted one; the epoch's generator goes unused. Cost: one pass over the batch's pixels."""

    def __init__(self, num_classes: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0):
        for name, alpha in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
            if not (math.isfinite(alpha) and alpha >= 0):
                raise UserError(f"data.augment: Mix's {name}={alpha}: use 0 (off) or a positive Beta parameter (timm: 0.8 and 1.0)")
        if not (mixup_alpha or cutmix_alpha):
            raise UserError("data.augment: Mix with mixup_alpha=0 and cutmix_alpha=0 mixes nothing: give one, or set the entry to null")
        # Imported here, by runs that mix only: torchvision.transforms.v2 imports torchvision's models and torch._dynamo,
        # ~2 s of every run's start (and of every refused command's one line) on a 2-core CPU.
        from torchvision.transforms import v2

        mixers = [v2.MixUp(alpha=mixup_alpha, num_classes=num_classes)] if mixup_alpha else []
        mixers += [v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes)] if cutmix_alpha else []
        self.mixer = mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mixer(images, labels)
