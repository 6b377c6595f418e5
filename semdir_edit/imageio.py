"""The one place for writing images (PNG grids and strips), always atomically."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from semdir_edit.checkpoint import atomic_write_bytes
from semdir_edit.data.datasets import to_uint8
from semdir_edit.errors import UserError


def make_grid(images: torch.Tensor, nrow: int, pad: int = 2, pad_value: int = 64) -> np.ndarray:
    """(N, C, H, W) floats in [-1, 1] -> one uint8 (rows*H, cols*W[, C]) image, ``nrow`` images per row."""
    return arrange_grid(to_uint8(images).cpu().numpy(), nrow, pad, pad_value)


def arrange_grid(x: np.ndarray, nrow: int, pad: int = 2, pad_value: int = 64) -> np.ndarray:
    """:func:`make_grid` of images already in uint8 ((N, C, H, W) numpy): no torch, so a writer thread running it
    does not hold the GIL through torch's dispatcher while the main thread computes."""
    n, c, h, w = x.shape
    rows = (n + nrow - 1) // nrow
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), pad_value, np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        y0, x0 = pad + r * (h + pad), pad + col * (w + pad)
        grid[y0:y0 + h, x0:x0 + w] = x[i].transpose(1, 2, 0)
    return grid[..., 0] if c == 1 else grid[..., ::-1]  # OpenCV wants BGR.


def write_png(path: str | Path, image: np.ndarray, scale: int = 1) -> None:
    """Encode a uint8 image as PNG (optionally enlarged by nearest-neighbour ``scale``) and write it atomically."""
    if scale > 1:
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise UserError(f"cannot encode PNG for {path}")
    try:
        atomic_write_bytes(path, buf.tobytes())
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None


def save_grid(path: str | Path, images: torch.Tensor | np.ndarray, nrow: int, scale: int = 1, pad: int = 2) -> None:
    """Write a PNG grid of images in [-1, 1] (or already uint8 numpy, (N, C, H, W)); ``pad=0`` for a single image at
    its own size."""
    grid = arrange_grid(images, nrow, pad) if isinstance(images, np.ndarray) else make_grid(images, nrow, pad=pad)
    write_png(path, grid, scale)
