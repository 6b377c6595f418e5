"""Small result types shared by the editor, the latent files, batch runs, the CLI and the UI."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Inverted:
    """One image's inversion: its domain image, W+ code, reconstruction, class and quality figures."""

    name: str
    domain: torch.Tensor          # (1, R, R) uint8: what was inverted.
    ws: torch.Tensor              # (num_ws, w_dim)
    reconstruction: torch.Tensor  # (1, R, R) float in [-1, 1]
    class_index: int
    class_name: str
    confidence: float
    psnr: float
    ssim: float
    perceptual: float
    method: str
    steps: int
    seconds: float
    ok: bool = True
    message: str = ""
    notes: list[str] = field(default_factory=list)
    # Photos only (with a photo classifier): probability that the article is of none of the domain classes, and
    # whether it is above the weights' warning threshold. None for domain images.
    ood_score: float | None = None
    out_of_domain: bool = False

    def summary(self) -> dict[str, Any]:
        """The JSON-able figures (no tensors)."""
        return {k: v for k, v in dataclasses.asdict(self).items()
                if k not in ("domain", "ws", "reconstruction")}


@dataclass
class Failed:
    """An input that could not be loaded or inverted, with its one-line reason."""

    name: str
    message: str
    ok: bool = False
