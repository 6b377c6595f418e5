"""Smoke test on the shipped weights: they load (hashes and configs checked) and reach real quality
thresholds on a few real test images and fresh samples."""

from __future__ import annotations

import pytest
import torch

from semdir_edit.checkpoint import load_model, read_manifest
from semdir_edit.config import load_config
from semdir_edit.data import load_split
from semdir_edit.evaluation.metrics import class_histogram, classifier_features, fid_from_features, generate_images

from .conftest import ROOT, requires_dataset

WEIGHTS = ROOT / "weights" / "fashion_mnist"
CONFIG = load_config(ROOT / "configs" / "fashion_mnist.yaml")
# Class directions keep the class of all 128 edits of these 8 real images at |eps| = 2, class-locked or not (weights of
# 2026-11-30; evaluate directions: 96.4 % locked, 87.9 % linear on 1,000 generated samples, where the classifier is
# less sure); below 95 % something broke.
KEEP_CLASS_THRESHOLD = 0.95
CLASS_VISIBLE_THRESHOLD = 0.07
# The judge of edits (a classifier trained apart, which nothing steers by) names the class of 88 % of the class
# edits of these 8 images (2026-12-03; 87 % with the lock holding the shared classifier alone, 88 % of the unedited
# reconstructions); below 80 % the lock lets edits leave their class.
JUDGED_THRESHOLD = 0.8


@pytest.fixture(scope="module")
def test_set():
    return load_split(CONFIG.data, "test")


def test_manifest_lists_every_network_with_config_and_command():
    models = read_manifest(WEIGHTS)["models"]
    for kind in ("generator", "discriminator", "classifier"):
        assert {"file", "sha256", "config", "command", "git_commit"} <= set(models[kind])
    assert models["generator"]["config"]["w_dim"] == CONFIG.generator.w_dim


@requires_dataset
def test_classifier_on_real_test_images(test_set):
    C = load_model(WEIGHTS, "classifier")
    x, y = test_set.batch(torch.arange(1000))
    with torch.no_grad():
        acc = (C(x).argmax(1) == y).float().mean().item()
    assert acc >= 0.92


@requires_dataset
def test_generated_samples_look_like_clothing(test_set):
    G, C = load_model(WEIGHTS, "generator"), load_model(WEIGHTS, "classifier")
    images = torch.cat(list(generate_images(G, 1000, 250, "cpu", seed=123)))
    real = test_set.batch(torch.arange(1000))[0]
    with torch.no_grad():
        probs = C(images).softmax(1)
        real_confidence = C(real).softmax(1).max(1).values.mean()
    # The classifier is nearly as confident on samples as on real test images (label smoothing caps both) ...
    assert probs.max(1).values.mean() >= real_confidence - 0.15
    # ... every class is generated (no mode collapse) ...
    hist = class_histogram(probs.argmax(1), 10)
    assert min(hist) >= 0.03
    # ... and in its feature space samples sit much closer to real test images than noise-perturbed ones do.
    fake_f, _ = classifier_features(C, [images], "cpu")
    real_f, _ = classifier_features(C, [real], "cpu")
    noisy_f, _ = classifier_features(C, [(real + 0.5 * torch.randn_like(real)).clamp(-1, 1)], "cpu")
    assert fid_from_features(fake_f, real_f) < fid_from_features(noisy_f, real_f)


@requires_dataset
def test_indomain_inversion_of_real_test_images(test_set):
    from semdir_edit.editor import Editor, Inverted

    ed = Editor.from_pretrained(WEIGHTS, device="cpu")
    results = ed.invert(test_set.images[:8], method="indomain", steps=100)
    assert all(isinstance(r, Inverted) for r in results)
    # These 8 gave 25.5 dB (lambda_dom 0.25, weights of 2026-11-30); the inversion issue targets 24 dB on average.
    assert sum(r.psnr for r in results) / 8 >= 24.0
    recon_class, _ = ed.classify(torch.stack([r.reconstruction for r in results]))
    assert sum(int(c) == r.class_index for c, r in zip(recon_class, results, strict=True)) >= 7


@requires_dataset
def test_shipped_directions_on_real_test_images(test_set):
    """Class directions stay orthogonal to the global ones, move real (inverted) articles visibly, and both sets
    keep their class at |eps| = 2 (walked class-locked, as apply does by default)."""
    from semdir_edit.editor import Editor
    from semdir_edit.evaluation.directions import max_abs_cos

    ed = Editor.from_pretrained(WEIGHTS, device="cpu")
    d = ed.model("deformators")
    assert max_abs_cos(d.global_directions(), d.class_directions()) <= 1e-5
    judge = load_model(WEIGHTS, "classifier_judge")
    results = ed.invert(test_set.images[:8], method="encoder")
    kept, judged, moved = [], [], {"global": [], "class": []}
    for res in results:
        base = ed.G.synthesis(res.ws[None], noise_mode="const").clamp(-1, 1)
        for kind in ("global", "class"):
            for k in range(d.k):
                images = ed.apply(res.ws[None], f"{kind}:{k}", [-2.0, 2.0], class_index=res.class_index)[0]
                moved[kind].append((images - base).abs().mean().item())
                kept.extend((ed.classify(images)[0] == res.class_index).tolist())
                if kind == "class":
                    with torch.no_grad():
                        judged.extend((judge(images).argmax(1) == res.class_index).tolist())
    assert min(moved["class"] + moved["global"]) > 0.002     # Every direction does something ...
    assert sum(kept) / len(kept) >= KEEP_CLASS_THRESHOLD     # ... both sets keep the article's class (locked) ...
    assert sum(judged) / len(judged) >= JUDGED_THRESHOLD     # ... to a network the lock does not hold, too ...
    # ... and a person sees the class edits: mean change 0.096 of [-1, 1] (shipped, 2026-12-02), against ~0.04 for
    # the learned sets before them, which changed the picture no more than random directions did.
    assert sum(moved["class"]) / len(moved["class"]) >= CLASS_VISIBLE_THRESHOLD


