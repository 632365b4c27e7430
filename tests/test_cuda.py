"""The CUDA paths: graph replay against the eager loop, bf16 / fp16 + GradScaler / fp32, channels_last, resume.

Skipped without a CUDA GPU. On one, `python -m pytest tests/test_cuda.py` takes seconds.
"""

import json

import pytest
import torch

from cifar.core.hardware import Precision, configure_backends, pick_device
from cifar.core.models import VGG16
from cifar.core.steps import CapturedStep, EagerStep
from cifar.errors import UserError
from cifar.run.checkpoint import load_checkpoint
from cifar.run.training import train
from tests.conftest import tiny_overrides

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda", 0)


def batches(n_batches=6, batch_size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(batch_size, 3, 32, 32, generator=g).to(CUDA, memory_format=torch.channels_last),
            torch.randint(0, 10, (batch_size,), generator=g).to(CUDA),
        )
        for _ in range(n_batches)
    ]


def train_steps(kind, precision, data, epochs=5, deterministic=False):
    configure_backends(CUDA, 1, deterministic)
    torch.manual_seed(0)
    model = VGG16(hidden=64).to(CUDA, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler("cuda", enabled=precision.needs_grad_scaler)
    step = kind(model, optimizer, scaler, Precision(precision.name, "cuda"), torch.nn.CrossEntropyLoss())
    torch.manual_seed(1)
    losses = torch.stack([step(x, y).loss.float().clone() for _ in range(epochs) for x, y in data])
    return losses, model, scaler


def test_graph_replay_trains_as_the_eager_loop_does_to_the_bit():
    """README: a replay computes what the eager step computes. With cuDNN's deterministic kernels both run the same
    sums in the same order, so 30 bf16 steps of VGG16 with dropout give equal losses and weights, not close ones."""
    data = batches()
    eager_losses, eager_model, _ = train_steps(EagerStep, Precision("bf16", "cuda"), data, deterministic=True)
    graph_losses, graph_model, _ = train_steps(CapturedStep, Precision("bf16", "cuda"), data, deterministic=True)
    configure_backends(CUDA, 1)  # back to the fast kernels for the tests after this one
    assert torch.equal(eager_losses, graph_losses)
    assert all(torch.equal(a, b) for a, b in zip(eager_model.state_dict().values(), graph_model.state_dict().values(), strict=True))
    assert eager_losses[-6:].mean() < eager_losses[:6].mean(), "30 steps over the same 6 batches: the loss falls"


@pytest.mark.parametrize("precision", ["bf16", "fp16", "fp32"])
def test_each_precision_trains_on_cuda(precision):
    losses, _, scaler = train_steps(EagerStep, Precision(precision, "cuda"), batches())
    assert torch.isfinite(losses).all() and losses[-6:].mean() < losses[:6].mean()
    if precision == "fp16":
        assert scaler.is_enabled() and scaler.get_scale() > 1  # the GradScaler ran and kept a finite scale


def test_channels_last_computes_what_the_default_layout_does():
    torch.manual_seed(0)
    model = VGG16().to(CUDA).eval()
    x = torch.randn(64, 3, 32, 32, device=CUDA)
    with torch.no_grad():
        plain = model(x)
        nhwc = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    assert ((plain - nhwc).norm() / plain.norm()).item() < 1e-2  # TF32 convolutions in both: same function, other kernels


def test_a_gpu_index_beyond_the_machine_is_one_line():
    with pytest.raises(UserError, match=f"asks for GPU {torch.cuda.device_count()} but this machine has"):
        pick_device(f"cuda:{torch.cuda.device_count()}")


def test_a_cuda_run_captures_its_steps_and_resumes_its_random_streams(compose_cfg, tiny_folder, tmp_path):
    out = tmp_path / "run"
    seen = {}

    def spy(step):
        seen["kind"], seen["cuda_rng"] = type(step), torch.cuda.get_rng_state(CUDA)
        return step

    first = train(compose_cfg(tiny_overrides(tiny_folder, out, "model=vgg16", "epochs=1", "device=cuda")), wrap_step=spy)
    assert first["status"] == "finished" and first["precision"] == "bf16" and seen["kind"] is CapturedStep
    saved = load_checkpoint(out / "last.pt")["cuda_rng_state"]
    resume = tiny_overrides(tiny_folder, out, "model=vgg16", "epochs=2", "device=cuda", f"resume={out / 'last.pt'}")
    second = train(compose_cfg(resume), wrap_step=spy)
    assert second["status"] == "finished" and second["epochs_completed"] == 2
    assert torch.equal(seen["cuda_rng"], saved), "dropout's stream continues where the interrupted run left it"
    with pytest.raises(UserError, match="was trained in bf16 and this run would train in fp16"):
        train(compose_cfg([*resume, "amp_dtype=fp16", "epochs=3"]))


def test_fp16_trains_end_to_end_with_its_grad_scaler(compose_cfg, tiny_folder, tmp_path):
    summary = train(compose_cfg(tiny_overrides(tiny_folder, tmp_path, "epochs=3", "device=cuda", "amp_dtype=fp16")))
    assert summary["status"] == "finished" and summary["precision"] == "fp16" and summary["best_val_acc"] > 0.4


def test_deterministic_repeats_a_cuda_run_to_the_bit(compose_cfg, tiny_folder, tmp_path):
    def run(name):
        overrides = tiny_overrides(tiny_folder, tmp_path / name, "model=vgg16", "epochs=1", "device=cuda", "deterministic=true")
        train(compose_cfg(overrides))
        return [
            {k: v for k, v in json.loads(line).items() if not k.startswith("time/")} for line in (tmp_path / name / "metrics.jsonl").open()
        ]

    assert run("a") == run("b")
