"""`evaluate(cfg)` behind `evaluate.py`: a checkpoint rebuilt as it was trained, scored on the test set (or on your images)."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from cifar.config.compose import given_keys
from cifar.config.evaluate_schema import check_evaluate, unused_evaluate_settings
from cifar.console import print_comparison, print_evaluation, print_predictions
from cifar.core.batches import sample_indices
from cifar.core.data import CIFAR10_CLASSES, Dataset, Split, load_configured
from cifar.core.hardware import Precision, forward_gflop, pick_device, pick_precision
from cifar.core.scoring import accuracy_report, calibration, refuse_not_finite, refuse_unscorable, score
from cifar.core.tta import tta_mode
from cifar.errors import UserError, first_line, refuse_broken
from cifar.files import atomic_write_json
from cifar.predictions import BASELINE_FILE as BASELINE_PREDICTIONS_FILE
from cifar.predictions import FILE as PREDICTIONS_FILE
from cifar.predictions import TestPredictions, write_predictions
from cifar.results.plots import plot_confusion, plot_predictions, plot_reliability
from cifar.results.stats import LEVEL, accuracy_interval, mcnemar
from cifar.run import plugins
from cifar.run.build import build_model, eval_batches
from cifar.run.checkpoint import load_checkpoint, stored_classes, stored_decisions, weights_fit
from cifar.run.images import classify_images
from cifar.run.tracking import checkpoint_path

log = logging.getLogger(__name__)


def _load_model(path: str, cfg: DictConfig, device: torch.device) -> tuple[nn.Module, dict, DictConfig, list[str], Precision]:
    """The model of a checkpoint, rebuilt from what its stored config may decide (cifar/run/checkpoint.py's
    stored_decisions), at the precision it was tested with (or `cfg.amp`), with its class names. Its weights' shapes are
    checked against the model described before the model is built."""
    ckpt = load_checkpoint(checkpoint_path(path))
    stored = stored_decisions(ckpt, path)
    classes = stored_classes(ckpt, path, CIFAR10_CLASSES)  # CIFAR-10's for a checkpoint written before they were kept
    _check_record(ckpt, path)
    weights_fit(stored.model, ckpt["model_state_dict"], len(classes), path)
    refuse_unscorable(path, ckpt["model_state_dict"])  # NaN or Infinity in its weights
    model = build_model(stored, device, len(classes))  # as training built it: same class, arguments and memory format
    try:
        model.load_state_dict(ckpt["model_state_dict"])
    except RuntimeError as e:
        raise UserError(f"{path}: its weights do not fit the model stored with it ({str(e).splitlines()[0]})") from None
    # By default, the precision the run was tested with at the end of training, so the figures agree.
    if cfg.amp is None and "precision" not in ckpt:
        log.warning("%s does not say which precision it was tested in (an older checkpoint): evaluating in fp32; amp=true for bf16", path)
    amp = cfg.amp if cfg.amp is not None else ckpt.get("precision", "fp32") != "fp32"
    precision = pick_precision(device, amp, stored.amp_dtype, lambda: forward_gflop(model, cfg.batch_size, device))
    return model, ckpt, stored, classes, precision


def _check_record(ckpt: dict, path: str) -> None:
    """What evaluation.json and the tables take from a checkpoint besides its config: the epoch, the precision it was tested
    in, its run's name and group, each of the type train.py writes."""
    name_ok = lambda v: v is None or (isinstance(v, str) and v.isprintable())  # noqa: E731 (one rule, two keys)
    refuse_broken([
        (type(ckpt["epoch"]) is int and ckpt["epoch"] >= 0, f"{path}: its epoch is {ckpt['epoch']!r}, not a count: the file was edited or damaged"),
        (ckpt.get("precision", "fp32") in PRECISIONS, f"{path}: its precision is {ckpt.get('precision')!r}, not one of {', '.join(PRECISIONS)}"),
        *((name_ok(ckpt.get(key)), f"{path}: its {key} is {ckpt.get(key)!r}, not a name printable on one line") for key in ("run_name", "run_group")),
    ])  # fmt: skip


PRECISIONS = ("fp32", "bf16", "fp16")  # what a checkpoint's `precision` says it was tested in (cifar.core.hardware.Precision)


def _same_dataset(cfg: DictConfig, ckpt: tuple[list[str], DictConfig], baseline: tuple[list[str], DictConfig]) -> None:
    """The baseline is scored on the test set read for ckpt: refused, naming what differs, unless both checkpoints name the
    same classes and read their images alike (dataset, its torchvision files, resizing)."""
    if baseline[0] != ckpt[0]:
        raise UserError(f"baseline={cfg.baseline} was trained on other classes than ckpt={cfg.ckpt}: compare checkpoints of one dataset")
    if odd := next((key for key in ("name", "torchvision", "resize") if baseline[1][key] != ckpt[1][key]), None):
        raise UserError(
            f"baseline={cfg.baseline} read its images with data.{odd}={baseline[1][odd]}, ckpt={cfg.ckpt} with {ckpt[1][odd]}: "
            "compare checkpoints of one dataset, read alike"
        )


