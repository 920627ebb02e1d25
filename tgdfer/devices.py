"""Choosing the device and dtype, and reading torchrun's rank layout."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from tgdfer.config import amp_choice
from tgdfer.errors import ConfigError

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Ranks:
    """Where this process sits under torchrun (one process: rank 0 of 1)."""

    rank: int
    world: int
    local: int


def ranks() -> Ranks:
    return Ranks(
        rank=int(os.environ.get("RANK", 0)),
        world=int(os.environ.get("WORLD_SIZE", 1)),
        local=int(os.environ.get("LOCAL_RANK", 0)),
    )


def resolve_device(spec: str = "auto", local_rank: int = 0) -> torch.device:
    """auto -> cuda:<local rank> when CUDA is present, else cpu; other values are passed to torch.device."""
    if spec == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device: expected auto, cpu, cuda or cuda:N, found {spec!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device: expected a device this machine has, found {spec!r} but CUDA is not available")
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    return device


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """auto -> fp16 on CUDA, fp32 on CPU (CPU half matmuls are slow and inexact)."""
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if precision not in _DTYPES:
        raise ConfigError(f"--precision: expected auto or one of {sorted(_DTYPES)}, found {precision!r}")
    return _DTYPES[precision]


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles, on which oneDNN runs bf16 matmuls several times faster than fp32 (ViT-B/32's
    image tower, 2 threads: 61 vs 21 frames/s). Without AMX, bf16 is slower than fp32 even with AVX-512 BF16
    (17 vs 21 frames/s with oneDNN capped there), so only AMX counts. torch's probe is private: a torch without
    it reads as no AMX."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe()) if probe is not None else False


def amp_enabled(amp: str | bool, device: torch.device, has_amx: bool | None = None) -> bool:
    """Whether train.amp runs ``device`` under bf16 autocast: the one place that decides, for training, evaluation
    and inference. auto: on CUDA, and on a CPU with AMX (``has_amx``; None asks ``cpu_has_amx``), where a stage-2
    step of the default model takes 408-425 ms against fp32's 625-669 ms (issue 25); fp32 on other CPUs, where
    bf16 is slower. on: bf16 on every device; off: fp32. A bool is the older setting (True: auto, False: off)."""
    choice = amp_choice(amp)
    if choice not in ("auto", "on", "off"):
        raise ConfigError(f"train.amp: expected one of auto, on, off, found {amp!r}")
    if choice != "auto":
        return choice == "on"
    if device.type == "cuda":
        return True
    return device.type == "cpu" and (cpu_has_amx() if has_amx is None else has_amx)


def autocast(device: torch.device, amp: str | bool = "auto"):
    """bf16 autocast on ``device`` where ``amp_enabled`` says so (train.amp), else a no-op context."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp_enabled(amp, device))


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in _DTYPES.items()}[dtype]
