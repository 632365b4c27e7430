"""W&B as a place a run's figures go (`wandb.mode=offline`, the default, or `online`): the run's W&B run, its epochs,
test tables, model artifact and summary; evaluate.py's own W&B runs; model artifacts as checkpoints.

Imported only where W&B is on, or for a `ckpt=wandb:...` reference: wandb loads ~0.7 s of modules (pydantic settings),
which a run with `wandb.mode=disabled` or `logger=none`, and every refused command, does without. cifar/run/tracking.py writes the run's own files first and
hands each figure here; an error here costs only W&B's copy.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import wandb
from omegaconf import DictConfig

from cifar.errors import UserError, first_line
from cifar.records import EpochRecord

log = logging.getLogger(__name__)

# How long an online W&B run may take to reach the server before the run goes offline instead.
ONLINE_INIT_TIMEOUT_S = 30


def open_wandb_run(
    settings: DictConfig,
    name: str,
    group: str | None,
    output_dir: Path,
    config: dict,
    continue_id: str | None = None,
    job_type: str = "train",
) -> tuple[wandb.sdk.wandb_run.Run, bool]:
    """The job's W&B run, in its folder, and whether it continues the W&B run of the run resumed (`continue_id`).
    `settings` is a config's `wandb` node (mode offline or online, project, entity, tags). Use the run as a context
    manager: a crash then marks it failed.

    Online, a resumed run continues the same W&B run, its history already there. Offline, W&B cannot continue a run:
    the resumed run is a new offline run, to be given the whole history. `wandb.mode=online` with no API key or no
    network never prompts and never loses the run: it is recorded offline instead, with a warning saying how to upload
    it later. `job_type` is "train", or "evaluation" for evaluate.py's runs.
    """
    kwargs = dict(project=settings.project, entity=settings.entity, group=group, name=name, tags=list(settings.tags),
                  dir=str(output_dir), config=config, job_type=job_type)  # fmt: skip
    if continue_id and settings.mode == "online":
        kwargs |= {"id": continue_id, "resume": "must"}
    if settings.mode == "online":
        try:
            return wandb.init(mode="online", settings=wandb.Settings(init_timeout=ONLINE_INIT_TIMEOUT_S), **kwargs), "resume" in kwargs
        except Exception as e:  # wandb raises UsageError without a key, CommError without a server or run, others besides
            reason = first_line(e)
            log.warning(
                "W&B online is unavailable (%s): recording this run offline; upload it later with `wandb sync %s/wandb/offline-run-*`",
                reason, output_dir,
            )  # fmt: skip
            kwargs = {k: v for k, v in kwargs.items() if k not in ("id", "resume")}
    elif continue_id:
        log.info("W&B offline cannot continue a run: this resumed run is a new offline W&B run holding all its epochs")
    return wandb.init(mode="offline", **kwargs), False


class WandbSink:
    """One training run's W&B run: what cifar/run/tracking.py's Recorder hands it, as W&B's run comparer reads it."""

    def __init__(self, run: wandb.sdk.wandb_run.Run):
        self.run, self.id = run, run.id
        run.define_metric("epoch")
        run.define_metric("*", step_metric="epoch")
        run.define_metric("val/acc", summary="max")
        run.define_metric("train/acc", summary="max")
        run.define_metric("train/loss", summary="min")
        run.define_metric("val/loss", summary="min")

    def ran_on(self, facts: dict[str, Any]) -> None:
        """What makes two runs comparable, in the run's config as `ran_on`, so that W&B's run table filters and groups by it."""
        self.run.config.update({"ran_on": facts}, allow_val_change=True)

    def log_epoch(self, record: EpochRecord) -> None:
        self.run.log(record.row())

    def log_test(self, test: dict[str, Any], sample: dict[str, Any] | None = None) -> None:
        """The test, as one W&B step: the per-class accuracy as a table and the confusion matrix as W&B's chart, for the run
        comparer; and with `sample` (training.sample_predictions) the tested model's classes for a few test images.
        Those are `test/predictions`, W&B images captioned `test image <i>: <true class> -> <predicted> (<probability>)`,
        kept in the run's folder, and `test/predictions_table`, the same as a table (its images go into a `run_table`
        artifact, which an offline run stages for `wandb sync`, as W&B does with every table). Every run shows the same
        images, so W&B's media panel lines the runs' answers up image by image, and joins their tables on `test_index`."""
        classes, confusion = test["classes"], torch.tensor(test["confusion"])
        # W&B's chart takes one (true, predicted) pair per image: rebuilt from the counts, which may sum several processes.
        pairs = torch.arange(len(classes) ** 2).repeat_interleave(confusion.flatten())
        y_true, preds = (pairs // len(classes)).tolist(), (pairs % len(classes)).tolist()
        table = wandb.Table(columns=["class", "accuracy"], data=[[c, test["per_class_acc"][c]] for c in classes])
        chart = wandb.plot.confusion_matrix(y_true=y_true, preds=preds, class_names=classes, title="test confusion matrix")
        self.run.log({"test/per_class_acc": table, "test/confusion_matrix": chart} | (predictions(sample) if sample else {}))

    def log_model(self, path: Path, metadata: dict[str, Any]) -> None:
        """The best checkpoint as a W&B model artifact, `model-<run id>` with aliases best and latest and the figures it was
        chosen on as metadata; an offline run keeps it for `wandb sync`. Costs its size again on disk (and in upload)."""
        artifact = wandb.Artifact(f"model-{self.id}", type="model", metadata=metadata)
        artifact.add_file(str(path), name="ckpt.pt")
        self.run.log_artifact(artifact, aliases=["best", "latest"])

    def write_summary(self, summary: dict[str, Any]) -> None:
        self.run.summary.update({k: v for k, v in summary.items() if k != "config"})

    def close(self, exc_type=None, exc=None, tb=None) -> None:
        """The W&B run ends as the run did: finished; Ctrl-C (exit code 130) or a user's mistake (1), closed before the
        exception leaves so that W&B prints no traceback of its own; a bug, whose traceback W&B records."""
        if exc_type is not None and (issubclass(exc_type, KeyboardInterrupt) or isinstance(exc, UserError)):
            self.run.finish(exit_code=130 if issubclass(exc_type, KeyboardInterrupt) else 1)  # not "finished" in W&B
            exc_type = exc = tb = None
        self.run.__exit__(exc_type, exc, tb)


def predictions(sample: dict[str, Any]) -> dict[str, Any]:
    """A few test images with a model's classes, as WandbSink.log_test logs them: images and a table sharing them."""
    rows = list(zip(sample["index"], sample["images"], sample["labels"], sample["preds"], sample["probs"], strict=True))
    names = sample["classes"]
    images = [
        wandb.Image(image.permute(1, 2, 0).numpy(), caption=f"test image {i}: {names[true]} -> {names[pred]} ({prob:.0%})")
        for i, image, true, pred, prob in rows
    ]
    columns = ["test_index", "image", "true_class", "predicted_class", "probability", "correct"]
    data = [[i, im, names[true], names[pred], prob, pred == true] for (i, _, true, pred, prob), im in zip(rows, images, strict=True)]
    return {"test/predictions": images, "test/predictions_table": wandb.Table(columns=columns, data=data)}


def fetch_artifact(reference: str) -> str:
    """A W&B model artifact (`<entity>/<project>/model-<run id>:best`), downloaded: its ckpt.pt's path. Needs W&B online
    and a login; one line saying so without them."""
    try:
        artifact = wandb.Api(timeout=30).artifact(reference, type="model")
        return str(Path(artifact.download()) / "ckpt.pt")
    except Exception as e:  # no login, no network, no such artifact: wandb raises several types
        reason = first_line(e)
        raise UserError(
            f"ckpt=wandb:{reference}: could not fetch it from W&B ({reason}): `wandb login` and be online, or pass a local ckpt.pt"
        ) from None
