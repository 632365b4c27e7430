"""Weight EMA, as timm's `--model-ema`: an exponential moving average of the weights is the model that is validated,
checkpointed and tested, while training goes on with the raw weights.

torch.optim.swa_utils.AveragedModel keeps the average (a copy of the model, BatchNorm statistics averaged with the
weights: `use_buffers=True`); this module only says how fast it moves. After n updates the average keeps
min(decay, (1 + n) / (10 + n)) of itself (timm's warm-up): early on, when the first weights are random, it follows
the model closely. Cost: one copy of the model's weights and one pass over them per optimizer step (a fused lerp).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from cifar.core.callbacks import Callback, RunState


class WeightEma(Callback):
    def __init__(self, model: nn.Module, decay: float):
        self.model, self.decay = model, decay
        self.updates = 0  # counted here too: AveragedModel's own count lives on the device, and reading it would sync
        self.averaged = AveragedModel(model, multi_avg_fn=self._lerp, use_buffers=True)
        self.averaged.update_parameters(model)  # the average starts at the weights training starts from

    @property
    def module(self) -> nn.Module:
        """The averaged network: the same class and parameter names as the model, so its state_dict is a model's."""
        return self.averaged.module

    def decay_now(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    def on_train_batch_end(self, state: RunState) -> None:
        """After each optimizer step (a callback, cifar/core/callbacks.py): the average moves toward the weights."""
        self.updates += 1
        self.averaged.update_parameters(self.model)

    @torch.no_grad()
    def _lerp(self, averaged: list[torch.Tensor], current: list[torch.Tensor], _n_averaged: torch.Tensor) -> None:
        if averaged[0].is_floating_point():
            torch._foreach_lerp_(averaged, current, 1 - self.decay_now())
        else:  # BatchNorm's num_batches_tracked: a count, not a weight
            torch._foreach_copy_(averaged, current)

    def load(self, weights: dict, updates: int) -> None:
        """Back to a checkpoint's average (its `model_state_dict`) after `updates` steps (its `ema_updates`)."""
        self.module.load_state_dict(weights)
        self.updates = updates
        self.averaged.n_averaged.fill_(updates + 1)
