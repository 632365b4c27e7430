import logging
import struct
import subprocess
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from cifar.core.augment import Crop, Flip
from cifar.core.batches import DeviceBatches, train_val_split
from cifar.core.data import CIFAR10_CLASSES, Split, load_configured, load_dataset
from cifar.errors import UserError
from cifar.run.images import load_as_cifar
from tests.conftest import compose_config, one_clear_line, run_script, write_image_folder


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


def test_augmentation_is_per_image_seeded_and_off_by_default():
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    split = Split(images, torch.arange(64))

    def first_batch(seed=0, *augment):
        batches = DeviceBatches(split, 64, torch.device("cpu"), mean=[0] * 3, std=[1] * 3, shuffle=False, seed=seed, augment=augment)
        return next(batches.epoch(1))[0] * 255

    plain = first_batch()
    torch.testing.assert_close(plain, images.float())
    flipped = first_batch(0, Flip())
    same = [torch.equal(flipped[i], plain[i]) for i in range(64)]
    mirrored = [torch.equal(flipped[i], plain[i].flip(2)) for i in range(64)]
    assert all(s or m for s, m in zip(same, mirrored, strict=True)) and 10 < sum(mirrored) < 54  # about half, per image
    cropped = first_batch(0, Crop(4, [0] * 3, [1] * 3))
    assert not torch.equal(cropped, plain) and torch.equal(cropped, first_batch(0, Crop(4, [0] * 3, [1] * 3)))  # seeded by (seed, epoch)
    assert not torch.equal(cropped, first_batch(1, Crop(4, [0] * 3, [1] * 3)))


def test_channels_last_batches_hold_the_same_values():
    split = Split(torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8), torch.arange(8))

    def batch(channels_last):
        return next(
            DeviceBatches(split, 8, torch.device("cpu"), mean=[0.5] * 3, std=[0.5] * 3, shuffle=False, channels_last=channels_last).epoch()
        )[0]

    cl = batch(True)
    assert cl.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(cl, batch(False))


# ---- folder copies as people have them


