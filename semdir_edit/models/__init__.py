"""Networks only: no optimisers, data or losses here."""

from semdir_edit.models.classifier import Classifier
from semdir_edit.models.discriminator import Discriminator
from semdir_edit.models.generator import Generator

__all__ = ["Classifier", "Discriminator", "Generator"]
