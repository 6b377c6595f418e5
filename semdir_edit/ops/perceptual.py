"""Perceptual network F of the inversion objectives: a per-image distance d(x0, x1) (B,).

In-domain inversion (Zhu et al., ECCV 2020) uses VGG16 conv4_3 features as F. No ImageNet weights can be
downloaded on our machines, so the default F is the project's own classifier: its feature maps with LPIPS-style
channel normalisation (Zhang et al., "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric", CVPR
2018), the same distance as :func:`perceptual_distance`. For users whose machine has
the torchvision ImageNet weights in its torch hub cache, ``backbone="vgg" | "alex" | "squeeze"`` wraps
``lpips.LPIPS(net=...)`` (learned LPIPS weights, shipped with the ``lpips`` package).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import lpips
import torch
import torch.nn.functional as F
from torch import nn

from semdir_edit.core.errors import UserError
from semdir_edit.models.classifier import Classifier

# lpips backbone -> the torchvision ImageNet weights file it loads (lpips 0.1.x asks for the IMAGENET1K_V1 weights).
LPIPS_BACKBONE_FILES = {
    "vgg": "vgg16-397923af.pth",
    "alex": "alexnet-owt-7be5be79.pth",
    "squeeze": "squeezenet1_1-b8a52dc0.pth",
}
BACKBONES = ("classifier", *LPIPS_BACKBONE_FILES)


def perceptual_distance(C: Classifier, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """(B,) LPIPS-style distance in C's feature maps, without learned weights.

    For each map: unit-normalise every spatial position's channel vector (``lpips.normalize_tensor``), square the
    difference, sum over channels, average over positions; then sum over maps. C should be in eval mode.
    """
    dist = x0.new_zeros(x0.shape[0])
    for f0, f1 in zip(C.feature_maps(x0), C.feature_maps(x1), strict=True):
        diff = (lpips.normalize_tensor(f0) - lpips.normalize_tensor(f1)).square()  # (B, C_i, H_i, W_i)
        dist = dist + diff.sum(dim=1).mean(dim=(1, 2))
    return dist


def _build_lpips(net: str) -> nn.Module:
    """``lpips.LPIPS(net=net)`` from the local torch hub cache; a ``UserError`` instead of any download attempt."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / LPIPS_BACKBONE_FILES[net]
    if not path.is_file():
        raise UserError(f"perceptual backbone '{net}' needs the ImageNet weights {path} and nothing can be "
                        "downloaded here: copy that file there, or use the default 'classifier' backbone")
    try:
        with warnings.catch_warnings():  # lpips 0.1.4 still passes torchvision's deprecated 'pretrained' flag.
            warnings.simplefilter("ignore", UserWarning)
            return lpips.LPIPS(net=net, verbose=False)
    except Exception as exc:  # noqa: BLE001 — torch / torchvision raise many types for corrupt or foreign files.
        raise UserError(f"perceptual backbone '{net}' cannot be loaded from {path} "
                        f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None


class PerceptualLoss(nn.Module):
    """F as a distance: ``forward(x0, x1)`` on images (B, C, R, R) in [-1, 1] -> (B,), one value per image.

    classifier: the project's classifier (required for ``backbone="classifier"``, ignored otherwise); it is put in
        eval mode with gradients off, and stays in eval mode (F is a fixed metric: batch norm must never use batch
        statistics, which would also make one image's distance depend on the others).
    backbone: "classifier" (default) = :func:`~perceptual_distance` on the
        classifier's feature maps; "vgg" | "alex" | "squeeze" = LPIPS with that ImageNet backbone (grayscale is
        repeated to RGB).
    resize: lpips backbones only: images smaller than this are upsampled (bilinear) to this size first, because
        AlexNet's and VGG's deeper layers shrink a 32x32 image to 1x1 maps; 0 = never resize.
    """

    def __init__(self, classifier: Classifier | None = None, backbone: str = "classifier", resize: int = 64) -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise UserError(f"unknown perceptual backbone '{backbone}' (use {', '.join(BACKBONES)})")
        if backbone == "classifier" and classifier is None:
            raise ValueError("backbone='classifier' needs the classifier network")
        self.backbone = backbone
        self.resize = resize
        self.net: nn.Module = classifier if backbone == "classifier" else _build_lpips(backbone)
        self.net.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> PerceptualLoss:
        super().train(mode)
        self.net.eval()  # Always eval: see the class docstring.
        return self

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        if x0.shape != x1.shape or x0.ndim != 4:
            raise ValueError(f"need two (B, C, R, R) batches of the same shape, got {tuple(x0.shape)} and "
                             f"{tuple(x1.shape)}")
        if self.backbone == "classifier":
            return perceptual_distance(self.net, x0, x1)            # (B,)
        x0, x1 = self._to_rgb(x0), self._to_rgb(x1)
        return self.net(x0, x1).reshape(x0.shape[0])               # LPIPS returns (B, 1, 1, 1).

    def target(self, x0: torch.Tensor) -> list[torch.Tensor] | torch.Tensor:
        """What :meth:`distance` needs of a fixed first image batch, computed once and without gradient.

        An inversion compares every step's reconstruction with the same target: its feature maps need computing
        only once. ``distance(target(x0), x1)`` equals ``forward(x0, x1)`` exactly (the same operations); the lpips
        backbones keep the images (lpips has no entry point for precomputed features).
        """
        if x0.ndim != 4:
            raise ValueError(f"need a (B, C, R, R) batch, got {tuple(x0.shape)}")
        with torch.no_grad():
            if self.backbone == "classifier":
                return [lpips.normalize_tensor(f) for f in self.net.feature_maps(x0)]
            return x0

    def distance(self, target: list[torch.Tensor] | torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        """(B,) distance from a :meth:`target` to images ``x1`` (B, C, R, R); differentiable in ``x1``."""
        if self.backbone != "classifier":
            return self(target, x1)
        maps = self.net.feature_maps(x1)
        if len(maps) != len(target) or maps[0].shape != target[0].shape:
            raise ValueError(f"the target was made for batches of {tuple(target[0].shape)} features, got "
                             f"{tuple(maps[0].shape)}")
        # perceptual_distance's sum, term by term, with the target's side precomputed.
        dist = x1.new_zeros(x1.shape[0])
        for t0, f1 in zip(target, maps, strict=True):
            dist = dist + (t0 - lpips.normalize_tensor(f1)).square().sum(dim=1).mean(dim=(1, 2))
        return dist

    def _to_rgb(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if self.resize and x.shape[-1] < self.resize:
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear", align_corners=False)
        return x
