"""One optimizer step, eager or replayed from a CUDA graph.

At the study's batch sizes (4 and 16) a VGG16 step is ~200 small kernels. Launched one by one from
Python that is ~2 ms of CPU work per step while the GPU mostly waits. `CapturedStep` records the
whole step (forward, loss, backward, SGD update) once as a CUDA graph and replays it: one launch a
step. Both classes are called the same way, `step(x, y) -> Stepped(loss, correct)`, and compute the same thing. The
loss is the run's loss module (conf/loss/), called `loss_fn(logits, y)`: `y` is a class index per image, or with
MixUp/CutMix a distribution over the classes per image, which torch.nn.CrossEntropyLoss takes as it is.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import torch
from torch import nn

from cifar.core.hardware import Precision
from cifar.errors import UserError

log = logging.getLogger(__name__)


class Stepped(NamedTuple):
    """What one training step gives back, as device tensors: reading either would sync, so the caller decides when
    (train_epoch adds them up and reads the sums once an epoch)."""

    loss: torch.Tensor  # the batch's mean training loss
    correct: torch.Tensor  # how many of the batch's images the forward pass classed right (a mixed image: as its larger part)


class EagerStep:
    """Forward, loss, backward and update, launched kernel by kernel."""

    def __init__(self, forward, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, precision: Precision, loss_fn: nn.Module):
        self.forward, self.optimizer, self.scaler = forward, optimizer, scaler
        self.precision, self.loss_fn = precision, loss_fn

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> Stepped:
        with self.precision.autocast():
            logits = self.forward(x)
            loss = self.loss_fn(logits, y)
        self.optimizer.zero_grad(set_to_none=True)  # frees the gradients instead of zero-filling them
        self.scaler.scale(loss).backward()  # the scaler is a no-op except for fp16, which needs it
        self.scaler.step(self.optimizer)
        self.scaler.update()
        # Three small kernels (~9 us a step on a 2-core CPU, ~1% of the study's Net at batch 4; inside the graph when captured).
        labels = y if y.ndim == 1 else y.argmax(1)  # MixUp/CutMix give each image a blend of two labels
        return Stepped(loss.detach(), (logits.detach().argmax(1) == labels).sum())


class CapturedStep(EagerStep):
    """The same step, captured as a CUDA graph after `warmup` eager steps and replayed from then on.

    Each batch is copied into static input buffers that the graph reads; the loss and the correct
    count come back in static outputs, overwritten by the next replay (so add them up before calling again). The
    warm-up steps are real training steps, run on a side stream as capture requires: cuDNN
    picks its algorithms and SGD creates its momentum buffers there. The captured step sets the
    gradients to None before its backward, so every replay writes them afresh into the graph's
    own memory. Dropout's random numbers advance with every replay, as they do eagerly.

    A batch of another shape (an epoch's short last batch) runs eagerly. On the CPU there is
    nothing to capture: steps run on the static buffers, uncaptured (what the CPU tests compare
    with `EagerStep`).
    """

    def __init__(self, *args, warmup: int = 3, **kwargs):
        super().__init__(*args, **kwargs)
        self.warmup = warmup
        self.steps = 0
        self.x = self.y = self.out = self.graph = None

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> Stepped:
        if self.x is None:
            self.x, self.y = torch.empty_like(x), torch.empty_like(y)
        if x.shape != self.x.shape:
            return super().__call__(x, y)
        self.x.copy_(x)
        self.y.copy_(y)
        self.steps += 1
        if x.device.type != "cuda":
            return super().__call__(self.x, self.y)
        if self.graph is None and self.steps <= self.warmup:
            return self._on_side_stream(lambda: super(CapturedStep, self).__call__(self.x, self.y))
        if self.graph is None:
            self.graph = torch.cuda.CUDAGraph()
            self.optimizer.zero_grad(set_to_none=True)  # backward then allocates the gradients from the graph's pool
            with torch.cuda.graph(self.graph):
                self.out = super().__call__(self.x, self.y)
        self.graph.replay()  # capturing records the step without running it: the first replay runs it
        return self.out

    @staticmethod
    def _on_side_stream(fn):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            out = fn()
        torch.cuda.current_stream().wait_stream(side)
        return out


NOT_A_GPU = "the device is not a GPU"


def graph_refusal(reason: str) -> str:
    return f"cuda_graph=true but {reason}: use cuda_graph=auto or false"


def why_not_captured(device: torch.device, precision: Precision, distributed: bool, schedule: str | None, compiled: bool) -> str | None:
    """Why this run cannot replay its steps from a CUDA graph (None: it can). `schedule`: the name of a learning-rate
    schedule that changes the lr every step (None for a constant lr); `compiled`: the model is torch.compile'd."""
    if device.type != "cuda":
        return NOT_A_GPU
    if precision.needs_grad_scaler:
        return "fp16's GradScaler reads its overflow check back to the CPU every step, which capture forbids (use amp_dtype=bf16)"
    if schedule:
        return f"the learning rate changes every step (sched={schedule}) and a graph bakes it in"
    if distributed:
        return "torchrun's DDP synchronises gradients outside the graph"
    if compiled:
        return "compile=true compiles the model instead"
    return None


def optimizer_not_capturable(optimizer: torch.optim.Optimizer) -> str | None:
    """Why `optimizer`'s step cannot be captured in a CUDA graph, asked of the optimizer itself (None: it can). torch's
    optimizers that keep a step count on the CPU carry a `capturable` flag, which must be on; SGD's update (and Muon's,
    an SGD) keeps no state on the CPU and captures as it is; any other says nothing, and is not captured."""
    name = type(optimizer).__name__
    if "capturable" in optimizer.defaults:
        return (
            None
            if optimizer.defaults["capturable"]
            else f"{name} keeps its step count on the CPU (optim.capturable=true keeps it on the GPU)"
        )
    return (
        None if isinstance(optimizer, torch.optim.SGD) else f"{name} does not say that its step can be captured (it has no capturable flag)"
    )


def loss_not_capturable(loss_fn: nn.Module) -> str | None:
    """Why `loss_fn` cannot be trusted inside a CUDA graph (None: it can). torch.nn's losses compute on the device alone; a
    loss of this project's (or a plugin's) may read a value back to the CPU (`.item()`, `if (x > 0).any():`), which capture
    forbids: torch would stop the capture with "operation not permitted when stream is capturing". Such a loss runs eagerly
    under cuda_graph=auto and is refused under cuda_graph=true; one known to stay on the device may say so with a class
    attribute `capturable = True`."""
    if type(loss_fn).__module__.startswith("torch.nn.") or getattr(loss_fn, "capturable", False):
        return None
    return f"the loss {type(loss_fn).__name__} is not torch.nn's and does not say that it stays on the GPU (capturable = True)"


def build_step(
    forward, optimizer, scaler, precision: Precision, loss_fn: nn.Module, cuda_graph: bool | str, run_refuses: str | None
) -> EagerStep:
    """`cuda_graph`: auto captures where it can, true insists (one line saying why it cannot), false never captures.
    `run_refuses`: why_not_captured's answer for this run; the optimizer and the loss are asked too."""
    reason = run_refuses or optimizer_not_capturable(optimizer) or loss_not_capturable(loss_fn)
    if cuda_graph is True and reason:
        raise UserError(graph_refusal(reason))
    if cuda_graph is False or reason:
        if precision.device_type == "cuda" and cuda_graph == "auto":
            log.info("Training steps run eagerly, not from a CUDA graph: %s", reason)
        return EagerStep(forward, optimizer, scaler, precision, loss_fn)
    return CapturedStep(forward, optimizer, scaler, precision, loss_fn)
