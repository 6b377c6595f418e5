"""GAN inversion: real images -> W+ codes (in-domain inversion and its baselines) and the perceptual network F."""

from semdir_edit.inversion.invert import (
    METHODS,
    InversionResult,
    invert,
    invert_encoder,
    invert_indomain,
    invert_optimize,
    mean_start,
)
from semdir_edit.ops.perceptual import PerceptualLoss

__all__ = [
    "METHODS",
    "InversionResult",
    "PerceptualLoss",
    "invert",
    "invert_encoder",
    "invert_indomain",
    "invert_optimize",
    "mean_start",
]
