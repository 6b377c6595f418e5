"""The one place where devices are chosen."""

from __future__ import annotations

import torch

from semdir_edit.errors import UserError


def resolve_device(spec: str = "auto") -> torch.device:
    """Turn ``auto|cpu|cuda|cuda:N`` into a device; ``auto`` takes the GPU when there is one."""
    spec = (spec or "auto").lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError("--device cuda was asked for but no CUDA GPU is available (use --device auto or cpu)")
        return torch.device(spec)
    if spec == "cpu":
        return torch.device("cpu")
    raise UserError(f"unknown device '{spec}' (use auto, cpu or cuda)")


def autocast(device: torch.device, enabled: bool = True) -> torch.autocast:
    """Mixed precision (bfloat16) on GPU; a no-op context on CPU."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")
