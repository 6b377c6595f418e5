"""How sensitive is FID in the classifier's feature space? FID(perturbed training images, test images).

The floor (`fid_floor`) is FID(train, test) on 10k images each; this prints the same FID after small changes to the
training images that a person would not notice or would call "the same picture", and after encoding and
re-rendering them with the shipped encoder and generator. Run from the repository root (a minute on 2 CPU cores):

    .venv/bin/python scripts/fid_sensitivity.py [--weights weights/fashion_mnist] [--json OUT]
"""

from __future__ import annotations

import argparse
import json

import cv2
import numpy as np
import torch

from semdir_edit.checkpoint import load_model
from semdir_edit.config import load_config
from semdir_edit.core.images import to_float
from semdir_edit.data import load_split
from semdir_edit.evaluation.metrics import classifier_features, fid_from_features

N = 10_000


def batches(x: torch.Tensor, size: int = 500) -> list[torch.Tensor]:
    return [x[i:i + size] for i in range(0, len(x), size)]


def jpeg(images: torch.Tensor, quality: int) -> torch.Tensor:
    """uint8 (N, 1, R, R) through a JPEG round trip at ``quality``."""
    out = [cv2.imdecode(cv2.imencode(".jpg", im, [cv2.IMWRITE_JPEG_QUALITY, quality])[1], cv2.IMREAD_GRAYSCALE)
           for im in images[:, 0].numpy()]
    return torch.from_numpy(np.stack(out))[:, None]


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="weights/fashion_mnist")
    parser.add_argument("--config", default="configs/fashion_mnist.yaml")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    C, G, E = (load_model(args.weights, kind) for kind in ("classifier", "generator", "encoder"))
    cfg = load_config(args.config)
    train, test = load_split(cfg.data, "train"), load_split(cfg.data, "test")
    test_feats, _ = classifier_features(C, batches(to_float(test.images[:N])), "cpu")

    def fid(x: torch.Tensor) -> float:
        return fid_from_features(classifier_features(C, batches(x), "cpu")[0], test_feats)

    train_u8 = train.images[:N]
    train_x = to_float(train_u8)
    noise = torch.Generator().manual_seed(0)
    figures = {"floor (train vs test)": fid(train_x)}
    for sigma in (0.02, 0.05, 0.1):
        noisy = train_x + sigma * torch.randn(train_x.shape, generator=noise)
        figures[f"train + Gaussian noise sigma {sigma} (of [-1, 1])"] = fid(noisy.clamp(-1, 1))
    for quality in (95, 75):
        figures[f"train, JPEG quality {quality}"] = fid(to_float(jpeg(train_u8, quality)))
    figures["train shifted right by 1 pixel"] = fid(torch.roll(train_x, shifts=1, dims=3))
    figures["train encoded and re-rendered (E, then G)"] = fid(torch.cat([G.render(E(b)) for b in batches(train_x)]))
    floor = figures["floor (train vs test)"]
    for name, value in figures.items():
        print(f"{name:50s} {value:.4f}  ({value / floor:.1f} x floor)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(figures, fh, indent=1)


if __name__ == "__main__":
    main()
