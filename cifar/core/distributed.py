"""Data-parallel training with torchrun: which process this is, and the few collectives training needs.

`torchrun --nproc_per_node=N train.py ...` starts N copies of train.py with RANK, WORLD_SIZE,
LOCAL_RANK and LOCAL_WORLD_SIZE set; plain `python train.py` has none of them and is one rank of
one, for which every collective here is a no-op.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from cifar import errors
from cifar.core.data import Split

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ranks:
    rank: int = 0  # this process among all of them
    world: int = 1  # how many processes train the one model
    local_rank: int = 0  # this process among those on this machine: its GPU index
    local_world: int = 1  # processes on this machine, which share its CPU cores

    @property
    def main(self) -> bool:
        """Rank 0 alone prints, writes checkpoints, metrics and summary.json, and opens the W&B run."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The tensor summed over every rank (in place; returned for convenience)."""
        if self.distributed:
            dist.all_reduce(tensor)
        return tensor

    def shard(self, split: Split) -> Split:
        """Every `world`-th image from `rank` on: validation and test split evenly, each image on exactly one rank."""
        if not self.distributed:
            return split
        return Split(split.images[self.rank :: self.world], split.labels[self.rank :: self.world])

    def broadcast_from_main(self, model: torch.nn.Module) -> None:
        """Rank 0's weights (and buffers) on every rank."""
        if self.distributed:
            for tensor in model.state_dict().values():
                dist.broadcast(tensor, src=0)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def ranks_from_environment() -> Ranks:
    env = os.environ
    if "WORLD_SIZE" not in env:
        return Ranks()
    world = int(env["WORLD_SIZE"])
    return Ranks(int(env["RANK"]), world, int(env.get("LOCAL_RANK", 0)), int(env.get("LOCAL_WORLD_SIZE", world)))


def start(ranks: Ranks, device: torch.device) -> None:
    """Join the process group torchrun set up: NCCL between GPUs, gloo between CPU processes."""
    if ranks.distributed and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=ranks.rank, world_size=ranks.world)


def stop(ranks: Ranks) -> None:
    if ranks.distributed and dist.is_initialized():
        if dist.get_backend() == "gloo":
            # Every rank done before any tears down. Without it a rank 1 that had finished aborted once in the suite
            # ("terminate called without an active exception") while rank 0 was still closing its W&B run: gloo's
            # teardown racing a busy peer, we think. Bounded, so a rank that failed costs the others a minute, not a hang.
            try:
                dist.monitored_barrier(timeout=timedelta(seconds=60))
            except RuntimeError as e:
                log.warning("not every process reached the end of the run: %s", errors.first_line(e))
        dist.destroy_process_group()


def quiet_hydra_on_other_ranks() -> None:
    """Only rank 0 gets a run folder: the others would each make their own (Hydra names it by the second it starts)
    with a copy of the config and an empty log, which the report would then list as runs. Called before `@hydra.main`."""
    if int(os.environ.get("RANK", "0")) > 0:
        sys.argv += ["hydra.output_subdir=null", "hydra/job_logging=disabled", "hydra.run.dir=.", "hydra/hydra_logging=disabled"]