def read_test_set(cfg: DictConfig, stored: DictConfig, classes: list[str], ckpt: dict) -> Dataset:
    """The test set to score a checkpoint on: read from where `cfg.data` (the user) says, as the checkpoint's dataset
    spec says to read it, labelled by the checkpoint's class names (a folder copy must hold exactly those class folders,
    each image labelled by its folder's name, so no copy can shift the labels). A checkpoint never says where: when the
    data is not found, the line names the folder its run read, for the user to pass as data.root if it is on this machine."""
    data = {**OmegaConf.to_container(stored.data), "classes": classes, **OmegaConf.to_container(cfg.data)}
    try:
        return load_configured(data)
    except UserError as e:
        trained_on = (ckpt["config"].get("data") or {}).get("root")
        elsewhere = not (Path(cfg.data.root).expanduser() / "train").is_dir()  # no folder copy there (one of other classes: no hint)
        hint = (
            elsewhere
            and isinstance(trained_on, str)
            and trained_on.isprintable()
            and "${" not in trained_on
            and trained_on != cfg.data.root
        )
        raise UserError(f"{e} (its run read {trained_on!r}: data.root={trained_on} if it is on this machine)" if hint else str(e)) from None


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Test-set accuracy of a checkpoint (and of `cfg.baseline` beside it), with a confusion-matrix and a predictions picture.

    The model, its class names and how its images are prepared come from each checkpoint, checked (_load_model); where the
    test images are read from is `cfg.data`'s alone (read_test_set).
    """
    plugins.load(cfg.plugins)  # before the checkpoints' models are checked: where one that is not this project's comes from
    check_evaluate(cfg)
    for line in unused_evaluate_settings(cfg, given_keys()):
        log.warning(line)
    device = pick_device(cfg.device)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.images:  # your own images instead of the test set
        model, ckpt, stored, classes, precision = _load_model(cfg.ckpt, cfg, device)
        result = classify_images(model, classes, stored, precision, device, cfg, out)
        figures = {"images": len(result["images"]), "unreadable": len(result["unreadable"])}
        record_in_wandb(cfg, ckpt, f"your images through {type(model).__name__}", figures, ["images.png"], out)
        return result
    paths = [cfg.ckpt] + ([cfg.baseline] if cfg.baseline else [])
    loaded = [_load_model(path, cfg, device) for path in paths]  # every checkpoint is checked before the data is read
    _, first, stored, classes, _ = loaded[0]
    if len(loaded) > 1:  # one test set, read once, for both: the same dataset, read the same way
        _same_dataset(cfg, (classes, stored.data), (loaded[1][3], loaded[1][2].data))
    data = read_test_set(cfg, stored, classes, first)

    # (report, predictions) per checkpoint, in the order of `paths`
    reports = [_test_report(path, entry, data.test, cfg, device) for path, entry in zip(paths, loaded, strict=True)]
    report, classes = reports[0][0], reports[0][0]["classes"]
    write_predictions(reports[0][1], out / PREDICTIONS_FILE)
    if cfg.baseline:
        report["baseline"] = reports[1][0]
        report["image_by_image"] = image_by_image(reports[0][1], reports[1][1])
        write_predictions(reports[1][1], out / BASELINE_PREDICTIONS_FILE)
    print_evaluation(report)

    # Pictures read in the study's "before / after" order: the baseline first, then the checkpoint evaluated.
    shown = [(_label(r, reports), r, p) for r, p in reversed(reports)]
    if cfg.baseline:
        print_comparison([(label, r) for label, r, _ in shown], report["image_by_image"])
    plot_confusion([(label, r["confusion"]) for label, r, _ in shown], classes, out / "confusion.png")
    plot_reliability([(label, r["calibration"]) for label, r, _ in shown], out / "reliability.png")
    pictures = ["confusion.png", "reliability.png"]
    if sample := sample_indices(len(data.test), cfg.samples, cfg.sample_seed).tolist():
        predictions = [(label, torch.from_numpy(p.plain.predicted[sample])) for label, _, p in shown]
        print_predictions(sample, data.test.labels[sample], predictions, classes)
        plot_predictions(data.test.images[sample], data.test.labels[sample], predictions, classes, out / "predictions.png")
        pictures.append("predictions.png")
    atomic_write_json(report, out / "evaluation.json")
    log.info("wrote evaluation.json, %s and the predictions image by image (%s) in %s", ", ".join(pictures), PREDICTIONS_FILE, out)
    name = " vs ".join(label for label, _, _ in reversed(shown))  # FastNet (60.9%) vs Net (37.9%)
    record_in_wandb(cfg, first, name, _figures(report), pictures, out)
    return report


def _test_report(
    path: str, loaded: tuple, test_set: Split, cfg: DictConfig, device: torch.device
) -> tuple[dict[str, Any], TestPredictions]:
    """One checkpoint's figures on the test set (accuracy, per class, loss, calibration, TTA's where asked) and its
    predictions image by image, batched as its run batched its test set. `loaded`: what _load_model gave for it. Costs
    one forward pass over the test set (the probabilities are the same logits'), six more with tta=flip_translate."""
    model, ckpt, stored, classes, precision = loaded
    test = eval_batches(stored, test_set, device, cfg.batch_size)
    scores = refuse_not_finite(path, score(model, test, precision, len(classes), probabilities=True))
    report = accuracy_report(scores.confusion, classes)
    report.update(
        loss=scores.loss,
        ckpt=str(Path(path).resolve()),
        model=type(model).__name__,
        run=ckpt.get("run_name") or Path(path).parent.name,
        epoch=ckpt["epoch"],
        precision=precision.name,
    )
    report["calibration"] = calibration(torch.from_numpy(scores.predictions.probabilities), test_set.labels)
    report["ece"] = report["calibration"]["ece"]
    with_tta = None
    if tta_mode(cfg.tta):  # reported beside the plain figure, never instead of it
        with_tta = refuse_not_finite(path, score(model, test, precision, len(classes), tta=cfg.tta, probabilities=True))
        report["tta_acc"], report["tta_loss"], report["tta"] = with_tta.acc, with_tta.loss, tta_mode(cfg.tta)
    return report, TestPredictions(scores.predictions, with_tta and with_tta.predictions)


def image_by_image(ours: TestPredictions, theirs: TestPredictions) -> dict[str, Any]:
    """The checkpoint against the baseline on the same test images: the images only one of them gets right, McNemar's
    exact p, and each one's accuracy with its 95% interval from the test set's size (cifar/results/stats.py)."""
    test = mcnemar(ours.plain.right, theirs.plain.right)
    interval = lambda p: list(accuracy_interval(int(p.right.sum()), len(p.right)))  # noqa: E731 (one rule, two checkpoints)
    return {"only_ckpt_right": test.only_a, "only_baseline_right": test.only_b, "mcnemar_p": test.p, "differ": test.p < 1 - LEVEL,
            "acc_interval": interval(ours.plain), "baseline_acc_interval": interval(theirs.plain)}  # fmt: skip


def _figures(report: dict) -> dict[str, Any]:
    """What the W&B run's summary holds: each checkpoint's test figures (`baseline/...` for the baseline's)."""
    keys = ("acc", "loss", "ece", "tta_acc", "model", "run", "epoch", "ckpt")
    figures = {f"test/{k}": report[k] for k in keys if k in report}
    if "baseline" in report:
        figures |= {f"baseline/{k}": v for k, v in _figures(report["baseline"]).items()}
    return figures


def record_in_wandb(cfg: DictConfig, ckpt: dict, name: str, figures: dict[str, Any], pictures: list[str], out: Path) -> None:
    """With wandb.mode offline or online: this evaluation as a W&B run of its own (job type "evaluation") in the project
    and group of the checkpoint's run (wandb.project moves it), `figures` as its summary and each picture as a W&B
    image (`evaluation/confusion`, `evaluation/predictions`, `evaluation/images`). The files are written first: a W&B
    failure costs only W&B's copy, with one warning."""
    if cfg.wandb.mode == "disabled":
        return
    try:
        import wandb  # ~0.7 s of imports, only for an evaluation recorded in W&B

        from cifar.run.wandb_sink import open_wandb_run

        # Where W&B records is the user's: a checkpoint's project and group are only labels here, each a plain name
        # (a project of its own characters, a printable group), and its entity and tags are never taken.
        kept = ckpt["config"].get("wandb") if isinstance(ckpt["config"].get("wandb"), dict) else {}
        project = cfg.wandb.project or _plain(kept.get("project"), r"[\w.-]{1,128}") or DEFAULT_PROJECT
        settings = OmegaConf.create({"mode": cfg.wandb.mode, "project": project, "entity": None, "tags": []})
        asked = ("images", "top") if cfg.images else ("baseline", "samples", "sample_seed")
        config = {key: cfg[key] for key in ("ckpt", "tta", *asked)}
        group = ckpt.get("run_group") or _plain(kept.get("group"), r"[^\x00-\x1f\x7f$]{1,128}")  # from before run_group was kept
        run, _ = open_wandb_run(settings, name, group, out, config, job_type="evaluation")
        with run:
            run.log({f"evaluation/{Path(p).stem}": wandb.Image(str(out / p), caption=name) for p in pictures})
            run.summary.update(figures)
    except Exception as e:  # wandb raises many types; the evaluation itself is complete
        log.warning("W&B did not take this evaluation (%s); evaluation.json and the pictures in %s are complete", first_line(e), out)


DEFAULT_PROJECT = "cifar"  # conf/logger/wandb.yaml's, for a checkpoint that names no plain project


def _plain(value: Any, pattern: str) -> str | None:
    """A name a checkpoint stores, if it is a string matching `pattern` whole; None otherwise."""
    return value if isinstance(value, str) and re.fullmatch(pattern, value) else None


def _label(report: dict, reports: list[tuple[dict, torch.Tensor]]) -> str:
    """`VGG16 (74.8%)`; the run's name is added when both checkpoints hold the same model."""
    same_model = len({r["model"] for r, _ in reports}) < len(reports)
    where = f" {report['run']}" if same_model else ""
    return f"{report['model']}{where} ({report['acc']:.1%})"
