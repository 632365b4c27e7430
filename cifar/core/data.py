"""Datasets of small RGB images as uint8 tensors: reading them (torchvision's files or a folder copy) and the decode
cache; the validation split and the batches cut from them on the device are cifar/core/batches.py's.

A dataset is a `DatasetSpec` (its name, classes, how its files are read), chosen by a conf/data/ file. Images are decoded
once into one `uint8` tensor of shape (N, 3, 32, 32) and kept on the training device; batches are cut from it by index
and normalised there. No per-image PIL work and no DataLoader workers in the training loop.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from cifar.errors import UserError, first_line
from cifar.files import atomic_save
from cifar.hold import hold_point

log = logging.getLogger(__name__)

# CIFAR-10's label order (0..9): torchvision's, and a folder copy's class folders sorted by name.
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# The torchvision.datasets classes whose files data.torchvision may name: a table, since a config (one stored in a
# checkpoint too) is data and chooses no code. Both keep their images as one uint8 array (N, 32, 32, 3) and `targets`.
TORCHVISION_DATASETS = {"cifar10": "CIFAR10", "cifar100": "CIFAR100"}
IMAGE_SIZE = 32  # every dataset's images are this many pixels square: the size the models here are built for
GRAYSCALE_MODES = {"1", "L", "LA", "I", "I;16", "F"}  # Pillow modes with no colour: not a CIFAR image (data.resize=false)
# Part of every decode cache's key: raise it whenever decode_image makes other pixels of some file than before, so that no
# cache of the old pixels is read again. 2: EXIF orientation, transparency on white, the central square, area averaging.
DECODE_VERSION = 2


@dataclass
class Split:
    """One set of images as a uint8 tensor (N, 3, 32, 32) and int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: torch.Tensor) -> Split:
        return Split(self.images[indices], self.labels[indices])


@dataclass(frozen=True)
class DatasetSpec:
    """Which dataset a conf/data/ file names and how its files are read."""

    name: str  # names the decode cache, the checkpoints and the run record: cifar10, cifar100, folder, yours
    classes: tuple[str, ...] | None  # the label order; a folder copy must hold exactly these class folders. None: its own, sorted
    torchvision: str | None  # data.format=torchvision reads this entry of TORCHVISION_DATASETS; None: folder copies only
    resize: bool  # images of another size are made 32x32 (the central square, shrunk by area averaging: decode_image); false: refused in one line

    @classmethod
    def of(cls, data: Mapping) -> DatasetSpec:
        """The spec of a run's `data` config (a stored one from before datasets were a config group is read with
        CIFAR-10's filled in: cifar/config/stored.py's as_written_today)."""
        classes = data["classes"]
        return cls(data["name"], None if classes is None else tuple(classes), data["torchvision"], bool(data["resize"]))


CIFAR10 = DatasetSpec("cifar10", CIFAR10_CLASSES, "cifar10", resize=False)


@dataclass
class Dataset:
    name: str  # the spec's
    classes: tuple[str, ...]  # label i is classes[i]: the spec's, or a folder copy's own class folders
    train: Split  # the official training images (CIFAR-10: 50,000)
    test: Split  # the official test images (CIFAR-10: 10,000); never used to pick a checkpoint
    source: str  # where the images came from, for the run record
    identity: str  # a hash of every image and label (`identity()`): two runs saw the same images if and only if theirs agree


def identity(train: Split, test: Split, classes: tuple[str, ...]) -> str:
    """A hash of the images and labels themselves, whatever their files or format: ~0.3 s for CIFAR-10's 184 MB, stored
    in a folder copy's decode cache. A moved copy keeps it; one changed image changes it. The class names join it,
    except CIFAR-10's own (hashes written before other datasets stay as they were)."""
    h = hashlib.blake2b(digest_size=8)
    for tensor in (train.images, train.labels, test.images, test.labels):
        h.update(tensor.contiguous().numpy().tobytes())
    if classes != CIFAR10_CLASSES:
        h.update("\n".join(classes).encode())
    return h.hexdigest()


def resolve_format(root: Path, fmt: str) -> str:
    """`auto` means: a folder copy if `root/train` is a folder, else torchvision's files."""
    if fmt == "auto":
        return "folder" if (root / "train").is_dir() else "torchvision"
    return fmt  # torchvision or folder: checked with the rest of the config (cifar/config/schema.py)


def load_configured(data: Mapping) -> Dataset:
    """The dataset a run's `data` config names, from where it says."""
    return load_dataset(data["root"], data["format"], data["download"], data["cache_dir"], DatasetSpec.of(data))


