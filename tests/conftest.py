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
