"""Pixels <-> tensors and the one PNG encoder: grids, strips and single images, written atomically.

Decoding user files (JPEG, PNG, ... with their EXIF turns and alpha) is :mod:`semdir_edit.data.photo`'s job.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

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


# For enlarged images: OpenCV's default (run-length zlib) cannot use the rows that enlarging repeats; zlib level 1
# with its default strategy can: a third of the bytes at the same speed. Images at their own size keep the default,
# which is faster there (batch writes thousands).
_ENLARGED_PNG = [cv2.IMWRITE_PNG_COMPRESSION, 1]


def encode_png(image: np.ndarray, scale: int = 1, enlarged: bool = False) -> bytes | None:
    """A uint8 image (H, W) or (H, W, 3 BGR) as PNG bytes, enlarged by nearest-neighbour ``scale``; None when
    OpenCV cannot encode it. ``enlarged``: the image was enlarged already (compressed as one)."""
    if scale > 1:
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    ok, buf = cv2.imencode(".png", image, _ENLARGED_PNG if scale > 1 or enlarged else [])
    return buf.tobytes() if ok else None


def png_bytes(images: torch.Tensor, nrow: int = 1, scale: int = 1, pad: int = 0) -> bytes:
    """Images (N, C, R, R) in [-1, 1] -> PNG bytes of one grid (``nrow`` per row), enlarged by ``scale``."""
    png = encode_png(make_grid(images, nrow, pad=pad), scale)
    if png is None:  # Only on an OpenCV failure; not the user's fault.
        raise RuntimeError("PNG encoding failed")
    return png


def write_png(path: str | Path, image: np.ndarray, scale: int = 1, enlarged: bool = False, sync: bool = True
              ) -> None:
    """Encode a uint8 image as PNG (optionally enlarged by nearest-neighbour ``scale``) and write it atomically
    (``sync``: see :func:`~semdir_edit.core.io.atomic_write_bytes`)."""
    png = encode_png(image, scale, enlarged)
    if png is None:
        raise UserError(f"cannot encode PNG for {path}")
    try:
        atomic_write_bytes(path, png, sync)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None


LABEL_FONT = cv2.FONT_HERSHEY_SIMPLEX
LABEL_SIZE = 0.4        # Hershey font scale: about 9 px high, legible over tiles of 96 px and more.
LABEL_BAND = 18         # Pixels of the header row (column labels).
LABEL_INK, LABEL_PAPER = 235, 24


def _text_width(text: str) -> int:
    return cv2.getTextSize(text, LABEL_FONT, LABEL_SIZE, 1)[0][0]


def add_labels(grid: np.ndarray, cell: tuple[int, int], pad: int, cols: list[str] | None = None,
               rows: list[str] | None = None) -> np.ndarray:
    """A grid image (H, W[, 3]) uint8 with a header band naming its columns and a left band naming its rows.

    cell: one tile's (height, width) in the grid's pixels; pad: the pixels between tiles (as the grid was laid out).
    Labels are drawn at the grid's own size, so enlarge the grid before labelling it.
    """
    h, w = cell
    top = LABEL_BAND if cols else 0
    left = (max(_text_width(r) for r in rows) + 8) if rows else 0
    shape = (grid.shape[0] + top, grid.shape[1] + left) + grid.shape[2:]
    out = np.full(shape, LABEL_PAPER, np.uint8)
    out[top:, left:] = grid
    ink = (LABEL_INK,) * (3 if grid.ndim == 3 else 1)
    for j, text in enumerate(cols or []):
        x = left + pad + j * (w + pad) + max((w - _text_width(text)) // 2, 0)
        cv2.putText(out, text, (x, top - 5), LABEL_FONT, LABEL_SIZE, ink, 1, cv2.LINE_AA)
    for i, text in enumerate(rows or []):
        y = top + pad + i * (h + pad) + h // 2 + 4
        cv2.putText(out, text, (4, y), LABEL_FONT, LABEL_SIZE, ink, 1, cv2.LINE_AA)
    return out


def eps_labels(eps: list[float]) -> list[str]:
    """Column labels of a traversal: ``eps -3``, ``0``, ``+1.5`` ..."""
    return [f"eps {e:+g}" if e else "0 (input)" for e in eps]


def save_grid(path: str | Path, images: torch.Tensor | np.ndarray, nrow: int, scale: int = 1, pad: int = 2,
              cols: list[str] | None = None, rows: list[str] | None = None, sync: bool = True) -> None:
    """Write a PNG grid of images in [-1, 1] (or already uint8 numpy, (N, C, H, W)); ``pad=0`` for a single image at
    its own size. ``cols`` / ``rows``: labels of the columns and rows (see :func:`add_labels`), drawn after the
    grid is enlarged by ``scale``."""
    grid = arrange_grid(images, nrow, pad) if isinstance(images, np.ndarray) else make_grid(images, nrow, pad=pad)
    if not cols and not rows:
        write_png(path, grid, scale, sync=sync)
        return
    if scale > 1:
        grid = cv2.resize(grid, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    size = images.shape[-2:]
    write_png(path, add_labels(grid, (size[0] * scale, size[1] * scale), pad * scale, cols, rows),
              enlarged=scale > 1, sync=sync)


def fit_resolution(images: np.ndarray, resolution: int) -> torch.Tensor:
    """(N, H, W) uint8 -> (N, 1, R, R): zero-pad when smaller (28 -> 32, background is black), else resize."""
    x = torch.from_numpy(np.ascontiguousarray(images))[:, None]
    h, w = x.shape[-2:]
    if h <= resolution and w <= resolution:
        top, left = (resolution - h) // 2, (resolution - w) // 2
        return F.pad(x, (left, resolution - w - left, top, resolution - h - top))
    x = F.interpolate(x.float(), size=(resolution, resolution), mode="area")
    return x.round().clamp(0, 255).to(torch.uint8)
