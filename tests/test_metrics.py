"""Evaluation metrics: closed-form cases, limiting cases and determinism, on small synthetic inputs."""

from __future__ import annotations

import math

import pytest
import torch

from semdir_edit.config import ClassifierConfig, GeneratorConfig
from semdir_edit.evaluation import metrics
from semdir_edit.models.classifier import Classifier
from semdir_edit.models.generator import Generator


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_models() -> tuple[Generator, Classifier]:
    torch.manual_seed(0)
    G = Generator(GeneratorConfig(z_dim=16, w_dim=16, mapping_layers=2, channels={4: 16, 8: 16, 16: 8, 32: 8}))
    C = Classifier(ClassifierConfig(channels=[8, 8, 16, 16]))
    return G, C


# FID -----------------------------------------------------------------------------------------------------------------

def test_fid_of_a_set_against_itself_is_zero_and_grows_with_a_shift():
    a = torch.randn(2000, 8, generator=_gen(0))
    assert metrics.fid_from_features(a, a) == pytest.approx(0.0, abs=1e-6)
    small = metrics.fid_from_features(a, a + 0.5)
    large = metrics.fid_from_features(a, a + 2.0)
    assert small == pytest.approx(8 * 0.25, rel=1e-6)   # Same covariance: only ||mu_a - mu_b||^2 is left.
    assert large > small > 1.0


def test_fid_matches_closed_form_for_gaussians():
    d, n = 4, 20000
    mu = torch.tensor([1.0, -2.0, 0.5, 0.0])
    a = torch.randn(n, d, generator=_gen(1))
    b = torch.randn(n, d, generator=_gen(2)) + mu
    expected = float(mu.square().sum())                   # N(0, I) vs N(mu, I): ||mu||^2.
    fid_ab = metrics.fid_from_features(a, b)
    assert fid_ab == pytest.approx(expected, abs=0.08)
    assert metrics.fid_from_features(b, a) == pytest.approx(fid_ab, rel=1e-6)
    # N(0, I) vs N(0, 4 I): sum over dims of (sigma_a - sigma_b)^2 = d * (1 - 2)^2.
    c = 2.0 * torch.randn(n, d, generator=_gen(3))
    assert metrics.fid_from_features(a, c) == pytest.approx(d * 1.0, abs=0.15)


def test_fid_rejects_mismatched_features():
    with pytest.raises(ValueError):
        metrics.fid_from_features(torch.randn(10, 3), torch.randn(10, 4))


# Precision / recall --------------------------------------------------------------------------------------------------

def test_precision_recall_identical_sets_are_one():
    a = torch.randn(500, 16, generator=_gen(0))
    assert metrics.precision_recall(a, a.clone(), k=3, batch=64) == {"precision": 1.0, "recall": 1.0}


def test_precision_recall_disjoint_clusters_are_zero():
    real = torch.randn(400, 16, generator=_gen(0))
    fake = torch.randn(400, 16, generator=_gen(1)) + 50.0
    assert metrics.precision_recall(real, fake, k=3, batch=64) == {"precision": 0.0, "recall": 0.0}


def test_precision_recall_tell_mode_dropping_from_bad_samples():
    offset = torch.zeros(8)
    offset[0] = 40.0
    real = torch.cat([torch.randn(500, 8, generator=_gen(0)), torch.randn(500, 8, generator=_gen(1)) + offset])
    both_modes = torch.cat([torch.randn(500, 8, generator=_gen(2)), torch.randn(500, 8, generator=_gen(3)) + offset])
    one_mode = torch.randn(1000, 8, generator=_gen(4))
    full = metrics.precision_recall(real, both_modes, k=3, batch=128)
    dropped = metrics.precision_recall(real, one_mode, k=3, batch=128)
    # Dropping a mode keeps the samples good (precision) but loses half the real data (recall).
    assert full["precision"] > 0.75 and dropped["precision"] > 0.75
    assert full["recall"] > 0.75
    assert 0.3 < dropped["recall"] < 0.55
    # Same result whatever the chunk size.
    assert metrics.precision_recall(real, one_mode, k=3, batch=1000) == dropped
    assert metrics.precision_recall(real, one_mode, k=3, batch=7) == dropped


# Sampling and classifier read-outs -----------------------------------------------------------------------------------

