"""Small residual CNN classifier.

Besides the logits it exposes its penultimate features (the feature space of FID, precision/recall
and every distribution figure in this project) and its intermediate feature maps (the default
perceptual network, in place of ImageNet VGG/AlexNet that cannot be downloaded here).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from semdir_edit.config import ClassifierConfig


class ResidualBlock(nn.Module):
    """Pre-activation residual block (He et al. 2016); stride 2 halves the resolution."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.bn0 = nn.BatchNorm2d(in_channels)
        self.conv0 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv1 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.skip = (nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)
                     if stride != 1 or in_channels != out_channels else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn0(x))
        y = self.conv1(F.relu(self.bn1(self.conv0(h))))
        return y + self.skip(h if not isinstance(self.skip, nn.Identity) else x)


class Classifier(nn.Module):
    """image (B, C, R, R) in [-1, 1] -> logits (B, num_classes)."""

    def __init__(self, cfg: ClassifierConfig) -> None:
        super().__init__()
        self.cfg = cfg
        ch = cfg.channels
        self.stem = nn.Conv2d(cfg.img_channels, ch[0], 3, 1, 1, bias=False)
        # Every stage halves the resolution (32 -> 16 -> 8 -> 4): cheap enough to train on a 2-core CPU.
        self.stages = nn.ModuleList([ResidualBlock(ch[i], ch[i + 1], stride=2) for i in range(len(ch) - 1)])
        self.bn = nn.BatchNorm2d(ch[-1])
        self.dropout = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(ch[-1], cfg.num_classes)
        self.feature_dim = ch[-1]

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The stem's and every stage's output, (B, C_i, H_i, W_i): the perceptual network's layers."""
        x = self.stem(x)
        maps = [x]
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return maps

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (B, feature_dim): pooled activations before the last layer."""
        x = self.feature_maps(x)[-1]
        return F.relu(self.bn(x)).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.features(x)))


class ClassifierEnsemble(nn.Module):
    """Classifiers trained apart, as one: its logits are the mean of their log-probabilities (the log of their
    probabilities' geometric mean, up to a constant per image). What the class lock holds: a walk along one
    network's margin can end in an image that fools that network alone; to keep this margin it must convince every
    member, and networks trained apart are rarely fooled by the same image."""

    def __init__(self, members: list[Classifier]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.cfg = members[0].cfg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_and_first(x)[0]

    def forward_and_first(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the ensemble's logits, its first member's own logits), from one pass of each member."""
        outs = [m(x) for m in self.members]
        return torch.stack([o.float().log_softmax(1) for o in outs]).mean(0), outs[0]
