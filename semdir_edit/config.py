"""Typed configs, loaded from plain YAML and stored with the weights to rebuild each model.

Every model is rebuilt as ``Model(ModelConfig(**stored_dict))``; nothing is looked up by string. The dataclass
defaults are the shipped config's values (``semdir_edit/configs/fashion_mnist.yaml``, packaged with the code; a test
holds the two equal), so a YAML file only needs the fields it changes.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from semdir_edit.core.errors import UserError
from semdir_edit.core.validate import check_config_section, one_line

# Configs packaged with the code (package data): load_config("fashion_mnist") reads the shipped weights' config.
PACKAGED_CONFIGS = Path(__file__).resolve().parent / "configs"
DEFAULT_CONFIG = "fashion_mnist"
# Where the CLI finds weights without --weights (see find_weights).
WEIGHTS_ENV = "SEMDIR_WEIGHTS"
DEFAULT_WEIGHTS = Path("weights") / "fashion_mnist"
CHECKOUT = Path(__file__).resolve().parent.parent  # The repository root, when running from a checkout.

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)


def match_class(name: str, class_names: list[str]) -> int:
    """A class by name (case-insensitive; a unique prefix such as "T-shirt" works) or by index."""
    if name.isascii() and name.isdigit() and int(name) < len(class_names):
        return int(name)
    lowered = [c.lower() for c in class_names]
    if name.lower() in lowered:
        return lowered.index(name.lower())
    hits = [i for i, c in enumerate(lowered) if c.startswith(name.lower())]
    if len(hits) == 1:
        return hits[0]
    raise UserError(f"unknown class '{name}' (classes: {', '.join(class_names)})")


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
    channels: dict[int, int] = field(default_factory=lambda: {32: 16, 16: 32, 8: 64, 4: 128})
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
    steps: int = 8000                 # Total generator steps.
    lr: float = 0.0025                # Adam learning rate for G and D (betas 0, 0.99).
    r1_gamma: float = 0.05            # R1 weight; 0 = no R1.
    r1_interval: int = 16             # Lazy regularisation: R1 every N D steps.
    mixing_prob: float = 0.9          # Style-mixing regularisation probability.
    # Path-length regularisation (StyleGAN2, lazy like stylegan2-ada-pytorch: every pl_interval G steps, on
    # batch // pl_batch_shrink codes). 0 = off, as the shipped generator was trained; StyleGAN2 uses 2.
    pl_weight: float = 0.0
    pl_interval: int = 4
    pl_batch_shrink: int = 2
    pl_decay: float = 0.01            # Rate of the running mean of path lengths the penalty pulls towards.
    ema_kimg: float = 10.0            # Half-life of the G EMA in thousands of images.
    ema_rampup: float = 0.05          # EMA half-life ramps up as this fraction of images seen; 0 = no ramp-up.
    augment: bool = False             # Differentiable augmentation (kornia) on real and fake for D.
    sample_every: int = 500           # Write a sample grid every N steps.
    checkpoint_every: int = 250       # Write a resumable checkpoint every N steps.
    seed: int = 0


@dataclass
class ClassifierTrainConfig:
    batch_size: int = 128
    epochs: int = 40
    lr: float = 0.003                 # Peak AdamW learning rate (one-cycle schedule).
    weight_decay: float = 0.05
    augment: bool = True              # Random shifts and horizontal flips.
    seed: int = 0


@dataclass
class EncoderConfig:
    # Stem width, then one residual stage per halving of the resolution down to 4x4 (log2(resolution / 4) stages).
    channels: list[int] = field(default_factory=lambda: [32, 64, 128, 128])
    num_ws: int = 0                   # W+ layers of the generator it inverts; 0 = take G.num_ws when training starts.
    w_dim: int = 0                    # W size of that generator; 0 = take G.w_dim when training starts.
    img_channels: int = 1             # 1 = grayscale.
    resolution: int = 32              # Input size; a power of two >= 8.


@dataclass
class EncoderTrainConfig:
    # Hyper-parameters of genforce/idinvert (train_encoder.py, training/loss_encoder.py) unless noted.
    batch_size: int = 64
    steps: int = 20000                # Total encoder steps (one E step and, domain-guided, one D step each).
    lr: float = 1e-3                  # Adam learning rate of E and D (betas 0.9, 0.99); idinvert's is 1e-4.
    lr_decay_rate: float = 0.8        # Exponential decay: lr * lr_decay_rate ** (step / lr_decay_steps), not staircase.
    lr_decay_steps: int = 0           # 0 = steps // 4 (idinvert).
    # Weight of the perceptual term. idinvert uses 5e-5 on the MSE of raw VGG16 conv4_3 features (0-255 inputs), which
    # puts that term at about the size of its pixel MSE; our F (classifier maps with LPIPS channel normalisation) reads
    # 5-25x the pixel MSE of [-1, 1] images over noise, blur and 1-px shifts, so 0.1 keeps the two of the same order.
    lambda_perceptual: float = 0.1
    lambda_adv: float = 0.08          # Weight of softplus(-D(G(E(x)))) in the encoder loss.
    r1_gamma: float = 10.0            # R1 weight of the discriminator, every step; 0 = no R1.
    perceptual: str = "classifier"    # Perceptual network F: "classifier" or "vgg" / "alex" (lpips, local weights).
    sample_every: int = 500           # Write a reconstruction grid every N steps.
    checkpoint_every: int = 250       # Write a resumable checkpoint every N steps.
    seed: int = 0


@dataclass
class InversionConfig:
    # Defaults of genforce/idinvert_pytorch (utils/inverter.py): Adam lr 0.01, 100 steps, noise fixed; their
    # lambda_dom 2.0 is scaled to our W. On the first 64 TRAINING images (shipped weights, 2026-11-30), 100 steps:
    # lambda_dom 1 / 0.5 / 0.35 / 0.25 -> PSNR 24.41 / 24.96 / 25.26 / 25.53 dB, SSIM 0.889 / 0.897 / 0.901 / 0.904;
    # plain optimisation reached 25.06 dB after 500 steps. 0.25 is the largest weight (most domain regularisation)
    # that meets SSIM >= 0.90 and reaches optimisation's 500-step PSNR within 100 steps.
    method: str = "indomain"          # "indomain" | "encoder" | "optimize" | "conventional".
    steps: int = 100                  # Optimisation steps ("indomain", "optimize"); the encoders take none.
    lr: float = 0.01                  # Adam learning rate on the W+ code.
    lambda_perceptual: float = 0.1    # Weight of the perceptual term (see EncoderTrainConfig.lambda_perceptual).
    lambda_dom: float = 0.25          # Weight of the domain regulariser ||w - E(G(w))||^2 ("indomain" only).
    perceptual: str = "classifier"    # Perceptual network F: "classifier" or "vgg" / "alex" (lpips, local weights).
    batch_size: int = 64              # Images inverted together.


@dataclass
class DeformatorConfig:
    w_dim: int = 0                    # W size; 0 = take G.w_dim when training starts.
    k: int = 8                        # Directions per set (global, and each class).
    num_classes: int = 0              # Class sets; 0 = the classifier's number of classes.
    normalization: str = "unit"       # "unit" columns (Voynov's choice) or "orthonormal" within each set.


@dataclass
class ShiftPredictorConfig:
    img_channels: int = 1
    k: int = 0                        # Directions per set; 0 = the deformator's K.
    num_sets: int = 0                 # 1 global + one per class; 0 = from the deformator.
    width: int = 32                   # Channels of the first conv (LeNet-size trunk).
    # What the trunk sees: "pair" (the two images stacked, Voynov & Babenko's) or "pair_change" (ours: and their
    # difference scaled to a fixed norm, so a small edit shows the same pattern as a large one; its size is in the
    # pair).
    inputs: str = "pair"
    pool: int = 2                     # The last features are averaged to a pool x pool grid (of 8 x 8) before the head.


@dataclass
class DirectionBankConfig:
    w_dim: int = 0                    # W size; 0 = G.w_dim.
    k: int = 0                        # Directions per baseline source; 0 = the deformator's K.
    num_classes: int = 0              # Classes of the boundary model; 0 = the classifier's.


@dataclass
class DirectionsTrainConfig:
    # Starting points of Voynov & Babenko's released code unless noted.
    batch_size: int = 32
    steps: int = 2000
    lr: float = 1e-3                  # Adam, the shift predictor (and the deformators when lr_deformator is 0).
    # Voynov & Babenko train ~100k steps at 1e-4. In our ~10k-step budget the deformators barely leave their
    # random init at that rate (cos(init, learned) = 0.95-0.99 after 9,000 steps), so they get their own rate.
    lr_deformator: float = 0.01       # 0 = same as lr.
    # "constant", or "cosine": both rates fall along half a cosine to 0 at the planned steps (what fine-tuning a
    # predictor on fixed directions wants: at a constant 1e-3 its accuracy plateaus; decayed it rises again).
    lr_schedule: str = "constant"
    eps_min: float = 0.5              # |eps| ~ U[eps_min, eps_max] with a random sign, in units of W's spread.
    eps_max: float = 6.0
    shift_weight: float = 0.25        # Weight of the L1 shift regression next to the cross-entropy.
    # Ours, not in Kim & Lee: weight of the classifier's cross-entropy (label of G(w)) on the class-set edits, so a
    # class direction changes the article within its class. 0 = the paper's objective.
    class_keep_weight: float = 0.0
    # Ours, not in Kim & Lee: the class sets learn directions that barely change the image (their perceptual change
    # per unit eps measured 0.03, random directions 0.10): a weak edit is easy to tell from the strong global ones.
    # class_strength_weight > 0 adds weight * relu(class_strength_target - change / |eps|) on the class-set edits
    # (change = the classifier-feature distance of `evaluate directions`). 0 = the paper's objective.
    class_strength_weight: float = 0.0
    class_strength_target: float = 0.1
    # Fine-tuning (with --init-from): the frozen deformators keep their directions; with both frozen, only the
    # shift predictor trains (more reconstructor training on fixed directions).
    freeze_global: bool = True
    freeze_class: bool = True
    # With --init-from: take only the directions and start the shift predictor afresh (e.g. another shift_predictor
    # architecture than the one stored).
    fresh_predictor: bool = False
    # Where the deformators start (ignored with --init-from or --resume): "random" (Kim & Lee), or "visible" (ours,
    # semdir_edit/ops/visible.py: the directions that change the picture most at the least cost to its class).
    init: str = "visible"
    init_samples_per_class: int = 30  # Codes per class for the change statistics (2 * init_rank passes each).
    init_rank: int = 64               # W's principal axes the statistics span (95 % of W's variance here).
    init_outline_weight: float = 1.0  # Weight of the silhouette's change next to the pixels'.
    init_keep_global: float = 4.0     # Weight of the class-margin change the global set avoids.
    init_keep_class: float = 0.0      # The same for the class sets (their edits are walked class-locked anyway).
    init_specificity: float = 0.0     # >0: class sets favour changes the other classes do not share.
    spread_samples: int = 20000       # Samples of W for its covariance (the unit of eps).
    checkpoint_every: int = 250
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
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    train_encoder: EncoderTrainConfig = field(default_factory=EncoderTrainConfig)
    invert: InversionConfig = field(default_factory=InversionConfig)
    deformator: DeformatorConfig = field(default_factory=DeformatorConfig)
    shift_predictor: ShiftPredictorConfig = field(default_factory=ShiftPredictorConfig)
    train_directions: DirectionsTrainConfig = field(default_factory=DirectionsTrainConfig)


_SECTIONS: dict[str, type] = {
    "data": DataConfig, "generator": GeneratorConfig, "discriminator": DiscriminatorConfig,
    "classifier": ClassifierConfig, "train_gan": GANTrainConfig, "train_classifier": ClassifierTrainConfig,
    "encoder": EncoderConfig, "train_encoder": EncoderTrainConfig, "invert": InversionConfig,
    "deformator": DeformatorConfig, "shift_predictor": ShiftPredictorConfig, "train_directions": DirectionsTrainConfig,
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
        section = cls(**values)
    except (TypeError, ValueError, AttributeError) as exc:  # AttributeError: __post_init__ on a non-mapping.
        raise UserError(f"config section '{where}': {one_line(exc)}") from None
    return check_config_section(section, where)  # Types, finite numbers, ranges: refused here, not mid-training.


def config_from_dict(values: dict[str, Any]) -> Config:
    """Build a :class:`Config` from a nested dict; unknown keys are an error (typos must not pass)."""
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(Config)})
    if unknown:
        raise UserError(f"config: unknown section(s) {', '.join(map(str, unknown))}")
    kwargs = {key: _section(_SECTIONS[key], value, key) if key in _SECTIONS else value
              for key, value in values.items()}
    if not isinstance(kwargs.get("name", ""), str):
        raise UserError("config name must be text")
    return Config(**kwargs)


def load_config(path: str | Path) -> Config:
    """Read a YAML config file (e.g. ``configs/tiny.yaml``), or a config packaged with semdir-edit by its name
    (``fashion_mnist``: :data:`DEFAULT_CONFIG`)."""
    path = packaged_config(path) or Path(path)
    try:
        values = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except (OSError, yaml.YAMLError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"config file {path} cannot be read: {one_line((str(exc).splitlines() or ['?'])[0])}") from None
    except RecursionError:
        raise UserError(f"config file {path} cannot be read: nested too deeply") from None
    if not isinstance(values, dict):
        raise UserError(f"config file {path} is not a YAML mapping")
    return config_from_dict(values)


def packaged_config(name: str | Path) -> Path | None:
    """The packaged config file a bare name (no folder, no suffix) stands for, or None."""
    name = str(name)
    if "/" in name or "\\" in name or "." in name:
        return None
    path = PACKAGED_CONFIGS / f"{name}.yaml"
    return path if path.is_file() else None


def find_weights(path: str | Path | None = None) -> Path:
    """The weights folder to use: ``path`` when given, else ``$SEMDIR_WEIGHTS``, else ``weights/fashion_mnist`` in
    the current folder or in the checkout this package runs from. A one-line error when there is none."""
    if path is not None:
        return Path(path)
    if os.environ.get(WEIGHTS_ENV):
        return Path(os.environ[WEIGHTS_ENV])
    for candidate in (DEFAULT_WEIGHTS, CHECKOUT / DEFAULT_WEIGHTS):
        if (candidate / "manifest.json").is_file():
            return candidate
    raise UserError(f"no weights found: pass --weights DIR or set {WEIGHTS_ENV} to a folder with manifest.json "
                    f"(a checkout ships {DEFAULT_WEIGHTS})")


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain-data (JSON-able) view of a config dataclass."""
    return dataclasses.asdict(obj)