@requires_dataset
def test_the_lock_and_the_judge_are_classifiers_trained_apart(test_set):
    """The class lock's second classifier and the judge of edits are networks of their own (not copies of the
    shared one or of each other) that name real test images well (92.8 % / 92.6 % of the 10,000)."""
    models = read_manifest(WEIGHTS)["models"]
    kinds = ("classifier", "classifier_lock", "classifier_judge")
    assert len({models[kind]["sha256"] for kind in kinds}) == 3
    x, y = test_set.batch(torch.arange(1000))
    for kind in kinds[1:]:
        with torch.no_grad():
            assert (load_model(WEIGHTS, kind)(x).argmax(1) == y).float().mean() >= 0.9, kind


SHARED_CLASSIFIER_SHA256 = "68e0f62265279111ff05a2bed112229fdcb82e4cabaf30764160987b25a7bb7c"
REAL_PHOTOS = ROOT / "tests" / "data" / "real-photos" / "labelled"


def test_photo_classifier_is_separate_and_shared_one_unchanged():
    """The photo path has its own network; the shared classifier (directions, FID, class lock, perceptual loss)
    is bit-identical to the one every recorded figure was measured with."""
    models = read_manifest(WEIGHTS)["models"]
    assert models["classifier"]["sha256"] == SHARED_CLASSIFIER_SHA256
    entry = models["photo_classifier"]
    assert entry["config"]["num_classes"] == 11 and entry["class_names"][-1] == "none of these"
    # Goal 94.5 % (shared: 94.8 %); the shipped one reaches 94.45 % (blend 0.7), 93.9 % before the blend.
    assert entry["domain_test_accuracy"] >= 0.944


def test_real_photos_named_and_hats_flagged():
    """CC0 photos the photo classifier never saw (the collection's validation split): hats are flagged as out of
    the domain, a t-shirt and trousers are named and not warned about."""
    from semdir_edit.editor import Editor

    ed = Editor.from_pretrained(WEIGHTS, device="cpu")
    files = {"cap": REAL_PHOTOS / "hat" / "cap-on-red-cloth.jpg",
             "beanie": REAL_PHOTOS / "hat" / "beanie-on-carpet.jpg",
             "tshirt": REAL_PHOTOS / "t-shirt" / "t-shirt-on-purple.jpg",
             "pants": REAL_PHOTOS / "pants" / "pants-on-hanger.jpg"}
    res = dict(zip(files, ed.invert([str(f) for f in files.values()], method="encoder"), strict=True))
    assert res["cap"].out_of_domain and res["beanie"].out_of_domain
    assert res["tshirt"].class_name == "T-shirt/top" and not res["tshirt"].out_of_domain
    assert res["pants"].class_name == "Trouser" and not res["pants"].out_of_domain
    # Domain images keep the shared classifier, without an ood_score.
    (domain,) = ed.invert(res["tshirt"].domain[None], method="encoder")
    assert domain.ood_score is None and not domain.out_of_domain


def test_shift_predictor_tells_the_shipped_directions_apart():
    """RCA of the shipped predictor on 200 fresh samples (seed 1, not evaluate's): 0.74 / 0.72 (global / class
    median) on evaluate's 500; chance is 1 / 88. Below 0.6 the predictor or the directions broke."""
    from semdir_edit.directions.baselines import sample_by_class
    from semdir_edit.evaluation import directions as ed
    from semdir_edit.evaluation.evaluate import rca_figures

    G, C = load_model(WEIGHTS, "generator"), load_model(WEIGHTS, "classifier")
    ours = load_model(WEIGHTS, "deformators").all_directions().detach()
    w_cov = load_model(WEIGHTS, "direction_bank").w_cov
    samples = sample_by_class(G, C, 20, seed=1)
    figures = rca_figures(G, load_model(WEIGHTS, "shift_predictor"), ours, ed.spreads_of(ours, w_cov), samples.w,
                          samples.labels, (CONFIG.train_directions.eps_min, CONFIG.train_directions.eps_max), seed=1)
    assert figures["rca_global"] >= 0.6 and figures["rca_class_median"] >= 0.6, figures
