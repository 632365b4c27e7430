"""Lookahead weight averaging, after the airbench recipe: the final model is a running average of the weights.

Every `every` optimizer steps the weights are pulled into their running average (`average = keep *
average + (1 - keep) * weights`) and training goes on from the average. `keep` grows with training
as `decay ** every * progress ** 3`: nothing is kept early, while the weights move fast, and about
three quarters at the end. After the last step the model is the average. The loop drives it as a
callback (cifar/core/callbacks.py): after each step, and after the last epoch's last step. Cost: one pass over the
weights (and BatchNorm statistics) every `every` steps, ~2M numbers for FastNet.
"""

from __future__ import annotations

import torch
from torch import nn

from cifar.core.callbacks import Callback, RunState


class Lookahead(Callback):
    def __init__(self, model: nn.Module, every: int, decay: float, total_steps: int):
        self.model, self.every, self.decay, self.total_steps = model, every, decay, total_steps
        self.steps = 0  # optimizer steps taken
        self.average = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}

    def on_train_batch_end(self, state: RunState) -> None:
        self.steps += 1
        if self.steps % self.every == 0:
            self._pull(keep=self.decay**self.every * (self.steps / self.total_steps) ** 3)

    def on_train_epoch_end(self, state: RunState) -> None:
        """After the last epoch's last step, before it is validated: the model becomes the average. (A run stopped
        early by a rule keeps its weights as they are.)"""
        if state.epoch == state.epochs:
            self.end_training()

    def end_training(self) -> None:
        """The model becomes the average."""
        self._pull(keep=1.0)

    @torch.no_grad()
    def _pull(self, keep: float) -> None:
        for name, value in self.model.state_dict().items():
            if name in self.average:
                self.average[name].lerp_(value, 1 - keep)
                value.copy_(self.average[name])

    def state_dict(self) -> dict:
        return {"steps": self.steps, "average": self.average}

    def load_state_dict(self, state: dict) -> None:
        self.steps = state["steps"]
        for name, value in state["average"].items():
            self.average[name].copy_(value)
