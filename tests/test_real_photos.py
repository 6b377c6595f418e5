"""Real photos (tests/data/real-photos, CC0): segmentation on textured backgrounds, the photo classifier,
`train classifier --photos` and `evaluate photos` on tiny networks."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from semdir_edit.data.photo import load_image, to_domain

from .conftest import ROOT, make_edit_weights, requires_dataset
from .test_batch import run_cli
from .test_cli import assert_user_error

PHOTOS = ROOT / "tests" / "data" / "real-photos"
LABELLED = PHOTOS / "labelled"
CLASS_MAP = LABELLED / "class-map.json"


def test_article_on_textured_background_is_segmented():
    """Pale trousers on a hanger against a wood-grain wardrobe: the box is the trousers, not the whole photo."""
    pixels = load_image(LABELLED / "pants" / "pants-on-hanger.jpg").pixels
    h, w = pixels.shape[:2]
    result = to_domain(pixels)
    assert any("GrabCut" in n for n in result.notes)
    left, top, right, bottom = result.box
    assert right - left <= 0.6 * w and bottom - top >= 0.8 * h  # Tall and narrow, as the trousers are.
    assert abs((left + right) / 2 - w / 2) <= 0.1 * w
    ys, xs = np.nonzero(result.image > 60)
    assert ys.max() - ys.min() >= 26 and xs.max() - xs.min() <= 16  # Long edge 28 px, vertical.
    assert (result.image > 60).mean() >= 0.15  # A solid silhouette, not an empty frame.


def test_synthetic_article_on_noisy_texture():
    """A dark shirt-like block on strong random texture: the texture around it stays black."""
    rng = np.random.default_rng(0)
    img = np.clip(rng.normal(170, 25, (240, 320, 3)), 0, 255).astype(np.uint8)
    img = cv2.GaussianBlur(img, (3, 3), 0)
    cv2.rectangle(img, (110, 50), (210, 190), (40, 40, 90), -1)
    result = to_domain(img)
    left, top, right, bottom = result.box
    assert abs(left - 110) <= 8 and abs(right - 210) <= 8 and abs(top - 50) <= 8 and abs(bottom - 190) <= 8
    # Tall article: 28 rows, 20 columns centred; the texture beside it stays black.
    assert result.image[:2].max() == 0 and result.image[:, :5].max() == 0 and result.image[:, -5:].max() == 0
    assert np.percentile(result.image[4:28, 8:24], 10) >= 150  # A solid block, not a ring.


def test_striped_garment_is_kept_whole():
    """A striped T-shirt on a wooden floor: GrabCut gives its pale stripes to the floor, and the clutter opening
    alone would keep one dark stripe (a flat band, named Bag); the stripes are joined into the T-shirt."""
    result = to_domain(load_image(PHOTOS / "striped-t-shirt-on-floor.jpg").pixels)
    assert any("parts were joined" in n for n in result.notes)
    ys, xs = np.nonzero(result.image > 60)
    assert ys.max() - ys.min() >= 20 and xs.max() - xs.min() >= 20  # The whole shirt, not a band 4 rows tall.
    assert (result.image > 60).mean() >= 0.35


def test_pale_part_does_not_split_the_garment():
    """A navy dress with a pale bow across it, on a hanger against a cream wall: seeded with only its dark parts,
    GrabCut gave the bow to the wall and the dress fell into two halves (one kept, named Trouser)."""
    pixels = load_image(PHOTOS / "dress-with-pale-bow-on-hanger.jpg").pixels
    result = to_domain(pixels)
    assert not any("articles found" in n for n in result.notes)
    left, _, right, _ = result.box
    assert right - left >= 0.75 * pixels.shape[1]  # Both halves: the dress spans most of the width.


def test_pair_of_shoes_keeps_one():
    pixels = load_image(LABELLED / "shoes" / "sandals-pair-on-carpet.jpg").pixels
    w = pixels.shape[1]
    result = to_domain(pixels)
    assert any("articles found" in n for n in result.notes)
    left, _, right, _ = result.box
    assert right - left <= 0.45 * w  # One sandal: the pair spans most of the width.


def test_product_shots_convert_as_before():
    """Plain backgrounds skip the textured path (docs/examples are product shots)."""
    for path in sorted((ROOT / "docs" / "examples").glob("*.jpg")):
        result = to_domain(load_image(path).pixels)
        assert not any("GrabCut" in n for n in result.notes), path


@pytest.fixture(scope="module")
def photo_weights(tmp_path_factory):
    """Tiny G + C registered, and a tiny photo classifier fine-tuned by the CLI on the labelled folder."""
    path = make_edit_weights(tmp_path_factory.mktemp("w"), bank_samples=200)
    run = tmp_path_factory.mktemp("run")
    result = run_cli("train", "classifier", "-c", "configs/tiny.yaml", "--photos", str(LABELLED), "--class-map",
                     str(CLASS_MAP), "--weights", str(path), "--out", str(run), "--epochs", "1", "--soup", "2")
    if "dataset folder" in result.stderr:
        pytest.skip("Fashion-MNIST not installed")
    assert result.returncode == 0, result.stderr
    assert (run / "photos.npz").is_file()  # The converted photos are cached for the next run.
    return path


@requires_dataset
def test_train_registers_photo_classifier_and_keeps_shared_one(photo_weights):
    manifest = json.loads((photo_weights / "manifest.json").read_text())
    entry = manifest["models"]["photo_classifier"]
    assert entry["config"]["num_classes"] == 11 and entry["class_names"][-1] == "none of these"
    assert 0 <= entry["ood_threshold"] <= 1 and entry["categories"]["hat"] == []
    assert entry["soup"] == 2
    assert manifest["models"]["classifier"]["command"] == "test"  # The shared classifier is not touched.


@requires_dataset
def test_evaluate_photos_writes_figures_and_confusion(photo_weights, tmp_path):
    out_json, png = tmp_path / "f.json", tmp_path / "confusion.png"
    result = run_cli("evaluate", "photos", str(LABELLED), "--class-map", str(CLASS_MAP), "-w", str(photo_weights),
                     "--json", str(out_json), "--confusion", str(png), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    figures = json.loads(out_json.read_text())
    assert figures["network"] == "photo_classifier"
    assert figures["photos"] == 6 and figures["in_domain_photos"] == 4 and figures["out_of_domain_photos"] == 2
    assert 0 <= figures["accuracy_in_domain"] <= 1 and 0 <= figures["ood_auroc"] <= 1
    assert {"accuracy_pants", "accuracy_shoes", "flagged_hat", "warned_in_domain"} <= set(figures)
    assert cv2.imread(str(png)) is not None
    shared = run_cli("evaluate", "photos", str(LABELLED), "--class-map", str(CLASS_MAP), "-w", str(photo_weights),
                     "--network", "shared", "--json", str(out_json), "--confusion", str(png), "--device", "cpu")
    assert shared.returncode == 0 and json.loads(out_json.read_text())["network"] == "classifier"


@requires_dataset
def test_invert_reports_ood_score_for_photos_only(photo_weights, tmp_path):
    domain = tmp_path / "domain.png"
    img = np.zeros((28, 28), np.uint8)
    img[4:24, 9:19] = 200
    cv2.imwrite(str(domain), img)
    hat = LABELLED / "hat" / "beanie-on-carpet.jpg"
    result = run_cli("invert", str(hat), str(domain), "-w", str(photo_weights), "-o", str(tmp_path / "out"),
                     "--method", "optimize", "--steps", "1", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    photo_json = json.loads((tmp_path / "out" / "beanie-on-carpet.json").read_text())
    assert 0 <= photo_json["ood_score"] <= 1 and isinstance(photo_json["out_of_domain"], bool)
    assert json.loads((tmp_path / "out" / "domain.json").read_text())["ood_score"] is None
    from semdir_edit.latents import load_latent

    _, meta = load_latent(tmp_path / "out" / "beanie-on-carpet.latent.safetensors")
    assert meta["ood_score"] == photo_json["ood_score"]


@requires_dataset
def test_batch_manifest_has_ood_score(photo_weights, tmp_path):
    result = run_cli("batch", str(LABELLED / "hat"), str(tmp_path / "b"), "-d", "pca:0", "--method",
                     "optimize", "--steps", "1", "-w", str(photo_weights), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (tmp_path / "b" / "manifest.jsonl").read_text().splitlines()]
    assert rows and all(0 <= r["ood_score"] <= 1 for r in rows)


def test_bad_class_map_is_one_line_error(tmp_path):
    from semdir_edit.config import FASHION_MNIST_CLASSES
    from semdir_edit.core.errors import UserError
    from semdir_edit.data.labelled_photos import read_class_map

    bad = tmp_path / "map.json"
    bad.write_text('{"pants": ["Trousers and more"]}')
    with pytest.raises(UserError, match="unknown class"):
        read_class_map(bad, list(FASHION_MNIST_CLASSES))
    bad.write_text('{"pants": [10]}')
    with pytest.raises(UserError, match="not in 0..9"):
        read_class_map(bad, list(FASHION_MNIST_CLASSES))
    bad.write_text('{"pants": "Trouser"}')
    assert_user_error(run_cli("evaluate", "photos", str(LABELLED), "--class-map", str(bad)), "list of classes")
    assert_user_error(run_cli("train", "classifier", "--photos", str(LABELLED)), "--class-map")


def test_partial_label_loss_accepts_any_accepted_class():
    from semdir_edit.training.photo_classifier import partial_label_loss

    logits = torch.tensor([[5.0, 5.0, -5.0]])
    both = partial_label_loss(logits, torch.tensor([[True, True, False]]))
    one = partial_label_loss(logits, torch.tensor([[True, False, False]]))
    assert both < 0.01 < one  # Splitting the mass between two accepted classes is not penalised.


def test_photo_scores_average_the_image_and_its_mirror():
    from semdir_edit.config import ClassifierConfig
    from semdir_edit.models import Classifier
    from semdir_edit.training.photo_classifier import photo_scores

    torch.manual_seed(0)
    model = Classifier(ClassifierConfig(num_classes=11, channels=[8, 8, 8, 8])).eval()
    x = torch.rand(6, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        idx, conf, ood = photo_scores(model, x)
        mirrored = photo_scores(model, x.flip(-1))
        plain = photo_scores(model, x, flip=False)
        p = model(x).softmax(1)
        q = model(x.flip(-1)).softmax(1)
    # A photo and its mirror image get the same class and scores; each is the mean of both views.
    assert torch.equal(idx, mirrored[0]) and torch.allclose(conf, mirrored[1]) and torch.allclose(ood, mirrored[2])
    assert torch.allclose(ood, (p[:, -1] + q[:, -1]) / 2, atol=1e-6)
    assert torch.allclose(plain[2], p[:, -1], atol=1e-6) and not torch.allclose(plain[2], ood)
    assert ((conf > 0) & (conf <= 1)).all() and (idx < 10).all()


def test_misses_sheet_shows_the_wrongly_named_in_domain_photos(tmp_path):
    from semdir_edit.config import FASHION_MNIST_CLASSES
    from semdir_edit.data.labelled_photos import LabelledPhotos
    from semdir_edit.evaluation.photos import plot_misses

    files = [str(LABELLED / "pants" / "pants-on-hanger.jpg"), str(LABELLED / "hat" / "beanie-on-carpet.jpg"),
             str(tmp_path / "gone.jpg")]  # A file deleted since it was converted still gets its domain image.
    photos = LabelledPhotos(images=torch.full((3, 1, 32, 32), 200, dtype=torch.uint8),
                            category=torch.tensor([0, 1, 0]), categories=["pants", "hat"], accepted=[[1], []],
                            files=files, failed=[])
    sheet = tmp_path / "misses.png"
    # Pants named Trouser: right; the hat: out of the domain, never a miss; the second pants named Bag: a miss.
    assert plot_misses(photos, np.array([1, 8, 8]), list(FASHION_MNIST_CLASSES), sheet, tile=64, columns=2) == 1
    image = cv2.imread(str(sheet), cv2.IMREAD_GRAYSCALE)
    assert image.shape == (64 + 4, 2 * (2 * 64 + 4))   # One cell (photo + domain image), padded to a full row.
    assert image[2:50, 66 + 2:66 + 60].mean() > 190       # The domain image beside it (the missing photo: black).
    assert plot_misses(photos, np.array([1, 8, 1]), list(FASHION_MNIST_CLASSES), tmp_path / "none.png") == 0
    assert not (tmp_path / "none.png").exists()


def test_the_blend_is_chosen_by_held_out_photos_within_the_domain_tolerance():
    from semdir_edit.config import ClassifierConfig
    from semdir_edit.models import Classifier
    from semdir_edit.training.photo_classifier import choose_blend, from_shared

    torch.manual_seed(0)
    base = Classifier(ClassifierConfig(channels=[8, 8, 16, 16])).eval()
    with torch.no_grad():  # Only the biases decide: the shared network says Dress (3), the fine-tuned one Coat (4),
        base.fc.weight.zero_()  # and a blend says Coat above a weight of 0.5.
        base.fc.bias.copy_(torch.nn.functional.one_hot(torch.tensor(3), 10) * 10.0)
        tuned = from_shared(base)
        tuned.fc.bias.copy_(torch.nn.functional.one_hot(torch.tensor(4), 11) * 10.0 - 5 * (torch.arange(11) == 10))
    images = torch.randint(0, 255, (8, 1, 32, 32), dtype=torch.uint8)
    labels = torch.tensor([3, 4] * 4)  # Every blend is right on half of these: all within the tolerance.
    assert choose_blend(tuned, base, images, labels)[0] == 1.0  # No photos: the largest weight.
    coats = torch.zeros(8, 11, dtype=torch.bool)
    coats[:, 4] = True
    assert choose_blend(tuned, base, images, labels, images, coats)[0] == 1.0
    dresses = torch.zeros(8, 11, dtype=torch.bool)
    dresses[:, 3] = True  # Photos that are dresses: the largest weight that still says Dress.
    alpha, _, _, photo_acc = choose_blend(tuned, base, images, labels, images, dresses)
    assert alpha == 0.5 and photo_acc == 1.0
    labels[:] = 3  # Only the shared network's answer keeps the domain accuracy: the photos cannot overrule it.
    assert choose_blend(tuned, base, images, labels, images, coats)[0] == 0.5


def test_a_soup_averages_heads_fine_tuned_in_different_orders(monkeypatch, tmp_path):
    from semdir_edit.checkpoint import register_model
    from semdir_edit.config import ClassifierConfig
    from semdir_edit.models import Classifier
    from semdir_edit.training import photo_classifier as pc

    drawn = []

    def fake_fine_tune(model, *args, **kwargs):  # Each ingredient's head: a draw of its own random order.
        with torch.no_grad():
            model.fc.bias.copy_(torch.rand(model.fc.bias.shape))
        drawn.append(model.fc.bias.clone())

    averaged = {}
    real_soup_of = pc.soup_of
    monkeypatch.setattr(pc, "_fine_tune", fake_fine_tune)
    monkeypatch.setattr(pc, "soup_of", lambda states: averaged.setdefault("state", real_soup_of(states)))
    photos = pc.LabelledPhotos(torch.randint(0, 255, (12, 1, 32, 32), dtype=torch.uint8), torch.tensor([0, 1] * 6),
                               ["t-shirt", "hat"], [[0], []], [f"{i}.jpg" for i in range(12)], [])
    register_model(tmp_path, "classifier", Classifier(ClassifierConfig(channels=[8, 8, 16, 16])), command="test")
    domain = pc.ImageSet(torch.randint(0, 255, (40, 1, 32, 32), dtype=torch.uint8), torch.randint(0, 10, (40,)),
                         [str(c) for c in range(10)])
    pc.train_photo_classifier(tmp_path, photos, domain, None, soup=3, register=False, domain_images=20,
                              log=lambda m: None)
    assert len(drawn) == 3 and not torch.equal(drawn[0], drawn[1]) and not torch.equal(drawn[1], drawn[2])
    assert torch.allclose(averaged["state"]["fc.bias"], torch.stack(drawn).mean(0))


def test_distillation_term_is_zero_at_the_teacher_and_grows_away_from_it():
    from semdir_edit.training.photo_classifier import distill_loss

    teacher = torch.tensor([[3.0, 0.0, -1.0], [0.0, 2.0, 0.0]])
    assert distill_loss(teacher.clone(), teacher).abs() < 1e-6
    assert distill_loss(teacher + torch.tensor([0.0, 1.0, 0.0]), teacher) > 0.01
    assert distill_loss(teacher + 5.0, teacher).abs() < 1e-6     # A shift of every logit is the same softmax.


def test_domain_loss_must_be_known(tmp_path):
    from semdir_edit.core.errors import UserError
    from semdir_edit.training import photo_classifier as pc

    photos = pc.LabelledPhotos(torch.zeros(2, 1, 32, 32, dtype=torch.uint8), torch.tensor([0, 0]), ["t-shirt"],
                               [[0]], ["a.jpg", "b.jpg"], [])
    with pytest.raises(UserError, match="domain_loss"):
        pc.train_photo_classifier(tmp_path, photos, None, None, domain_loss="teacher", register=False)
