"""Direction sources that need no training loop, stored as one weights file.

Buffers only: GANSpace (PCA of W), SeFa, random orthonormal directions (each (w_dim, K), orthonormal
columns), per-class PCA (GANSpace on the samples the classifier puts in one class: (num_classes, w_dim, K)),
the statistics of W (mean, covariance: the unit of eps), and an InterFaceGAN-style linear
classifier on W (Shen et al., CVPR 2020) labelled by our classifier, whose row differences give the
class-boundary normals used by ``to:<class>``, and the mean code of each class (where ``to:<class>`` heads).
"""

from __future__ import annotations

import torch
from torch import nn

from semdir_edit.config import DirectionBankConfig


class DirectionBank(nn.Module):
    def __init__(self, cfg: DirectionBankConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, k, n = cfg.w_dim, cfg.k, cfg.num_classes
        self.register_buffer("pca", torch.zeros(d, k))
        self.register_buffer("sefa", torch.zeros(d, k))
        self.register_buffer("random", torch.zeros(d, k))
        self.register_buffer("cpca", torch.zeros(n, d, k))    # Per-class PCA; zeros for a class never drawn.
        self.register_buffer("w_mean", torch.zeros(d))
        self.register_buffer("w_cov", torch.eye(d))
        self.register_buffer("boundary_weight", torch.zeros(n, d))   # Logits = boundary_weight @ w + boundary_bias.
        self.register_buffer("boundary_bias", torch.zeros(n))
        self.register_buffer("class_mean", torch.zeros(n, d))   # Mean code of each class's samples (to:<class>).

    def source(self, kind: str, class_index: int | None = None) -> torch.Tensor:
        """(w_dim, K) directions of "pca", "sefa", "random", or "cpca" of ``class_index``."""
        if kind == "cpca":
            return self.cpca[class_index]
        return {"pca": self.pca, "sefa": self.sefa, "random": self.random}[kind]

    def boundary_normal(self, from_class: int, to_class: int) -> torch.Tensor:
        """Unit normal (w_dim,) of the boundary between two classes, pointing towards ``to_class``."""
        normal = self.boundary_weight[to_class] - self.boundary_weight[from_class]
        return normal / normal.norm().clamp_min(1e-12)  # Zero when neither class was ever seen.
