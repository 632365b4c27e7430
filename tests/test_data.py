import subprocess

import pytest
import torch
from torchvision import transforms

from cifar.core.data import CIFAR10_CLASSES, DeviceBatches, Split, load_dataset, random_crop, train_val_split
from cifar.errors import UserError
from tests.conftest import write_image_folder


def fake_train(n=50_000):
    # Only indices matter for the split: one byte per "image" keeps this cheap.
    return Split(torch.arange(n).view(n, 1), torch.arange(n) % 10)


def test_split_is_the_studys_80_20():
    train, val = train_val_split(fake_train(), 0.2, split_seed=42)
    assert (len(train), len(val)) == (40_000, 10_000)
    assert not set(train.images.view(-1).tolist()) & set(val.images.view(-1).tolist())


def test_split_does_not_depend_on_the_training_seed():
    torch.manual_seed(0)
    _, val_a = train_val_split(fake_train(), 0.2, split_seed=42)
    torch.manual_seed(1)  # the training seed is set before the split in train(); it must not matter
    _, val_b = train_val_split(fake_train(), 0.2, split_seed=42)
    _, val_c = train_val_split(fake_train(), 0.2, split_seed=7)
    assert torch.equal(val_a.images, val_b.images)
    assert not torch.equal(val_a.images, val_c.images)


def test_val_split_zero_keeps_every_training_image():
    train, val = train_val_split(fake_train(), 0, split_seed=42)
    assert len(train) == 50_000 and val is None


def test_subset_draws_before_the_split():
    train, val = train_val_split(fake_train(), 0.2, split_seed=42, subset=1000)
    assert (len(train), len(val)) == (800, 200)


def test_folder_copy_loads_in_cifar_label_order(tiny_folder):
    data = load_dataset(tiny_folder, fmt="auto")
    assert data.source.startswith("folder:")
    assert data.train.images.shape == (1000, 3, 32, 32) and data.train.images.dtype == torch.uint8
    assert data.test.labels.bincount().tolist() == [10] * 10
    # the first images of a class sit in the class folder of that name
    assert data.train.labels[:100].unique().tolist() == [CIFAR10_CLASSES.index("airplane")]


def test_decode_cache_is_reused_and_rebuilt_when_the_folder_changes(tmp_path):
    root = write_image_folder(tmp_path / "copy", {"train": 2, "test": 1})
    first = load_dataset(root)
    caches = list(root.glob("cifar10-uint8-*.pt"))
    assert len(caches) == 1
    assert torch.equal(load_dataset(root).train.images, first.train.images)  # read from the cache
    write_image_folder(tmp_path / "more", {"train": 3, "test": 1}, seed=5)
    (tmp_path / "more" / "train" / "cat" / "0002.jpg").rename(root / "train" / "cat" / "0002.jpg")
    again = load_dataset(root)
    assert len(again.train) == len(first.train) + 1  # the stale cache was not reused
    assert [p.name for p in root.glob("cifar10-uint8-*.pt")] != [c.name for c in caches]
    assert len(list(root.glob("cifar10-uint8-*.pt"))) == 1


def changed_pixels(jpeg: bytes) -> bytes:
    """The same JPEG, byte for byte as long, with one byte of its compressed scan changed: other pixels, a valid file."""
    scan = jpeg.index(b"\xff\xda") + 2 + int.from_bytes(jpeg[jpeg.index(b"\xff\xda") + 2 :][:2], "big")
    i = next(i for i in range((scan + len(jpeg)) // 2, len(jpeg)) if jpeg[i] < 0xE0 and jpeg[i - 1] != 0xFF)
    return jpeg[:i] + bytes([jpeg[i] ^ 0x10]) + jpeg[i + 1 :]


def test_an_image_replaced_with_its_size_and_time_kept_is_never_served_stale(tmp_path):
    """`cp -p` (as tar and `rsync -t`) keeps the modification time: an image replaced by another of the same byte size,
    its time kept, must still be decoded again; the copy's identity (what a resume compares) changes with it."""
    root = write_image_folder(tmp_path / "copy", {"train": 2, "test": 1})
    first = load_dataset(root)
    a = root / "train" / "cat" / "0000.jpg"
    replacement = tmp_path / "same_size.jpg"
    replacement.write_bytes(changed_pixels(a.read_bytes()))  # a's size, other pixels
    subprocess.run(["touch", "-r", str(a), str(replacement)], check=True)  # a's time
    subprocess.run(["cp", "-p", str(replacement), str(a)], check=True)
    assert (a.stat().st_size, a.stat().st_mtime_ns) == (replacement.stat().st_size, replacement.stat().st_mtime_ns)
    again = load_dataset(root)
    cat = CIFAR10_CLASSES.index("cat") * 2  # the first cat image's place: classes in order, 2 images each
    assert not torch.equal(again.train.images[cat], first.train.images[cat]) and again.identity != first.identity
    assert torch.equal(again.train.images[cat + 1], first.train.images[cat + 1])


def test_copies_sharing_a_cache_folder_keep_their_own_caches(tmp_path):
    cache_dir = tmp_path / "cache"
    a = write_image_folder(tmp_path / "a", {"train": 2, "test": 1}, seed=1)
    b = write_image_folder(tmp_path / "b", {"train": 3, "test": 1}, seed=2)
    for root in (a, b):
        load_dataset(root, cache_dir=str(cache_dir))
    assert len(list(cache_dir.glob("cifar10-uint8-*.pt"))) == 2, "the second copy's cache did not replace the first's"
    (a / "train" / "cat" / "0001.jpg").unlink()  # copy a changes: its cache is rebuilt, copy b's stays
    before = {p.name for p in cache_dir.iterdir()}
    assert len(load_dataset(a, cache_dir=str(cache_dir)).train) == 19
    after = {p.name for p in cache_dir.iterdir()}
    assert len(after) == 2 and len(after & before) == 1, "only copy a's own stale cache was replaced"


def test_folder_copy_with_wrong_classes_is_refused(tmp_path):
    root = write_image_folder(tmp_path / "copy", {"train": 1, "test": 1})
    (root / "train" / "cat").rename(root / "train" / "kitten")
    with pytest.raises(UserError, match="kitten"):
        load_dataset(root, fmt="folder")


def test_batches_match_the_tutorials_totensor_normalize():
    images = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8)
    batches = DeviceBatches(Split(images, torch.arange(10)), 4, torch.device("cpu"), mean=[0.5] * 3, std=[0.5] * 3, shuffle=False)
    x, y = next(batches.epoch())
    reference = transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))(images[:4].float() / 255)
    torch.testing.assert_close(x, reference)
    assert y.tolist() == [0, 1, 2, 3]
    assert [len(y) for _, y in batches.epoch()] == [4, 4, 2] and len(batches) == 3


