"""Labelled photo folders: one sub-folder per category, and a class map naming the domain classes each counts as.

The class map is JSON ``{"category": [accepted class indices or names], ...}``; an empty list marks the category
out of the domain (hat, shorts, skirt for Fashion-MNIST). Keys starting with ``_`` are comments. Used by
``train classifier --photos`` and ``evaluate photos``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from semdir_edit.config import match_class
from semdir_edit.core.errors import UserError
from semdir_edit.core.io import atomic_write_bytes
from semdir_edit.core.progress import StepCallback
from semdir_edit.data.photo import load_image, to_domain

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm")
CACHE_VERSION = "photo-v5"  # Bump when the photo conversion changes: cached domain images are then redone.


@dataclass
class LabelledPhotos:
    """Converted photos: ``images`` uint8 (N, 1, R, R), ``category`` (N,) index into ``categories``."""

    images: torch.Tensor
    category: torch.Tensor
    categories: list[str]
    accepted: list[list[int]]  # Per category: the accepted domain classes ([] = out of the domain).
    files: list[str]
    failed: list[str]  # One-line reasons of the photos that could not be converted.

    def in_domain(self) -> torch.Tensor:
        """(N,) bool: the photo's category has at least one accepted class."""
        has = torch.tensor([bool(a) for a in self.accepted])
        return has[self.category] if len(self.category) else torch.zeros(0, dtype=torch.bool)

    def accept_matrix(self, num_classes: int) -> torch.Tensor:
        """(N, num_classes) bool: which predicted classes count as correct for each photo."""
        table = torch.zeros(len(self.categories), num_classes, dtype=torch.bool)
        for i, classes in enumerate(self.accepted):
            table[i, classes] = True
        return table[self.category]


def read_class_map(path: str | Path, class_names: list[str]) -> dict[str, list[int]]:
    """Read a class map; class names or indices -> indices. A bad file is a one-line UserError."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"class map not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: cannot read the class map ({' '.join(str(exc).split())})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: the class map must be a JSON object {{category: [classes]}}")
    out: dict[str, list[int]] = {}
    for category, classes in raw.items():
        if category.startswith("_"):
            continue
        if not isinstance(classes, list):
            raise UserError(f"{path}: '{category}' must map to a list of classes ([] = out of the domain)")
        indices = []
        for c in classes:
            if isinstance(c, bool) or not isinstance(c, (int, str)):
                raise UserError(f"{path}: '{category}': {c!r} is not a class index or name")
            if isinstance(c, int):
                if not 0 <= c < len(class_names):
                    raise UserError(f"{path}: '{category}': class {c} is not in 0..{len(class_names) - 1}")
                indices.append(c)
            else:
                indices.append(match_class(c, class_names))
        out[category] = sorted(set(indices))
    if not out:
        raise UserError(f"{path}: the class map names no category")
    return out


def list_photos(root: str | Path, class_map: dict[str, list[int]]) -> list[tuple[Path, int]]:
    """(file, category index) of every photo in ``root/<category>/`` for the map's categories (sorted)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"photo folder not found: {root}")
    found = sorted(p.name for p in root.iterdir() if p.is_dir())
    unknown = [d for d in found if d not in class_map]
    if unknown:
        raise UserError(f"{root}: sub-folder(s) {', '.join(unknown)} are not in the class map")
    items = []
    for ci, category in enumerate(class_map):
        folder = root / category
        if folder.is_dir():
            items += [(p, ci) for p in sorted(folder.iterdir())
                      if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES and not p.name.startswith(".")]
    if not items:
        raise UserError(f"{root}: no photos in sub-folders named after the class map's categories "
                        f"({', '.join(class_map)})")
    return items


def load_labelled_photos(root: str | Path, class_map: dict[str, list[int]], resolution: int = 32,
                         cache: str | Path | None = None, log=None, on_step: StepCallback | None = None
                         ) -> LabelledPhotos:
    """Convert every photo of a labelled folder to a domain image (the ``invert`` conversion).

    cache: an ``.npz`` file that keeps the converted images keyed by the file list, sizes and modification
    times (converting thousands of photos takes minutes); redone when any of those or the conversion changes.
    Photos that cannot be converted are skipped and listed in ``failed``. on_step: ``(converted, total)``
    after each photo.
    """
    items = list_photos(root, class_map)
    key = hashlib.sha256(json.dumps([CACHE_VERSION, resolution] + [
        (str(p), p.stat().st_size, p.stat().st_mtime_ns, c) for p, c in items]).encode()).hexdigest()
    categories = list(class_map)
    accepted = [class_map[c] for c in categories]
    if cache is not None and Path(cache).is_file():
        try:
            with np.load(cache, allow_pickle=False) as z:
                if str(z["key"]) == key:
                    return LabelledPhotos(torch.from_numpy(z["images"]), torch.from_numpy(z["category"]),
                                          categories, accepted, [str(f) for f in z["files"]],
                                          [str(f) for f in z["failed"]])
        except (OSError, KeyError, ValueError):
            pass  # An unreadable cache is redone.
    images, cats, files, failed = [], [], [], []
    for i, (path, ci) in enumerate(items):
        try:
            images.append(to_domain(load_image(path).pixels, resolution, name=str(path)).image)
        except UserError as exc:
            failed.append(str(exc))
            continue
        cats.append(ci)
        files.append(str(path))
        if on_step is not None:
            on_step(i + 1, len(items))
        if log is not None and (i + 1) % 250 == 0:
            log(f"converted {i + 1}/{len(items)} photos")
    x = np.stack(images)[:, None] if images else np.zeros((0, 1, resolution, resolution), np.uint8)
    y = np.array(cats, np.int64)
    if cache is not None:
        import io

        buf = io.BytesIO()
        np.savez(buf, key=np.array(key), images=x, category=y, files=np.array(files, dtype=str),
                 failed=np.array(failed, dtype=str))
        atomic_write_bytes(cache, buf.getvalue())
    return LabelledPhotos(torch.from_numpy(x), torch.from_numpy(y), categories, accepted, files, failed)
