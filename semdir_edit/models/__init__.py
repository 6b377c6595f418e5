"""Networks only: no optimisers, data or losses here."""

from semdir_edit.models.classifier import Classifier, ClassifierEnsemble
from semdir_edit.models.discriminator import Discriminator
from semdir_edit.models.generator import Generator

__all__ = ["Classifier", "ClassifierEnsemble", "Discriminator", "Generator"]
