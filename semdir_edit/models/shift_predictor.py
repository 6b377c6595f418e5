"""Shift predictor (reconstructor) of Voynov & Babenko (ICML 2020), with one head per direction set.

Takes an original image and its shifted version stacked as channels (with ``inputs: pair_change`` also their
difference at a fixed norm); a LeNet-size shared trunk feeds N+1 heads (head 0 = global set, head 1 + c = class c's
set). Each head gives K logits (which direction moved the image) and K shift magnitudes; the logits of all heads
together classify over the (N+1)*K directions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from semdir_edit.config import ShiftPredictorConfig

INPUTS = {"pair": 2, "pair_change": 3}  # Images the trunk sees, stacked as channels.
# The change's norm in the "pair_change" input: about that of an average edit here (images in [-1, 1], 32 x 32).
CHANGE_NORM = 8.0


def unit_change(x: torch.Tensor, x_shifted: torch.Tensor) -> torch.Tensor:
    """(x_shifted - x) scaled to norm CHANGE_NORM per image (zero stays zero)."""
    d = x_shifted - x
    return d * (CHANGE_NORM / d.flatten(1).norm(dim=1).clamp_min(1e-6))[:, None, None, None]


def grow_state(state: dict[str, torch.Tensor], cfg: ShiftPredictorConfig) -> dict[str, torch.Tensor]:
    """A stored predictor's state for a larger one of ``cfg`` that computes the same function at the start: an added
    input ("pair" -> "pair_change") gets first-conv weights of zero; a finer last pooling grid (``pool`` a multiple
    of the stored one) gets the stored linear weights spread evenly over the cells that average to each stored one.
    Anything else is left as it is (and does not fit if it differs)."""
    state = dict(state)
    weight = state["trunk.0.weight"]
    extra = INPUTS.get(cfg.inputs, 0) * cfg.img_channels - weight.shape[1]
    if extra > 0:
        state["trunk.0.weight"] = torch.cat([weight, weight.new_zeros(weight.shape[0], extra, *weight.shape[2:])], 1)
    linear = state["trunk.13.weight"]                                    # (8w, 4w * pool^2), channel-major.
    channels = 4 * cfg.width
    stored_pool = round((linear.shape[1] / channels) ** 0.5)
    if cfg.pool > stored_pool and stored_pool ** 2 * channels == linear.shape[1] and cfg.pool % stored_pool == 0:
        r = cfg.pool // stored_pool
        grid = linear.view(linear.shape[0], channels, stored_pool, stored_pool)
        state["trunk.13.weight"] = (grid.repeat_interleave(r, 2).repeat_interleave(r, 3) / r ** 2).flatten(1)
    return state


class ShiftPredictor(nn.Module):
    """(x, x_shifted) (B, C, R, R) each -> logits (B, S*K) and shifts (B, S*K), S = number of sets."""

    def __init__(self, cfg: ShiftPredictorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.inputs not in INPUTS:
            raise ValueError(f"shift_predictor.inputs must be one of {', '.join(INPUTS)}, not '{cfg.inputs}'")
        in_channels, width = INPUTS[cfg.inputs] * cfg.img_channels, cfg.width
        self.k, self.num_sets = cfg.k, cfg.num_sets
        self.trunk = nn.Sequential(
            nn.Conv2d(in_channels, width, 5, padding=2), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 5, padding=2), nn.BatchNorm2d(2 * width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 4 * width, 3, padding=1), nn.BatchNorm2d(4 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(cfg.pool), nn.Flatten(),
            nn.Linear(4 * width * cfg.pool ** 2, 8 * width), nn.ReLU(),
        )
        self.heads = nn.Linear(8 * width, cfg.num_sets * cfg.k * 2)  # N+1 heads side by side: logits and shifts.

    def forward(self, x: torch.Tensor, x_shifted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        views = [x, x_shifted] + ([unit_change(x, x_shifted)] if self.cfg.inputs == "pair_change" else [])
        out = self.heads(self.trunk(torch.cat(views, dim=1)))              # (B, S*K*2)
        out = out.view(-1, self.num_sets, 2, self.k)
        logits = out[:, :, 0].reshape(-1, self.num_sets * self.k)
        shifts = out[:, :, 1].reshape(-1, self.num_sets * self.k)
        return logits, shifts


def shift_predictor_loss(logits: torch.Tensor, shifts: torch.Tensor, target_index: torch.Tensor,
                         target_eps: torch.Tensor, shift_weight: float = 0.25) -> tuple[torch.Tensor, dict]:
    """Cross-entropy over the (N+1)*K directions + shift_weight * L1 on the true direction's magnitude.

    Equivalent to regressing y = [0, ..., eps at the true direction, ..., 0] on that entry only, as
    Voynov & Babenko's released code regresses the scalar shift.
    """
    ce = F.cross_entropy(logits, target_index)
    predicted = shifts.gather(1, target_index[:, None]).squeeze(1)
    l1 = (predicted - target_eps).abs().mean()
    accuracy = (logits.argmax(1) == target_index).float().mean()
    return ce + shift_weight * l1, {"ce": ce.item(), "l1": l1.item(), "accuracy": accuracy.item()}
