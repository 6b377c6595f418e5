"""Building blocks shared by the StyleGAN2-family networks: equalised learning rate, modulated convolution.

Equalised learning rate (Karras et al., "Progressive Growing of GANs", 2018): weights are stored at
unit variance and scaled by 1/sqrt(fan_in) at run time, so Adam's step size is the same for every layer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

SQRT2 = math.sqrt(2.0)


def lrelu(x: torch.Tensor) -> torch.Tensor:
    """Leaky ReLU with StyleGAN's gain of sqrt(2), which keeps activations at unit variance."""
    return F.leaky_relu(x, 0.2) * SQRT2


class EqualLinear(nn.Module):
    """Fully connected layer with equalised learning rate.

    lr_mul scales this layer's effective learning rate (0.01 in the mapping network).
    bias_init is the initial bias (1.0 for style affines, so that styles start near 1).
    """

    def __init__(self, in_features: int, out_features: int, activation: bool = False,
                 bias_init: float = 0.0, lr_mul: float = 1.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init) / lr_mul))
        self.weight_gain = lr_mul / math.sqrt(in_features)
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.linear(x, self.weight * self.weight_gain, self.bias * self.lr_mul)
        return lrelu(x) if self.activation else x


class EqualConv2d(nn.Module):
    """Plain convolution with equalised learning rate (used by the discriminator)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)
        self.padding = kernel_size // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.weight_gain, self.bias, padding=self.padding)


class ModulatedConv2d(nn.Module):
    """StyleGAN2 modulated convolution (Karras et al. 2020, Eq. 1-3), without grouped convolution.

    Scaling the weight's input channels by the style s equals scaling the *input activations* by s;
    demodulation divides each output channel by sqrt(sum_{i,k} (s_i w_{o,i,k})^2), a per-sample
    factor that can be applied to the *outputs*. One shared convolution over the batch is then
    several times faster on CPU than a grouped convolution with per-sample weights.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, w_dim: int,
                 demodulate: bool = True, upsample: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)  # w -> style s (B, in_channels)
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)
        self.demodulate = demodulate
        self.upsample = upsample
        self.padding = kernel_size // 2

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w)                                     # (B, I)
        weight = self.weight * self.weight_gain                     # (O, I, k, k)
        if not self.demodulate:                                     # toRGB: StyleGAN2 scales the style instead.
            styles = styles * self.weight_gain
            weight = self.weight
        x = x * styles[:, :, None, None].to(x.dtype)
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        x = F.conv2d(x, weight.to(x.dtype), padding=self.padding)
        if self.demodulate:
            # d_o = 1 / sqrt(sum_i s_i^2 * sum_k w_{o,i,k}^2): (B, I) @ (I, O) -> (B, O).
            demod = torch.rsqrt(styles.square() @ weight.square().sum(dim=(2, 3)).T + 1e-8)
            x = x * demod[:, :, None, None].to(x.dtype)
        return x
