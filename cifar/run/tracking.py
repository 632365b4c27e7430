"""Where a run's numbers go: `metrics.jsonl` and `summary.json` in the job's folder, W&B, and TensorBoard if asked.

The local files are written first, so every run can be compared with no W&B at all and a
W&B problem never costs them.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import torch
import wandb
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from cifar.errors import UserError, first_line
from cifar.files import atomic_write_text, write_failure
from cifar.run.config import task_overrides
from cifar.run.record import EpochRecord
from cifar.run.tensorboard_sink import TensorBoardSink

log = logging.getLogger(__name__)


def run_identity(cfg: DictConfig) -> tuple[str, str | None]:
    """The W&B run name and group of this job.

    In a multirun the group is the sweep folder (the same for every job of one sweep) and the
    name is the job's values of the swept keys only, e.g. `optim.lr=0.01`, so the runs line up
    in the W&B run comparer. A single run is named by its overrides. `wandb.name` / `wandb.group`
    set in the config win.
    """
    name, group = cfg.wandb.name, cfg.wandb.group
    if HydraConfig.initialized():
        hc = HydraConfig.get()
        multirun = hc.mode.name == "MULTIRUN"
        if group is None and multirun:
            group = hc.sweep.dir
        if name is None:
            swept = _swept_keys(hc) if multirun else set()
            name = ",".join(sorted(o.input_line for o in task_overrides() if o.key_or_group in swept)) or hc.job.override_dirname
            name = name or hc.runtime.choices.get("experiment") or "default"
    return name or "default", group


def _swept_keys(hc: DictConfig) -> set[str]:
    """Keys with several values in this sweep: from the command line (as Hydra saved it in
    `<sweep dir>/multirun.yaml` before the first job, whatever the launcher) and from an
    experiment's `hydra.sweeper.params`."""
    keys = {key.lstrip("+~") for key in hc.sweeper.get("params") or {}}  # `+key` adds a key: its name is `key`
    saved = Path(hc.sweep.dir) / "multirun.yaml"
    if saved.is_file():
        task = OmegaConf.load(saved).hydra.overrides.task
        keys |= {o.key_or_group for o in OverridesParser.create().parse_overrides(list(task)) if o.is_sweep_override()}
    return keys


# How long an online W&B run may take to reach the server before the run goes offline instead.
ONLINE_INIT_TIMEOUT_S = 30


def wandb_init_kwargs(
    settings: DictConfig,
    name: str,
    group: str | None,
    output_dir: Path,
    config: dict,
    continue_id: str | None = None,
    job_type: str = "train",
) -> dict[str, Any]:
    """wandb.init's arguments for this job. A resumed run online continues its W&B run (`continue_id`, kept in last.pt)."""
    kwargs = dict(project=settings.project, entity=settings.entity, group=group, name=name, tags=list(settings.tags),
                  dir=str(output_dir), config=config, job_type=job_type)  # fmt: skip
    if continue_id and settings.mode == "online":
        kwargs |= {"id": continue_id, "resume": "must"}
    return kwargs


def open_wandb_run(
    settings: DictConfig,
    name: str,
    group: str | None,
    output_dir: Path,
    config: dict,
    enabled: bool = True,
    continue_id: str | None = None,
    job_type: str = "train",
) -> tuple[wandb.sdk.wandb_run.Run, bool]:
    """The job's W&B run, in its folder, and whether it continues the W&B run of the run resumed (`continue_id`).
    `settings` is a config's `wandb` node (mode, project, entity, tags). Use the run as a context manager: a crash then
    marks it failed.

    Online, a resumed run continues the same W&B run, its history already there. Offline, W&B cannot continue a run:
    the resumed run is a new offline run, to be given the whole history. `wandb.mode=online` with no API key or no
    network never prompts and never loses the run: it is recorded offline instead, with a warning saying how to upload
    it later. `enabled=False` (every torchrun rank but 0) gives a run whose every call does nothing. `job_type` is
    "train", or "evaluation" for evaluate.py's runs.
    """
    if not enabled:
        return wandb.init(mode="disabled"), False
    kwargs = wandb_init_kwargs(settings, name, group, output_dir, config, continue_id, job_type)
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
    elif continue_id and settings.mode == "offline":
        log.info("W&B offline cannot continue a run: this resumed run is a new offline W&B run holding all its epochs")
    return wandb.init(mode="offline" if settings.mode == "online" else settings.mode, **kwargs), False


# evaluate.py's ckpt= (and baseline=) take a W&B model artifact as well as a path: ckpt=wandb:<entity>/<project>/model-<run id>:best
ARTIFACT_PREFIX = "wandb:"


def checkpoint_path(ckpt: str) -> str:
    """A local checkpoint path as it is; a W&B model artifact reference downloaded first (needs W&B online and a login)."""
    if not ckpt.startswith(ARTIFACT_PREFIX):
        return ckpt
    try:
        artifact = wandb.Api(timeout=30).artifact(ckpt[len(ARTIFACT_PREFIX) :], type="model")
        return str(Path(artifact.download()) / "ckpt.pt")
    except Exception as e:  # no login, no network, no such artifact: wandb raises several types
        reason = first_line(e)
        raise UserError(
            f"ckpt={ckpt}: could not fetch it from W&B ({reason}): `wandb login` and be online, or pass a local ckpt.pt"
        ) from None


def _jsonable(value: Any) -> Any:
    # JSON has no NaN/Infinity; a diverged loss is recorded as null rather than an invalid file.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def metrics_line(record: EpochRecord) -> str:
    """One epoch's line of metrics.jsonl."""
    return json.dumps({k: _jsonable(v) for k, v in record.row().items()}) + "\n"


