"""Starting directions that a person can see (ours): the K global and K-per-class directions that change the
picture most while moving the classifier least, in closed form from the generator's Jacobian.

A learned deformator left to Kim & Lee's objective alone found class directions whose edits a shift predictor tells
apart but a person cannot see (mean pixel change at |eps| = 3: 0.04, as much as random directions), and global
directions that were W's between-class axes (they switched the article's class). Both come from what the objective
does not ask for: nothing rewards a visible change, nothing penalises a class change. Here both are asked for.

Work in W's whitened coordinates (``u``: one unit = one spread of W along each principal axis, the unit of eps),
on the top ``rank`` principal axes. For sampled codes of class c (labelled by the classifier), central differences
of one spread along every axis give

- ``pixel[c]``  = E[J^T J], J the Jacobian of the image in [0, 1] (what changes at all),
- ``outline[c]`` = the same for a soft silhouette (pixels above 0.25; the article's shape, not its ink),
- ``margin[c]`` = E[g g^T], g the gradient of the classifier's margin for c (what changes the class).

The global set is the top K eigenvectors of the class-averaged ``pixel + a * outline - b * margin``: what changes
every class most, at the least cost to its class. Each class set is the top K eigenvectors of class c's own matrix
(less ``specificity`` times the other classes' mean, so it is c's own variation) on the orthogonal complement of the
global set. Eigenvectors of one matrix change uncorrelated pixels on average, so the directions of a set are
distinct by construction. The result initialises :class:`~semdir_edit.models.deformator.Deformators`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from semdir_edit.core.progress import bar
from semdir_edit.models import Classifier, Generator
from semdir_edit.ops.class_lock import class_margin

SILHOUETTE = 0.25   # Pixel level (images in [0, 1]) that separates the article from the background.


@dataclass
class ChangeStatistics:
    """Per-class second moments of the image's, the silhouette's and the class margin's change, (N, M, M) each,
    in the whitened coordinates of ``basis`` (w_dim, M): a unit step along ``basis[:, i]`` is one spread of W."""

    pixel: torch.Tensor
    outline: torch.Tensor
    margin: torch.Tensor
    basis: torch.Tensor
    counts: torch.Tensor   # (N,) samples per class


def whitened_basis(w_cov: torch.Tensor, rank: int) -> torch.Tensor:
    """(w_dim, rank): W's top principal axes, each scaled to one spread (sqrt of its variance)."""
    eigvals, eigvecs = torch.linalg.eigh(w_cov.double())
    order = eigvals.argsort(descending=True)[:rank]
    return (eigvecs[:, order] * eigvals[order].clamp_min(0).sqrt()).float()


@torch.no_grad()
def change_statistics(G: Generator, C: Classifier, w: torch.Tensor, labels: torch.Tensor, w_cov: torch.Tensor,
                      rank: int = 64, step: float = 1.0, batch_size: int = 8, progress: bool = False
                      ) -> ChangeStatistics:
    """:class:`ChangeStatistics` of codes ``w`` (n, w_dim) with their classes ``labels`` (n,).

    Central differences of ``step`` spreads (one spread measures the change over the distance an edit travels,
    clamping and all, rather than at a point): 2 * rank generator and classifier passes per code.
    """
    device = G.mapping.w_avg.device
    num_classes = C.cfg.num_classes
    basis = whitened_basis(w_cov, rank).to(device)
    m = basis.shape[1]
    offsets = torch.cat([basis.T, -basis.T]) * step                               # (2M, w_dim)
    stats = {k: torch.zeros(num_classes, m, m, dtype=torch.float64) for k in ("pixel", "outline", "margin")}
    counts = torch.zeros(num_classes)
    for start in bar(range(0, len(w), batch_size), desc="change statistics", progress=progress):
        wb, yb = w[start:start + batch_size].to(device), labels[start:start + batch_size].to(device)
        b = len(wb)
        codes = (wb[:, None, :] + offsets[None]).reshape(-1, wb.shape[1])
        images = G.render(G.broadcast(codes))
        margin = class_margin(C(images).float(), yb.repeat_interleave(2 * m)).reshape(b, 2, m)
        x = ((images.float() + 1) / 2).reshape(b, 2, m, -1)
        soft = torch.sigmoid((x - SILHOUETTE) / 0.05)
        jacobians = {"pixel": (x[:, 0] - x[:, 1]) / (2 * step),                  # (b, M, P)
                     "outline": (soft[:, 0] - soft[:, 1]) / (2 * step),
                     "margin": ((margin[:, 0] - margin[:, 1]) / (2 * step))[:, :, None]}
        for name, jac in jacobians.items():
            moments = (jac @ jac.transpose(1, 2)).double().cpu()                 # (b, M, M)
            stats[name].index_add_(0, yb.cpu(), moments)
        counts += torch.bincount(yb.cpu(), minlength=num_classes).float()
    for value in stats.values():
        value /= counts.clamp_min(1)[:, None, None]
    return ChangeStatistics(**stats, basis=basis.cpu(), counts=counts)


