"""Baseline direction sources on the same generator, all returning orthonormal (w_dim, K) matrices.

- GANSpace (Härkönen et al., NeurIPS 2020): principal components of sampled W.
- SeFa (Shen & Zhou, CVPR 2021): top eigenvectors of A^T A, A = the style affines' weights stacked
  over the synthesis layers (the directions that change the styles most).
- Per-class PCA (ours, the baseline for class-specific directions): GANSpace on the samples of one class.
- Random: a random orthonormal set (the floor any learned set must beat).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from semdir_edit.models import Classifier, Generator
from semdir_edit.models.layers import ModulatedConv2d


@torch.no_grad()
def sample_w(G: Generator, n: int, seed: int, batch_size: int = 1000) -> torch.Tensor:
    """(n, w_dim) samples of W from a seeded CPU generator."""
    gen = torch.Generator().manual_seed(seed)
    device = G.mapping.w_avg.device
    out = [G.mapping(torch.randn(min(batch_size, n - i), G.z_dim, generator=gen).to(device)).cpu()
           for i in range(0, n, batch_size)]
    return torch.cat(out)


@dataclass
class ClassSamples:
    """Sampled codes with the classifier's label of each image."""

    w: torch.Tensor        # (n, w_dim)
    labels: torch.Tensor   # (n,)


@torch.no_grad()
def sample_by_class(G: Generator, C: Classifier, per_class: int, seed: int, draws_per_sample: int = 20
                    ) -> ClassSamples:
    """Up to ``per_class`` codes for every class, from at most ``draws_per_sample`` draws per wanted sample
    (a class the generator rarely draws gets fewer)."""
    device = G.mapping.w_avg.device
    gen = torch.Generator().manual_seed(seed)
    num_classes = C.cfg.num_classes
    batch_size = min(500, 2 * per_class * num_classes)
    max_batches = -(-draws_per_sample * per_class * num_classes // batch_size)
    kept_w: list[list[torch.Tensor]] = [[] for _ in range(num_classes)]
    counts = [0] * num_classes
    for _ in range(max_batches):
        w = G.mapping(torch.randn(batch_size, G.z_dim, generator=gen).to(device))
        labels = C(G.render(G.broadcast(w))).argmax(1)  # The class of the image as shown, as edits are judged.
        for c in range(num_classes):
            take = w[labels == c][: per_class - counts[c]]
            kept_w[c].append(take.cpu())
            counts[c] += len(take)
        if min(counts) >= per_class:
            break
    w_all = torch.cat([torch.cat(ws) for ws in kept_w])
    labels_all = torch.cat([torch.full((n,), c, dtype=torch.long) for c, n in enumerate(counts)])
    return ClassSamples(w_all, labels_all)


def w_covariance(ws: torch.Tensor) -> torch.Tensor:
    """(w_dim, w_dim) covariance of sampled W (float64 for a stable eigendecomposition)."""
    x = ws.double() - ws.double().mean(0)
    return x.T @ x / (len(ws) - 1)


def pca_directions(G: Generator, k: int, n: int = 20_000, seed: int = 0) -> torch.Tensor:
    """GANSpace: the top-K principal axes of W, (w_dim, K), sorted by explained variance."""
    eigvals, eigvecs = torch.linalg.eigh(w_covariance(sample_w(G, n, seed)))
    return eigvecs[:, eigvals.argsort(descending=True)[:k]].float()


def class_pca_directions(ws: torch.Tensor, labels: torch.Tensor, num_classes: int, k: int, min_samples: int = 0
                         ) -> torch.Tensor:
    """Per-class PCA: the top-K principal axes of W over the samples of each class, (num_classes, w_dim, K).

    A class with fewer than ``max(min_samples, k + 1)`` samples gets zeros (no estimate).
    """
    out = torch.zeros(num_classes, ws.shape[1], k)
    for c in range(num_classes):
        members = ws[labels == c]
        if len(members) >= max(min_samples, k + 1):
            eigvals, eigvecs = torch.linalg.eigh(w_covariance(members))
            out[c] = eigvecs[:, eigvals.argsort(descending=True)[:k]].float()
    return out


def sefa_directions(G: Generator, k: int, layers: range | None = None) -> torch.Tensor:
    """SeFa: top-K eigenvectors of A^T A over the style affines of the chosen synthesis layers."""
    convs = [m for m in G.synthesis.modules() if isinstance(m, ModulatedConv2d)]
    chosen = convs if layers is None else [convs[i] for i in layers if i < len(convs)]
    a = torch.cat([(m.affine.weight * m.affine.weight_gain).detach().double().cpu() for m in chosen])  # (sum I, w_dim)
    a = a / a.norm(dim=1, keepdim=True)  # As in the SeFa code: each style channel counts equally.
    eigvals, eigvecs = torch.linalg.eigh(a.T @ a)
    return eigvecs[:, eigvals.argsort(descending=True)[:k]].float()


def random_directions(w_dim: int, k: int, seed: int = 0) -> torch.Tensor:
    """A random orthonormal (w_dim, K) set."""
    q, _ = torch.linalg.qr(torch.randn(w_dim, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q.float()


def spread_along(directions: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """Standard deviation of W along each unit direction, sqrt(d^T Sigma d): (K,).

    Shifts are expressed in these units, so ``--eps 2`` is two standard deviations of W along the
    direction for every source (Voynov's eps lived in Z, whose spread is 1 everywhere).
    """
    d = directions.double() / directions.double().norm(dim=0, keepdim=True)
    return (d * (cov.to(d) @ d)).sum(0).clamp_min(1e-12).sqrt().float()
