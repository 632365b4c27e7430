"""data.augment's transforms (cifar/core/augment.py) give the training batches to the last bit that the loader's flags
gave before them: tests/data/augment_digits.json holds digests of every batch of epochs 1 and 2 of a 100-image split,
computed at 72abfdd (DeviceBatches(flip=, alternate_flip=, crop_pad=, crop_reflect=) and with_mixing(batch_mixer(0.8, 1.0))
after torch.manual_seed(1234)), values, strides and labels each."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from cifar.config.identity import differing_settings
from cifar.core.augment import Crop, Flip, Mix
from cifar.core.batches import DeviceBatches, EpochDraw, drawn_up_front, epoch_generator
from cifar.core.data import Split

DIGITS = json.loads((Path(__file__).parent / "data" / "augment_digits.json").read_text())
MEAN, STD = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]  # fastnet94's: a shift and scale far from trivial
CROP4 = lambda: Crop(4, MEAN, STD)  # noqa: E731
FASTNET94 = lambda: [Crop(2, MEAN, STD, reflect=True), Flip(alternate=True)]  # noqa: E731
SETTINGS = {  # name in the JSON: (data.augment's transforms, channels_last, rank, world)
    "none": (lambda: [], False, 0, 1),
    "flip_crop4": (lambda: [CROP4(), Flip()], True, 0, 1),
    "flip_crop4_contiguous": (lambda: [CROP4(), Flip()], False, 0, 1),
    "flip_crop4_rank1_of_2": (lambda: [CROP4(), Flip()], True, 1, 2),
    "fastnet94": (FASTNET94, True, 0, 1),
    "crop2_reflect": (lambda: [Crop(2, MEAN, STD, reflect=True)], True, 0, 1),
    "mix": (lambda: [Mix(10, mixup_alpha=0.8, cutmix_alpha=1.0)], True, 0, 1),
    "fastnet94_mix": (lambda: [*FASTNET94(), Mix(10, mixup_alpha=0.8, cutmix_alpha=1.0)], True, 0, 1),
}


def tiny_split() -> Split:
    g = torch.Generator().manual_seed(7)
    return Split(torch.randint(0, 256, (100, 3, 32, 32), dtype=torch.uint8, generator=g), torch.randint(0, 10, (100,), generator=g))


def digest(x: torch.Tensor, y: torch.Tensor) -> str:
    h = hashlib.blake2b(digest_size=12)
    for t in (x, y):
        h.update(f"{t.dtype}{tuple(t.shape)}{t.stride()}".encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("name", SETTINGS)
def test_the_transforms_give_the_batches_the_loader_flags_gave_to_the_bit(name):
    transforms, channels_last, rank, world = SETTINGS[name]
    batches = DeviceBatches(
        tiny_split(), 32, torch.device("cpu"), mean=MEAN, std=STD, shuffle=True, seed=3, augment=transforms(),
        channels_last=channels_last, rank=rank, world=world,
    )  # fmt: skip
    torch.manual_seed(1234)  # Mix draws from torch's global generator, as with_mixing did
    assert [digest(x, y) for epoch in (1, 2) for x, y in batches.epoch(epoch)] == DIGITS[name]


def test_a_crop_is_torchvisions_crop_of_the_image_padded_with_normalised_black():
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    shifts = torch.tensor([[0, 0], [8, 8], [4, 4], [0, 8], [8, 0], [3, 5]])
    batches = DeviceBatches(Split(images, torch.arange(6)), 6, torch.device("cpu"), mean=MEAN, std=STD, shuffle=False)
    out, _ = Crop(4, MEAN, STD)(batches.normalize(images), torch.arange(6), shifts)
    padded = batches.normalize(torch.nn.functional.pad(images, (4, 4, 4, 4)))  # zeros in uint8, then normalised
    for i, (dy, dx) in enumerate(shifts.tolist()):
        assert torch.equal(out[i], padded[i, :, dy : dy + 32, dx : dx + 32])
    assert torch.equal(out[2], batches.normalize(images)[2])  # the centre offset is the identity


def test_draws_are_made_flips_first_whatever_the_mapping_order():
    """The epoch's generator draws the order, the flips, then the crops, as runs always have: {flip, crop} draws the
    numbers {crop, flip} draws (and applies them flip first, another image: a crop is not symmetric)."""
    order = torch.randperm(100)

    def draws(*transforms):
        return drawn_up_front(transforms, EpochDraw(1, order, epoch_generator(3, 1), 3), torch.device("cpu"))

    flips, shifts = draws(Flip(), CROP4())
    assert [torch.equal(a, b) for a, b in zip(draws(CROP4(), Flip()), (shifts, flips), strict=True)] == [True, True]
    assert not torch.equal(draws(CROP4())[0], shifts), "with no flip, the crops take the flips' place in the stream"
    batches = lambda *augment: DeviceBatches(tiny_split(), 100, torch.device("cpu"), mean=MEAN, std=STD, shuffle=True, augment=augment)  # noqa: E731
    assert not torch.equal(next(batches(CROP4(), Flip()).epoch(1))[0], next(batches(Flip(), CROP4()).epoch(1))[0])


def test_the_order_of_the_transforms_is_part_of_the_experiment():
    """Crop then flip is not flip then crop: a resume or a sweep's continuation in the other order is another experiment."""
    crop, flip = {"_target_": "cifar.core.augment.Crop", "pad": 4}, {"_target_": "cifar.core.augment.Flip"}
    crop_first, flip_first = {"data": {"augment": {"crop": crop, "flip": flip}}}, {"data": {"augment": {"flip": flip, "crop": crop}}}
    assert differing_settings(crop_first, flip_first) == "data.augment.order: ['crop', 'flip'] then vs ['flip', 'crop'] now"
    assert differing_settings(crop_first, {"data": {"augment": {"crop": crop, "flip": flip}}}) == ""
    assert differing_settings(crop_first, {"data": {"augment": {"crop": crop, "flip": None}}}).startswith("data.augment.flip._target_")