def test_a_folder_copy_as_people_have_it_reads_every_image_and_leaves_the_rest_out_in_one_line(tmp_path, caplog):
    """Jupyter's .ipynb_checkpoints/ beside the class folders is no class; macOS's ._<name> files and .DS_Store, Windows'
    Thumbs.db and notes are left out, counted in one line; a GIF and a TIFF are images like the others."""
    root = write_image_folder(tmp_path / "copy", {"train": 2, "test": 1})
    (root / "train" / ".ipynb_checkpoints").mkdir()
    (root / "test" / ".ipynb_checkpoints").mkdir()
    cat = root / "train" / "cat"
    (cat / "._0000.jpg").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X")  # AppleDouble: the file's metadata
    (cat / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (cat / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1")
    (cat / "notes.txt").write_text("taken in 2019")
    Image.new("RGB", (32, 32), (250, 0, 0)).save(cat / "0002.gif")
    Image.new("RGB", (32, 32), (0, 250, 0)).save(cat / "0003.tif")
    caplog.set_level(logging.INFO)

    data = load_dataset(root)
    assert data.classes == CIFAR10_CLASSES and len(data.train) == 22 and len(data.test) == 10
    cats = data.train.images[data.train.labels == CIFAR10_CLASSES.index("cat")]
    assert len(cats) == 4 and cats[2, 0].float().mean() > 200 and cats[3, 1].float().mean() > 200, "the GIF's red, the TIFF's green"
    (line,) = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert "4 files are not images by their names (or are hidden), left out: train/cat/.DS_Store, train/cat/._0000.jpg" in line, line


def png_header(width: int, height: int) -> bytes:
    """A PNG file that declares an image of width x height and holds no pixels: what Pillow's size check reads."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


def test_a_decompression_bomb_in_a_folder_copy_is_one_line_naming_it(tmp_path):
    root = write_image_folder(tmp_path / "copy", {"train": 2, "test": 1})
    bomb = root / "train" / "dog" / "0002.png"
    bomb.write_bytes(png_header(20_000, 20_000))  # 400 million pixels, in 57 bytes: past twice Pillow's limit
    proc = run_script("train.py", f"data.root={root}", "wandb.mode=disabled", "epochs=1", cwd=tmp_path, check=False)
    one_clear_line(proc, 2, str(bomb), "too large to read safely")


def test_an_image_past_pillows_pixel_limit_is_one_line_naming_it_not_a_python_warning(tmp_path, caplog):
    big = tmp_path / "big.png"
    big.write_bytes(png_header(10_000, 10_000))  # 100 million pixels: Pillow warns (DecompressionBombWarning) and reads on
    with warnings.catch_warnings(), pytest.raises(UserError, match="could not be read as an image"):
        warnings.simplefilter("error")  # a warning that escaped would be raised here, instead of the truncated file's line
        load_as_cifar(big)
    assert f"{big} is 10000x10000, past Pillow's limit of" in caplog.text


def test_each_decode_setting_keeps_its_own_cache_and_only_its_own_stale_ones_are_removed(tmp_path, caplog):
    """Switching data.resize back and forth reads each setting's cache; a changed copy replaces only its own stale cache
    of the same setting, and a file whose name merely starts like a cache stays."""
    root = write_image_folder(tmp_path / "copy", {"train": 2, "test": 1})
    caplog.set_level(logging.INFO)

    def load(resize: str):
        return load_configured(compose_config([f"data.root={root}", f"data.resize={resize}"]).data)

    for resize in ("false", "true", "false", "true"):
        load(resize)
    assert caplog.text.count("Decoding ") == 2, "each setting decoded once, then read from its cache"
    plain, resized = sorted(root.glob("cifar10-uint8-*.pt"), key=lambda p: p.name.endswith("-resized.pt"))
    assert resized.name.endswith("-resized.pt") and not plain.name.endswith("-resized.pt")
    mine = root / f"{plain.name.rsplit('-', 1)[0]}-mine.pt"  # the copy's cache prefix and .pt: what a glob of '<prefix>*.pt' took
    mine.write_text("not a cache")
    (root / "train" / "cat" / "0001.jpg").unlink()
    assert len(load("false").train) == 19
    assert not plain.exists() and resized.exists() and mine.exists(), sorted(p.name for p in root.iterdir())


def write_kinds_of_image(folder):
    """One file of each kind a folder of photos holds: transparent, wider than high, palette, greyscale, CMYK."""
    folder.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    clear = Image.new("RGBA", (40, 40), (0, 0, 0, 0))  # transparent black, with an opaque red square in it
    clear.paste((200, 30, 30, 255), (10, 10, 30, 30))
    clear.save(folder / "a_transparent.png")
    wide = Image.new("RGB", (64, 32), (255, 0, 0))  # red at both ends, blue in the central square
    wide.paste((0, 0, 255), (16, 0, 48, 32))
    wide.save(folder / "b_wide.png")
    Image.fromarray(noise).quantize(16).save(folder / "c_palette.png")
    Image.fromarray(noise[:, :, 0]).save(folder / "d_grey.png")
    Image.fromarray(noise).convert("CMYK").save(folder / "e_cmyk.jpg")
    return sorted(folder.iterdir())


def test_a_file_is_made_the_same_for_training_and_for_images(tmp_path):
    """The one decoding: each kind of file gives the same uint8 pixels in a folder copy (data=folder) as through
    evaluate.py images=, transparency on white and a wide image cut to its central square in both."""
    root = write_image_folder(tmp_path / "mine", {"train": 1, "test": 1}, classes=("kinds", "other"))
    files = write_kinds_of_image(root / "train" / "kinds")
    data = load_configured(compose_config(["data=folder", f"data.root={root}"]).data)
    trained_on = data.train.images[data.train.labels == 0]
    assert len(trained_on) == len(files)
    for f, pixels in zip(files, trained_on, strict=True):
        assert torch.equal(pixels, load_as_cifar(f)), f.name
    clear, wide = trained_on[1], trained_on[2]  # after 0000.jpg
    assert clear[:, 0, 0].tolist() == [255, 255, 255] and clear[:, 16, 16].tolist() == [200, 30, 30]
    assert wide[2].min() > 200 and wide[0].max() < 50, "the central square, not the whole squashed"