def test_epoch_order_depends_only_on_seed_and_epoch():
    split = Split(torch.zeros(100, 3, 32, 32, dtype=torch.uint8), torch.arange(100))

    def order(seed, epoch):
        return torch.cat(
            [y for _, y in DeviceBatches(split, 7, torch.device("cpu"), mean=[0] * 3, std=[1] * 3, shuffle=True, seed=seed).epoch(epoch)]
        )

    torch.manual_seed(123)
    a = order(0, 3)
    torch.manual_seed(456)  # global RNG state (e.g. after dropout) must not change the order
    assert torch.equal(a, order(0, 3))
    assert not torch.equal(a, order(0, 4)) and not torch.equal(a, order(1, 3))
    assert sorted(a.tolist()) == list(range(100))


def test_torchvision_format_reads_the_pickled_batches(tmp_path, monkeypatch):
    # torchvision checks the official files' MD5s; this test writes its own batches in the same format
    # and skips only that check, so the rest of the path (layout, label order, NCHW) is the real one.
    import pickle

    import numpy as np
    from torchvision.datasets import CIFAR10

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, _ in CIFAR10.train_list + CIFAR10.test_list:
        rows = rng.integers(0, 256, (20, 3 * 32 * 32), dtype=np.uint8)  # the pickles store CHW rows
        with open(folder / name, "wb") as f:
            pickle.dump({"data": rows, "labels": list(range(10)) * 2}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(CIFAR10_CLASSES)}, f)
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *a, **k: True)

    data = load_dataset(tmp_path, fmt="auto", download=False)
    assert data.source.startswith("torchvision:")
    assert data.train.images.shape == (100, 3, 32, 32) and data.test.images.shape == (20, 3, 32, 32)
    with open(folder / "test_batch", "rb") as f:
        first = pickle.load(f)["data"][0]
    assert torch.equal(data.test.images[0], torch.from_numpy(first).view(3, 32, 32))
    assert data.train.labels[:10].tolist() == list(range(10))


def test_random_crop_is_torchvisions_crop_of_the_padded_image():
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    shifts = torch.tensor([[0, 0], [8, 8], [4, 4], [0, 8], [8, 0], [3, 5]])
    out = random_crop(images, shifts, pad=4)
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    for i, (dy, dx) in enumerate(shifts.tolist()):
        assert torch.equal(out[i], padded[i, :, dy : dy + 32, dx : dx + 32])
    assert torch.equal(out[2], images[2])  # the centre offset is the identity


def test_augmentation_is_per_image_seeded_and_off_by_default():
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    split = Split(images, torch.arange(64))

    def first_batch(seed=0, **aug):
        batches = DeviceBatches(split, 64, torch.device("cpu"), mean=[0] * 3, std=[1] * 3, shuffle=False, seed=seed, **aug)
        return next(batches.epoch(1))[0] * 255

    plain = first_batch()
    torch.testing.assert_close(plain, images.float())
    flipped = first_batch(flip=True)
    same = [torch.equal(flipped[i], plain[i]) for i in range(64)]
    mirrored = [torch.equal(flipped[i], plain[i].flip(2)) for i in range(64)]
    assert all(s or m for s, m in zip(same, mirrored, strict=True)) and 10 < sum(mirrored) < 54  # about half, per image
    cropped = first_batch(crop_pad=4)
    assert not torch.equal(cropped, plain) and torch.equal(cropped, first_batch(crop_pad=4))  # seeded by (seed, epoch)
    assert not torch.equal(cropped, first_batch(seed=1, crop_pad=4))


def test_channels_last_batches_hold_the_same_values():
    split = Split(torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8), torch.arange(8))

    def batch(channels_last):
        return next(
            DeviceBatches(split, 8, torch.device("cpu"), mean=[0.5] * 3, std=[0.5] * 3, shuffle=False, channels_last=channels_last).epoch()
        )[0]

    cl = batch(True)
    assert cl.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(cl, batch(False))
