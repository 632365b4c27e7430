"""Which device to train on and at which precision, decided once from the config."""

from __future__ import annotations

import contextlib
import logging
import os
import platform
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from cifar.errors import UserError

log = logging.getLogger(__name__)


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """`auto` is a CUDA device when there is one, else the CPU; under torchrun each process on a machine takes its own GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"device={name} is not a device: use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"device={name} is not supported: use auto, cpu, cuda or cuda:N")
    if device.type == "cpu":
        return device
    if not torch.cuda.is_available():
        raise UserError(f"device={name} but this machine has no CUDA device: use device=auto or device=cpu")
    device = torch.device("cuda", local_rank if device.index is None else device.index)
    count = torch.cuda.device_count()
    if device.index >= count:
        raise UserError(
            f"device={name} asks for GPU {device.index} but this machine has {count} (cuda:0 to cuda:{count - 1}): "
            "name one of those, and start no more torchrun processes per machine than it has GPUs"
        )
    return device


def device_name(device: torch.device) -> str:
    """What the numbers were measured on: the GPU's name, or the CPU's model and core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        model = None
    return f"{model or platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def cpu_class() -> str:
    """The CPU's instruction class, as torch's kernels see it: AMX, AVX-512 BF16, AVX-512, AVX2 or another. Runs on two
    classes differ in their last bits (bf16 emulated on AVX2; oneDNN's kernels per class), so it joins a run's record."""
    if torch.cpu._is_amx_tile_supported():
        return "AMX"
    if torch.cpu._is_avx512_bf16_supported():
        return "AVX-512 BF16"
    return {"AVX512": "AVX-512", "AVX2": "AVX2"}.get(torch.backends.cpu.get_cpu_capability(), torch.backends.cpu.get_cpu_capability())


def comparable_by(device: torch.device) -> dict[str, str | None]:
    """What, besides the data and the precision, two runs must share for their figures to differ only by what was
    changed: the device, the CPU's instruction class and the library versions."""
    import torchvision

    return {
        "device_name": device_name(device),
        "cpu_class": cpu_class(),
        "torch_version": torch.__version__,
        "torchvision_version": torchvision.__version__,
        "cuda_version": torch.version.cuda if device.type == "cuda" else None,
    }


def cpu_has_native_bf16() -> bool:
    """AVX-512 BF16 or AMX: there bf16 matmuls run ~2-3x faster than fp32; elsewhere bf16 is emulated and slower."""
    return cpu_class() in ("AMX", "AVX-512 BF16")


@dataclass(frozen=True)
class Precision:
    """How the forward pass runs: `name` is recorded with every run (bf16, fp16 or fp32)."""

    name: str
    device_type: str

    @property
    def dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)

    @property
    def needs_grad_scaler(self) -> bool:
        # fp16's narrow exponent underflows small gradients; bf16 has fp32's range and needs no scaling.
        return self.name == "fp16"

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        # No cache of cast weights: each is used once per step anyway, and a cache would outlive a CUDA graph's capture.
        return torch.autocast(self.device_type, dtype=self.dtype, cache_enabled=False)


CPU_FP16 = "amp_dtype=fp16 is for CUDA; on the CPU use amp_dtype=bf16 (or auto), or amp=false"

# Below this much forward work per step, bf16 autocast on the CPU costs more in casts than it saves
# (measured: the Net at batch 4, 0.005 GFLOP, runs ~40% slower in bf16; at batch 512, 0.67 GFLOP, faster).
CPU_AMP_MIN_GFLOP_PER_STEP = 0.25


def pick_precision(
    device: torch.device, amp: bool | str, amp_dtype: str = "auto", step_gflop: Callable[[], float] | None = None
) -> Precision:
    """Mixed precision where the hardware does it natively (and, with amp=auto, where it pays); fp32 otherwise.

    `amp` and `amp_dtype` are checked with the rest of the config (cifar/run/checks.py); what is left
    here is what depends on the machine. `step_gflop` gives a step's forward GFLOP (forward_gflop), asked only where it
    decides, amp=auto on a CPU with native bf16: counting them loads torch._dynamo (~1.7 s on a CPU).
    """
    if amp is False:
        return Precision("fp32", device.type)
    if device.type == "cuda":
        if amp_dtype == "auto":
            amp_dtype = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return Precision(amp_dtype, "cuda")
    if device.type == "cpu":
        if amp_dtype == "fp16":
            raise UserError(CPU_FP16)
        if not cpu_has_native_bf16():
            if amp is True:
                log.warning("amp=true but this CPU has no native bf16 (AVX-512 BF16 or AMX): training in fp32")
            return Precision("fp32", "cpu")
        if amp == "auto" and step_gflop is not None and step_gflop() < CPU_AMP_MIN_GFLOP_PER_STEP:
            return Precision("fp32", "cpu")
        return Precision("bf16", "cpu")
    if amp is True:
        log.warning("amp=true is not supported on %s here: training in fp32", device.type)
    return Precision("fp32", device.type)


def forward_gflop(model: torch.nn.Module, batch_size: int, device: torch.device) -> float:
    """Forward-pass GFLOP of one batch of 32x32 images (matmuls and convolutions, 2 FLOP per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, 32, 32, device=device))
    model.train(was_training)
    return counter.get_total_flops() * batch_size / 1e9


def configure_backends(device: torch.device, threads: int, deterministic: bool = False) -> None:
    """Threads, and on CUDA the kernel choices: fastest (cuDNN benchmarks its algorithms, TF32), or repeatable to the bit.

    CPU runs are deterministic either way. On CUDA `deterministic=True` turns cuDNN's benchmark
    off, asks for its deterministic algorithms (and PyTorch's: an op without one warns), and gives
    cuBLAS the fixed workspace it needs to repeat its sums; call it before the first CUDA matmul.
    """
    torch.set_num_threads(threads)
    if device.type != "cuda":
        return
    # fp32 runs: matmuls in TF32 on the tensor cores, as PyTorch already does for convolutions (8-10x the fp32 rate on an H100).
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.benchmark = not deterministic  # CIFAR's shapes never change within a run: pick the fastest convolutions once
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS makes its first handle
    torch.backends.cudnn.deterministic = deterministic
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


def cpu_threads(requested: int | None, local_processes: int = 1, launcher: Mapping | None = None) -> int:
    """CPU threads for this process: `requested` if set, else this machine's cores split evenly over the processes sharing them.

    Processes that share cores (torchrun ranks on one machine, the jobs a Hydra launcher runs at once)
    must split them: two processes with two threads each on two cores spend their time waiting for
    each other. The launcher's config says how many jobs share the machine: joblib's `n_jobs` (-1: one
    per core, -2: all cores but one, ...), or submitit's `cpus_per_task` (the cores each job is given): `launcher`, Hydra's
    `hydra.launcher` node as the caller has it (None outside a sweep).
    """
    if requested:
        return requested
    cores = len(os.sched_getaffinity(0))  # the cores this process may use: a SLURM job's, or the machine's
    launcher = launcher or {}
    if cpus := launcher.get("cpus_per_task"):  # .get, not attributes: a plain mapping works as Hydra's node does
        cores = min(cores, cpus)
    n_jobs = launcher.get("n_jobs") or 1
    jobs = n_jobs if n_jobs > 0 else max(1, cores + 1 + n_jobs)
    return max(1, cores // (jobs * local_processes))
