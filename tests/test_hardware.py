"""Device and precision choice, including the CUDA branches (exercised here by faking CUDA's answers)."""

import os

import pytest
import torch

from cifar.core import hardware
from cifar.core.hardware import cpu_threads, pick_device, pick_precision
from cifar.errors import UserError

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_amp_off_is_fp32_everywhere():
    assert pick_precision(CPU, amp=False).name == "fp32"
    assert pick_precision(CUDA, amp=False).name == "fp32"


def test_cpu_amp_is_bf16_only_with_native_support(monkeypatch, caplog):
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: True)
    p = pick_precision(CPU, amp=True)
    assert (p.name, p.dtype, p.needs_grad_scaler) == ("bf16", torch.bfloat16, False)
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: False)
    assert pick_precision(CPU, amp=True).name == "fp32"
    assert "no native bf16" in caplog.text
    with pytest.raises(UserError, match="fp16 is for CUDA"):
        pick_precision(CPU, amp=True, amp_dtype="fp16")


def test_cuda_amp_prefers_bf16_and_scales_fp16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert pick_precision(CUDA, amp=True).name == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    p = pick_precision(CUDA, amp=True)
    assert (p.name, p.needs_grad_scaler) == ("fp16", True)
    assert pick_precision(CUDA, amp=True, amp_dtype="fp16").needs_grad_scaler


def test_device_choice(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == CPU
    with pytest.raises(UserError, match="no CUDA device"):
        pick_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert pick_device("auto") == torch.device("cuda", 0)
    # under torchrun, each process on a machine takes the GPU of its local rank unless one is named
    assert pick_device("auto", local_rank=3) == pick_device("cuda", local_rank=3) == torch.device("cuda", 3)
    assert pick_device("cuda:1", local_rank=3) == torch.device("cuda", 1)
    # more processes than GPUs, or a GPU the machine lacks: one line, not a CUDA error later
    for name, rank in (("cuda:4", 0), ("auto", 4)):
        with pytest.raises(UserError, match=r"asks for GPU 4 but this machine has 4 \(cuda:0 to cuda:3\)"):
            pick_device(name, local_rank=rank)


def test_cpu_threads_split_the_cores_between_processes_sharing_them():
    cores = len(os.sched_getaffinity(0))
    assert cpu_threads(None) == cores
    assert cpu_threads(None, local_processes=2) == max(1, cores // 2)
    assert cpu_threads(None, local_processes=cores * 4) == 1
    assert cpu_threads(3, local_processes=2) == 3  # threads=3 in the config wins


def test_bf16_autocast_really_runs_in_bf16_on_this_cpu():
    if not hardware.cpu_has_native_bf16():
        pytest.skip("this CPU has no native bf16")
    with pick_precision(CPU, amp=True).autocast():
        assert torch.nn.Linear(4, 4)(torch.ones(1, 4)).dtype == torch.bfloat16


def test_amp_auto_on_the_cpu_pays_only_for_large_steps(monkeypatch, compose_cfg):
    from cifar.run.checks import check

    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: True)
    assert pick_precision(CPU, "auto", step_gflop=lambda: 0.005).name == "fp32"  # the Net at batch 4: bf16 is slower
    assert pick_precision(CPU, "auto", step_gflop=lambda: 10.0).name == "bf16"  # VGG16 at batch 16
    assert pick_precision(CPU, True, step_gflop=lambda: 0.005).name == "bf16"  # amp=true forces it
    assert pick_precision(CUDA, "auto", step_gflop=lambda: 0.005).name != "fp32"
    # the step's cost is counted (torch._dynamo's ~1.7 s of imports) only where it decides: amp=auto on a CPU with bf16
    for device, amp in ((CUDA, "auto"), (CPU, True), (CPU, False)):
        pick_precision(device, amp, step_gflop=lambda d=device, a=amp: pytest.fail(f"asked on {d} with amp={a}"))
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: False)
    assert pick_precision(CPU, "auto", step_gflop=lambda: pytest.fail("asked without native bf16")).name == "fp32"
    with pytest.raises(UserError, match="amp=maybe"):  # refused with the rest of the config, before any hardware is asked
        check(compose_cfg(["amp=maybe", "output_dir=."]))


def test_forward_gflop_counts_the_models():
    from cifar.core.models import VGG16, Net

    assert hardware.forward_gflop(Net(), 1, CPU) == pytest.approx(0.0013, rel=0.01)
    assert hardware.forward_gflop(VGG16(), 2, CPU) == pytest.approx(2 * 0.627, rel=0.01)
