"""Multinomial logistic regression in W: the class boundaries of the direction bank and the linear separability
figure both fit it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def fit_linear_classifier(x: torch.Tensor, labels: torch.Tensor, num_classes: int, weight_decay: float = 1e-3,
                          max_iter: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression ``softmax(A w + c)`` on (N, D) points, fitted with full-batch L-BFGS.

    The fit runs on standardised inputs (train mean / std) minimising mean cross-entropy + ``weight_decay * ||A||^2``;
    the returned ``(A (num_classes, D), c (num_classes,))`` act on the raw inputs, in float64. Row differences
    ``A[b] - A[a]`` are the normals of the boundaries between classes a and b (InterFaceGAN-style directions).
    """
    x = x.detach().double()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-8)
    xs = (x - mean) / std
    linear = nn.Linear(x.shape[1], num_classes, dtype=torch.float64, device=x.device)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    opt = torch.optim.LBFGS(linear.parameters(), lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")
    labels = labels.to(x.device).long()

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(linear(xs), labels) + weight_decay * linear.weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    weight = linear.weight.detach() / std                     # A / sigma
    bias = linear.bias.detach() - weight @ mean               # c - (A / sigma) mu
    return weight, bias
