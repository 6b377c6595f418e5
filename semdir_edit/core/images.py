"""Pixels <-> tensors and the one PNG encoder: grids, strips and single images, written atomically.

Decoding user files (JPEG, PNG, ... with their EXIF turns and alpha) is :mod:`semdir_edit.data.photo`'s job.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from semdir_edit.core.errors import UserError
from semdir_edit.core.io import atomic_write_bytes


def to_float(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return images_u8.float() / 127.5 - 1.0


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255], clamped."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


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


def encode_png(image: np.ndarray, scale: int = 1) -> bytes | None:
    """A uint8 image (H, W) or (H, W, 3 BGR) as PNG bytes, enlarged by nearest-neighbour ``scale``; None when
    OpenCV cannot encode it."""
    if scale > 1:
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    ok, buf = cv2.imencode(".png", image)
    return buf.tobytes() if ok else None


def png_bytes(images: torch.Tensor, nrow: int = 1, scale: int = 1, pad: int = 0) -> bytes:
    """Images (N, C, R, R) in [-1, 1] -> PNG bytes of one grid (``nrow`` per row), enlarged by ``scale``."""
    png = encode_png(make_grid(images, nrow, pad=pad), scale)
    if png is None:  # Only on an OpenCV failure; not the user's fault.
        raise RuntimeError("PNG encoding failed")
    return png


def write_png(path: str | Path, image: np.ndarray, scale: int = 1) -> None:
    """Encode a uint8 image as PNG (optionally enlarged by nearest-neighbour ``scale``) and write it atomically."""
    png = encode_png(image, scale)
    if png is None:
        raise UserError(f"cannot encode PNG for {path}")
    try:
        atomic_write_bytes(path, png)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None


def save_grid(path: str | Path, images: torch.Tensor | np.ndarray, nrow: int, scale: int = 1, pad: int = 2) -> None:
    """Write a PNG grid of images in [-1, 1] (or already uint8 numpy, (N, C, H, W)); ``pad=0`` for a single image at
    its own size."""
    grid = arrange_grid(images, nrow, pad) if isinstance(images, np.ndarray) else make_grid(images, nrow, pad=pad)
    write_png(path, grid, scale)
