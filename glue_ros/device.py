"""Device and precision resolution (``device`` / ``precision`` parameters)."""
from __future__ import annotations

from functools import lru_cache

import torch


class DeviceError(RuntimeError):
    """Requested device or precision cannot be used here."""


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DeviceError(f"device '{name}' requested but CUDA is not available "
                              f"(torch {torch.__version__}, built with CUDA: {torch.version.cuda}); "
                              "use device: auto or cpu")
        index = int(name[5:]) if name.startswith("cuda:") else 0
        if index >= torch.cuda.device_count():
            raise DeviceError(f"device '{name}' requested but only {torch.cuda.device_count()} CUDA device(s) exist")
        return torch.device("cuda", index)
    raise DeviceError(f"unknown device '{name}' (auto, cpu, cuda, cuda:N)")


@lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """True when the CPU has native bf16 arithmetic (AVX512-BF16 or AMX-BF16)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if precision == "fp32":
        return torch.float32
    if precision == "fp16":
        if device.type != "cuda":
            raise DeviceError("precision fp16 needs a CUDA device (CPU fp16 kernels are slow and inexact); "
                              "use fp32 or bf16 on CPU")
        return torch.float16
    if precision == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise DeviceError(f"precision bf16 is not supported by {torch.cuda.get_device_name(device)}")
        if device.type == "cpu" and not cpu_has_bf16():
            raise DeviceError("precision bf16 requested but this CPU has no bf16 units (avx512_bf16/amx_bf16)")
        return torch.bfloat16
    raise DeviceError(f"unknown precision '{precision}' (auto, fp32, fp16, bf16)")


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return "cpu"