def write_summary(output_dir: Path, summary: dict[str, Any]) -> None:
    """summary.json, whole or not at all (cifar/run/lifecycle.py decides when)."""
    atomic_write_text(json.dumps({k: _jsonable(v) for k, v in summary.items()}, indent=2) + "\n", output_dir / "summary.json")


def predictions(sample: dict[str, Any]) -> dict[str, Any]:
    """A few test images with a model's classes, as Recorder.log_test logs them: images and a table sharing them."""
    rows = list(zip(sample["index"], sample["images"], sample["labels"], sample["preds"], sample["probs"], strict=True))
    names = sample["classes"]
    images = [
        wandb.Image(image.permute(1, 2, 0).numpy(), caption=f"test image {i}: {names[true]} -> {names[pred]} ({prob:.0%})")
        for i, image, true, pred, prob in rows
    ]
    columns = ["test_index", "image", "true_class", "predicted_class", "probability", "correct"]
    data = [[i, im, names[true], names[pred], prob, pred == true] for (i, _, true, pred, prob), im in zip(rows, images, strict=True)]
    return {"test/predictions": images, "test/predictions_table": wandb.Table(columns=columns, data=data)}


class Recorder:
    """One job's record: a line per epoch in `metrics.jsonl`, a `summary.json` at the end, the same in W&B and, given
    one, in TensorBoard (cifar/run/tensorboard_sink.py)."""

    def __init__(
        self, output_dir: str | os.PathLike, wandb_run: wandb.sdk.wandb_run.Run, history: list[EpochRecord] = (), replay: bool = True,
        tensorboard: TensorBoardSink | None = None,
    ):  # fmt: skip
        self.output_dir = Path(output_dir)
        self.wandb_run, self.tensorboard = wandb_run, tensorboard
        self.metrics_path = self.output_dir / "metrics.jsonl"
        self.failed: set[str] = set()  # the sinks that refused something: each is warned about once
        wandb_run.define_metric("epoch")
        wandb_run.define_metric("*", step_metric="epoch")
        wandb_run.define_metric("val/acc", summary="max")
        wandb_run.define_metric("train/acc", summary="max")
        wandb_run.define_metric("train/loss", summary="min")
        wandb_run.define_metric("val/loss", summary="min")
        # A resumed run starts with the epochs its checkpoint already holds, in the file, and in W&B unless the W&B
        # run is the one continued (online), which holds them already (`replay=False`).
        atomic_write_text("".join(metrics_line(m) for m in history), self.metrics_path)
        for record in history if replay else ():
            self._to_wandb(lambda r=record: wandb_run.log(r.row()))

    def ran_on(self, facts: dict[str, Any]) -> None:
        """What makes two runs comparable (the data copy, precision, device, CPU class, versions), in W&B's config as
        `ran_on`, so that its run table can filter and group by them; summary.json holds them too."""
        self._to_wandb(lambda: self.wandb_run.config.update({"ran_on": facts}, allow_val_change=True))

    def log_epoch(self, record: EpochRecord) -> None:
        try:
            with open(self.metrics_path, "a") as f:
                f.write(metrics_line(record))
        except OSError as e:  # a full disk: one line; a reader skips the half-written last line
            raise write_failure(self.metrics_path, e, whole=False) from None
        self._to_wandb(lambda: self.wandb_run.log(record.row()))
        if self.tensorboard:
            self._to("TensorBoard", lambda: self.tensorboard.log_epoch(record))

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

        def log() -> None:
            table = wandb.Table(columns=["class", "accuracy"], data=[[c, test["per_class_acc"][c]] for c in classes])
            chart = wandb.plot.confusion_matrix(y_true=y_true, preds=preds, class_names=classes, title="test confusion matrix")
            self.wandb_run.log({"test/per_class_acc": table, "test/confusion_matrix": chart} | (predictions(sample) if sample else {}))

        self._to_wandb(log)

    def log_model(self, path: Path, metadata: dict[str, Any]) -> None:
        """The best checkpoint as a W&B model artifact, `model-<run id>` with aliases best and latest and the figures it was
        chosen on as metadata; an offline run keeps it for `wandb sync`. Costs its size again on disk (and in upload)."""

        def log() -> None:
            artifact = wandb.Artifact(f"model-{self.wandb_run.id}", type="model", metadata=metadata)
            artifact.add_file(str(path), name="ckpt.pt")
            self.wandb_run.log_artifact(artifact, aliases=["best", "latest"])

        self._to_wandb(log)

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_summary(self.output_dir, summary)
        self._to_wandb(lambda: self.wandb_run.summary.update({k: v for k, v in summary.items() if k != "config"}))
        if self.tensorboard:
            self._to("TensorBoard", lambda: self.tensorboard.write_summary(summary))

    def _to_wandb(self, send) -> None:
        self._to("W&B", send)

    def _to(self, sink: str, send) -> None:
        """The local files are already written: an error in W&B or TensorBoard costs only its copy, with one warning."""
        try:
            send()
        except Exception as e:  # wandb and tensorboard raise many types
            if sink not in self.failed:
                log.warning("%s did not take this run's metrics (%s); metrics.jsonl and summary.json are complete", sink, first_line(e))
            self.failed.add(sink)


class NoRecord:
    """What the torchrun ranks other than 0 record: nothing (rank 0 writes the one record of the run)."""

    def ran_on(self, facts: dict[str, Any]) -> None:
        pass

    def log_epoch(self, record: EpochRecord) -> None:
        pass

    def log_test(self, test: dict[str, Any], sample: dict[str, Any] | None = None) -> None:
        pass

    def log_model(self, path: Path, metadata: dict[str, Any]) -> None:
        pass

    def write_summary(self, summary: dict[str, Any]) -> None:
        pass