def load_dataset(
    root: str | os.PathLike, fmt: str = "auto", download: bool = True, cache_dir: str | None = None, spec: DatasetSpec = CIFAR10
) -> Dataset:
    root = Path(root).expanduser().resolve()
    fmt = resolve_format(root, fmt)
    if fmt == "folder":
        classes, train, test, ident = _load_folder_cached(root, Path(cache_dir).expanduser().resolve() if cache_dir else root, spec)
    else:
        classes, train, test = _load_torchvision(root, download, spec)
        ident = identity(train, test, classes)
    return Dataset(name=spec.name, classes=classes, train=train, test=test, source=f"{fmt}:{root}", identity=ident)


def _load_torchvision(root: Path, download: bool, spec: DatasetSpec) -> tuple[tuple[str, ...], Split, Split]:
    import torchvision.datasets

    if spec.torchvision is None:
        raise UserError(f"data={spec.name} is read from a folder copy only: point data.root at one with train/<class>/ and test/<class>/")
    reader = getattr(torchvision.datasets, TORCHVISION_DATASETS[spec.torchvision])  # the config's value is checked against the table

    def one(train: bool):
        try:
            return reader(str(root), train=train, download=download)
        except (OSError, RuntimeError) as e:  # URLError is an OSError; "Dataset not found" a RuntimeError
            why = f"the download failed ({getattr(e, 'reason', e)})" if download else "data.download=false"
            raise UserError(
                f"{spec.name} (torchvision's {reader.__name__} files) is not in {root} and {why}: allow the download (data.download=true, with internet) "
                "or point data.root at a folder copy with train/<class>/ and test/<class>/"
            ) from None

    train, test = one(True), one(False)
    classes = tuple(train.classes)
    if spec.classes is not None and classes != spec.classes:
        raise UserError(
            f"{root} holds {reader.__name__}'s files with classes {_listed(classes)}; data={spec.name} names {_listed(spec.classes)}"
        )
    # torchvision keeps the pickled batches as one (N, 32, 32, 3) uint8 array already.
    split = [Split(_to_nchw(ds.data), torch.tensor(ds.targets, dtype=torch.int64)) for ds in (train, test)]
    return classes, split[0], split[1]


def _listed(names: tuple[str, ...] | list[str], most: int = 12) -> str:
    """Class names for a message: all of CIFAR-10's, the first dozen of CIFAR-100's."""
    shown = ", ".join(names[:most])
    return f"[{shown}{', ...' if len(names) > most else ''}] ({len(names)})"


