"""`evaluate generator` on tiny random networks: every figure present and sane, the noise reference wired right."""

from __future__ import annotations

import math

import torch

from semdir_edit.evaluation import evaluate
from semdir_edit.evaluation.evaluate import evaluate_generator

from .conftest import make_edit_weights, requires_dataset


@requires_dataset
def test_generator_figures_and_noise_reference(tiny_config, tmp_path, monkeypatch):
    weights = make_edit_weights(tmp_path / "w", bank_samples=50)
    kwargs = dict(n=300, ppl_samples=20, batch_size=100)
    figures = evaluate_generator(weights, tiny_config.data, torch.device("cpu"), **kwargs)
    for key in ("fid", "fid_floor", "fid_noise_reference", "precision", "recall", "min_class_share_ratio", "ppl_w",
                "separability_accuracy", "separability_entropy_bits", "fid_over_floor"):
        assert isinstance(figures[key], float) and math.isfinite(figures[key]), key
    assert figures["fid_noise_sigma"] == 0.02 and figures["samples"] == 300
    assert math.isclose(sum(figures[f"class_share_{k}"] for k in range(10)), 1.0)
    # The reference is the floor's training images plus noise: with no noise it is the floor itself.
    assert figures["fid_noise_reference"] != figures["fid_floor"]
    monkeypatch.setattr(evaluate, "NOISE_REFERENCE_SIGMA", 0.0)
    quiet = evaluate_generator(weights, tiny_config.data, torch.device("cpu"), **kwargs)
    assert math.isclose(quiet["fid_noise_reference"], quiet["fid_floor"], rel_tol=1e-6, abs_tol=1e-9)
    assert quiet["fid"] == figures["fid"]  # Seeded: the generated side does not change.