def _scaled(x: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """x / the trace of its class-average (the three moments on one scale, whatever the image size)."""
    return x / torch.diagonal(x[present].mean(0)).sum().clamp_min(1e-12)


def _top_eigenvectors(matrix: torch.Tensor, k: int) -> torch.Tensor:
    eigvals, eigvecs = torch.linalg.eigh((matrix + matrix.T) / 2)
    return eigvecs[:, eigvals.argsort(descending=True)[:k]]


def _top_ratio_eigenvectors(change: torch.Tensor, cost: torch.Tensor, k: int) -> torch.Tensor:
    """The k directions u with the largest u'(change)u / u'(cost)u (cost positive definite), unit length."""
    lower = torch.linalg.cholesky((cost + cost.T) / 2)
    inv = torch.linalg.inv(lower)
    top = _top_eigenvectors(inv @ change @ inv.T, k)
    u = inv.T @ top
    return u / u.norm(dim=0, keepdim=True)


def solve_directions(stats: ChangeStatistics, k: int, outline_weight: float = 1.0, keep_global: float = 4.0,
                     keep_class: float = 0.0, specificity: float = 0.0, global_exclude: torch.Tensor | None = None,
                     global_ratio: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(global (w_dim, K), class (N, w_dim, K)) unit directions; see the module docstring.

    keep_global / keep_class: the weight of the class-margin moment (relative, each moment scaled to unit trace)
    for the global and the class sets. A class with no samples gets the top of the class-averaged matrix on the
    global set's complement. global_exclude: (w_dim, r) linear functionals of W (e.g. the rows of a linear
    classifier of W, transposed) that the global directions must not change (their span is projected out first).
    """
    present = stats.counts > 0
    if not present.any():
        raise ValueError("no samples: cannot solve for directions")
    change = _scaled(stats.pixel, present) + outline_weight * _scaled(stats.outline, present)
    margin = _scaled(stats.margin, present)
    basis = stats.basis.double()
    matrix = (change - keep_global * margin)[present].mean(0)
    if global_exclude is not None:
        # a . (basis @ u) = (basis^T a) . u: the functionals' normals in whitened coordinates.
        q, _ = torch.linalg.qr(basis.T @ global_exclude.double())
        keep = torch.eye(basis.shape[1], dtype=torch.float64) - q @ q.T
        matrix = keep @ matrix @ keep
    if global_ratio > 0:
        # Change per unit of class-margin change, rather than change less margin: every direction of the set is
        # the most visible one at its cost to the class, instead of a few visible ones and the rest near zero.
        m = basis.shape[1]
        cost = keep_global * margin[present].mean(0) + global_ratio / m * torch.eye(m, dtype=torch.float64)
        u_global = _top_ratio_eigenvectors(change[present].mean(0), cost, k)
    else:
        u_global = _top_eigenvectors(matrix, k)
    global_dirs = basis @ u_global
    # d = basis @ u is orthogonal to a global direction g exactly when u is orthogonal to basis^T g.
    q, _ = torch.linalg.qr(basis.T @ global_dirs)
    complement = torch.eye(basis.shape[1], dtype=torch.float64) - q @ q.T
    own = change - keep_class * margin
    mean_own = own[present].mean(0)
    class_dirs = []
    for c in range(len(own)):
        if present[c]:
            others = (mean_own * present.sum() - own[c]) / max(int(present.sum()) - 1, 1)
            matrix = own[c] - specificity * others
        else:
            matrix = mean_own
        class_dirs.append(basis @ _top_eigenvectors(complement @ matrix @ complement, k))
    unit = lambda d: (d / d.norm(dim=-2, keepdim=True).clamp_min(1e-12)).float()  # noqa: E731
    return unit(global_dirs), unit(torch.stack(class_dirs))
