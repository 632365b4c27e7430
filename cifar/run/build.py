"""What a run trains with, built once from the config: the device and precision, the data as device batches,
the model, the optimizer, the learning-rate schedule, the gradient scaler and the metrics validation computes."""

from __future__ import annotations

import contextlib
import inspect
import logging
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from cifar.config.identity import CONSTANT_LR
from cifar.core.batches import DeviceBatches, seeded_draw, train_val_split
from cifar.core.callbacks import Callback
from cifar.core.data import Dataset, Split, load_configured
from cifar.core.distributed import Ranks, start
from cifar.core.ema import WeightEma
from cifar.core.hardware import Precision, configure_backends, cpu_threads, forward_gflop, pick_device, pick_precision
from cifar.core.lookahead import Lookahead
from cifar.core.steps import EagerStep, build_step, why_not_captured
from cifar.errors import UserError, first_line
from cifar.run.metrics import build_metrics
from cifar.run.targets import admit, build, build_each, shown

log = logging.getLogger(__name__)


@dataclass
class Parts:
    device: torch.device
    precision: Precision  # how the forward pass runs (bf16, fp16 or fp32)
    data: Dataset  # its classes and official train and test sets, whole
    train_set: Split  # the training images after the validation split
    val_set: Split | None  # None with data.val_split=0
    train_batches: DeviceBatches  # shuffled and augmented per (seed, epoch); this rank's share of every global batch
    val_batches: DeviceBatches | None  # this rank's shard of the validation set
    test_batches: DeviceBatches  # this rank's shard of the official test set (of a seeded draw of it with limit_batches)
    model: nn.Module  # the network, with its own parameter names: what checkpoints hold
    wrapped_model: nn.Module  # what a training step calls: the model, under DDP and torch.compile where configured
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler  # stepped after every optimizer step
    scaler: torch.amp.GradScaler  # fp16's loss scaling; a no-op in bf16 and fp32
    lookahead: Lookahead | None  # weight averaging every few steps (lookahead_every > 0); its state travels in last.pt
    ema: WeightEma | None  # the weights' moving average (ema_decay > 0): what is validated, checkpointed and tested
    callbacks: list[Callback]  # the recipe's own around the loop (cifar/core/callbacks.py): the model's, lookahead's, EMA's, in order
    metrics: dict[str, Any]  # the config's metrics by name, on the device: updated on every validation batch

    @property
    def evaluated_model(self) -> nn.Module:
        """The weights a run is judged by: their moving average with ema_decay > 0, else the model itself."""
        return self.ema.module if self.ema else self.model

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def build_parts(cfg: DictConfig, ranks: Ranks) -> Parts:
    """Seeded, so every rank starts from the same weights and draws the same batch order."""
    seed_everything(cfg.seed)
    device = pick_device(cfg.device, ranks.local_rank)
    launcher = HydraConfig.get().launcher if HydraConfig.initialized() else None  # how many jobs share this machine's cores
    configure_backends(device, cpu_threads(cfg.threads, ranks.local_world, launcher), cfg.deterministic)
    start(ranks, device)
    data, train_set, val_set, test_set = load_data(cfg, ranks)
    train_batches = make_batches(cfg, train_set, device, train=True, ranks=ranks, num_classes=len(data.classes))
    model = build_model(cfg, device, len(data.classes))
    if hasattr(model, "from_data"):  # a recipe's model may be set from training images (FastNet's whitening stem)
        model.from_data(train_batches.normalize(whitening_sample(train_set, cfg.data.split_seed).to(device)))
    # After from_data: the average starts from the weights training starts from.
    lookahead = Lookahead(model, cfg.lookahead_every, cfg.lookahead_decay, cfg.epochs * len(train_batches)) if cfg.lookahead_every else None
    ema = WeightEma(model, cfg.ema_decay) if cfg.ema_decay else None  # after from_data too
    # DDP averages the gradients over the ranks; checkpoints save `model`'s own, clean parameter names.
    wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) if ranks.distributed else model
    optimizer = build_optimizer(cfg, model)
    precision = pick_precision(device, cfg.amp, cfg.amp_dtype, lambda: forward_gflop(model, cfg.batch_size // ranks.world, device))
    parts = Parts(
        device=device, precision=precision, data=data, train_set=train_set, val_set=val_set, train_batches=train_batches,
        val_batches=make_batches(cfg, ranks.shard(val_set), device, train=False) if val_set else None,
        test_batches=make_batches(cfg, ranks.shard(test_set), device, train=False),
        model=model, wrapped_model=torch.compile(wrapped) if cfg.compile else wrapped, optimizer=optimizer,
        scheduler=build(cfg.sched, "sched")(optimizer, total_steps=cfg.epochs * len(train_batches)),
        scaler=torch.amp.GradScaler(device.type, enabled=precision.needs_grad_scaler),
        lookahead=lookahead, ema=ema, callbacks=[c for c in (model, lookahead, ema) if isinstance(c, Callback)],
        metrics=build_metrics(cfg.metrics, len(data.classes), device),
    )  # fmt: skip
    log.info(
        "%s: %s parameters on %s (%s); %d train / %d val / %d test images from %s%s",
        type(model).__name__, f"{parts.n_params:,}", device, precision.name, len(train_set), len(val_set or ()), len(test_set),
        data.source, f"; {ranks.world} processes, {cfg.batch_size // ranks.world} images each per step" if ranks.distributed else "",
    )  # fmt: skip
    return parts


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA too


# airbench94 sets its whitening stem from 5,000 training images: the first 5,000 of the original files, a mix of all classes.
WHITENING_IMAGES = 5000


def whitening_sample(train_set: Split, seed: int) -> torch.Tensor:
    """What a model's from_data hook sees: 5,000 training images drawn at random (fixed by `seed`): a folder copy lists its images class by class, so its
    first 5,000 would be airplanes only, whose sky-blue patches skew the whitening (RESULTS.md, the reference comparison)."""
    return train_set.images[seeded_draw(len(train_set), WHITENING_IMAGES, seed)]


def load_data(cfg: DictConfig, ranks: Ranks) -> tuple[Dataset, Split, Split | None, Split]:
    """The dataset, the study's train/val split and the test images. Rank 0 downloads or decodes first; the others then
    read its cache."""
    if not ranks.main:
        ranks.barrier()
    data = load_configured(cfg.data)
    if ranks.main:
        ranks.barrier()
    train_set, val_set = train_val_split(data.train, cfg.data.val_split, cfg.data.split_seed, cfg.data.subset)
    if cfg.batch_size > len(train_set):
        raise UserError(f"batch_size={cfg.batch_size} is larger than the {len(train_set)} training images: lower it")
    if cfg.limit_batches:
        splits = limit_batches(data.test, train_set, val_set, cfg.limit_batches, cfg.batch_size, cfg.eval_batch_size, cfg.data.split_seed)
        return data, *splits
    return data, train_set, val_set, data.test


def limit_batches(
    test_set: Split, train_set: Split, val_set: Split | None, n: int, batch_size: int, eval_batch_size: int, seed: int
) -> tuple[Split, Split | None, Split]:
    """The debug presets' splits: `n` batches of each, drawn at random (`seed`) from every class. Each split is drawn, not
    cut from the front: a folder copy lists its images class by class, and with no validation split (data.val_split=0)
    the training images stay in that order, whose first batches would be airplanes alone."""
    log.warning("limit_batches=%d: %d batches of each split, a debug run whose figures are not the dataset's", n, n)

    def drawn(split: Split, batch: int) -> Split:
        return split.subset(seeded_draw(len(split), n * batch, seed))

    return drawn(train_set, batch_size), val_set and drawn(val_set, eval_batch_size), drawn(test_set, eval_batch_size)


def build_model(cfg: DictConfig, device: torch.device, num_classes: int) -> nn.Module:
    """The configured model with `num_classes` outputs, the dataset's. A config that names its own (one stored before
    datasets were a config group: 10) must agree."""
    model = build(cfg.model, "model", num_classes=num_classes)  # only a model class of this project: the config may come from a checkpoint
    return model.to(device, memory_format=torch.channels_last if cfg.channels_last else torch.preserve_format)


def build_optimizer(cfg: DictConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The configured optimizer over the trainable parameters, in groups where the config asks for them:

    - decay_norm_and_bias=false: 1-d parameters (biases, BatchNorm) get no weight decay;
    - norm_lr_scale=s: BatchNorm's parameters train at lr * s, with weight decay / s, so that their
      decay per step (lr * weight_decay) is the other parameters' (airbench's "bias scaler").
    """
    params = [p for p in model.parameters() if p.requires_grad]  # frozen ones (a whitening stem, a fixed BatchNorm scale) stay out
    if cfg.decay_norm_and_bias and cfg.norm_lr_scale == 1:
        return build(cfg.optim, "optim")(params)
    batchnorms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)] if cfg.norm_lr_scale != 1 else []
    norm = {id(p) for m in batchnorms for p in m.parameters(recurse=False)}
    lr, decay = cfg.optim.lr, cfg.optim.get("weight_decay", 0.0)
    groups = [
        {"params": [p for p in params if p.ndim > 1]},
        {"params": [p for p in params if p.ndim <= 1 and id(p) not in norm], "weight_decay": decay if cfg.decay_norm_and_bias else 0.0},
        {"params": [p for p in params if id(p) in norm], "lr": lr * cfg.norm_lr_scale,
         "weight_decay": decay / cfg.norm_lr_scale if cfg.decay_norm_and_bias else 0.0},
    ]  # fmt: skip
    return build(cfg.optim, "optim")([g for g in groups if g["params"]])


# The steps a rehearsal's schedule is laid out over: its milestones fall on whole steps, whatever the fractions.
REHEARSAL_STEPS = 100


def rehearse_optimizer(cfg: DictConfig, device: torch.device) -> None:
    """The configured optimizer and schedule built as a run builds them (build_optimizer's groups included), over a stand-in
    of a model's kinds of parameter (a filter, a bias, a BatchNorm's), on the run's device, and stepped once each. What
    torch refuses only when it builds or steps (eps=-1, capturable=true off a GPU, differentiable=true, SparseAdam's
    sparse gradients, torch's Muon's 2-d parameters) is then one line before the data is read, not a traceback after it.
    An optimizer whose step must be given a closure (LBFGS) is refused by name first."""
    refuse_closure_steps(cfg.optim)
    stand_in = nn.Sequential(torch.nn.utils.skip_init(nn.Conv2d, 1, 2, 1, device=device), nn.BatchNorm2d(2, device=device))
    with torch.no_grad():
        for p in stand_in.parameters():
            p.zero_()  # skip_init leaves memory as it was: a known value, and no draw from the run's seeded generator
            p.grad = torch.ones_like(p)
    with trial("optim", cfg.optim, device):
        optimizer = build_optimizer(cfg, stand_in)
    with trial("sched", cfg.sched, device):  # built before the step, as in a run: it counts the optimizer's steps
        scheduler = build(cfg.sched, "sched")(optimizer, total_steps=REHEARSAL_STEPS)
    with trial("optim", cfg.optim, device):
        optimizer.step()
    with trial("sched", cfg.sched, device):
        scheduler.step()


def refuse_closure_steps(optim: DictConfig) -> None:
    """An optimizer whose step must be given a closure re-evaluates the loss itself, several times a step (LBFGS's line
    search); a training step here is one forward and backward pass (cifar/core/steps.py), so none could be given."""
    step = admit(optim, "optim")[0].step
    closure = inspect.signature(step).parameters.get("closure")
    if closure is not None and closure.default is inspect.Parameter.empty:
        raise UserError(
            f"optim._target_={optim._target_}: its step must be given a closure that re-evaluates the loss, and a training step "
            "here is one forward and backward pass: use an optimizer whose step takes none (sgd, adamw, muon, most of torch.optim)"
        )


@contextlib.contextmanager
def trial(kind: str, node: DictConfig, device: torch.device):
    """What torch raises for an argument it refuses (a ValueError, a TypeError, an AssertionError...) as one line naming
    the object and every argument the config gave it."""
    try:
        yield
    except UserError:
        raise
    except Exception as e:
        given = ", ".join(f"{k}={shown(v)}" for k, v in node.items() if k not in ("_target_", "_partial_"))
        raise UserError(
            f"{kind}={node._target_}({given}) failed a trial step on {device} ({type(e).__name__}: {first_line(e)}): "
            f"change the setting it names, or choose another {kind.split('.', maxsplit=1)[0]} (conf/{kind.split('.', maxsplit=1)[0]}/)"
        ) from None


def build_train_step(
    cfg: DictConfig, precision: Precision, device: torch.device, distributed: bool, forward, optimizer, scaler
) -> EagerStep:
    """The training step `cfg.cuda_graph` asks for: replayed from a CUDA graph where this run and its optimizer allow it."""
    target = cfg.sched._target_
    per_step_schedule = None if target == CONSTANT_LR else target.rsplit(".", 1)[-1]
    run_refuses = why_not_captured(device, precision, distributed, per_step_schedule, cfg.compile)
    return build_step(forward, optimizer, scaler, precision, build_loss(cfg, device), cfg.cuda_graph, run_refuses)


def build_loss(cfg: DictConfig, device: torch.device) -> nn.Module:
    """The training loss (conf/loss/), built whole and on the run's device."""
    return build(cfg.loss, "loss").to(device)


def make_batches(
    cfg: DictConfig, split: Split, device: torch.device, train: bool, ranks: Ranks | None = None, num_classes: int | None = None
) -> DeviceBatches:
    """Training batches are shuffled and augmented by data.augment (`num_classes`: the dataset's, for a mixing transform),
    each rank taking its share of every global batch; validation and test batches are neither (each rank is given its own
    shard of those splits): `eval_batches`."""
    if not train:
        return eval_batches(cfg, split, device, cfg.eval_batch_size)
    return DeviceBatches(
        split, cfg.batch_size, device, mean=cfg.data.mean, std=cfg.data.std, shuffle=True, seed=cfg.seed,
        augment=augmentations(cfg.data, num_classes), channels_last=cfg.channels_last, rank=ranks.rank if ranks else 0,
        world=ranks.world if ranks else 1,
    )  # fmt: skip


def augmentations(data: DictConfig, num_classes: int | None) -> list:
    """data.augment's transforms in its order (cifar/core/augment.py), given what they take of the run's: the class
    count, and data.mean and data.std (a crop's black padding is their normalised 0)."""
    return list(
        build_each(data.augment, "augment", "data.augment", num_classes=num_classes, mean=list(data.mean), std=list(data.std)).values()
    )


def eval_batches(cfg: DictConfig, split: Split, device: torch.device, batch_size: int) -> DeviceBatches:
    """A split batched for scoring, in order, as a run's validation and test sets are: normalised and laid out as `cfg`
    (a run's config, or the one stored in its checkpoint) trained, in batches of `batch_size` (speed and memory only).
    Training, evaluate.py and images= all score through these, so their figures agree by construction."""
    return DeviceBatches(
        split, batch_size, device, mean=cfg.data.mean, std=cfg.data.std, shuffle=False, channels_last=cfg.get("channels_last", True)
    )
