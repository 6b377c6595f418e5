"""N+1 linear deformators: K global directions and K class-specific directions per class.

Kim & Lee, "Global and Class-Specific Semantic Directions via Pre-trained GANs", extending Voynov &
Babenko, "Unsupervised Discovery of Interpretable Directions in the GAN Latent Space" (ICML 2020).
A deformator maps a shift k*eps*e_k in R^K to a shift in W: A @ (eps e_k) = eps * A[:, k].

Class directions are kept orthogonal to the global ones *by construction*: each class matrix is
projected onto the orthogonal complement of span(A_G) before its columns are normalised, so the
class set can never learn what the global set already holds.
"""

from __future__ import annotations

import torch
from torch import nn

from semdir_edit.config import DeformatorConfig


class Deformators(nn.Module):
    """Holds A_G (w_dim, K) and A_c (w_dim, K) for every class c.

    normalization: "unit" = unit-length columns (Voynov found them more diverse), "orthonormal" =
    orthonormal columns within each set (via QR).
    """

    def __init__(self, cfg: DeformatorConfig) -> None:
        super().__init__()
        if cfg.normalization not in ("unit", "orthonormal"):
            raise ValueError(f"normalization must be 'unit' or 'orthonormal', got {cfg.normalization!r}")
        if cfg.k * 2 > cfg.w_dim:
            raise ValueError(f"K={cfg.k} global + K class directions must fit in w_dim={cfg.w_dim}")
        self.cfg = cfg
        self.w_dim, self.k, self.num_classes, self.normalization = cfg.w_dim, cfg.k, cfg.num_classes, cfg.normalization
        self.global_raw = nn.Parameter(torch.randn(cfg.w_dim, cfg.k))
        self.class_raw = nn.Parameter(torch.randn(cfg.num_classes, cfg.w_dim, cfg.k))
        # Covariance of W (the unit of eps: spread along d = sqrt(d^T Sigma d)), set before training.
        self.register_buffer("w_cov", torch.eye(cfg.w_dim))

    def _normalize(self, a: torch.Tensor) -> torch.Tensor:
        # a: (..., w_dim, K) -> columns unit length, or orthonormal.
        if self.normalization == "orthonormal":
            q, r = torch.linalg.qr(a)
            return q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)  # Keep the sign of a.
        return a / a.norm(dim=-2, keepdim=True).clamp_min(1e-8)

    def global_directions(self) -> torch.Tensor:
        """(w_dim, K) global directions."""
        return self._normalize(self.global_raw)

    def class_directions(self) -> torch.Tensor:
        """(num_classes, w_dim, K) class directions, each orthogonal to every global direction."""
        q, _ = torch.linalg.qr(self.global_raw)                   # (w_dim, K) orthonormal basis of span(A_G).
        projected = self.class_raw - q @ (q.T @ self.class_raw)   # Remove the span(A_G) component.
        return self._normalize(projected)

    def all_directions(self) -> torch.Tensor:
        """(num_classes + 1, w_dim, K): index 0 = global, 1 + c = class c."""
        return torch.cat([self.global_directions()[None], self.class_directions()])

    def forward(self, set_index: torch.Tensor, k: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """W shifts (B, w_dim) for per-sample set (0 = global, 1 + c = class c), direction k and magnitude eps."""
        directions = self.all_directions()                        # (N+1, w_dim, K)
        return directions[set_index, :, k] * eps[:, None]
