"""Residual discriminator with minibatch standard deviation (StyleGAN2, config E/F "resnet" D).

Also the adversary of the domain-guided encoder later, so it is shipped with the weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from semdir_edit.config import DiscriminatorConfig
from semdir_edit.models.layers import EqualConv2d, EqualLinear, lrelu


class DiscriminatorBlock(nn.Module):
    """conv-conv-downsample with a 1x1 downsampling skip; outputs scaled by 1/sqrt(2) to keep variance."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv0 = EqualConv2d(in_channels, in_channels, 3)
        self.conv1 = EqualConv2d(in_channels, out_channels, 3)
        self.skip = EqualConv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.skip(F.avg_pool2d(x, 2))
        x = lrelu(self.conv0(x))
        x = F.avg_pool2d(lrelu(self.conv1(x)), 2)
        return (x + y) / math.sqrt(2.0)


class MinibatchStdLayer(nn.Module):
    """Appends the std of features over groups of samples as one more channel (lets D see diversity)."""

    def __init__(self, group_size: int) -> None:
        super().__init__()
        self.group_size = group_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        g = min(self.group_size, b)
        while b % g:  # The group must divide the batch.
            g -= 1
        y = x.reshape(g, -1, c, h, w)
        y = (y.var(dim=0, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))     # (B/g,)
        y = y.reshape(-1, 1, 1, 1).repeat(g, 1, h, w)                             # (B, 1, H, W)
        return torch.cat([x, y], dim=1)


class Discriminator(nn.Module):
    """image (B, C, R, R) -> realness logit (B,)."""

    def __init__(self, cfg: DiscriminatorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        log2 = int(math.log2(cfg.resolution))
        resolutions = [2 ** i for i in range(log2, 2, -1)]          # e.g. 32, 16, 8
        self.from_rgb = EqualConv2d(cfg.img_channels, cfg.channels[cfg.resolution], 1)
        self.blocks = nn.Sequential(*[DiscriminatorBlock(cfg.channels[r], cfg.channels[r // 2]) for r in resolutions])
        ch = cfg.channels[4]
        self.mbstd = MinibatchStdLayer(cfg.mbstd_group) if cfg.mbstd_group > 0 else nn.Identity()
        self.conv = EqualConv2d(ch + (1 if cfg.mbstd_group > 0 else 0), ch, 3)
        self.fc = EqualLinear(ch * 16, ch, activation=True)
        self.out = EqualLinear(ch, 1)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = self.blocks(lrelu(self.from_rgb(img)))
        x = lrelu(self.conv(self.mbstd(x)))
        return self.out(self.fc(x.flatten(1))).squeeze(1)