def _image_files(root: Path, spec: DatasetSpec) -> tuple[tuple[str, ...], dict[str, list[tuple[Path, int]]]]:
    """The classes of a folder copy and the (file, label) pairs of `root/train` and `root/test`, in a stable order."""
    found = {}
    for part in ("train", "test"):
        folder = root / part
        if not folder.is_dir():
            raise UserError(f"{folder} is missing: a folder copy needs train/<class>/ and test/<class>/ inside {root}")
        found[part] = sorted(p.name for p in folder.iterdir() if p.is_dir() and not hidden(p))  # .ipynb_checkpoints/: no class
    classes = spec.classes or tuple(found["train"])
    for part, names in found.items():
        if names != sorted(classes):
            missing, extra = sorted(set(classes) - set(names)), sorted(set(names) - set(classes))
            whose = f"data={spec.name} needs exactly" if spec.classes else "train/ holds"
            raise UserError(
                f"{root / part} holds class folders {_listed(names)}; {whose} {_listed(sorted(classes))}"
                + (f": missing {_listed(missing)}" if missing else "") + (f", not theirs {_listed(extra)}" if extra else "")
            )  # fmt: skip
    if len(classes) < 2:
        raise UserError(f"{root / 'train'} holds {len(classes)} class folder(s): a classifier needs 2 classes or more")
    files, others = {part: [] for part in found}, []
    for part in found:
        for label, name in enumerate(classes):
            images, not_images = _class_images(root / part / name)
            files[part] += [(f, label) for f in images]
            others += not_images
    if others:  # .DS_Store, macOS's ._* files, Thumbs.db, notes: said once, never a reason to stop
        shown = ", ".join(str(f.relative_to(root)) for f in others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        log.warning("%s: %d files are not images by their names (or are hidden), left out: %s", root, len(others), shown)
    return classes, files


def _class_images(folder: Path) -> tuple[list[Path], list[Path]]:
    """The image files of one class folder, sorted, and its other files; one line for a folder with no images (an empty
    one would score 0% on a test class without a word), saying where its images are if they sit a folder deeper."""
    images, others, folders = [], [], []
    with os.scandir(folder) as entries:  # whether each is a folder without a stat of each: 60,000 stats took 0.8 s
        for entry in sorted(entries, key=lambda e: e.name):
            f = Path(entry.path)
            (folders if _is_folder(entry) else images if is_image_name(f) else others).append(f)
    if not images:
        deeper = [p for p in folders if not hidden(p) and any(map(is_image_name, p.iterdir()))]
        where = f": they are one folder deeper, in {deeper[0]}; move them up into {folder}" if deeper else ": add its .jpg or .png files"
        raise UserError(f"{folder} holds no images{where}")
    return images, others


def _is_folder(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:  # a looping link: a file here, named in one line by _fingerprint
        return False


def hidden(path: Path) -> bool:
    """A name starting with '.': .DS_Store, macOS's ._<name> beside each file, .ipynb_checkpoints/, .git/."""
    return path.name.startswith(".")


@functools.cache
def image_suffixes() -> frozenset[str]:
    """The file name endings of every format Pillow opens (.jpg, .png, .gif, .tif, .webp, ...)."""
    return frozenset(suffix for suffix, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


def is_image_name(path: Path) -> bool:
    """Whether a folder copy or images= reads a file: named as a format Pillow opens, and not hidden (macOS's ._photo.jpg
    holds the file's metadata, not an image)."""
    return not hidden(path) and path.suffix.lower() in image_suffixes()


def _fingerprint(files: dict[str, list[tuple[Path, int]]], root: Path) -> str:
    """A hash of every file's path, label, size, inode and change time (ctime). The kernel sets a file's ctime whenever
    its bytes or its entry change, and no tool can set it back (`cp -p`, tar and `rsync -t` keep the modification time,
    not the ctime): so a changed image always changes this, and a copy unpacked again unchanged is decoded again. The
    decoding's version joins them: a cache of pixels made another way is decoded again too."""
    h = hashlib.sha256(f"decode {DECODE_VERSION}\n".encode())
    for part, pairs in files.items():
        for f, label in pairs:
            try:
                st = f.stat()
            except OSError as e:  # a dangling link (ENOENT) or a loop of links (ELOOP)
                raise UserError(f"{f}: {e.strerror} (a broken or looping link?): fix it or remove it from the copy") from None
            h.update(f"{part}|{f.relative_to(root)}|{label}|{st.st_size}|{st.st_ino}|{st.st_ctime_ns}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _load_folder_cached(root: Path, cache_dir: Path, spec: DatasetSpec) -> tuple[tuple[str, ...], Split, Split, str]:
    classes, files = _image_files(root, spec)
    # One cache a folder copy and decode setting: its name says which dataset, which copy (a hash of the copy's path),
    # which state of it (the fingerprint) and whether its images were resized, so copies sharing a data.cache_dir never
    # take each other's cache, and a copy replaces only its own stale ones of the same setting: switching data.resize
    # back and forth reads both caches.
    copy = hashlib.sha256(str(root).encode()).hexdigest()[:8]
    prefix, suffix = f"{spec.name}-uint8-{copy}-", "-resized.pt" if spec.resize else ".pt"
    cache = cache_dir / f"{prefix}{_fingerprint(files, root)}{suffix}"
    if cache.exists():
        try:
            blob = torch.load(cache, weights_only=True)
            train, test = Split(blob["train_images"], blob["train_labels"]), Split(blob["test_images"], blob["test_labels"])
            return classes, train, test, blob.get("identity") or identity(train, test, classes)  # a cache from before identities: computed
        except Exception as e:  # cut short by a full disk or a broken copy: torch raises several types
            reason = first_line(e)
            log.warning("The decode cache %s is unreadable (%s): decoding the images again and rewriting it", cache, reason)
    log.info("Decoding %d images from %s (once; cached as %s)", sum(map(len, files.values())), root, cache.name)
    hold_point("decode")  # tests of Ctrl-C before training stop a run here (cifar/hold.py)
    train, test = (_decode(files[part], spec) for part in ("train", "test"))
    ident = identity(train, test, classes)
    blob = {"train_images": train.images, "train_labels": train.labels, "test_images": test.images, "test_labels": test.labels,
            "identity": ident}  # fmt: skip
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        for stale in _stale_caches(cache_dir, prefix, suffix):  # this copy changed since these were written
            stale.unlink()
        atomic_save(blob, cache)
    except (OSError, UserError) as e:  # the images are decoded: training goes on, the next run decodes them again
        log.warning("Could not write the decode cache in %s (%s); set data.cache_dir to a writable folder", cache_dir, e)
    return classes, train, test, ident


def _stale_caches(cache_dir: Path, prefix: str, suffix: str) -> list[Path]:
    """This copy's caches of this decode setting from other states of it: each name matched whole, a 16-digit fingerprint
    between `prefix` and `suffix` taken literally (a glob of `<name>-uint8-<copy>-*.pt` took the other setting's cache, and
    with a name `*` other datasets' files), so that every other file in the folder stays."""
    cache_name = re.compile(re.escape(prefix) + "[0-9a-f]{16}" + re.escape(suffix))
    return [p for p in cache_dir.iterdir() if cache_name.fullmatch(p.name)]


def _decode(pairs: list[tuple[Path, int]], spec: DatasetSpec) -> Split:
    images = np.empty((len(pairs), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    for i, (f, _) in enumerate(pairs):
        images[i] = decode_image(f, fit=spec.resize)
    return Split(_to_nchw(images), torch.tensor([label for _, label in pairs], dtype=torch.int64))


def decode_image(path: Path, fit: bool) -> np.ndarray:
    """One image file as the models take it, uint8 (32, 32, 3) RGB: the one way both a folder copy's images and your own
    (evaluate.py images=) are made, so that a model sees a file at evaluation as it saw it in training.

    Turned upright from its EXIF orientation, wide grey modes scaled to 8 bits, put on white where it is transparent,
    converted to RGB (palette and CMYK files too). With `fit`, any image: cut to its central square and shrunk to 32x32
    by area averaging (Pillow's BOX filter), as whole photos shrunk. Without it, it must be a 32x32 colour image as CIFAR's
    are, or it is refused in one line (data.resize=false: a CIFAR copy holding other images is the wrong copy)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # said below, in one line naming the file
            with Image.open(path) as opened:
                if not fit:
                    _refuse_unlike_cifar(path, opened)
                if Image.MAX_IMAGE_PIXELS and opened.width * opened.height > Image.MAX_IMAGE_PIXELS:  # None: the check is off
                    log.warning("%s is %dx%d, past Pillow's limit of %d pixels against images made to exhaust memory: read anyway, "
                                "which takes time and memory; shrink it to save them", path, *opened.size, Image.MAX_IMAGE_PIXELS)  # fmt: skip
                rgb = _on_white(eight_bit(ImageOps.exif_transpose(opened))).convert("RGB")
                if fit:
                    rgb = ImageOps.fit(rgb, (IMAGE_SIZE, IMAGE_SIZE), method=Image.Resampling.BOX)  # a 32x32 image: as it is
                return np.array(rgb)
    except Image.DecompressionBombError as e:  # not an OSError: past twice the limit above, Pillow refuses to read it
        raise UserError(f"{path}: too large to read safely ({first_line(e)}); shrink it first") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:  # a broken file: Pillow's plugins raise each of these
        raise UserError(f"{path} could not be read as an image ({first_line(e)}); remove or replace it") from None


def _refuse_unlike_cifar(path: Path, opened: Image.Image) -> None:
    if opened.mode in GRAYSCALE_MODES:
        raise UserError(
            f"{path} is a grayscale image (mode {opened.mode}), not a 32x32 RGB one as CIFAR's: pass data.resize=true to "
            "make it one (or data=folder, which does)"
        )
    if opened.size != (IMAGE_SIZE, IMAGE_SIZE):
        raise UserError(
            f"{path} is {opened.width}x{opened.height}, not {IMAGE_SIZE}x{IMAGE_SIZE} as CIFAR's images: pass data.resize=true "
            "to resize it (or data=folder, which does)"
        )


def _on_white(image: Image.Image) -> Image.Image:
    """A transparent image (RGBA, LA, PA, a palette with a transparent colour) put on white, as a photo of it would be;
    others as they are. Converting to RGB alone keeps whatever colour the transparent pixels hold, often black."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
    return image


def eight_bit(image: Image.Image) -> Image.Image:
    """Pillow's wide grey modes (a 16-bit PNG opens as I;16 or I, a float TIFF as F) scaled to 8 bits: converting them to
    RGB directly clips every value over 255, and a 16-bit photo becomes a white square. Other modes are returned as they are."""
    if image.mode not in ("I", "F") and not image.mode.startswith("I;16"):
        return image
    values = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        top = 1.0 if values.max() <= 1 else 255.0  # floats in [0, 1] or in 8-bit units
    else:
        top = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
    return Image.fromarray((values / top * 255).round().clip(0, 255).astype(np.uint8), "L")


def _to_nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
