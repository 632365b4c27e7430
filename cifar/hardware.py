"""Which device to train on and at which precision, decided once from the config."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import torch

from cifar.errors import UserError

log = logging.getLogger(__name__)


def pick_device(name: str) -> torch.device:
    """`auto` is the first CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={name} but this machine has no CUDA device: use device=auto or device=cpu")
    return device


def cpu_has_native_bf16() -> bool:
    """AVX-512 BF16 or AMX: there bf16 matmuls run ~2-3x faster than fp32; elsewhere bf16 is emulated and slower."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


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
        return torch.autocast(self.device_type, dtype=self.dtype)


def pick_precision(device: torch.device, amp: bool, amp_dtype: str = "auto") -> Precision:
    """Mixed precision where the hardware does it natively; fp32 otherwise (with a warning if amp was asked for)."""
    if not amp:
        return Precision("fp32", device.type)
    if amp_dtype not in ("auto", "bf16", "fp16"):
        raise UserError(f"amp_dtype={amp_dtype} is not known: use auto, bf16 or fp16")
    if device.type == "cuda":
        if amp_dtype == "auto":
            amp_dtype = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return Precision(amp_dtype, "cuda")
    if device.type == "cpu":
        if amp_dtype == "fp16":
            raise UserError("amp_dtype=fp16 is for CUDA; on the CPU use amp_dtype=bf16 (or auto), or amp=false")
        if cpu_has_native_bf16():
            return Precision("bf16", "cpu")
        log.warning("amp=true but this CPU has no native bf16 (AVX-512 BF16 or AMX): training in fp32")
        return Precision("fp32", "cpu")
    log.warning("amp=true is not supported on %s here: training in fp32", device.type)
    return Precision("fp32", device.type)
