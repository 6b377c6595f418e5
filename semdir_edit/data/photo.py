"""User photos -> domain images: a safe image loader and the Fashion-MNIST conversion.

Paper: Xiao, Rasul & Vollgraf 2017, "Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine Learning
Algorithms", arXiv:1708.07747, section 2. Their conversion of a product photo (article on a white background):
(1) trim the borders whose colour is close to the corner pixels (within 5% of the maximum intensity),
(2) resize the longest edge to 28, (3) sharpen (unsharp mask, Gaussian of radius and sigma 1.0),
(4) extend the short edge to 28 with the article at the centre, (5) negate the intensities,
(6) convert to 8-bit grayscale. Our training images are then zero-padded 28 -> 32 (``core.images.fit_resolution``).

What changes for photos a user takes rather than catalogue shots (each step is commented in ``to_domain``):
- (1) the background is a smooth quadratic surface fitted robustly to the border pixels (gradients, vignetting),
  "close" is max(5% of 255, 5 border-noise sigmas) per RGB channel (JPEG noise), and the box is that of the
  largest connected components of the far-from-background mask after a 3x3 opening (specks and ringing);
- (5) the intensity is |gray - background gray|: exactly the negation 255 - gray on a white background, and it
  also works on a dark one; where the article differs from the background mostly in hue, the colour distance;
- the intensity is stretched so the article's brightest pixels (a high percentile) reach 255: a pale or coloured
  article comes out as strong as a black one;
- textured backgrounds (border noise above TEXTURE_SIGMA: floors, bedspreads, carpets): the article is segmented
  with GrabCut seeded from the border (background) and the pixels fairly far from the background (probable
  article, SEED_TOL), then an opening drops thin clutter (hangers, tags) — after a closing where it would drop much
  of the article (stripes, a print) —, one article is kept (the largest, most central: one shoe of a pair) with its
  holes filled, and the silhouette gets a floor of SOLID_FLOOR so pale-on-pale articles do not vanish;
  plain backgrounds (product shots) skip all of this and convert exactly as before;
- (2) resizes with area averaging instead of skipping rows and columns, and (3) sharpens after (4), on the
  black canvas, so the blur never reaches past the article's edge; (4) puts an odd pixel of slack above / left
  of the article, as the dataset does.

Every failure to read an image is a ``UserError`` "<file name>: <reason>"; nothing else escapes ``load_image``.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import stat
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from semdir_edit.core.errors import UserError
from semdir_edit.core.images import fit_resolution

# A truncated file must fail, never decode into an image with a grey bottom (this is Pillow's default; stated here
# so that no other import can change it behind our back).
ImageFile.LOAD_TRUNCATED_IMAGES = False

FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM")  # Decoders we allow (JPEG includes MPO; no EPS etc).
DEFAULT_MAX_PIXELS = 50_000_000  # Refuse images declaring more pixels than this, before decoding them.
ARTICLE_SIZE = 28  # Fashion-MNIST: the article's long edge spans 28 pixels, then the image is padded to 32.
WORK_SIDE = 512  # Long edge of the working copy the article is searched in (the output is only 28 pixels).
TOL_MIN = 0.05 * 255  # Paper: "close" to the background = within 5% of the maximum intensity.
TOL_NOISE = 5.0  # ... or within this many border-noise sigmas, whichever is larger.
TOL_MAX = 64.0  # Cap on the noise-based tolerance: a textured background must not hide the article.
KEEP_FRACTION = 0.05  # Connected components smaller than this fraction of the largest one are noise.
STRETCH_PERCENTILE = 99.5  # This percentile of the article's 28-px intensity -> 255 (92% of the data reach 255).
UNSHARP_SIGMA = 1.0  # Paper: Gaussian of radius and standard deviation 1.0 (3x3 kernel).
UNSHARP_AMOUNT = 0.5  # Mild: out = x + amount * (x - blur(x)).
DOMAIN_BORDER_MAX = 16  # A grayscale 28/32 image is already a domain image when at least ...
DOMAIN_DARK_RING = 0.25  # ... this fraction of its outer ring is at most DOMAIN_BORDER_MAX (articles may touch it).
DOMAIN_SIZES = (28, 32)  # Sizes a domain image may already have (28 is padded to 32, as in training).
UPLOADED = "uploaded image"  # How raw bytes without a name are called in messages.
# Photos taken on floors, beds and carpets (textured backgrounds): product shots have a border-noise sigma of about 1,
# such photos 2.5 and up. Above this sigma the article is segmented with GrabCut (``_segment_textured``).
TEXTURE_SIGMA = 2.0
GRABCUT_SIDE = 160  # GrabCut runs on a copy this long: the output is 28 pixels, and it is the slow step.
GRABCUT_ITERS = 4
CLUTTER_OPEN = 0.04  # Opening with a disc this fraction of the long side drops hangers, tags and threads.
# When that opening would drop more than STRIPES_LOST of what GrabCut found, the article itself is thin parts (a striped
# garment whose pale stripes GrabCut gave to the floor, a print): they are first joined by a closing with a disc of
# STRIPES_CLOSE of the long side. Always closing joins trouser legs and dress folds too (docs/photos.md).
STRIPES_LOST = 0.1
STRIPES_CLOSE = 0.08
# GrabCut's probable-article seeds are the pixels farther from the background than SEED_TOL x the tolerance: below 1, a
# garment's parts close to the floor's colour (a pale bow on a dark dress, pale stripes) seed its colour model too.
SEED_TOL = 0.75
SOLID_FLOOR = 0.35  # On a textured background the article's silhouette is at least this bright (of 255): pale or
# background-coloured parts of the garment stay visible, as the dataset's solid silhouettes are.


@dataclass
class LoadedImage:
    """A decoded image: ``pixels`` uint8 (H, W) grayscale or (H, W, 3) RGB, alpha already composited on white."""

    pixels: np.ndarray
    notes: list[str] = field(default_factory=list)  # What was done that the user may want to know.


@dataclass
class DomainResult:
    """A domain image: ``image`` uint8 (R, R), the article bright on a black background."""

    image: np.ndarray
    passthrough: bool  # True: the input was used as it is (only padded or resized), no article search.
    notes: list[str] = field(default_factory=list)
    box: tuple[int, int, int, int] | None = None  # Article (left, top, right, bottom) in input pixels; None = all.


def load_image(
    source: str | Path | bytes, max_pixels: int = DEFAULT_MAX_PIXELS, name: str | None = None
) -> LoadedImage:
    """Decode a file (path) or raw bytes (an upload); ``name`` is what messages call it (default: the path).

    Refuses images whose header declares more than ``max_pixels`` pixels before decoding them (Pillow's own
    decompression-bomb limit, 2 x ``Image.MAX_IMAGE_PIXELS``, is left as it is and also applies). Applies the EXIF
    orientation, keeps the first frame of animations, converts palette, 16-bit, CMYK and other modes to 8-bit gray or
    RGB, and composites transparency on white. Raises ``UserError("<name>: <reason>")`` on any failure.
    """
    label = _label(source, name)
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise UserError(f"{label}: the file is empty")
        return _decode(io.BytesIO(bytes(source)), label, max_pixels)
    return _decode(io.BytesIO(read_input_file(source, label)), label, max_pixels)


def read_input_file(path: str | os.PathLike, label: str, max_bytes: int | None = None) -> bytes:
    """The bytes of one input file; every failure is a one-line UserError naming it (a FIFO is never opened)."""
    try:
        info = check_regular_file(path, label)
        if max_bytes is not None and info.st_size > max_bytes:
            raise UserError(f"{label}: the file is {info.st_size:,} bytes, more than the limit of {max_bytes:,}")
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise UserError(f"{label}: file not found (or a broken link)") from None
    except IsADirectoryError:
        raise UserError(f"{label}: is a folder, not an image file") from None
    except PermissionError:
        raise UserError(f"{label}: permission denied") from None
    except OSError as exc:
        raise UserError(f"{label}: cannot read the file ({_one_line(exc.strerror or exc)})") from None


def check_regular_file(path: str | os.PathLike, label: str) -> os.stat_result:
    """stat() an input before opening it (opening a FIFO would block); folders, devices and empty files are refused
    with a one-line UserError. OSErrors of stat() itself (missing file, permissions) are left to the caller."""
    info = os.stat(path)
    if stat.S_ISDIR(info.st_mode):
        raise UserError(f"{label}: is a folder, not an image file")
    if not stat.S_ISREG(info.st_mode):
        raise UserError(f"{label}: not a regular file")
    if info.st_size == 0:
        raise UserError(f"{label}: the file is empty")
    return info


def to_domain(
    image: np.ndarray, resolution: int = 32, *, force_passthrough: bool = False, name: str = "image"
) -> DomainResult:
    """Convert uint8 (H, W) / (H, W, 3) / (H, W, 4) pixels to a (resolution, resolution) domain image.

    An image already in the domain (28x28 or 32x32, grayscale, dark outer ring) passes through unchanged (28 is
    padded to 32); ``force_passthrough`` (the CLI's --no-preprocess) does that for any image, converting to gray and
    resizing when needed. Otherwise the article is found and converted as in Fashion-MNIST (module docstring).
    Raises ``UserError("<name>: no article found (the image is blank)")`` when nothing stands out.
    """
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
        raise ValueError(f"expected uint8 (H, W[, 1|3|4]) pixels, got {image.dtype} {image.shape}")
    if image.size == 0:
        raise UserError(f"{name}: the image has zero width or height")
    if image.ndim == 3 and image.shape[2] == 4:
        image = _composite(image[..., :3], image[..., 3], [])
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if (image == image.reshape(-1, *image.shape[2:])[0]).all():
        raise UserError(f"{name}: no article found (the image is blank)")
    try:
        if force_passthrough or _is_domain(image):
            return _passthrough(image, resolution)
        return _convert(image, resolution, name)
    except cv2.error as exc:
        raise UserError(f"{name}: image processing failed ({_one_line(exc)})") from None


def load_domain_image(
    source: str | Path | bytes,
    resolution: int = 32,
    preprocess: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str | None = None,
) -> tuple[torch.Tensor, list[str]]:
    """Load a photo or domain image as a uint8 tensor (1, R, R) plus notes; ``preprocess=False`` = passthrough."""
    image, notes, _ = load_domain_photo(source, resolution, preprocess, max_pixels, name)
    return image, notes


def load_domain_photo(
    source: str | Path | bytes,
    resolution: int = 32,
    preprocess: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str | None = None,
) -> tuple[torch.Tensor, list[str], bool]:
    """As :func:`load_domain_image`, plus whether the input came in as a photo (converted) rather than as a domain
    image (passed through): photos are classified by the photo classifier."""
    label = _label(source, name)
    loaded = load_image(source, max_pixels, name=label)
    result = to_domain(loaded.pixels, resolution, force_passthrough=not preprocess, name=label)
    image = torch.from_numpy(np.ascontiguousarray(result.image))[None]
    assert image.shape == (1, resolution, resolution) and image.dtype == torch.uint8
    return image, loaded.notes + result.notes, not result.passthrough


# --- Loading -----------------------------------------------------------------------------------------------------


def _label(source: str | Path | bytes, name: str | None) -> str:
    if name:
        return name
    return UPLOADED if isinstance(source, (bytes, bytearray, memoryview)) else str(source)


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _decode(fp: BinaryIO, label: str, max_pixels: int) -> LoadedImage:
    """Decode the first frame of an image file object; every Pillow failure becomes a UserError."""
    notes: list[str] = []
    try:
        with warnings.catch_warnings():
            # Pillow's warnings (decompression bomb, odd palettes, corrupt EXIF) are not errors here: our own
            # pixel limit applies, and a warning turned into an exception (python -W error) must not leak.
            warnings.simplefilter("ignore")
            im = Image.open(fp, formats=FORMATS)  # Lazy: reads the header only.
            w, h = im.size
            if w * h > max_pixels:
                raise UserError(
                    f"{label}: the image declares {w}x{h} = {w * h:,} pixels, more than the limit of {max_pixels:,}"
                )
            if w == 0 or h == 0:
                raise UserError(f"{label}: the image has zero width or height")
            if getattr(im, "is_animated", False):
                kind = "animated" if im.format in ("GIF", "WEBP", "PNG") else "multi-frame"
                notes.append(f"{kind} {im.format}: first frame used")
                im.seek(0)
            if im.format == "TIFF":  # Compressed TIFFs are decoded by libtiff, which prints to stderr itself.
                decoder: list[str] = []
                try:
                    with _fd2_into(decoder):
                        im.load()
                finally:
                    notes.extend(f"TIFF decoder: {_one_line(m)[:200]}" for m in decoder[:1])
            else:
                im.load()
            im = _apply_orientation(im, notes)
            im = _normalise_mode(im)
    except UserError:
        raise
    except Image.DecompressionBombError as exc:
        count = re.search(r"\((\d+) pixels\)", str(exc))
        declared = f"{int(count.group(1)):,} pixels" if count else "too many pixels"
        raise UserError(f"{label}: the image declares {declared}, more than Pillow's safety limit") from None
    except UnidentifiedImageError:
        raise UserError(f"{label}: {_unidentified_reason(fp)}") from None
    except MemoryError:
        raise UserError(f"{label}: not enough memory to decode the image") from None
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error...
        raise UserError(f"{label}: cannot decode the image, it is truncated or corrupt ({_one_line(exc)})") from None
    return LoadedImage(_to_pixels(im, notes), notes)


_FD2_LOCK = threading.Lock()


@contextlib.contextmanager
def _fd2_into(messages: list[str]) -> Iterator[None]:
    """Collect what C code writes to file descriptor 2 meanwhile (libtiff's "TIFFReadDirectory: ..." warnings) into
    ``messages``, instead of letting it print before our one-line error. One decode at a time (fd 2 is the process's);
    a decode takes milliseconds."""
    with _FD2_LOCK, tempfile.TemporaryFile() as sink:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            messages.extend(line.strip() for line in sink.read().decode("utf-8", "replace").splitlines()
                            if line.strip())


def _unidentified_reason(fp: BinaryIO) -> str:
    """Why Pillow did not recognise the file, from its first bytes."""
    try:
        fp.seek(0)
        head = fp.read(512)
    except (OSError, ValueError):
        head = b""
    supported = "supported: PNG, JPEG, GIF, BMP, TIFF, WebP, PPM"
    if head.startswith(b"\x89PNG\r\n\x1a\n") and len(head) >= 24:
        if int.from_bytes(head[16:20], "big") == 0 or int.from_bytes(head[20:24], "big") == 0:
            return "the image has zero width or height"
    if head[4:8] == b"ftyp":
        return f"HEIC/HEIF/AVIF images are not supported: convert it to JPEG or PNG ({supported})"
    if head and all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        return f"this is a text file, not an image ({supported})"
    return f"not an image in a supported format ({supported})"


def _apply_orientation(im: Image.Image, notes: list[str]) -> Image.Image:
    """Rotate/flip as the EXIF orientation tag says (phones store pictures sideways)."""
    try:
        orientation = im.getexif().get(0x0112, 1)
    except Exception:  # Malformed EXIF: the pixels are still good.
        notes.append("EXIF data unreadable: orientation ignored")
        return im
    if orientation not in range(2, 9):
        return im
    notes.append(f"EXIF orientation {orientation} applied")
    return ImageOps.exif_transpose(im)


def _normalise_mode(im: Image.Image) -> Image.Image:
    """Pillow modes -> one of L, RGB, RGBA, LA, or wide gray (I;16*, I, F) which ``_to_pixels`` scales."""
    if im.mode in ("L", "RGB", "RGBA", "LA", "F") or im.mode.startswith("I"):
        return im
    if im.mode in ("P", "PA", "RGBa"):
        return im.convert("RGBA")  # A palette may carry transparency; RGBA is exact either way.
    if im.mode in ("1", "La"):
        return im.convert("L" if im.mode == "1" else "LA")
    return im.convert("RGBA" if "A" in im.getbands() else "RGB")  # CMYK, YCbCr, LAB, HSV...


def _to_pixels(im: Image.Image, notes: list[str]) -> np.ndarray:
    """Normalised Pillow image -> uint8 (H, W) or (H, W, 3)."""
    a = np.array(im)  # A writable copy (torch.from_numpy warns on read-only arrays).
    if im.mode == "F" or im.mode.startswith("I"):
        a = a.astype(np.float64)
        if im.mode == "F" and a.max(initial=0) <= 1.0:
            a = a * 255  # Float images in [0, 1].
        elif im.mode.startswith("I;16") or (im.mode != "F" and a.max(initial=0) > 255):
            # I;16: the file says 16 bits, so a dark one (every value < 256) is dark, not an 8-bit image.
            a = a / 257  # 16-bit [0, 65535] -> [0, 255].
            notes.append("16-bit image: scaled to 8 bits")
        return np.clip(np.rint(a), 0, 255).astype(np.uint8)
    if im.mode in ("RGBA", "LA"):
        return _composite(a[..., :-1], a[..., -1], notes)
    return a


def _composite(color: np.ndarray, alpha: np.ndarray, notes: list[str]) -> np.ndarray:
    """Composite (H, W, C) colour with (H, W) alpha on white; C = 1 comes back as (H, W)."""
    if color.shape[-1] == 1:
        color = color[..., 0]
    if alpha.min() == 255:
        return np.ascontiguousarray(color)
    a = alpha.astype(np.float32) / 255
    if color.ndim == 3:
        a = a[..., None]
    notes.append("transparent pixels composited on white")
    return np.rint(color * a + 255 * (1 - a)).astype(np.uint8)


# --- Conversion --------------------------------------------------------------------------------------------------


def _gray(image: np.ndarray) -> np.ndarray:
    """uint8 or float (H, W[, 1 | 3]) -> float32 (H, W) luminance (ITU-R BT.601, as OpenCV and Pillow)."""
    if image.ndim == 2 or image.shape[2] == 1:
        return image.reshape(image.shape[:2]).astype(np.float32)
    return image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def _is_domain(image: np.ndarray) -> bool:
    """28x28 or 32x32, gray (or RGB with equal channels), and a partly black outer ring: already a domain image."""
    h, w = image.shape[:2]
    if h != w or h not in DOMAIN_SIZES:
        return False
    if image.ndim == 3 and np.abs(image.astype(np.int16) - image[..., :1]).max() > 3:
        return False
    gray = _gray(image)
    ring = np.concatenate([gray[0], gray[-1], gray[1:-1, 0], gray[1:-1, -1]])
    return float(np.quantile(ring, DOMAIN_DARK_RING)) <= DOMAIN_BORDER_MAX


def _passthrough(image: np.ndarray, resolution: int) -> DomainResult:
    """Use the image as it is: gray, 28 padded to 32 as in training, any other size resized."""
    notes = ["used as a domain image without preprocessing"]
    gray = image if image.ndim == 2 else np.rint(_gray(image)).astype(np.uint8)
    if image.ndim == 3:
        notes.append("converted to grayscale")
    h, w = gray.shape
    if (h, w) == (ARTICLE_SIZE, ARTICLE_SIZE):
        out = fit_resolution(gray[None], resolution)[0, 0].numpy()
    elif (h, w) == (resolution, resolution):
        out = gray.copy()
    else:
        shrink = h > resolution or w > resolution
        out = cv2.resize(gray, (resolution, resolution), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        notes.append(f"resized from {w}x{h} to {resolution}x{resolution}" + ("" if h == w else " (aspect not kept)"))
    return DomainResult(out, True, notes)


def _convert(image: np.ndarray, resolution: int, name: str) -> DomainResult:
    """The Fashion-MNIST conversion (module docstring), robust to real photos."""
    notes: list[str] = []
    h0, w0 = image.shape[:2]
    x = image.astype(np.float32).reshape(h0, w0, -1)  # (H, W, C), C = 1 or 3

    # Work on a copy at most WORK_SIDE pixels long: faster, and area averaging already removes sensor noise.
    scale = min(1.0, WORK_SIDE / max(h0, w0))
    if scale < 1.0:
        size = (max(1, round(w0 * scale)), max(1, round(h0 * scale)))
        x = cv2.resize(x, size, interpolation=cv2.INTER_AREA).reshape(size[1], size[0], -1)
    h, w = x.shape[:2]

    # (1) Background: a smooth surface fitted to the border; "close" relative to the border's noise.
    bg, sigma = _fit_background(x)
    distance = np.abs(x - bg).max(axis=2)  # (h, w) Chebyshev distance in RGB
    tol = float(np.clip(TOL_NOISE * sigma, TOL_MIN, TOL_MAX))
    far = distance > tol
    article = _article_mask(far)
    if article is None:
        raise UserError(f"{name}: no article found (the image is blank)")
    textured = sigma > TEXTURE_SIGMA
    if textured:
        segmented = _segment_textured(x, distance > SEED_TOL * tol, notes)
        if segmented is None:
            textured = False  # GrabCut found nothing: fall back to the plain-background mask.
        else:
            article = segmented
    ys, xs = np.nonzero(article)
    top, bottom, left, right = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    if bottom - top >= 0.98 * h and right - left >= 0.98 * w:
        notes.append("no uniform background found: the whole image was used")
    elif top == 0 or left == 0 or bottom == h or right == w:
        notes.append("the article touches the image border: it may be cut off")

    # (5) Intensity = distance from the background's gray (the negation 255 - gray on white), or the colour distance
    # when the article differs from the background mostly in hue.
    bg_gray = _gray(bg)
    intensity = np.abs(_gray(x) - bg_gray)
    luminance_peak, colour_peak = np.percentile([intensity[article], distance[article]], STRETCH_PERCENTILE, axis=1)
    if luminance_peak < 0.5 * colour_peak:
        intensity = distance
        notes.append("the article differs from the background mostly in colour: colour distance used")
    if float(np.median(bg_gray)) < 128:
        notes.append("dark background: intensities not negated")
    # Drop the background's noise floor, and everything not next to a far-from-background pixel.
    near = article if textured else cv2.dilate(far.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    intensity = np.maximum(intensity - min(3 * sigma, 0.5 * tol), 0) * near

    # (1) Trim to the article's box, (2) resize its longest edge to 28 (area averaging when shrinking).
    crop = np.ascontiguousarray(intensity[top:bottom, left:right])
    mask = np.ascontiguousarray(article[top:bottom, left:right], dtype=np.float32)
    ch, cw = crop.shape
    factor = ARTICLE_SIZE / max(ch, cw)
    size = (min(ARTICLE_SIZE, max(1, round(cw * factor))), min(ARTICLE_SIZE, max(1, round(ch * factor))))
    interp = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
    small = cv2.resize(crop, size, interpolation=interp).reshape(size[1], size[0])
    small_mask = cv2.resize(mask, size, interpolation=interp).reshape(size[1], size[0]) > 0.5

    # Contrast: the article's brightest pixels (a percentile) -> 255, so pale or coloured articles come out strong.
    values = small[small_mask] if small_mask.any() else small[small > 0]
    peak = float(np.percentile(values, STRETCH_PERCENTILE)) if values.size else 0.0
    if peak <= 0:
        raise UserError(f"{name}: no article found (the image is blank)")
    if 255 / peak > 1.5:
        notes.append(f"faint article: contrast stretched x{255 / peak:.1f}")
    small = np.clip(small * (255 / peak), 0, 255)
    if textured:  # A solid silhouette (soft edge from the area-resized mask) under the article's own contrast.
        soft = np.clip(cv2.resize(mask, size, interpolation=interp).reshape(size[1], size[0]), 0, 1)
        small = soft * (255 * SOLID_FLOOR + (1 - SOLID_FLOOR) * small)

    # (4) Extend the short edge to 28 with the article at the centre, on black.
    canvas = np.zeros((ARTICLE_SIZE, ARTICLE_SIZE), np.float32)
    # An odd slack puts the extra pixel above / left of the article, as in 97% of the Fashion-MNIST test images.
    y0, x0 = (ARTICLE_SIZE - size[1] + 1) // 2, (ARTICLE_SIZE - size[0] + 1) // 2
    canvas[y0:y0 + size[1], x0:x0 + size[0]] = small

    # (3) Sharpen: a mild unsharp mask; (6) 8-bit gray; then pad 28 -> R as the training images.
    blur = cv2.GaussianBlur(canvas, (3, 3), UNSHARP_SIGMA, borderType=cv2.BORDER_CONSTANT)
    canvas = np.clip(np.rint(canvas + UNSHARP_AMOUNT * (canvas - blur)), 0, 255).astype(np.uint8)
    out = fit_resolution(canvas[None], resolution)[0, 0].numpy()

    sy, sx = h0 / h, w0 / w  # Working copy -> input pixels.
    box = (int(left * sx), int(top * sy), min(w0, round(right * sx)), min(h0, round(bottom * sy)))
    return DomainResult(out, False, notes, box)


def _fit_background(x: np.ndarray) -> tuple[np.ndarray, float]:
    """Background (h, w, C) as a quadratic surface fitted robustly to the border pixels, and the border noise sigma.

    Starts from the median border colour, then refits on the border pixels close to the current fit, so an article
    touching the border does not pull the fit; a quadratic follows gradients and vignetting.
    """
    h, w, c = x.shape
    ring = max(1, min(h, w) // 50)
    border = np.zeros((h, w), bool)
    border[:ring], border[-ring:], border[:, :ring], border[:, -ring:] = True, True, True, True
    v, u = np.mgrid[0:h, 0:w].astype(np.float32)
    u, v = u / max(w - 1, 1) * 2 - 1, v / max(h - 1, 1) * 2 - 1
    basis = np.stack([np.ones_like(u), u, v, u * v, u * u, v * v], axis=-1)  # (h, w, 6)
    samples, design = x[border], basis[border]  # (N, C), (N, 6)
    terms = 6 if len(samples) >= 24 else 1

    coef = np.zeros((terms, c), np.float32)
    coef[0] = np.median(samples, axis=0)
    keep = np.ones(len(samples), bool)
    for _ in range(4):
        resid = np.abs(samples - design[:, :terms] @ coef).max(axis=1)
        sigma = 1.4826 * float(np.median(resid[keep]))
        keep = resid <= max(TOL_MIN, TOL_NOISE * sigma)
        if keep.sum() < 2 * terms:
            break
        coef = np.linalg.lstsq(design[keep, :terms], samples[keep], rcond=None)[0].astype(np.float32)
    resid = np.abs(samples - design[:, :terms] @ coef)
    sigma = 1.4826 * float(np.median(resid[keep])) if keep.any() else 0.0
    bg = np.clip(basis[..., :terms] @ coef, 0, 255)
    return bg.astype(np.float32), sigma


def _segment_textured(x: np.ndarray, likely: np.ndarray, notes: list[str]) -> np.ndarray | None:
    """The article's mask (h, w) on a textured background, by GrabCut on a GRABCUT_SIDE copy; None = nothing found.

    Seeds: the border ring is background where it is close to the fitted background (an article may touch the
    border), ``likely`` (pixels fairly far from the background) is probable article, the rest probable background.
    GrabCut's colour models then separate a patterned floor from the garment where a distance threshold cannot.
    """
    h, w = likely.shape
    scale = min(1.0, GRABCUT_SIDE / max(h, w))
    size = (max(8, round(w * scale)), max(8, round(h * scale)))
    small = cv2.resize(x, size, interpolation=cv2.INTER_AREA).reshape(size[1], size[0], -1)
    small = np.repeat(small, 3, axis=2) if small.shape[2] == 1 else small
    small = np.clip(np.rint(small), 0, 255).astype(np.uint8)
    seed = cv2.resize(likely.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
    mask = np.where(seed, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
    ring = np.zeros(seed.shape, bool)
    r = max(1, min(size) // 40)
    ring[:r], ring[-r:], ring[:, :r], ring[:, -r:] = True, True, True, True
    mask[ring & ~seed] = cv2.GC_BGD
    if not (mask == cv2.GC_BGD).any():
        mask[ring] = cv2.GC_BGD  # Every border pixel is far: the background is busy, the article still inside.
    if not (mask == cv2.GC_PR_FGD).any():
        return None
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)  # GrabCut's k-means start draws from OpenCV's RNG: same photo, same mask, whatever came before.
    cv2.grabCut(small, mask, None, bgd, fgd, GRABCUT_ITERS, cv2.GC_INIT_WITH_MASK)
    fg = ((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)).astype(np.uint8)
    disc = _disc(CLUTTER_OPEN * max(size))
    opened = cv2.morphologyEx(fg, cv2.MORPH_OPEN, disc)
    if opened.sum() < (1 - STRIPES_LOST) * fg.sum():
        joined = cv2.morphologyEx(fg, cv2.MORPH_CLOSE, _disc(STRIPES_CLOSE * max(size)))
        opened = cv2.morphologyEx(joined, cv2.MORPH_OPEN, disc)
        notes.append("an article of thin parts (stripes, a print): the parts were joined")
    fg = opened
    n, labels, stats, centres = cv2.connectedComponentsWithStats(fg, connectivity=8)
    if n <= 1:
        return None
    areas = stats[1:, cv2.CC_STAT_AREA].astype(np.float64)
    if areas.max() < 0.01 * fg.size:
        return None
    # One article: the largest, favouring central ones (a pair of shoes, or a second garment at the edge).
    offset = np.hypot((centres[1:, 0] - size[0] / 2) / size[0], (centres[1:, 1] - size[1] / 2) / size[1])
    best = int(np.argmax(areas * (1 - offset))) + 1
    others = np.count_nonzero(areas >= 0.3 * areas[best - 1]) - 1
    if others:
        side = "left" if centres[best, 0] < size[0] / 2 else "right"
        notes.append(f"{others + 1} articles found (e.g. a pair of shoes): the {side} one was kept")
    keep = (labels == best).astype(np.uint8)
    # Fill holes: whatever the border cannot reach outside the article is inside it.
    outside = np.pad(1 - keep, 1, constant_values=1)
    flood = np.zeros((outside.shape[0] + 2, outside.shape[1] + 2), np.uint8)
    cv2.floodFill(outside, flood, (0, 0), 2)
    keep = np.where(outside[1:-1, 1:-1] == 2, 0, 1).astype(np.float32)
    notes.append("textured background: article segmented (GrabCut)")
    return cv2.resize(keep, (w, h), interpolation=cv2.INTER_LINEAR) > 0.5


def _disc(diameter: float) -> np.ndarray:
    """An elliptic structuring element about ``diameter`` pixels across (odd, at least 3)."""
    k = max(3, round(diameter) | 1)
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))


def _article_mask(far: np.ndarray) -> np.ndarray | None:
    """The largest connected components of the far-from-background mask that survive a 3x3 opening; None = blank.

    A component counts when part of it survives the opening (JPEG specks do not; thin straps attached to the body
    do) and it is at least KEEP_FRACTION of the largest; without any such component, the raw components count.
    """
    if not far.any():
        return None
    far8 = far.astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(far8, connectivity=8)
    areas = stats[:, cv2.CC_STAT_AREA].astype(np.int64)
    areas[0] = 0  # Label 0 is the background.
    if min(far.shape) >= 32:
        core = cv2.morphologyEx(far8, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)) > 0
        cored = np.bincount(labels[core], minlength=n) > 0
        if cored[1:].any():
            areas[~cored] = 0
        elif areas.max() < max(4, 0.001 * far.size):
            return None  # Only specks.
    keep = np.nonzero(areas >= max(1, KEEP_FRACTION * areas.max()))[0]
    return np.isin(labels, keep[keep > 0])
