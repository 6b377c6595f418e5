"""Typed configs, loaded from plain YAML and stored with the weights to rebuild each model.

Every model is rebuilt as ``Model(ModelConfig(**stored_dict))``; nothing is looked up by string.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from semdir_edit.errors import UserError

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)


@dataclass
class DataConfig:
    source: str = "idx"                                  # "idx" (four IDX files) or "folder" (a sub-folder per class).
    path: str = "/usr/share/datasets/fashion-mnist"      # Folder holding the IDX files or the class sub-folders.
    # Class names; empty = the sub-folder names (folder source) or "0".."N-1" (idx source).
    class_names: list[str] = field(default_factory=lambda: list(FASHION_MNIST_CLASSES))
    resolution: int = 32                                 # Images are padded (28 -> 32) or resized to this size.
    max_train: int = 0                                   # Use only the first N training images; 0 = all.


@dataclass
class GeneratorConfig:
    z_dim: int = 128                  # Input latent Z size.
    w_dim: int = 128                  # Intermediate latent W size.
    mapping_layers: int = 4           # Fully connected layers in the mapping network.
    mapping_lr_mul: float = 0.01      # Learning-rate multiplier of the mapping network (StyleGAN).
    w_avg_beta: float = 0.995         # Decay of the running mean of W kept for truncation.
    resolution: int = 32              # Output size; a power of two >= 8.
    img_channels: int = 1             # 1 = grayscale.
    channels: dict[int, int] = field(default_factory=lambda: {4: 128, 8: 128, 16: 64, 32: 32})  # Per resolution.

    def __post_init__(self) -> None:
        self.channels = {int(k): int(v) for k, v in self.channels.items()}


@dataclass
class DiscriminatorConfig:
    resolution: int = 32
    img_channels: int = 1
    channels: dict[int, int] = field(default_factory=lambda: {32: 32, 16: 64, 8: 128, 4: 128})
    mbstd_group: int = 4              # Minibatch-stddev group size; 0 = no minibatch-stddev layer.

    def __post_init__(self) -> None:
        self.channels = {int(k): int(v) for k, v in self.channels.items()}


@dataclass
class ClassifierConfig:
    num_classes: int = 10
    img_channels: int = 1
    channels: list[int] = field(default_factory=lambda: [32, 64, 128, 256])  # Stem width, then one stage each.
    dropout: float = 0.2


@dataclass
class GANTrainConfig:
    batch_size: int = 32
    steps: int = 20000                # Total generator steps.
    lr: float = 0.0025                # Adam learning rate for G and D (betas 0, 0.99).
    r1_gamma: float = 0.05            # R1 weight; 0 = no R1.
    r1_interval: int = 16             # Lazy regularisation: R1 every N D steps.
    mixing_prob: float = 0.9          # Style-mixing regularisation probability.
    ema_kimg: float = 10.0            # Half-life of the G EMA in thousands of images.
    ema_rampup: float = 0.05          # EMA half-life ramps up as this fraction of images seen; 0 = no ramp-up.
    augment: bool = False             # Differentiable augmentation (kornia) on real and fake for D.
    sample_every: int = 1000          # Write a sample grid every N steps.
    checkpoint_every: int = 500       # Write a resumable checkpoint every N steps.
    seed: int = 0


@dataclass
class ClassifierTrainConfig:
    batch_size: int = 128
    epochs: int = 12
    lr: float = 0.003                 # Peak AdamW learning rate (one-cycle schedule).
    weight_decay: float = 0.05
    augment: bool = True              # Random shifts and horizontal flips.
    seed: int = 0


@dataclass
class Config:
    name: str = "fashion_mnist"
    data: DataConfig = field(default_factory=DataConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    train_gan: GANTrainConfig = field(default_factory=GANTrainConfig)
    train_classifier: ClassifierTrainConfig = field(default_factory=ClassifierTrainConfig)


_SECTIONS: dict[str, type] = {
    "data": DataConfig, "generator": GeneratorConfig, "discriminator": DiscriminatorConfig,
    "classifier": ClassifierConfig, "train_gan": GANTrainConfig, "train_classifier": ClassifierTrainConfig,
}


def _section(cls: type, values: Any, where: str) -> Any:
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise UserError(f"config section '{where}' must be a mapping")
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise UserError(f"config section '{where}': unknown key(s) {', '.join(map(str, unknown))}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise UserError(f"config section '{where}': {exc}") from None


def config_from_dict(values: dict[str, Any]) -> Config:
    """Build a :class:`Config` from a nested dict; unknown keys are an error (typos must not pass)."""
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(Config)})
    if unknown:
        raise UserError(f"config: unknown section(s) {', '.join(map(str, unknown))}")
    kwargs = {key: _section(_SECTIONS[key], value, key) if key in _SECTIONS else value
              for key, value in values.items()}
    return Config(**kwargs)


def load_config(path: str | Path) -> Config:
    """Read a YAML config file, e.g. ``configs/fashion_mnist.yaml``."""
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UserError(f"config file {path} cannot be read: {str(exc).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise UserError(f"config file {path} is not a YAML mapping")
    return config_from_dict(values)


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain-data (JSON-able) view of a config dataclass."""
    return dataclasses.asdict(obj)
