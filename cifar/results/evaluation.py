"""`evaluate(cfg)` behind `evaluate.py`: a checkpoint rebuilt as it was trained, scored on the test set (or on your images)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from cifar.core.data import CIFAR10_CLASSES, load_configured, sample_indices
from cifar.core.hardware import Precision, forward_gflop, pick_device, pick_precision
from cifar.core.scoring import accuracy_report, calibration, class_probabilities, refuse_not_finite, refuse_unscorable, score
from cifar.core.tta import tta_mode
from cifar.errors import UserError, first_line
from cifar.files import atomic_write_json
from cifar.results.images import classify_images
from cifar.results.plots import plot_confusion, plot_predictions, plot_reliability
from cifar.run.build import build_model, eval_batches
from cifar.run.checkpoint import load_checkpoint
from cifar.run.config import check_evaluate, given_keys, unused_evaluate_settings
from cifar.run.console import print_comparison, print_evaluation, print_predictions
from cifar.run.tracking import checkpoint_path

log = logging.getLogger(__name__)


def classes_of(ckpt: dict) -> list[str]:
    """The class names of a checkpoint's dataset, label by label; CIFAR-10's for one written before they were kept."""
    return list(ckpt.get("classes", CIFAR10_CLASSES))


def _load_model(path: str, cfg: DictConfig, device: torch.device) -> tuple[nn.Module, dict, DictConfig, Precision]:
    """The model of a checkpoint, rebuilt from the config stored in it, at the precision it was tested with (or `cfg.amp`)."""
    ckpt = load_checkpoint(checkpoint_path(path))
    try:
        stored = OmegaConf.create(ckpt["config"])
        model = build_model(stored, device, len(classes_of(ckpt)))  # as training built it: same class, arguments and memory format
    except (UserError, OmegaConfBaseException, TypeError, ValueError) as e:  # a class gone, or one no file may name; a config
        raise UserError(f"{path}: its model cannot be built here ({first_line(e)})") from None  # not of this project's shape
    try:
        model.load_state_dict(ckpt["model_state_dict"])
    except RuntimeError as e:
        raise UserError(f"{path}: its weights do not fit the model stored with it ({str(e).splitlines()[0]})") from None
    refuse_unscorable(path, ckpt["model_state_dict"], stored.data.mean, stored.data.std)  # NaN weights, a std of 0
    # By default, the precision the run was tested with at the end of training, so the figures agree.
    if cfg.amp is None and "precision" not in ckpt:
        log.warning("%s does not say which precision it was tested in (an older checkpoint): evaluating in fp32; amp=true for bf16", path)
    amp = cfg.amp if cfg.amp is not None else ckpt.get("precision", "fp32") != "fp32"
    precision = pick_precision(device, amp, stored.amp_dtype, lambda: forward_gflop(model, cfg.batch_size, device))
    return model, ckpt, stored, precision


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Test-set accuracy of a checkpoint (and of `cfg.baseline` beside it), with a confusion-matrix and a predictions picture.

    The model and data settings come from the config stored in each checkpoint; `cfg.data` overrides where the data lives.
    """
    check_evaluate(cfg)
    for line in unused_evaluate_settings(cfg, given_keys()):
        log.warning(line)
    device = pick_device(cfg.device)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.images:  # your own images instead of the test set
        model, ckpt, stored, precision = _load_model(cfg.ckpt, cfg, device)
        result = classify_images(model, classes_of(ckpt), stored, precision, device, cfg, out)
        figures = {"images": len(result["images"]), "unreadable": len(result["unreadable"])}
        record_in_wandb(cfg, ckpt, stored, f"your images through {type(model).__name__}", figures, ["images.png"], out)
        return result
    paths = [cfg.ckpt] + ([cfg.baseline] if cfg.baseline else [])
    loaded = [_load_model(path, cfg, device) for path in paths]  # every checkpoint is checked before the data is read
    data_cfg = OmegaConf.merge(loaded[0][2].data, {k: v for k, v in cfg.data.items() if v is not None})
    data = load_configured(data_cfg)

    reports = []  # (report, predictions) per checkpoint, in the order of `paths`
    for path, (model, ckpt, stored, precision) in zip(paths, loaded, strict=True):
        test = eval_batches(stored, data.test, device, cfg.batch_size)  # as its run's test set was batched
        classes = classes_of(ckpt)
        scores = refuse_not_finite(path, score(model, test, precision, len(classes)))
        report = accuracy_report(scores.confusion, classes)
        report.update(
            loss=scores.loss,
            ckpt=str(Path(path).resolve()),
            model=type(model).__name__,
            run=ckpt.get("run_name", Path(path).parent.name),
            epoch=ckpt["epoch"],
            precision=precision.name,
        )
        # How sure it is: one more forward pass over the test set for the probabilities (calibration needs them, scoring not).
        report["calibration"] = calibration(class_probabilities(model, test, precision), data.test.labels)
        report["ece"] = report["calibration"]["ece"]
        if tta_mode(cfg.tta):  # reported beside the plain figure, never instead of it
            with_tta = refuse_not_finite(path, score(model, test, precision, len(classes), tta=cfg.tta))
            report["tta_acc"], report["tta_loss"], report["tta"] = with_tta.acc, with_tta.loss, tta_mode(cfg.tta)
        reports.append((report, scores.preds))
    report, classes = reports[0][0], reports[0][0]["classes"]
    if cfg.baseline:
        report["baseline"] = reports[1][0]
    print_evaluation(report)

    # Pictures read in the study's "before / after" order: the baseline first, then the checkpoint evaluated.
    shown = [(_label(r, reports), r, p) for r, p in reversed(reports)]
    if cfg.baseline:
        print_comparison([(label, r) for label, r, _ in shown])
    plot_confusion([(label, r["confusion"]) for label, r, _ in shown], classes, out / "confusion.png")
    plot_reliability([(label, r["calibration"]) for label, r, _ in shown], out / "reliability.png")
    pictures = ["confusion.png", "reliability.png"]
    if sample := sample_indices(len(data.test), cfg.samples, cfg.sample_seed).tolist():
        predictions = [(label, p[sample]) for label, _, p in shown]
        print_predictions(sample, data.test.labels[sample], predictions, classes)
        plot_predictions(data.test.images[sample], data.test.labels[sample], predictions, classes, out / "predictions.png")
        pictures.append("predictions.png")
    atomic_write_json(report, out / "evaluation.json")
    log.info("wrote evaluation.json, %s in %s", ", ".join(pictures), out)
    name = " vs ".join(label for label, _, _ in reversed(shown))  # FastNet (60.9%) vs Net (37.9%)
    record_in_wandb(cfg, loaded[0][1], loaded[0][2], name, _figures(report), pictures, out)
    return report


