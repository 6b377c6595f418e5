"""Encoder E: image -> W+ code, the inverse of the generator's synthesis network.

Zhu, Shen, Zhao, Zhou, "In-Domain GAN Inversion for Real Image Editing", ECCV 2020. The architecture follows the
authors' released encoder (genforce/idinvert ``training/networks_encoder.py``): a stem convolution, then per halving
of the resolution an average pool and a residual block (conv-lrelu-BN twice, a 1x1 conv + BN shortcut when the width
changes), down to 4x4, and one dense layer to ``num_ws x w_dim``: E outputs W+ directly.

Two changes for our setting: the stem is 3x3 (their 5x5 is for 256x256 images), and instead of their batch norm on
the output the dense layer predicts an offset from the generator's mean ``w_avg``, with zero initial weights, so an
untrained E already returns the mean code (a sensible first guess) and W's scale is never normalised away.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from semdir_edit.config import EncoderConfig


class EncoderBlock(nn.Module):
    """Average-pool 2x, then a residual block: (B, C_in, H, W) -> (B, C_out, H/2, W/2)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        hidden = min(in_channels, out_channels)
        self.conv0 = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(hidden)
        self.conv1 = nn.Conv2d(hidden, out_channels, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(out_channels)
        # A learned shortcut only where the width changes, as in idinvert's residual_block2.
        self.skip = (nn.Sequential(nn.Conv2d(in_channels, out_channels, 1), nn.BatchNorm2d(out_channels))
                     if in_channels != out_channels else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.avg_pool2d(x, 2)
        h = self.bn0(F.leaky_relu(self.conv0(x), 0.2))
        h = self.bn1(F.leaky_relu(self.conv1(h), 0.2))
        return h + self.skip(x)


class Encoder(nn.Module):
    """image (B, img_channels, R, R) in [-1, 1] -> W+ code (B, num_ws, w_dim).

    ``w_avg`` (w_dim,) is a fixed buffer: the generator's mean w (``G.mapping.w_avg``), copied at construction time
    and stored with the weights; E predicts ``w_avg + offset``. ``None`` = zeros (a network about to be loaded from
    a weights file, whose ``w_avg`` then comes from that file).
    """

    def __init__(self, cfg: EncoderConfig, w_avg: torch.Tensor | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        log2 = int(math.log2(cfg.resolution)) if cfg.resolution > 0 else 0
        if 2 ** log2 != cfg.resolution or cfg.resolution < 8:
            raise ValueError(f"encoder resolution must be a power of two >= 8, got {cfg.resolution}")
        num_stages = log2 - 2                                       # 32 -> 16 -> 8 -> 4: 3 stages.
        if len(cfg.channels) != num_stages + 1:
            raise ValueError(f"encoder channels must list {num_stages + 1} widths (stem + one per stage) at "
                             f"resolution {cfg.resolution}, got {len(cfg.channels)}")
        if cfg.num_ws < 1 or cfg.w_dim < 1:
            raise ValueError(f"encoder num_ws and w_dim must be >= 1 (set them from the generator), "
                             f"got {cfg.num_ws} and {cfg.w_dim}")
        ch = cfg.channels
        self.stem = nn.Sequential(nn.Conv2d(cfg.img_channels, ch[0], 3, padding=1), nn.LeakyReLU(0.2),
                                  nn.BatchNorm2d(ch[0]))
        self.blocks = nn.Sequential(*[EncoderBlock(ch[i], ch[i + 1]) for i in range(num_stages)])
        self.out = nn.Linear(ch[-1] * 4 * 4, cfg.num_ws * cfg.w_dim)
        # Zero offset at the start: E(x) = w_avg for every x until training moves it.
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.register_buffer("w_avg", torch.zeros(cfg.w_dim))
        if w_avg is not None:
            if w_avg.shape != (cfg.w_dim,):
                raise ValueError(f"w_avg must be ({cfg.w_dim},), got {tuple(w_avg.shape)}")
            self.w_avg.copy_(w_avg.detach())
        self.num_ws, self.w_dim = cfg.num_ws, cfg.w_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, r = self.cfg.img_channels, self.cfg.resolution
        if x.ndim != 4 or x.shape[1:] != (c, r, r):
            raise ValueError(f"encoder input must be (B, {c}, {r}, {r}), got {tuple(x.shape)}")
        h = self.blocks(self.stem(x))                               # (B, C_last, 4, 4)
        offset = self.out(h.flatten(1)).view(-1, self.num_ws, self.w_dim)
        return self.w_avg.to(offset.dtype) + offset                 # (B, num_ws, w_dim)
