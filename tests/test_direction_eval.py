"""`evaluate directions` on tiny trained weights, image attributes, `directions list|show`, the Voynov baseline."""

from __future__ import annotations

import json

import cv2
import pytest
import torch

from semdir_edit.checkpoint import load_model, read_manifest, register_model, update_descriptions
from semdir_edit.config import ClassifierConfig, GeneratorConfig
from semdir_edit.core.errors import UserError
from semdir_edit.directions.bank import build_direction_bank
from semdir_edit.editor import Editor
from semdir_edit.evaluation.directions import (
    FAINT_CHANGE,
    _pearson,
    describe_direction,
    image_attributes,
    same_label_share,
)
from semdir_edit.evaluation.evaluate import evaluate_directions
from semdir_edit.models import Classifier, Generator
from semdir_edit.training.directions import train_directions

from .test_cli import run_cli

CLASSES = [f"c{i}" for i in range(10)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Tiny G and C, 40 steps of both direction trainings, and the direction bank."""
    from semdir_edit.config import load_config
    from tests.conftest import ROOT

    path = tmp_path_factory.mktemp("w")
    torch.manual_seed(0)
    G = Generator(GeneratorConfig(z_dim=16, w_dim=16, mapping_layers=2, channels={4: 16, 8: 16, 16: 8, 32: 8}))
    with torch.no_grad():
        G.mapping.w_avg.zero_()
    C = Classifier(ClassifierConfig(channels=[8, 8, 16, 16])).eval()
    register_model(path, "generator", G, command="test")
    register_model(path, "classifier", C, command="test")
    register_model(path, "direction_bank", build_direction_bank(G, C, k=3, n=500), command="test")
    cfg = load_config(ROOT / "configs" / "tiny.yaml")
    cfg.deformator.k = 3
    cfg.train_directions.steps = 40
    runs = tmp_path_factory.mktemp("runs")
    train_directions(cfg, path, runs / "ours", torch.device("cpu"), progress=False)
    train_directions(cfg, path, runs / "voynov", torch.device("cpu"), progress=False, global_only=True)
    return path


def test_evaluate_directions_figures_and_descriptions(trained):
    figures, descriptions = evaluate_directions(trained, torch.device("cpu"), CLASSES, per_class=4, fresh_steps=3,
                                                describe_samples=4, log=lambda m: None)
    for key in ("rca_global", "rca_class_median", "class_preserved", "max_cos", "edit_strength_global",
                "edit_strength_class", "global_fresh_rca", "voynov_rca", "voynov_rca_own", "pca_rca", "sefa_rca",
                "random_rca", "pca_class_preserved", "class_preserved_eps3", "specificity_change_ratio"):
        assert key in figures, key
    assert figures["max_cos"] <= 1e-5
    # Naming the right direction among all names it within its set, and names its set.
    assert figures["rca_global_within_set"] >= figures["rca_global"] <= figures["rca_global_right_set"]
    assert "rca_class_within_set" in figures and "rca_class_right_set" in figures
    for key, value in figures.items():
        if "rca" in key or "preserved" in key:
            assert 0.0 <= value <= 1.0, (key, value)
    assert figures["edit_strength_global"] > 0  # Directions that move nothing would be 0.
    # Every direction of every source is described by a measured attribute and a correlation.
    assert {"global:0", "global:2", "voynov:1", "pca:2", "sefa:0", "random:1"} <= set(descriptions)
    assert any(k.startswith("class:0@") for k in descriptions)
    assert all(-1.0 <= d["r"] <= 1.0 and d["label"] for d in descriptions.values())


def test_image_attributes_measure_what_they_say():
    img = torch.full((2, 1, 32, 32), -1.0)
    img[0, :, 8:24, 4:12] = 1.0     # 8 wide, 16 high, left of centre.
    img[1, :, 4:28, 4:28] = 1.0     # 24 x 24, centred, symmetric.
    a = image_attributes(img, torch.zeros(2, 10), CLASSES)
    assert a["width"][0] == pytest.approx(8 / 32) and a["height"][0] == pytest.approx(16 / 32)
    assert a["aspect (w/h)"][1] == pytest.approx(1.0)
    assert a["x-position"][0] < 0.4 < a["x-position"][1]
    assert a["left-right symmetry"][1] == pytest.approx(1.0) and a["left-right symmetry"][0] < 0.1
    assert a["size"][0] == pytest.approx(8 * 16 / 1024) and a["size"][1] == pytest.approx(24 * 24 / 1024)
    assert a["brightness"][0] == pytest.approx(1.0) and a["brightness"][1] == pytest.approx(1.0)
    dim = image_attributes(img * 0.5 - 0.25, torch.zeros(2, 10), CLASSES)   # Same shapes, a greyer article.
    assert torch.allclose(dim["size"], a["size"]) and (dim["brightness"] < a["brightness"]).all()
    assert _pearson(torch.arange(5.0), 2 * torch.arange(5.0)) == pytest.approx(1.0)
    assert _pearson(torch.arange(5.0), torch.zeros(5)) == 0.0


def test_a_direction_that_changes_nothing_is_described_as_faint(trained):
    ed = Editor.from_pretrained(trained, device="cpu")
    w = ed.G.mapping(torch.randn(6, ed.G.z_dim, generator=torch.Generator().manual_seed(0)))
    direction, spread = ed.direction("pca:0", 0)
    still = describe_direction(ed.G, ed.C, direction, 0.0, w, ed.class_names)
    assert still["change"] == 0 and still["faint"] and still["label"].startswith("faint: ")
    moved = describe_direction(ed.G, ed.C, direction, 50 * spread, w, ed.class_names)
    assert moved["change"] >= FAINT_CHANGE and not moved["faint"] and not moved["label"].startswith("faint")
    # Faint directions count as one attribute, whatever they correlate with.
    described = {"pca:0": still, "pca:1": {**still, "label": "faint: width +"}, "pca:2": moved}
    assert same_label_share(described, "pca:") == pytest.approx(2 / 3)


def test_calibrated_units_lengthen_our_directions_only(trained, tmp_path):
    """`directions calibrate --record`: gains within [1, max] per direction of our sets, which apply's unit then
    carries (the baselines keep W's spread); a goal every direction already meets changes nothing."""
    import shutil

    weights = tmp_path / "w"
    shutil.copytree(trained, weights)
    specs = (("global:1", 0, 1), ("class:2", 1 + 3, 2), ("pca:0", None, None))
    before = {spec: Editor.from_pretrained(weights, device="cpu").direction(spec, 3)[1] for spec, _, _ in specs}
    for target, max_gain in (("0.9", "2"), ("0.001", "3")):
        result = run_cli("directions", "calibrate", "--per-class", "2", "--target", target, "--max-gain", max_gain,
                         "--record", "-q", "-w", str(weights), "--device", "cpu")
        assert result.returncode == 0, result.stderr
        units = read_manifest(weights)["direction_units"]
        gains = torch.tensor(units["gains"])
        # No tiny generator's edit changes 90 % of the picture: every direction measured gets the most (a class
        # the generator drew no sample of keeps 1); every direction meets 0.1 %.
        if target == "0.9":
            assert (gains[0] == 2).all() and (gains[1:] == 2).any() and ((gains == 1) | (gains == 2)).all(), gains
        else:
            assert (gains == 1).all(), gains
        assert units["target"] == float(target) and "directions calibrate" in units["command"]
        ed = Editor.from_pretrained(weights, device="cpu")
        for spec, row, k in specs:
            gain = 1.0 if row is None else float(gains[row, k])
            assert ed.direction(spec, 3)[1] == pytest.approx(before[spec] * gain)
    broken = json.loads((weights / "manifest.json").read_text())
    broken["direction_units"]["gains"] = [[1.0, 2.0]]
    (weights / "manifest.json").write_text(json.dumps(broken))
    with pytest.raises(UserError, match="calibrate"):
        Editor.from_pretrained(weights, device="cpu").direction("global:0")


def test_what_a_person_sees_is_measured_in_applys_unit(trained):
    """visible_figures with gains: our sets walk further (more change), the baselines as before."""
    from semdir_edit.directions.baselines import sample_by_class
    from semdir_edit.evaluation.evaluate import direction_sources, visible_figures

    G, C = load_model(trained, "generator"), load_model(trained, "classifier")
    w_cov = load_model(trained, "direction_bank").w_cov
    sources = {k: v for k, v in direction_sources(trained, "cpu").items() if k in ("ours", "pca")}
    samples = sample_by_class(G, C, 2, 0)
    plain = visible_figures(G, C, sources, w_cov, samples.w, samples.labels, 2, 0)
    longer = visible_figures(G, C, sources, w_cov, samples.w, samples.labels, 2, 0,
                             gains=torch.full(sources["ours"].shape[::2], 3.0))
    assert longer["global_visible"] > plain["global_visible"] and longer["class_visible"] > plain["class_visible"]
    assert longer["pca_visible"] == plain["pca_visible"]


def test_directions_list_and_show_cli(trained, tmp_path):
    result = run_cli("directions", "list", "-w", str(trained))
    if "no direction descriptions" in result.stderr:
        assert result.returncode == 2
        update_descriptions(trained, {"global:0": {"label": "width +", "r": 0.9, "top": [
            {"attribute": "width", "r": 0.9}, {"attribute": "ink", "r": 0.5}]}})
        result = run_cli("directions", "list", "-w", str(trained))
    assert result.returncode == 0, result.stderr
    assert "global:0" in result.stdout and "width +" in result.stdout
    out = tmp_path / "grid.png"
    ed = Editor.from_pretrained(trained, device="cpu")
    result = run_cli("directions", "show", "--source", "pca", "--eps", "-2:2:5", "--scale", "1", "-w", str(trained),
                     "-o", str(out), "--no-labels")
    assert result.returncode == 0, result.stderr
    assert cv2.imread(str(out), cv2.IMREAD_GRAYSCALE).shape == (3 * 34 + 2, 5 * 34 + 2)
    result = run_cli("directions", "show", "--source", "pca", "--eps", "-2:2:5", "--scale", "1", "-w", str(trained),
                     "-o", str(out))
    labelled = cv2.imread(str(out), cv2.IMREAD_GRAYSCALE)
    assert labelled.shape[0] > 3 * 34 + 2 and labelled.shape[1] > 5 * 34 + 2
    grid = ed.direction_grid(ed.sample_code(None, 0), "global", [-1.0, 0.0, 1.0])
    assert grid.shape == (3, 3, 1, 32, 32)
    assert torch.allclose(grid[0, 1], grid[2, 1])  # The middle column is the unedited image.
    assert not torch.allclose(grid[0, 0], grid[0, 2])
    result = run_cli("directions", "show", "--class", "Hat", "-w", str(trained), "-o", str(out))
    assert result.returncode == 2 and "unknown class" in result.stderr


def test_voynov_baseline_is_registered_and_applicable(trained):
    manifest = read_manifest(trained)
    assert manifest["models"]["deformators_voynov"]["config"]["num_classes"] == 0
    ed = Editor.from_pretrained(trained, device="cpu")
    ws = ed.sample_code(None, 1)[None]
    images = ed.apply(ws, "voynov:2", [0.0, 2.0], class_index=0)
    assert not torch.allclose(images[:, 0], images[:, 1])
    json.dumps(manifest)  # The manifest stays plain JSON.


def test_directions_describe_records_labels_of_the_edits_apply_makes(trained, tmp_path):
    import shutil

    weights = tmp_path / "w"
    shutil.copytree(trained, weights)
    result = run_cli("directions", "describe", "--per-class", "4", "--record", "-w", str(weights))
    assert result.returncode == 0, result.stderr
    manifest = json.loads((weights / "manifest.json").read_text())
    described = manifest["descriptions"]
    assert "global:0" in described and any(k.startswith("class:0@") for k in described)
    assert all(d["label"] for d in described.values())
    assert all(d["faint"] == (d["change"] < FAINT_CHANGE) == d["label"].startswith("faint: ")
               for d in described.values())
    assert 0 < manifest["figures"]["directions"]["global_same_label_share"] <= 1
    assert "descriptions_command" in manifest["figures"]["directions"]
