"""The training step, eager and from static buffers (the CUDA-graph path without the graph), and when a graph is used."""

import functools

import pytest
import torch

from cifar.core.hardware import Precision
from cifar.core.models import VGG16
from cifar.core.steps import CapturedStep, EagerStep, build_step, loss_not_capturable, why_not_captured
from cifar.errors import UserError
from cifar.run.build import build_train_step


def train_steps(kind, batches):
    torch.manual_seed(0)
    model = VGG16(hidden=32).to(memory_format=torch.channels_last)  # dropout: the random stream must advance the same way
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    step = kind(model, optimizer, torch.amp.GradScaler("cpu", enabled=False), Precision("fp32", "cpu"), loss_fn)
    torch.manual_seed(1)
    losses = [step(x, y).loss.clone() for x, y in batches]
    return losses, model.state_dict(), optimizer.state_dict()["state"]


def test_the_static_buffer_step_trains_the_same_weights_as_the_plain_step():
    g = torch.Generator().manual_seed(0)
    sizes = [8, 8, 8, 8, 8, 3]  # the last batch is short: it runs outside the static buffers
    batches = [
        (torch.randn(n, 3, 32, 32, generator=g).contiguous(memory_format=torch.channels_last), torch.randint(0, 10, (n,), generator=g))
        for n in sizes
    ]
    eager_losses, eager_weights, eager_momentum = train_steps(EagerStep, batches)
    static_losses, static_weights, static_momentum = train_steps(CapturedStep, batches)
    assert torch.equal(torch.stack(eager_losses), torch.stack(static_losses))
    assert all(torch.equal(eager_weights[k], static_weights[k]) for k in eager_weights)
    assert all(torch.equal(eager_momentum[i]["momentum_buffer"], static_momentum[i]["momentum_buffer"]) for i in eager_momentum)
    assert len(set(map(float, eager_losses))) == len(sizes), "every step trained on its own batch"


def test_a_graph_is_used_only_where_a_replay_computes_the_same_step(compose_cfg):
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    bf16, fp16 = Precision("bf16", "cuda"), Precision("fp16", "cuda")
    assert why_not_captured(cuda, bf16, distributed=False, schedule=None, compiled=False) is None
    assert "GradScaler" in why_not_captured(cuda, fp16, distributed=False, schedule=None, compiled=False)
    assert "not a GPU" in why_not_captured(cpu, Precision("fp32", "cpu"), distributed=False, schedule=None, compiled=False)
    assert "DDP" in why_not_captured(cuda, bf16, distributed=True, schedule=None, compiled=False)
    assert "onecycle" in why_not_captured(cuda, bf16, distributed=False, schedule="onecycle", compiled=False)
    assert "compile" in why_not_captured(cuda, bf16, distributed=False, schedule=None, compiled=True)

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    fp32 = Precision("fp32", "cpu")
    assert type(build_train_step(compose_cfg(["output_dir=."]), fp32, cpu, False, model, optimizer, scaler)) is EagerStep
    with pytest.raises(UserError, match="cuda_graph=true but the device is not a GPU"):
        build_train_step(compose_cfg(["output_dir=.", "cuda_graph=true"]), fp32, cpu, False, model, optimizer, scaler)
    # the run's config names the schedule that refuses a graph
    assert type(build_train_step(compose_cfg(["output_dir=.", "sched=onecycle"]), bf16, cuda, False, model, optimizer, scaler)) is EagerStep


def test_the_loss_module_gives_the_bits_the_functional_cross_entropy_gave():
    """The loss became a module (conf/loss/): torch.nn.CrossEntropyLoss(label_smoothing=s) must compute what
    F.cross_entropy(..., label_smoothing=s) did, to the bit, forward and backward, on hard labels and on MixUp's soft
    ones, in fp32 and under bf16 autocast, or every recipe's figures (net_baseline's 61.46%) would move."""
    g = torch.Generator().manual_seed(0)
    hard = torch.randint(0, 10, (64,), generator=g)
    soft = torch.softmax(torch.randn(64, 10, generator=g), 1)
    for labels in (hard, soft):
        for smoothing in (0.0, 0.1, 0.2):
            for dtype in (torch.float32, torch.bfloat16):
                losses, grads = [], []
                functional = functools.partial(torch.nn.functional.cross_entropy, label_smoothing=smoothing)
                for loss_fn in (functional, torch.nn.CrossEntropyLoss(label_smoothing=smoothing)):
                    logits = torch.randn(64, 10, generator=torch.Generator().manual_seed(1), requires_grad=True)
                    with torch.autocast("cpu", dtype=dtype, enabled=dtype is torch.bfloat16):
                        loss = loss_fn(logits @ torch.eye(10), labels)  # a matmul: autocast runs it in bf16
                    loss.backward()
                    losses.append(loss.detach())
                    grads.append(logits.grad)
                assert torch.equal(*losses) and torch.equal(*grads), (labels.ndim, smoothing, dtype)


class SyncingLoss(torch.nn.Module):
    """A loss that reads a value back to the CPU, as a capture forbids."""

    def forward(self, logits, labels):
        return torch.nn.functional.cross_entropy(logits, labels) * (2.0 if logits.max().item() > 1e9 else 1.0)


class DeviceOnlyLoss(SyncingLoss):
    capturable = True


def test_a_loss_not_of_torch_nn_is_captured_only_where_it_says_it_can_be(compose_cfg):
    """A loss of the project's or a plugin's may read back to the CPU, which a CUDA graph's capture forbids: under
    cuda_graph=auto it runs eagerly, under true it is refused in one line, unless it says `capturable = True`."""
    assert loss_not_capturable(torch.nn.CrossEntropyLoss()) is None
    assert loss_not_capturable(torch.nn.MSELoss()) is None
    assert "SyncingLoss is not torch.nn's" in loss_not_capturable(SyncingLoss())
    assert loss_not_capturable(DeviceOnlyLoss()) is None

    bf16 = Precision("bf16", "cuda")  # a run on a GPU: build_step decides from the precision's device and the answers
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    args = (model, optimizer, scaler, bf16)
    assert type(build_step(*args, torch.nn.CrossEntropyLoss(), "auto", None)) is CapturedStep
    assert type(build_step(*args, SyncingLoss(), "auto", None)) is EagerStep
    assert type(build_step(*args, DeviceOnlyLoss(), True, None)) is CapturedStep
    with pytest.raises(UserError, match=r"cuda_graph=true but the loss SyncingLoss is not torch\.nn's"):
        build_step(*args, SyncingLoss(), True, None)
