"""What a recipe may add around the plain training loop, and when: the one protocol the loop calls.

The loop knows no recipe. A model or a helper that needs a say subclasses `TrainingHooks` and
overrides what it needs (each method does nothing here); `Hooks` calls them in order:

    from_data(images)    once, before the first step, with training images normalised as training sees them
                         (FastNet sets its whitening stem from them)
    start_epoch(epoch)   before each epoch's first step (FastNet freezes its whitening bias after a few epochs)
    after_step()         after each optimizer step and learning-rate update (Lookahead pulls the weights toward
                         their running average)
    end_training()       after the last epoch's last step (Lookahead leaves the model at its average)
"""

from __future__ import annotations

import torch


class TrainingHooks:
    def from_data(self, images: torch.Tensor) -> None:
        pass

    def start_epoch(self, epoch: int) -> None:
        pass

    def after_step(self) -> None:
        pass

    def end_training(self) -> None:
        pass


class Hooks(TrainingHooks):
    """The hooks among `objects` (those that subclass TrainingHooks), called in the order given."""

    def __init__(self, *objects: object):
        self.hooks = [o for o in objects if isinstance(o, TrainingHooks)]

    def __bool__(self) -> bool:
        return bool(self.hooks)

    def from_data(self, images: torch.Tensor) -> None:
        for hook in self.hooks:
            hook.from_data(images)

    def start_epoch(self, epoch: int) -> None:
        for hook in self.hooks:
            hook.start_epoch(epoch)

    def after_step(self) -> None:
        for hook in self.hooks:
            hook.after_step()

    def end_training(self) -> None:
        for hook in self.hooks:
            hook.end_training()
