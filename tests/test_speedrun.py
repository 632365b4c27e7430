"""experiment=cpu_speedrun (issue 44): fastnet94_muon at batch 500 with its early epochs trained on smaller images (cifar.core.augment.Resize)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cifar.core.augment import Crop, Flip, Resize
from cifar.core.batches import DeviceBatches
from cifar.core.data import Split
from cifar.errors import UserError
from cifar.run.training import train
from tests.conftest import one_clear_line, run_script, tiny_overrides

MEAN, STD = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]


def batches(*augment, channels_last=True) -> DeviceBatches:
    g = torch.Generator().manual_seed(3)
    split = Split(torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=g), torch.randint(0, 10, (40,), generator=g))
    return DeviceBatches(
        split, 16, torch.device("cpu"), mean=MEAN, std=STD, shuffle=True, seed=5, augment=augment, channels_last=channels_last
    )


def test_each_epoch_trains_at_its_size_and_the_last_size_holds():
    fastnet94 = [Crop(2, MEAN, STD, reflect=True), Flip(alternate=True)]
    resized = batches(*fastnet94, Resize([16, 24, 32]))
    plain = batches(Crop(2, MEAN, STD, reflect=True), Flip(alternate=True))
    for epoch, size in ((1, 16), (2, 24), (3, 32), (4, 32)):
        got, want = list(resized.epoch(epoch)), list(plain.epoch(epoch))
        assert [tuple(x.shape[2:]) for x, _ in got] == [(size, size)] * 3  # 16 + 16 + 8 images
        for (x, y), (x_full, y_full) in zip(got, want, strict=True):
            assert x.is_contiguous(memory_format=torch.channels_last) and torch.equal(y, y_full)
            # the same crops and flips, then scaled: Resize draws nothing from the epoch's generator
            expected = F.interpolate(x_full, size=(size, size), mode="bilinear", antialias=True) if size < 32 else x_full
            assert torch.equal(x, expected.contiguous(memory_format=torch.channels_last))


def test_a_scaled_image_is_pils_bilinear_resize_of_it():
    """Antialiased as PIL scales an image down (its bilinear filter widened to the scale), not every other pixel sampled."""
    x = torch.rand(1, 3, 32, 32)
    (small, _) = Resize([20])(x, torch.zeros(1), torch.empty(1, 0))
    pil = [np.asarray(Image.fromarray(c.numpy(), mode="F").resize((20, 20), Image.BILINEAR)) for c in x[0]]
    assert torch.allclose(small[0], torch.from_numpy(np.stack(pil)), atol=1e-4)
    assert not torch.allclose(small, F.interpolate(x, size=(20, 20), mode="bilinear"), atol=1e-2)  # what no antialias gives


def test_a_cropped_batch_is_windows_of_the_images_the_flips_and_crops_made():
    """With crop, each image is a window of the size asked of the batch fastnet94's crop and flip made (their draws come
    first and are the same), at a place drawn per image, not the same for all."""
    fastnet94 = lambda: [Crop(2, MEAN, STD, reflect=True), Flip(alternate=True)]  # noqa: E731
    cropped, plain = batches(*fastnet94(), Resize([20, 32], crop=True)), batches(*fastnet94())
    places = set()
    for (x, _), (x_full, _) in zip(cropped.epoch(1), plain.epoch(1), strict=True):
        assert x.shape[2:] == (20, 20)
        for small, full in zip(x, x_full, strict=True):
            found = [(r, c) for r in range(13) for c in range(13) if torch.equal(small, full[:, r : r + 20, c : c + 20])]
            assert len(found) == 1
            places.add(found[0])
    assert len(places) > 20  # 40 images: windows drawn image by image
    assert all(torch.equal(a[0], b[0]) for a, b in zip(cropped.epoch(2), plain.epoch(2), strict=True))  # epoch 2: full size


@pytest.mark.parametrize("sizes", [[], [4], [16, 2000], [16.5], [True], None, "16"])
def test_sizes_that_are_no_image_size_are_refused_in_one_line(sizes):
    with pytest.raises(UserError, match=r"Resize's sizes=.*whole number of 8 to 1024 pixels"):
        Resize(sizes)


def test_a_refused_size_is_one_line_and_leaves_no_folder(tiny_folder, tmp_path):
    proc = run_script(
        "train.py", "experiment=cpu_speedrun", "data.augment.resize.sizes=[32,4]", f"data.root={tiny_folder}", "wandb.mode=disabled",
        cwd=tmp_path, check=False,
    )  # fmt: skip
    one_clear_line(proc, 2, "data.augment: Resize's sizes=[32, 4]")
    assert not list(tmp_path.iterdir())


def test_the_speedrun_trains_and_resumes_exactly_across_a_change_of_size(compose_cfg, tiny_folder, tmp_path):
    """Cut after epoch 1 (trained at 16x16) and resumed: epochs 2 and 3 at 24x24 and 32x32 give the uninterrupted run's
    figures to the bit. FastNet narrowed as in test_recipe94's run of fastnet94."""
    small = ("experiment=cpu_speedrun", "batch_size=100", "epochs=3", "optim.lr=0.2", "model.widths=[32,64,64]")
    sizes = "data.augment.resize.sizes=[16,24,32]"

    def run(name, *extra):
        return train(compose_cfg(tiny_overrides(tiny_folder, tmp_path / name, *small, *extra)))

    straight = run("straight", sizes)
    assert straight["status"] == "finished" and straight["test_tta"] == "flip_translate"
    no_resize = run("no_resize", "ablation=no_resize")
    assert no_resize["test_loss"] != straight["test_loss"]  # the same run but for the sizes: its weights differ
    cut = run("cut", sizes, "max_minutes=0.00001")
    assert cut["status"] == "out_of_time" and cut["epochs_completed"] == 1
    resumed = run("ignored", sizes, f"resume={tmp_path / 'cut' / 'last.pt'}")
    assert (resumed["test_acc"], resumed["test_acc_tta"]) == (straight["test_acc"], straight["test_acc_tta"])
