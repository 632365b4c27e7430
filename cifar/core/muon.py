"""Muon for convolution filters, SGD for everything else, as one optimizer (after Keller Jordan's airbench94_muon).

Muon ("momentum orthogonalized by Newton-Schulz") replaces each filter bank's momentum by the nearest
semi-orthogonal matrix: every direction of the update gets the same size, whatever the gradient's
scale. Here, per convolution (a matrix of out_channels x in_channels*k*k):
    buffer = momentum * buffer + grad;  update = grad + momentum * buffer (Nesterov)
    weight *= sqrt(out_channels) / |weight|   (a fixed norm, in place of weight decay)
    weight -= filter_lr * orthogonalize(update)
The other parameters (BatchNorm biases, the head, a stem's bias) take PyTorch SGD steps with the
group's own lr, momentum, weight decay and Nesterov. One optimizer keeps one state dict, one lr
schedule (it scales every group) and one GradScaler. Cost: `ns_steps` rounds of three bfloat16 matrix
products (float32 where bfloat16 is emulated) per filter bank per step, 6.3 GFLOP for FastNet's six banks at
ns_steps=3, counted from their shapes: 0.5% of a training step at batch 2000 (1,416 GFLOP).

torch.optim.Muon (PyTorch 2.9+) takes 2-d parameters only; convolution filters are 4-d.
"""

from __future__ import annotations

import torch
from torch.optim import SGD

from cifar.core.hardware import cpu_has_native_bf16
from cifar.errors import refuse_broken

# The quintic's coefficients: they push every singular value of a normalised matrix towards 1 in a few
# steps (to within about +-30%, which trains as well as exact orthogonalization).
NEWTON_SCHULZ = (3.4445, -4.7750, 2.0315)


def orthogonalize(update: torch.Tensor, steps: int) -> torch.Tensor:
    """The matrix with update's singular vectors and singular values near 1, by Newton-Schulz in bfloat16 where bfloat16
    is native (CUDA; CPUs with AVX-512 BF16 or AMX), in float32 elsewhere: on an AVX2-only CPU bfloat16 is emulated, and
    FastNet's six banks took 2.7 s a step in it against 0.10 s in float32 (AMD EPYC, avx2, 2 threads). An fp32 run
    resumed on the other kind of CPU goes on in the other dtype here: its last bits differ, as its convolutions' do."""
    a, b, c = NEWTON_SCHULZ
    x = update.to(torch.bfloat16 if update.device.type != "cpu" or cpu_has_native_bf16() else torch.float32)
    x = x / (x.norm() + 1e-7)  # every singular value <= 1, where the iteration converges
    wide = x.size(0) <= x.size(1)
    x = x if wide else x.T  # x @ x.T is then the smaller Gram matrix
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x if wide else x.T).to(update.dtype)


class Muon(SGD):
    """`params` as for SGD (a list, or groups); each group's 4-d parameters move into a Muon group of their own. SGD
    checks lr, momentum, weight_decay and nesterov; the filters' arguments are checked here."""

    def __init__(
        self, params, lr: float, momentum: float, filter_lr: float, filter_momentum: float, weight_decay: float,
        nesterov: bool = True, ns_steps: int = 3,
    ):  # fmt: skip
        refuse_broken([
            (filter_lr > 0, f"optim.filter_lr={filter_lr}: Muon's step size must be positive"),
            (filter_momentum >= 0, f"optim.filter_momentum={filter_momentum}: use 0 or a positive value such as 0.6"),
            (ns_steps >= 1, f"optim.ns_steps={ns_steps}: use 1 or more Newton-Schulz rounds (3 is enough)"),
        ])  # fmt: skip
        groups = list(params)
        groups = groups if groups and isinstance(groups[0], dict) else [{"params": groups}]
        sgd_groups, muon_groups = [], []
        for group in groups:
            others = [p for p in group["params"] if p.ndim != 4]
            filters = [p for p in group["params"] if p.ndim == 4]
            if others:
                sgd_groups.append({**group, "params": others})
            if filters:
                muon_groups.append({"params": filters, "lr": filter_lr, "momentum": filter_momentum, "weight_decay": 0.0, "muon": True})
        super().__init__(sgd_groups + muon_groups, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
        self.ns_steps = ns_steps

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:  # re-evaluates the model and its gradients first, as SGD's closure does
            with torch.enable_grad():
                loss = closure()
        filters = [p for g in self.param_groups if g.get("muon") for p in g["params"] if p.grad is not None]
        grads = [p.grad for p in filters]
        for p in filters:  # hidden from SGD's own step (foreach, on every device), which then moves the rest
            p.grad = None
        try:
            super().step()
        finally:
            for p, grad in zip(filters, grads, strict=True):
                p.grad = grad
        for group in self.param_groups:
            for p in group["params"] if group.get("muon") else []:
                if p.grad is None:
                    continue
                buffer = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p.grad))
                buffer.mul_(group["momentum"]).add_(p.grad)
                update = p.grad.add(buffer, alpha=group["momentum"]) if group["nesterov"] else buffer
                p.mul_(len(p) ** 0.5 / p.norm())
                p.add_(orthogonalize(update.reshape(len(p), -1), self.ns_steps).view_as(p), alpha=-group["lr"])
        return loss
