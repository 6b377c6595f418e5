"""Reconstruction figures of an inversion, per image, as in docs/EVALUATION.md.

- PSNR on [0, 1] images (32x32): ``10 log10(1 / MSE)``; identical images give +inf.
- SSIM: Wang, Bovik, Sheikh, Simoncelli, "Image Quality Assessment: From Error Visibility to Structural Similarity",
  IEEE TIP 2004, computed by ``kornia.metrics.ssim`` with an 11x11 Gaussian window (sigma 1.5), its default 'same'
  zero padding (our images have a black background, so the padding matches it), averaged over pixels and channels.

All functions are pure and take image batches (B, C, H, W) on [0, 1]; :func:`to_unit_range` converts the models'
[-1, 1] images (clamping the generator's slight overshoot).
"""

from __future__ import annotations

import kornia
import torch

__all__ = ["mse_to_psnr", "psnr", "ssim", "to_unit_range"]


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] model images -> [0, 1], clamped."""
    return ((images.float() + 1) / 2).clamp(0, 1)


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.ndim != 4 or x.shape != y.shape:
        raise ValueError(f"need two (B, C, H, W) batches of the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")


def mse_to_psnr(mse: torch.Tensor) -> torch.Tensor:
    """PSNR in dB from the MSE of [0, 1] images (any shape): ``10 log10(1 / mse)``; mse 0 -> +inf."""
    return 10 * torch.log10(1.0 / mse.double()).float()


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B,) PSNR in dB between [0, 1] image batches (B, C, H, W); +inf where the images are identical."""
    _check_pair(x, y)
    return mse_to_psnr((x.double() - y.double()).square().mean(dim=(1, 2, 3)))


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B,) mean SSIM between [0, 1] image batches (B, C, H, W): 1.0 for identical images."""
    _check_pair(x, y)
    ssim_map = kornia.metrics.ssim(x.float(), y.float(), window_size=11, max_val=1.0)  # (B, C, H, W)
    return ssim_map.mean(dim=(1, 2, 3))
