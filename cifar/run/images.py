"""Your own images through a trained model: `python evaluate.py ckpt=<ckpt.pt> images=<file | folder | glob>`.

Each image is made as a folder copy's images are for training (cifar/core/data.py's decode_image, with
data.resize=true): turned upright from its EXIF orientation, put on white where it is transparent,
converted to RGB, cut to its central square and shrunk to 32x32 with area averaging. Then the model's
top classes, as a table and as a picture grid. A file that cannot be read is one warning line; the rest still run.
"""

from __future__ import annotations

import glob
import logging
from pathlib import Path
from typing import Any

import torch

from cifar.console import print_classified
from cifar.core.data import Split, decode_image, is_image_name
from cifar.core.scoring import class_probabilities
from cifar.errors import UserError
from cifar.files import atomic_write_json
from cifar.results.plots import plot_classified
from cifar.run.build import eval_batches

log = logging.getLogger(__name__)


# images.png shows at most this many (the table and predictions.json hold every image): 2,000 images drawn whole made
# a 1584x60555 picture in 105 s.
PICTURE_LIMIT = 64


def find_image_files(spec: str) -> list[Path]:
    """A file, a folder (its image files, sorted; not its subfolders) or a glob pattern (`photos/*.jpg`, `**` too).

    In a folder, an image file is one a folder copy would read (data.py's is_image_name): named as a format Pillow opens
    (.jpg, .png, .gif, .tif, .webp, ...), and not hidden (.DS_Store, macOS's ._photo.jpg). Other files are named in one
    line and left alone."""
    path = Path(spec).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        entries = sorted(p for p in path.iterdir() if p.is_file())
        files = [p for p in entries if is_image_name(p)]
        if others := [p.name for p in entries if not is_image_name(p)]:
            shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
            log.warning("%s: %d files are not images by their names, left out: %s", path, len(others), shown)
    else:
        files = once_each(sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file()), spec)
    if not files:
        raise UserError(
            f"images={spec}: no image files there: give a file, a folder of .jpg/.png/... files, or a glob such as 'photos/*.jpg'"
        )
    return files


def once_each(files: list[Path], spec: str) -> list[Path]:
    """Each image once: a glob through a link to a folder above (`**` and a symlink loop) finds the same files under
    many paths. The first path to each file is kept, and the rest are counted in one warning."""
    first: dict[Path, Path] = {}
    for f in files:
        first.setdefault(f.resolve(), f)
    if len(first) < len(files):
        log.warning("images=%s: %d paths lead to %d files through links: each image is read once", spec, len(files), len(first))
    return list(first.values())


def load_as_cifar(path: Path) -> torch.Tensor:
    """One image as CIFAR-10 holds its images, uint8, 3 x 32 x 32: made as training makes a folder copy's."""
    return torch.from_numpy(decode_image(path, fit=True)).permute(2, 0, 1)


def classify_images(model, classes: list[str], stored, precision, device, cfg, out: Path) -> dict[str, Any]:
    """The model's top `cfg.top` of `classes` (its checkpoint's) for each readable file of `cfg.images`; predictions.json and images.png in `out`."""
    files, images, readable, skipped = find_image_files(cfg.images), [], [], []
    for f in files:
        try:
            images.append(load_as_cifar(f))
            readable.append(f)
        except UserError as e:
            log.warning("%s", e)
            skipped.append(str(f))
    if not readable:
        raise UserError(f"images={cfg.images}: none of its {len(files)} files could be read as an image")
    batches = eval_batches(stored, Split(torch.stack(images), torch.zeros(len(images), dtype=torch.long)), device, cfg.batch_size)
    probs = class_probabilities(model, batches, precision, cfg.tta)
    if not probs.isfinite().all():  # as refuse_not_finite on the test set: a NaN's top class would be named with no word
        raise UserError(f"{cfg.ckpt}: its outputs on your images are not finite: its weights overflow or are broken, so it classifies "
                        "nothing; try another checkpoint (or amp=false, if it ran in half precision)")  # fmt: skip
    top_probs, top_classes = probs.topk(min(cfg.top, len(classes)), dim=1)
    rows = [
        {
            "file": str(f),
            "class": None if pr[0] < cfg.min_confidence else classes[cls[0]],  # None: unsure (below min_confidence)
            "unsure": bool(pr[0] < cfg.min_confidence),
            "top": [{"class": classes[c], "prob": p} for c, p in zip(cls.tolist(), pr.tolist(), strict=True)],
        }
        for f, cls, pr in zip(readable, top_classes, top_probs, strict=True)
    ]
    print_classified(rows)
    shown = min(len(rows), PICTURE_LIMIT)
    plot_classified(
        torch.stack(images[:shown]),
        [r["top"][0] | {"unsure": r["unsure"]} for r in rows[:shown]],
        [f.name for f in readable[:shown]],
        out / "images.png",
    )
    if shown < len(rows):
        log.info("images.png shows the first %d of the %d images; the table above and predictions.json hold them all", shown, len(rows))
    result = {"ckpt": str(Path(cfg.ckpt).resolve()), "tta": cfg.tta, "images": rows, "unreadable": skipped}
    atomic_write_json(result, out / "predictions.json")
    log.info("wrote predictions.json and images.png in %s", out)
    return result
