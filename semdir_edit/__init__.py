"""semdir-edit: GAN inversion and real-image editing along global and class-specific semantic directions."""

__version__ = "0.1.0"
