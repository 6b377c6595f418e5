"""`evaluate inversion`'s in-domain figures (Zhu et al. 2020) and its photo-like run, on tiny networks."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from semdir_edit.checkpoint import load_model, register_model
from semdir_edit.config import DataConfig, EncoderConfig
from semdir_edit.data.photo import load_domain_image
from semdir_edit.evaluation.metrics import code_features, domain_distance, fid_from_features, same_label_pairs
from semdir_edit.evaluation.photolike import CANVAS, photo_like_jpegs
from semdir_edit.models.encoder import Encoder

from .conftest import FASHION_MNIST, make_edit_weights, requires_dataset
from .test_cli import run_cli

METHODS = ("optimize", "encoder", "indomain")
N = 16


def _add_encoder(path):
    G = load_model(path, "generator", "cpu")
    torch.manual_seed(1)
    E = Encoder(EncoderConfig(channels=[8, 8, 16, 16], num_ws=G.num_ws, w_dim=G.w_dim), w_avg=G.mapping.w_avg)
    register_model(path, "encoder", E, command="test")
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Tiny G, C, direction bank (no deformators: the edit is pca:0) and domain-guided encoder."""
    return _add_encoder(make_edit_weights(tmp_path_factory.mktemp("weights"), bank_samples=300))


@pytest.fixture(scope="module")
def test_images():
    from semdir_edit.data.idx import read_idx

    images = read_idx(FASHION_MNIST / "t10k-images-idx3-ubyte.gz")[:N]
    return np.pad(images, ((0, 0), (2, 2), (2, 2)))  # As the project pads them: (N, 32, 32).


def test_same_label_pairs_are_disjoint_consecutive_pairs():
    pairs = same_label_pairs(torch.tensor([1, 2, 1, 1, 2, 3, 1, 2]))
    assert pairs.tolist() == [[0, 2], [1, 4], [3, 6]]  # Label 2's third image and label 3's only one are left out.
    assert same_label_pairs(torch.tensor([0, 1, 2])).shape == (0, 2)


def test_identical_midpoints_are_the_reconstructions_and_batching_changes_nothing(weights):
    G, C = load_model(weights, "generator", "cpu"), load_model(weights, "classifier", "cpu")
    E = load_model(weights, "encoder", "cpu")
    torch.manual_seed(0)
    ws = G.broadcast(G.mapping(torch.randn(7, G.z_dim))) + 0.1 * torch.randn(7, G.num_ws, G.w_dim)
    real = code_features(G, C, G.broadcast(G.mapping(torch.randn(9, G.z_dim))), "cpu")[0]
    recon, preds = code_features(G, C, ws, "cpu", batch_size=256)
    mid, mid_preds = code_features(G, C, (ws + ws) / 2, "cpu", batch_size=3)
    torch.testing.assert_close(mid, recon, rtol=1e-5, atol=1e-5)
    assert torch.equal(mid_preds, preds)
    assert fid_from_features(mid, real) == pytest.approx(fid_from_features(recon, real), rel=1e-4, abs=1e-6)
    d = domain_distance(G, E, ws, "cpu", batch_size=2)
    assert d.shape == (7,) and (d > 0).all()
    torch.testing.assert_close(d, domain_distance(G, E, ws, "cpu"), rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # The definition: L2 over the whole W+ code.
        expected = (ws[0] - E(G.synthesis(ws[:1], noise_mode="const"))[0]).norm()
    assert float(d[0]) == pytest.approx(float(expected), rel=1e-4)


@requires_dataset
def test_photo_like_images_are_light_rgb_jpegs_that_convert_back(test_images):
    jpegs = photo_like_jpegs(test_images, seed=3)
    assert jpegs == photo_like_jpegs(torch.from_numpy(test_images)[:, None], seed=3)  # Seeded: reproducible.
    assert jpegs != photo_like_jpegs(test_images, seed=4)
    correlations = []
    for original, jpeg in zip(test_images, jpegs, strict=True):
        assert jpeg[:3] == b"\xff\xd8\xff"  # A JPEG.
        photo = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_UNCHANGED)
        assert photo.shape == (CANVAS, CANVAS, 3)
        border = np.concatenate([photo[:4].reshape(-1, 3), photo[-4:].reshape(-1, 3)])
        assert border.mean() > 200  # Light background ...
        assert photo.reshape(-1, 3).min(axis=0).max() < 160  # ... with a dark article somewhere.
        domain, _ = load_domain_image(jpeg, 32)  # The project's real photo conversion.
        correlations.append(np.corrcoef(domain[0].numpy().ravel(), original.ravel())[0, 1])
    assert min(correlations) > 0.5, correlations


