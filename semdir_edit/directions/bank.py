"""Build the :class:`DirectionBank` of a trained generator + classifier (a few minutes on CPU)."""

from __future__ import annotations

import torch

from semdir_edit.config import DirectionBankConfig
from semdir_edit.directions.baselines import (
    class_pca_directions,
    pca_directions,
    random_directions,
    sefa_directions,
    w_covariance,
)
from semdir_edit.models import Classifier, Generator
from semdir_edit.models.direction_bank import DirectionBank
from semdir_edit.ops.linear import fit_linear_classifier


@torch.no_grad()
def build_direction_bank(G: Generator, C: Classifier, k: int, n: int = 20_000, seed: int = 0,
                         batch_size: int = 500) -> DirectionBank:
    """Sample n codes, label G(w) with C, and compute every closed-form source on the same samples."""
    device = G.mapping.w_avg.device
    gen = torch.Generator().manual_seed(seed)
    ws, labels = [], []
    for start in range(0, n, batch_size):
        w = G.mapping(torch.randn(min(batch_size, n - start), G.z_dim, generator=gen).to(device))
        labels.append(C(G.render(G.broadcast(w))).argmax(1).cpu())
        ws.append(w.cpu())
    w_all, y = torch.cat(ws), torch.cat(labels)
    num_classes = C.cfg.num_classes
    bank = DirectionBank(DirectionBankConfig(w_dim=G.w_dim, k=k, num_classes=num_classes))
    bank.pca.copy_(pca_directions(G, k, n=n, seed=seed))
    bank.sefa.copy_(sefa_directions(G, k))
    bank.random.copy_(random_directions(G.w_dim, k, seed))
    bank.cpca.copy_(class_pca_directions(w_all, y, num_classes, k, min_samples=50))
    bank.w_mean.copy_(w_all.mean(0))
    for c in y.unique().tolist():
        bank.class_mean[c] = w_all[y == c].mean(0)
    bank.w_cov.copy_(w_covariance(w_all).float())
    weight, bias = fit_linear_classifier(w_all, y, num_classes)
    bank.boundary_weight.copy_(weight.float())
    bank.boundary_bias.copy_(bias.float())
    return bank