def test_generate_images_is_deterministic_and_sized(tiny_models):
    G, _ = tiny_models
    first = torch.cat(list(metrics.generate_images(G, 10, 4, "cpu", seed=3)))
    again = torch.cat(list(metrics.generate_images(G, 10, 4, "cpu", seed=3)))
    other = torch.cat(list(metrics.generate_images(G, 10, 4, "cpu", seed=4)))
    assert first.shape == (10, 1, 32, 32)
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)
    ws = torch.cat([w for w, _ in metrics.generate_batches(G, 10, 4, "cpu", seed=3)])
    assert ws.shape == (10, G.w_dim)
    assert G.training  # Training flag restored.


def test_classifier_features_match_the_classifier(tiny_models):
    G, C = tiny_models
    images = list(metrics.generate_images(G, 9, 4, "cpu", seed=0))
    feats, preds = metrics.classifier_features(C, images, "cpu")
    assert feats.shape == (9, C.feature_dim) and feats.dtype == torch.float32
    C.eval()
    with torch.no_grad():
        expected = C(torch.cat(images)).argmax(dim=1)
    assert torch.equal(preds, expected)


# Perceptual path length ----------------------------------------------------------------------------------------------

def test_perceptual_distance_is_zero_for_equal_images_and_positive_otherwise(tiny_models):
    _, C = tiny_models
    C.eval()
    x = torch.rand(3, 1, 32, 32, generator=_gen(0)) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(metrics.perceptual_distance(C, x, x), torch.zeros(3))
        assert (metrics.perceptual_distance(C, x, x.flip(0).roll(3, dims=-1)) > 0).all()


def test_ppl_is_finite_positive_and_deterministic(tiny_models):
    G, C = tiny_models
    ppl = metrics.perceptual_path_length(G, C, n=24, device="cpu", seed=0, batch_size=8)
    assert math.isfinite(ppl) and ppl > 0
    assert metrics.perceptual_path_length(G, C, n=24, device="cpu", seed=0, batch_size=8) == ppl
    assert metrics.perceptual_path_length(G, C, n=24, device="cpu", seed=1, batch_size=8) != ppl
    assert G.training and C.training  # Training flags restored.


# Linear separability -------------------------------------------------------------------------------------------------

def test_linear_separability_of_separable_clusters():
    num_classes, per_class = 3, 200
    centres = 6.0 * torch.eye(num_classes, 8)
    ws = torch.cat([torch.randn(per_class, 8, generator=_gen(i)) + centres[i] for i in range(num_classes)])
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    sep = metrics.linear_separability(ws, labels, num_classes)
    assert sep["accuracy"] > 0.97
    assert sep["conditional_entropy"] < 0.2


def test_linear_separability_of_random_labels_is_near_chance():
    num_classes = 3
    ws = torch.randn(900, 8, generator=_gen(0))
    labels = torch.randint(0, num_classes, (900,), generator=_gen(1))
    sep = metrics.linear_separability(ws, labels, num_classes)
    assert sep["accuracy"] < 0.45
    assert sep["conditional_entropy"] > 0.9 * math.log2(num_classes)


# Labels --------------------------------------------------------------------------------------------------------------

def test_class_histogram_and_min_share_ratio():
    hist = metrics.class_histogram(torch.tensor([0, 0, 1, 1, 1, 2]), 3)
    assert sum(hist) == pytest.approx(1.0)
    assert hist == pytest.approx([2 / 6, 3 / 6, 1 / 6])
    assert metrics.min_class_share_ratio(hist) == pytest.approx(0.5)
    missing = metrics.class_histogram(torch.tensor([0, 1, 1]), 4)
    assert metrics.min_class_share_ratio(missing) == 0.0
    assert metrics.min_class_share_ratio(metrics.class_histogram(torch.arange(10), 10)) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        metrics.class_histogram(torch.tensor([0, 3]), 3)


def test_accuracy_from_logits_or_labels():
    labels = torch.tensor([0, 1, 2, 1])
    logits = torch.tensor([[2.0, 0, 0], [0, 3.0, 0], [1.0, 0, 0], [0, 0, 5.0]])
    assert metrics.accuracy(logits, labels) == pytest.approx(0.5)
    assert metrics.accuracy(torch.tensor([0, 1, 2, 0]), labels) == pytest.approx(0.75)
