"""A run's test predictions, image by image: `test_predictions.npz` beside summary.json (and evaluate.py's beside
evaluation.json). What a per-image comparison of two runs (McNemar's test) and the seeds as an ensemble are made from.

    labels              (images,) each test image's true class, in the test set's order
    predicted           (images,) the class the tested checkpoint gave it (the argmax of its logits: test_acc's)
    probabilities       (images, classes) float16: the softmax of those logits
    predicted_tta, probabilities_tta   the same with the run's test-time augmentation, where it was tested with one

Costs: ~0.2 MB for CIFAR-10's 10,000 images (0.4 MB with TTA's), compressed; no extra forward pass (the test's own logits).
The file is data: numpy reads it without pickles, and a file of another shape is one warning and left out, never an error
deep in a table. Imports no layer of the package.
"""

from __future__ import annotations

import logging
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cifar.files import atomic_write_with

log = logging.getLogger(__name__)

FILE = "test_predictions.npz"  # in a run folder, beside summary.json; in an evaluation's folder, beside evaluation.json
BASELINE_FILE = "baseline_test_predictions.npz"  # evaluate.py's baseline= checkpoint's


@dataclass(frozen=True)
class Predictions:
    """One model's predictions on every image of one test set, in its order."""

    labels: np.ndarray  # (images,) int64
    predicted: np.ndarray  # (images,) int64
    probabilities: np.ndarray  # (images, classes) float32 (stored as float16)

    @property
    def right(self) -> np.ndarray:
        """(images,) bool: where the predicted class is the true one."""
        return self.predicted == self.labels

    @property
    def acc(self) -> float:
        return float(self.right.mean())


@dataclass(frozen=True)
class TestPredictions:
    plain: Predictions
    tta: Predictions | None  # with test-time augmentation, where the run was tested with one


def write_predictions(predictions: TestPredictions, path: Path) -> None:
    """`path` (an .npz), written atomically: labels and classes as the smallest integers that hold them, probabilities
    as float16 (3 significant digits: enough to average seeds, ~2x smaller than float32)."""
    plain = predictions.plain
    classes = plain.probabilities.shape[1]
    index = np.uint8 if classes <= 256 else np.int32
    arrays = {"labels": plain.labels.astype(index), **_arrays(plain, "", index)}
    if predictions.tta is not None:
        arrays |= _arrays(predictions.tta, "_tta", index)
    atomic_write_with(path, lambda f: np.savez_compressed(f, **arrays))


def _arrays(predictions: Predictions, suffix: str, index: type) -> dict[str, np.ndarray]:
    return {
        f"predicted{suffix}": predictions.predicted.astype(index),
        f"probabilities{suffix}": predictions.probabilities.astype(np.float16),
    }


def read_predictions(path: Path) -> TestPredictions | None:
    """The predictions in `path`; None when there is none (a run from before they were kept, or one that was not
    tested), or, with one warning, when the file is not of the shape write_predictions gives."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, zlib.error) as e:
        log.warning("%s: not a predictions file numpy can read (%s): its per-image figures are left out", path, e)
        return None
    if odd := _odd_shape(arrays):
        log.warning("%s: %s: its per-image figures are left out", path, odd)
        return None
    labels = arrays["labels"].astype(np.int64)
    kept = [Predictions(labels, arrays[f"predicted{s}"].astype(np.int64), arrays[f"probabilities{s}"].astype(np.float32))
            for s in ("", "_tta") if f"predicted{s}" in arrays]  # fmt: skip
    return TestPredictions(kept[0], kept[1] if len(kept) > 1 else None)


def _odd_shape(arrays: dict[str, np.ndarray]) -> str | None:
    """What is wrong with a stored file's arrays, or None when they are of write_predictions' shape."""
    plain = {"labels", "predicted", "probabilities"}
    if arrays.keys() not in (plain, plain | {"predicted_tta", "probabilities_tta"}):
        return f"it holds {', '.join(sorted(arrays))}, not labels, predicted and probabilities (with their _tta pair)"
    if odd := [name for name, array in arrays.items() if not isinstance(array, np.ndarray)]:  # a member that is no .npy
        return f"its {', '.join(sorted(odd))} are not arrays"
    labels, probabilities = arrays["labels"], arrays["probabilities"]
    if labels.ndim != 1 or probabilities.ndim != 2 or probabilities.shape[0] != len(labels) or not len(labels):
        return "its labels and probabilities are not one row an image"
    classes = probabilities.shape[1]
    for name, array in arrays.items():
        if name.startswith("predicted") or name == "labels":
            if (
                array.shape != labels.shape
                or array.dtype.kind not in "iu"
                or (len(array) and not 0 <= array.min() <= array.max() < classes)
            ):
                return f"its {name} are not one class an image among {classes}"
        elif array.shape != probabilities.shape or array.dtype.kind != "f" or not np.isfinite(array).all():
            return f"its {name} are not finite numbers of one row an image"
    return None
