"""Shared fixtures: tiny networks and the tiny config (trains in seconds on CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from semdir_edit.config import Config, load_config

ROOT = Path(__file__).resolve().parent.parent
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

torch.set_num_threads(1)


@pytest.fixture
def tiny_config() -> Config:
    return load_config(ROOT / "configs" / "tiny.yaml")


requires_dataset = pytest.mark.skipif(
    not (FASHION_MNIST / "t10k-labels-idx1-ubyte.gz").exists(),
    reason="Fashion-MNIST not installed (apt-get install -y dataset-fashion-mnist); CI installs it")


def make_edit_weights(path: Path, bank_samples: int = 500) -> Path:
    """Tiny random G + C and their direction bank registered in ``path``: enough for invert/apply/batch tests."""
    from semdir_edit.checkpoint import register_model
    from semdir_edit.config import ClassifierConfig, GeneratorConfig
    from semdir_edit.directions.bank import build_direction_bank
    from semdir_edit.models import Classifier, Generator

    torch.manual_seed(0)
    G = Generator(GeneratorConfig(z_dim=16, w_dim=16, mapping_layers=2, channels={4: 16, 8: 16, 16: 8, 32: 8}))
    C = Classifier(ClassifierConfig(channels=[8, 8, 16, 16])).eval()
    register_model(path, "generator", G, command="test")
    register_model(path, "classifier", C, command="test")
    register_model(path, "direction_bank", build_direction_bank(G, C, k=3, n=bank_samples), command="test")
    return path
