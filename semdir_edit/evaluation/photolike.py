"""Photo-like versions of domain images: the article as a product photo, to test the photo path end to end.

A Fashion-MNIST image (bright article on black, 28x28 padded to 32x32) is turned back into something like the
catalogue shot it was made from (Xiao et al. 2017 went the other way): the 28x28 article is enlarged to 200-260 px,
negated to dark-on-light and tinted with a random dark colour, placed off-centre on a light 320x320 RGB background,
given mild Gaussian noise and JPEG-encoded with OpenCV (quality 80). Every random choice comes from a seeded numpy
``Generator``, so the same images and seed give the same bytes.

These photos then go through the project's real photo conversion (``semdir_edit.data.photo``), which must undo all
of it: ``evaluate inversion --photo-like`` measures how much of the classification survives.
"""

from __future__ import annotations

from collections.abc import Iterable

import cv2
import numpy as np
import torch

__all__ = ["CANVAS", "photo_like", "photo_like_jpegs"]

CANVAS = 320  # Side of the square photo.
ARTICLE_SIDE = (200, 260)  # The 28x28 article is enlarged to a side drawn from this range (inclusive).
MARGIN = 8  # At least this many background pixels between the article's box and the photo's edge.
BACKGROUND = (225, 250)  # Light background level per channel (a slightly off-white, slightly tinted paper).
TINT_MAX = 140  # Each channel of the article's colour is drawn from [0, TINT_MAX]: a dark, saturated-ish colour.
NOISE_SIGMA = 3.0  # Gaussian sensor noise, in 8-bit levels.
JPEG_QUALITY = 80


def _article(image: np.ndarray) -> np.ndarray:
    """A domain image uint8 (R, R) or (1, R, R), R >= 28 -> the centred 28x28 article (the padding cropped off)."""
    x = np.asarray(image)
    if x.ndim == 3 and x.shape[0] == 1:
        x = x[0]
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[0] != x.shape[1] or x.shape[0] < 28:
        raise ValueError(f"expected a square uint8 domain image of side >= 28, got {x.dtype} {x.shape}")
    pad = (x.shape[0] - 28) // 2
    return x[pad:pad + 28, pad:pad + 28]


def photo_like(image: np.ndarray, rng: np.random.Generator, *, canvas: int = CANVAS,
               article_side: tuple[int, int] = ARTICLE_SIDE, noise_sigma: float = NOISE_SIGMA,
               quality: int = JPEG_QUALITY) -> bytes:
    """JPEG bytes of a product-photo-like RGB version of one domain image (bright article on black).

    The article (28x28, padding cropped) is enlarged (bicubic) to a side in ``article_side``, its intensity a in
    [0, 1] blends a light background colour (a = 0) into a dark tint colour (a = 1) — dark-on-light, like a
    product shot — and it is pasted at a random off-centre position (at least ``MARGIN`` px from the edges) on a
    ``canvas`` x ``canvas`` background of the same light colour; then Gaussian noise of ``noise_sigma`` levels and
    JPEG at ``quality``. Draws from ``rng`` in a fixed order, so a seeded generator reproduces the bytes.
    """
    article = _article(image)
    lo, hi = article_side
    if not 28 <= lo <= hi <= canvas - 2 * MARGIN:
        raise ValueError(f"article_side {article_side} does not fit a {canvas}-px canvas")
    side = int(rng.integers(lo, hi + 1))
    background = rng.uniform(*BACKGROUND, size=3)
    tint = rng.uniform(0, TINT_MAX, size=3)
    top, left = (int(v) for v in rng.integers(MARGIN, canvas - side - MARGIN + 1, size=2))
    a = cv2.resize(article.astype(np.float32) / 255.0, (side, side), interpolation=cv2.INTER_CUBIC).clip(0, 1)
    photo = np.broadcast_to(background, (canvas, canvas, 3)).copy()
    photo[top:top + side, left:left + side] = background * (1 - a[..., None]) + tint * a[..., None]
    photo += rng.normal(0.0, noise_sigma, size=photo.shape)
    rgb = np.rint(photo).clip(0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # pragma: no cover - OpenCV always encodes a uint8 RGB array.
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def photo_like_jpegs(images: torch.Tensor | np.ndarray | Iterable[np.ndarray], seed: int = 0, **kwargs) -> list[bytes]:
    """:func:`photo_like` of every domain image ((N, 1, R, R) or (N, R, R) uint8), one seeded generator for all."""
    rng = np.random.default_rng(seed)
    if isinstance(images, torch.Tensor):
        images = images.cpu().numpy()
    return [photo_like(np.asarray(x), rng, **kwargs) for x in images]
