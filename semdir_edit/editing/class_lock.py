"""Class-locked edits (ours, not in Kim & Lee): walk a direction in small steps and drop, at each step, the part
that would lower the classifier's margin for the image's class.

A linear edit ``w + eps * spread * d`` can carry an image across a class boundary even when ``d`` is a
class-specific direction: the generator's samples sit close to those boundaries (median classifier confidence
0.82 on Fashion-MNIST), so a small move flips some of them. Here the shift ``s`` (one W vector added to the chosen
W+ layers, as a linear edit) grows in steps of at most ``step`` spreads. At each step, with
``g = d margin / d s`` (margin = the class's logit minus the log-sum-exp of the other logits, on the image as
shown), the step ``h`` becomes

    h - min(0, <h, g>) / |g|^2 * g

so, to first order, the edit never lowers the margin, and is left unchanged wherever it does not. The cost is one
forward and backward pass of G and the classifier per step (6 steps for ``eps = 3`` with ``step = 0.5``).
"""

from __future__ import annotations

import torch

from semdir_edit.models import Classifier, Generator

DEFAULT_STEP = 0.5  # Spreads per step: 0.25 kept the class no better (0.972 vs 0.975, 300 samples) at twice the cost.


def class_margin(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B,) logit of ``target`` minus the log-sum-exp of the other logits (> 0 exactly when ``target`` wins)."""
    own = logits.gather(1, target[:, None])[:, 0]
    others = logits.scatter(1, target[:, None], float("-inf")).logsumexp(1)
    return own - others


def _locked_step(G: Generator, C: Classifier, ws: torch.Tensor, mask: torch.Tensor, shift: torch.Tensor,
                 step: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The step (B, w_dim) with its margin-lowering component removed, taken from ``ws + mask * shift``."""
    with torch.enable_grad():
        s = shift.detach().requires_grad_(True)
        margin = class_margin(C(G.render(ws + mask * s[:, None, :])).float(), target)
        (grad,) = torch.autograd.grad(margin.sum(), s)
    along = (step * grad).sum(1) / grad.square().sum(1).clamp_min(1e-12)
    return step - along.clamp(max=0)[:, None] * grad


@torch.no_grad()
def locked_shift_codes(G: Generator, C: Classifier, ws: torch.Tensor, direction: torch.Tensor,
                       eps: list[float], spread: float | torch.Tensor, layers: range, target: torch.Tensor,
                       step: float = DEFAULT_STEP) -> torch.Tensor:
    """Like :func:`~semdir_edit.editing.directions.shift_codes`, but class-locked.

    ws: (B, num_ws, w_dim); direction: (w_dim,) unit vector, or (B, w_dim) one per code; spread: W's spread along
    it (a number, or (B,)); target: (B,) the class each image must keep.
    Returns (B, E, num_ws, w_dim): for each eps, the codes reached by walking from eps 0 (each sign separately,
    so a traversal strip costs its longest side per sign, not the sum of its points).
    """
    if step <= 0:
        raise ValueError(f"step must be > 0, got {step}")
    if C.cfg.num_classes < 2:
        raise ValueError("a class lock needs a classifier with at least two classes")
    mask = torch.zeros(ws.shape[1], 1, device=ws.device, dtype=ws.dtype)
    mask[list(layers)] = 1.0
    spread = torch.as_tensor(spread, dtype=ws.dtype, device=ws.device)
    unit = direction.to(ws) * (spread[:, None] if spread.ndim == 1 else spread)  # (w_dim,) or (B, w_dim)
    target = target.to(ws.device).long()
    out: list[torch.Tensor | None] = [ws if e == 0 else None for e in eps]
    for sign in (1.0, -1.0):
        wanted = sorted((i for i, e in enumerate(eps) if e * sign > 0), key=lambda i: abs(eps[i]))
        shift = torch.zeros(ws.shape[0], ws.shape[2], device=ws.device, dtype=ws.dtype)
        walked = 0.0
        for i in wanted:
            while walked < abs(eps[i]) - 1e-9:
                h = min(step, abs(eps[i]) - walked)
                shift = shift + _locked_step(G, C, ws, mask, shift, (sign * h) * unit.expand_as(shift), target)
                walked += h
            out[i] = ws + mask * shift[:, None, :]
    return torch.stack(out, 1)  # type: ignore[arg-type] — every eps was filled above.