def _check_in_domain_keys(figures: dict, methods, edit: bool) -> None:
    assert figures["interp_pairs"] >= 2
    assert figures["interp_fid_floor"] >= 0 and np.isfinite(figures["interp_fid_floor"])
    for method in methods:
        assert figures[f"{method}_failed"] == 0
        assert 0 <= figures[f"{method}_class_accuracy"] <= 1
        assert figures[f"{method}_domain_distance"] >= 0 and np.isfinite(figures[f"{method}_domain_distance"])
        assert figures[f"{method}_interp_fid"] >= 0 and np.isfinite(figures[f"{method}_interp_fid"])
        if edit:
            assert figures[f"{method}_edit_fid"] >= 0 and np.isfinite(figures[f"{method}_edit_fid"])
        else:
            assert f"{method}_edit_fid" not in figures


@requires_dataset
def test_evaluate_inversion_reports_in_domain_figures(weights):
    from semdir_edit.evaluation.evaluate import evaluate_inversion

    figures = evaluate_inversion(weights, DataConfig(), torch.device("cpu"), n=N, methods=METHODS, steps=2)
    _check_in_domain_keys(figures, METHODS, edit=True)
    assert figures["edit_direction"] == "pca:0"  # No deformators in these weights.
    assert not any("photo" in key for key in figures)


@requires_dataset
def test_no_direction_bank_no_edit_fid(tmp_path):
    from semdir_edit.config import ClassifierConfig, GeneratorConfig
    from semdir_edit.evaluation.evaluate import evaluate_inversion
    from semdir_edit.models import Classifier, Generator

    torch.manual_seed(0)
    G = Generator(GeneratorConfig(z_dim=16, w_dim=16, mapping_layers=2, channels={4: 16, 8: 16, 16: 8, 32: 8}))
    register_model(tmp_path, "generator", G, command="test")
    register_model(tmp_path, "classifier", Classifier(ClassifierConfig(channels=[8, 8, 16, 16])), command="test")
    _add_encoder(tmp_path)
    figures = evaluate_inversion(tmp_path, DataConfig(), torch.device("cpu"), n=N, methods=("encoder",))
    _check_in_domain_keys(figures, ("encoder",), edit=False)
    assert "edit_direction" not in figures


@requires_dataset
def test_cli_photo_like_adds_photo_figures(weights, tmp_path):
    out = tmp_path / "figures.json"
    manifest = (Path(weights) / "manifest.json").read_text()
    result = run_cli("evaluate", "inversion", "-w", str(weights), "-c", "configs/tiny.yaml", "--n", str(N),
                     "--steps", "2", "--methods", ",".join(METHODS), "--photo-like",
                     "--json", str(out), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    figures = json.loads(out.read_text())
    _check_in_domain_keys(figures, METHODS, edit=True)
    assert figures["photo_failed"] == 0
    assert 0 <= figures["photo_domain_accuracy"] <= 1
    for method in METHODS:
        assert 0 <= figures[f"{method}_photo_class_accuracy"] <= 1 and figures[f"{method}_photo_failed"] == 0
    assert "photo_domain_accuracy" in result.stdout  # The table.
    assert (Path(weights) / "manifest.json").read_text() == manifest  # Recorded only with --record.
