"""Training and test images as in-memory tensors: IDX files or a folder with one sub-folder per class.

Everything here fits in memory (60,000 x 32 x 32 bytes = 61 MB), so training samples batches by
indexing one uint8 tensor instead of going through a DataLoader.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from semdir_edit.config import DataConfig
from semdir_edit.core.errors import UserError
from semdir_edit.core.images import fit_resolution, to_float
from semdir_edit.core.io import IMAGE_SUFFIXES
from semdir_edit.data.idx import find_idx_pair, read_idx
from semdir_edit.data.photo import load_image


@dataclass
class ImageSet:
    """uint8 images (N, 1, R, R), int64 labels (N,), and the class names."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, index: torch.Tensor, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Images scaled to [-1, 1] (float32) and labels, on ``device``."""
        return to_float(self.images[index].to(device)), self.labels[index].to(device)


def load_split(cfg: DataConfig, split: str, data_dir: str | Path | None = None) -> ImageSet:
    """Load ``split`` ("train" or "test") of the configured dataset; ``data_dir`` overrides ``cfg.path``."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = Path(data_dir or cfg.path)
    if not folder.is_dir():
        hint = ("install it with 'sudo apt-get install -y dataset-fashion-mnist' or pass --data-dir"
                if cfg.source == "idx" else "pass --data-dir or set data.path in the config")
        raise UserError(f"dataset folder {folder} does not exist: {hint}")
    if cfg.source == "idx":
        images_path, labels_path = find_idx_pair(folder, "train" if split == "train" else "t10k")
        images, labels = read_idx(images_path), read_idx(labels_path)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels) or images.dtype != np.uint8:
            raise UserError(f"{images_path}: expected (N, H, W) uint8 images matching {len(labels)} labels")
        names = list(cfg.class_names) or [str(i) for i in range(int(labels.max()) + 1)]
        if labels.max() >= len(names):
            raise UserError(f"{labels_path}: label {labels.max()} but only {len(names)} class names configured")
    elif cfg.source == "folder":
        images, labels, names = _read_class_folders(folder / split, cfg)
    else:
        raise UserError(f"unknown data.source '{cfg.source}' (use idx or folder)")
    if split == "train" and cfg.max_train > 0:
        images, labels = images[: cfg.max_train], labels[: cfg.max_train]
    return ImageSet(fit_resolution(images, cfg.resolution), torch.from_numpy(labels.astype(np.int64)), names)


def _read_class_folders(folder: Path, cfg: DataConfig) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``folder/<class>/*.png``: grayscale images, already in the domain (dark background)."""
    import cv2

    if not folder.is_dir():
        raise UserError(f"dataset split folder {folder} does not exist (expected {folder}/<class name>/<images>)")
    names = list(cfg.class_names) or sorted(p.name for p in folder.iterdir() if p.is_dir())
    images, labels = [], []
    for label, name in enumerate(names):
        class_dir = folder / name.replace("/", "_")
        if not class_dir.is_dir():
            raise UserError(f"class folder {class_dir} does not exist")
        for path in sorted(class_dir.iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            img = load_image(path).pixels  # The one decoder: its checks and one-line errors.
            if img.ndim == 3:
                img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
            img = cv2.resize(img, (cfg.resolution, cfg.resolution), interpolation=cv2.INTER_AREA)
            images.append(img)
            labels.append(label)
    if not images:
        raise UserError(f"no images found under {folder}")
    return np.stack(images), np.asarray(labels), names
