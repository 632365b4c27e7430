"""Learning-rate schedules as multipliers of the optimizer's lr, stepped once per optimizer step.

Each builder takes the optimizer and the run's total number of steps (known once the data is
split), so the configs speak in fractions of training ("warm up for the first 5%") and a
schedule means the same thing at any epoch count or batch size. All are `LambdaLR`s, so their
state goes into last.pt and resume continues them exactly. Each refuses its own arguments out of range, in one line
naming the config's key (a run rehearses its schedule before anything is written: cifar/run/build.py).
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from cifar.errors import refuse_broken


def _fraction_rules(**fractions: float) -> list[tuple[bool, str]]:
    """warmup and peak_at: fractions of training in [0, 1); start and final: fractions of the lr, 0 or more."""
    return [
        (0 <= v < 1, f"sched.{k}={v}: a fraction of training in [0, 1)") if k in ("warmup", "peak_at")
        else (v >= 0, f"sched.{k}={v}: a fraction of optim.lr, 0 or more")
        for k, v in fractions.items()
    ]  # fmt: skip


def _warmup(step: int, warmup_steps: int) -> float:
    return min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0


def none(optimizer: Optimizer, total_steps: int) -> LambdaLR:
    """The study's constant learning rate."""
    return LambdaLR(optimizer, lambda step: 1.0)


def step(optimizer: Optimizer, total_steps: int, milestones: list[float], gamma: float = 0.1, warmup: float = 0.0) -> LambdaLR:
    """Multiply by `gamma` at each milestone (fractions of training), after a linear warm-up."""
    refuse_broken([
        (all(0 < m <= 1 for m in milestones), f"sched.milestones={list(milestones)}: fractions of training in (0, 1]"),
        (gamma > 0, f"sched.gamma={gamma}: the lr multiplier must be positive (0.1 is the usual)"),
        *_fraction_rules(warmup=warmup),
    ])  # fmt: skip
    bounds = [round(m * total_steps) for m in milestones]
    warmup_steps = round(warmup * total_steps)
    return LambdaLR(optimizer, lambda s: _warmup(s, warmup_steps) * gamma ** sum(s >= b for b in bounds))


def cosine(optimizer: Optimizer, total_steps: int, warmup: float = 0.0, final: float = 0.0) -> LambdaLR:
    """Linear warm-up, then a half cosine from 1 down to `final` (a multiplier of lr) at the last step."""
    refuse_broken(_fraction_rules(warmup=warmup, final=final))
    warmup_steps = round(warmup * total_steps)

    def factor(s: int) -> float:
        if s < warmup_steps:
            return _warmup(s, warmup_steps)
        progress = (s - warmup_steps) / max(1, total_steps - 1 - warmup_steps)
        return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return LambdaLR(optimizer, factor)


def onecycle(optimizer: Optimizer, total_steps: int, peak_at: float = 0.25, start: float = 0.1, final: float = 0.0) -> LambdaLR:
    """Triangular one-cycle: linear from `start` up to 1 at `peak_at` of training, then linear down to `final`."""
    refuse_broken(_fraction_rules(peak_at=peak_at, start=start, final=final))
    peak = max(1, round(peak_at * total_steps))

    def factor(s: int) -> float:
        if s < peak:
            return start + (1 - start) * s / peak
        return 1 + (final - 1) * min(1.0, (s - peak) / max(1, total_steps - 1 - peak))

    return LambdaLR(optimizer, factor)