def _figures(report: dict) -> dict[str, Any]:
    """What the W&B run's summary holds: each checkpoint's test figures (`baseline/...` for the baseline's)."""
    keys = ("acc", "loss", "ece", "tta_acc", "model", "run", "epoch", "ckpt")
    figures = {f"test/{k}": report[k] for k in keys if k in report}
    if "baseline" in report:
        figures |= {f"baseline/{k}": v for k, v in _figures(report["baseline"]).items()}
    return figures


def record_in_wandb(
    cfg: DictConfig, ckpt: dict, stored: DictConfig, name: str, figures: dict[str, Any], pictures: list[str], out: Path
) -> None:
    """With wandb.mode offline or online: this evaluation as a W&B run of its own (job type "evaluation") in the project
    and group of the checkpoint's run (wandb.project moves it), `figures` as its summary and each picture as a W&B
    image (`evaluation/confusion`, `evaluation/predictions`, `evaluation/images`). The files are written first: a W&B
    failure costs only W&B's copy, with one warning."""
    if cfg.wandb.mode == "disabled":
        return
    try:
        import wandb  # ~0.7 s of imports, only for an evaluation recorded in W&B

        from cifar.run.wandb_sink import open_wandb_run

        settings = OmegaConf.merge(stored.wandb, {"mode": cfg.wandb.mode, "project": cfg.wandb.project or stored.wandb.project})
        asked = ("images", "top") if cfg.images else ("baseline", "samples", "sample_seed")
        config = {key: cfg[key] for key in ("ckpt", "tta", *asked)}
        group = ckpt.get("run_group", stored.wandb.group)  # a checkpoint from before run_group was kept: the configured group
        run, _ = open_wandb_run(settings, name, group, out, config, job_type="evaluation")
        with run:
            run.log({f"evaluation/{Path(p).stem}": wandb.Image(str(out / p), caption=name) for p in pictures})
            run.summary.update(figures)
    except Exception as e:  # wandb raises many types; the evaluation itself is complete
        log.warning("W&B did not take this evaluation (%s); evaluation.json and the pictures in %s are complete", first_line(e), out)


def _label(report: dict, reports: list[tuple[dict, torch.Tensor]]) -> str:
    """`VGG16 (74.8%)`; the run's name is added when both checkpoints hold the same model."""
    same_model = len({r["model"] for r, _ in reports}) < len(reports)
    where = f" {report['run']}" if same_model else ""
    return f"{report['model']}{where} ({report['acc']:.1%})"
