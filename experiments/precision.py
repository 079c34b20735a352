"""Training precision: float32 (the default and the parity reference) or mixed precision by autocast.

- ``fp32``: everything in float32, no autocast.
- ``bf16``: ``torch.autocast`` with bfloat16 (on CUDA, and on CPUs; oneDNN runs it natively
  where the CPU has AVX-512 BF16 or AMX, else emulated). Same exponent range as float32: no
  loss scaling.
- ``fp16``: ``torch.autocast`` with float16 and a ``torch.amp.GradScaler`` (float16's small
  range would flush small gradients to zero without loss scaling).
- ``fp64``: everything in float64 (slow): for parity checks, where float32's rounding, which
  Adam amplifies into differences of 1e-4 of a weight after a few steps, would hide what is
  compared (e.g. that data-parallel training equals one process).

With autocast, parameters, optimizer state and the loss stay float32, and the Keras-2 GRU
recurrence runs in float32 too (:mod:`devinet.layers`).
"""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

from devinet.errors import ConfigError

PRECISIONS = ("fp32", "bf16", "fp16", "fp64")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: str | torch.device) -> None:
    """Refuse a precision this device cannot train in (one line)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    device = torch.device(device)
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"precision bf16: {torch.cuda.get_device_name(device)} has no bfloat16 support; "
                          "use fp16 or fp32")


def autocast(precision: str, device_type: str) -> ContextManager:
    """The autocast context of ``precision`` on ``device_type`` ("cpu", "cuda"); a no-op for fp32 and fp64."""
    if precision not in _AUTOCAST_DTYPES:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=_AUTOCAST_DTYPES[precision])


def parameter_dtype(precision: str) -> torch.dtype:
    """The dtype of the parameters, inputs and loss of a run in ``precision``: float64 for fp64, else float32."""
    return torch.float64 if precision == "fp64" else torch.float32


def grad_scaler(precision: str, device_type: str) -> torch.amp.GradScaler | None:
    """A gradient scaler for fp16, None otherwise."""
    return torch.amp.GradScaler(device_type) if precision == "fp16" else None


def native_cpu_bf16() -> bool:
    """Whether this CPU computes bfloat16 products natively (AVX-512 BF16 or AMX), as /proc/cpuinfo says."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


__all__ = ["PRECISIONS", "check_precision", "autocast", "parameter_dtype", "grad_scaler", "native_cpu_bf16"]
