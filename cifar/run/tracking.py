"""Where a run's numbers go: `metrics.jsonl` and `summary.json` in the job's folder, then W&B and TensorBoard if asked
(cifar/run/wandb_sink.py, cifar/run/tensorboard_sink.py).

The local files are written first, so every run can be compared with no W&B at all and a
W&B problem never costs them.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig

from cifar.config.compose import task_overrides
from cifar.errors import first_line
from cifar.files import atomic_write_json, atomic_write_text, json_text, write_failure
from cifar.records import EpochRecord, read_stored_yaml, stored_node

if TYPE_CHECKING:
    from cifar.run.tensorboard_sink import TensorBoardSink
    from cifar.run.wandb_sink import WandbSink

log = logging.getLogger(__name__)


def run_identity(cfg: DictConfig) -> tuple[str, str | None]:
    """The W&B run name and group of this job.

    In a multirun the group is the sweep folder (the same for every job of one sweep) and the
    name is the job's values of the swept keys only, e.g. `optim.lr=0.01`, so the runs line up
    in the W&B run comparer. A single run is named by its overrides. Either way the experiment
    leads the name (`experiment=fastnet,seed=1`): the run names override_dirname makes leave it
    out, and without it two experiments' `seed=1` runs share a name in one W&B project.
    `wandb.name` / `wandb.group` set in the config win.
    """
    name, group = cfg.wandb.name, cfg.wandb.group
    if HydraConfig.initialized():
        hc = HydraConfig.get()
        multirun = hc.mode.name == "MULTIRUN"
        if group is None and multirun:
            group = hc.sweep.dir
        if name is None:
            swept = _swept_keys(hc) if multirun else set()
            parts = sorted(o.input_line for o in task_overrides() if o.key_or_group in swept) or [hc.job.override_dirname]
            experiment = hc.runtime.choices.get("experiment")
            if experiment and f"experiment={experiment}" not in parts:  # a swept experiment is in the name already
                parts.insert(0, f"experiment={experiment}")
            name = ",".join(part for part in parts if part)
    return name or "default", group


def _swept_keys(hc: DictConfig) -> set[str]:
    """Keys with several values in this sweep: from the command line (as Hydra saved it in
    `<sweep dir>/multirun.yaml` before the first job, whatever the launcher) and from an
    experiment's `hydra.sweeper.params`."""
    keys = {key.lstrip("+~") for key in hc.sweeper.get("params") or {}}  # `+key` adds a key: its name is `key`
    saved = Path(hc.sweep.dir) / "multirun.yaml"
    if saved.is_file():
        task = stored_node(read_stored_yaml(saved), "hydra", "overrides").get("task") or []  # read as text: nothing resolved
        keys |= {o.key_or_group for o in OverridesParser.create().parse_overrides(list(map(str, task))) if o.is_sweep_override()}
    return keys


# evaluate.py's ckpt= (and baseline=) take a W&B model artifact as well as a path: ckpt=wandb:<entity>/<project>/model-<run id>:best
ARTIFACT_PREFIX = "wandb:"


def checkpoint_path(ckpt: str) -> str:
    """A local checkpoint path as it is; a W&B model artifact reference downloaded first (needs W&B online and a login)."""
    if not ckpt.startswith(ARTIFACT_PREFIX):
        return ckpt
    from cifar.run.wandb_sink import fetch_artifact  # wandb's imports, only for a reference to W&B

    return fetch_artifact(ckpt.removeprefix(ARTIFACT_PREFIX))


def metrics_line(record: EpochRecord) -> str:
    """One epoch's line of metrics.jsonl (a diverged loss as null: JSON has no NaN)."""
    return json_text(record.row()) + "\n"


def write_summary(output_dir: Path, summary: dict[str, Any]) -> None:
    """summary.json, whole or not at all (cifar/run/lifecycle.py decides when)."""
    atomic_write_json(summary, output_dir / "summary.json")


class Recorder:
    """One job's record: a line per epoch in `metrics.jsonl`, a `summary.json` at the end, and the same in each sink given:
    W&B (cifar/run/wandb_sink.py) and TensorBoard (cifar/run/tensorboard_sink.py)."""

    def __init__(
        self, output_dir: str | os.PathLike, history: list[EpochRecord] = (), wandb: WandbSink | None = None, replay: bool = True,
        tensorboard: TensorBoardSink | None = None,
    ):  # fmt: skip
        self.output_dir = Path(output_dir)
        self.wandb, self.tensorboard = wandb, tensorboard
        self.metrics_path = self.output_dir / "metrics.jsonl"
        self.failed: set[str] = set()  # the sinks that refused something: each is warned about once
        # A resumed run starts with the epochs its checkpoint already holds, in the file, and in W&B unless the W&B
        # run is the one continued (online), which holds them already (`replay=False`).
        atomic_write_text("".join(metrics_line(m) for m in history), self.metrics_path)
        for record in history if replay else ():
            self._to_wandb(lambda w, r=record: w.log_epoch(r))

    def ran_on(self, facts: dict[str, Any]) -> None:
        """What makes two runs comparable (the data copy, precision, device, CPU class, versions), in W&B's config as
        `ran_on`, so that its run table can filter and group by them; summary.json holds them too."""
        self._to_wandb(lambda w: w.ran_on(facts))

    def log_epoch(self, record: EpochRecord) -> None:
        try:
            with open(self.metrics_path, "a") as f:
                f.write(metrics_line(record))
        except OSError as e:  # a full disk: one line; a reader skips the half-written last line
            raise write_failure(self.metrics_path, e, whole=False) from None
        self._to_wandb(lambda w: w.log_epoch(record))
        if self.tensorboard:
            self._to("TensorBoard", lambda: self.tensorboard.log_epoch(record))

    def log_test(self, test: dict[str, Any], sample: dict[str, Any] | None = None) -> None:
        """The best checkpoint's test report, and a few test images with its classes (`sample`), to W&B."""
        self._to_wandb(lambda w: w.log_test(test, sample))

    def log_model(self, path: Path, metadata: dict[str, Any]) -> None:
        """The best checkpoint as a W&B model artifact, with the figures it was chosen on as metadata."""
        self._to_wandb(lambda w: w.log_model(path, metadata))

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_summary(self.output_dir, summary)
        self._to_wandb(lambda w: w.write_summary(summary))
        if self.tensorboard:
            self._to("TensorBoard", lambda: self.tensorboard.write_summary(summary))

    def close(self, exc_type=None, exc=None, tb=None) -> None:
        """The W&B run ends as the run did (WandbSink.close); TensorBoard's files were closed with the summary."""
        if self.wandb:
            self.wandb.close(exc_type, exc, tb)

    def _to_wandb(self, send) -> None:
        if self.wandb:
            self._to("W&B", lambda: send(self.wandb))

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

    def close(self, exc_type=None, exc=None, tb=None) -> None:
        pass
