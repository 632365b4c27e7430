"""The images on the training device: the validation split, normalisation, each epoch's seeded draws and the batches
cut from one uint8 tensor by index (no per-image PIL work, no DataLoader workers in the training loop). The images
themselves are read by cifar/core/data.py."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import random_split

from cifar.core.data import Split
from cifar.errors import UserError

LAST_DRAW = 2  # the draw_rank (cifar/core/augment.py) of a transform that gives none: its draws follow Flip's and Crop's


def seeded_draw(n: int, count: int, seed: int) -> torch.Tensor:
    """`count` of the indices 0..n-1 (all of them when `count` >= n) in a random order fixed by `seed` alone: the same draw
    on every machine and rank, and in every run that asks with the same seed."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:count]


def sample_indices(n: int, count: int, seed: int | None) -> torch.Tensor:
    """Which of `n` test images a predictions picture or table shows: `count` of them drawn with `seed`, or the first
    `count` when `seed` is None (with torchvision's files: cat, ship, ship, plane, ...; a folder copy is sorted by class)."""
    return torch.arange(min(count, n)) if seed is None else seeded_draw(n, count, seed)


def train_val_split(train: Split, val_split: float, split_seed: int, subset: int | None = None) -> tuple[Split, Split | None]:
    """The study's `random_split` of the training set, seeded apart from the training seed.

    A fixed `split_seed` means every run of a sweep, whatever its `seed`, validates on the same
    images. `val_split=0` keeps all 50,000 images for training and returns no validation set.
    `subset=N` first draws N images at random (same seed), for quick tries and smoke tests.
    """
    if subset is not None:
        if subset > len(train):
            raise UserError(f"data.subset={subset} is more than the {len(train)} training images: take fewer, or null for all")
        train = train.subset(seeded_draw(len(train), subset, split_seed))
    if val_split == 0:
        return train, None
    n_val = round(len(train) * val_split)
    if not 1 <= n_val < len(train):
        raise UserError(
            f"data.val_split={val_split:g} of {len(train)} training images leaves {len(train) - n_val} to train on and {n_val} to "
            "validate on: choose a split that leaves some of each"
        )
    train_idx, val_idx = random_split(range(len(train)), [len(train) - n_val, n_val], generator=torch.Generator().manual_seed(split_seed))
    return train.subset(torch.tensor(train_idx.indices)), train.subset(torch.tensor(val_idx.indices))


def normalisation(mean, std, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift): Normalize(mean, std) on x/255 folded into one multiply-add per batch. A std of 0 (or one so small,
    or a mean or std not finite) is refused: it makes every input NaN or infinite, every image one class, in silence."""
    std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    scale = 1.0 / (255.0 * std_t)
    shift = -torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1) / std_t
    if not (scale.isfinite().all() and shift.isfinite().all()):
        raise UserError(
            f"data.mean={list(mean)} and data.std={list(std)} normalise no image to finite numbers (a std of 0 divides by "
            "zero): data.std takes 3 positive values, one per RGB channel"
        )
    return scale, shift


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of one epoch's draws: the same for (seed, epoch) on every machine, rank and resume."""
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


@dataclass
class EpochDraw:
    """What a transform's `draw` is given: the epoch and its generator."""

    number: int  # the epoch (from 1; 0 outside training)
    order: torch.Tensor  # the index of the image at each position of this epoch (CPU): a draw's rows are by position
    generator: torch.Generator  # this epoch's, shared by every draw in draw order
    seed: int  # the run's: epoch_generator(seed, 0) serves draws made once a run (alternating flips' first coins)


def drawn_up_front(transforms: Sequence[Any], epoch: EpochDraw, device: torch.device) -> list[torch.Tensor | None]:
    """Each transform's draws for the epoch, on `device` (None for one without `draw`), made in draw order."""
    draws: list[torch.Tensor | None] = [None] * len(transforms)
    for i in sorted(range(len(transforms)), key=lambda i: getattr(transforms[i], "draw_rank", LAST_DRAW)):
        if hasattr(transforms[i], "draw"):
            draws[i] = transforms[i].draw(epoch).to(device)
    return draws


class DeviceBatches:
    """Batches cut from a uint8 image tensor held on the training device.

    Normalisation is one multiply-add on the way to float; the `augment` transforms (data.augment: cifar/core/augment.py
    states their protocol) then run on the whole float batch at once, on the device, in order. The order and
    augmentation of each epoch come from a generator seeded with (seed, epoch), so epoch k is the same whether a run got
    there directly or resumed.

    With `world` > 1 processes (torchrun), every process draws the same order and augmentation
    and keeps its `rank`'s share of each batch: `batch_size` is the global batch, each image is
    seen exactly once per epoch, and step k trains on the same images however many processes
    share it. A last batch too small to give every process an image is dropped.
    """

    def __init__(
        self, split: Split, batch_size: int, device: torch.device, *, mean, std, shuffle: bool, seed: int = 0,
        augment: Sequence[Callable] = (), channels_last: bool = False, rank: int = 0, world: int = 1,
    ):  # fmt: skip
        self.images = split.images.to(device)
        self.labels = split.labels.to(device)
        self.batch_size, self.shuffle, self.seed, self.augment = batch_size, shuffle, seed, list(augment)
        self.rank, self.world = rank, world
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.scale, self.shift = normalisation(mean, std, device)

    def __len__(self) -> int:
        full, rest = divmod(len(self.labels), self.batch_size)
        return full + (rest >= self.world)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return images.to(torch.float32, memory_format=self.memory_format) * self.scale + self.shift

    def epoch(self, epoch: int = 0):
        n, device = len(self.labels), self.images.device
        g = epoch_generator(self.seed, epoch)
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        # Every draw a transform can make up front is made now, on the CPU: one transfer, no per-step sync, and the same
        # numbers on every device and rank; by position in this epoch's order.
        draws = drawn_up_front(self.augment, EpochDraw(epoch, order, g, self.seed), device)
        order = order.to(device)
        for step in range(len(self)):
            start = step * self.batch_size
            size = min(self.batch_size, n - start)  # this process's share of the global batch: positions [lo, hi) of the order
            lo, hi = start + size * self.rank // self.world, start + size * (self.rank + 1) // self.world
            idx = order[lo:hi]
            x, y = self.normalize(self.images[idx]), self.labels[idx]
            for transform, drawn in zip(self.augment, draws, strict=True):
                x, y = transform(x, y, g if drawn is None else drawn[lo:hi])
            yield x.contiguous(memory_format=self.memory_format), y  # as the loader hands it: a no-op where it already is
