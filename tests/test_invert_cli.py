"""`semdir-edit invert` end to end on tiny networks, and latent files."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from semdir_edit.checkpoint import register_model
from semdir_edit.config import ClassifierConfig, EncoderConfig, GeneratorConfig
from semdir_edit.core.errors import UserError
from semdir_edit.latents import load_latent, save_latent
from semdir_edit.models import Classifier, Generator
from semdir_edit.models.encoder import Encoder

from .test_cli import run_cli


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    G = Generator(GeneratorConfig(z_dim=16, w_dim=16, mapping_layers=2, channels={4: 16, 8: 16, 16: 8, 32: 8}))
    register_model(path, "generator", G, command="test")
    register_model(path, "classifier", Classifier(ClassifierConfig(channels=[8, 8, 16, 16])).eval(), command="test")
    E = Encoder(EncoderConfig(channels=[8, 8, 16, 16], num_ws=G.num_ws, w_dim=16), w_avg=G.mapping.w_avg)
    register_model(path, "encoder", E, command="test")
    return path


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    """A dark rectangle 'article' on a white background, off-centre, as a product photo."""
    path = tmp_path_factory.mktemp("photos") / "shirt.jpg"
    img = np.full((200, 150, 3), 250, np.uint8)
    cv2.rectangle(img, (30, 60), (110, 170), (30, 40, 160), -1)
    cv2.imwrite(str(path), img)
    return path


@pytest.mark.parametrize("method", ["optimize", "encoder", "indomain"])
def test_invert_writes_every_promised_file(tiny_weights, photo, tmp_path, method):
    result = run_cli("invert", str(photo), "-w", str(tiny_weights), "-o", str(tmp_path), "--method", method,
                     "--steps", "3", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    for suffix in ("domain.png", "recon.png", "side.png", "latent.safetensors", "json"):
        assert (tmp_path / f"shirt.{suffix}").is_file(), suffix
    figures = json.loads((tmp_path / "shirt.json").read_text())
    for key in ("class_index", "class_name", "confidence", "psnr", "ssim", "perceptual", "method", "steps"):
        assert key in figures
    assert figures["method"] == method and figures["steps"] == (3 if method != "encoder" else 0)
    domain = cv2.imread(str(tmp_path / "shirt.domain.png"), cv2.IMREAD_GRAYSCALE)
    assert domain.shape == (32, 32) and domain.max() > 200 and domain[0].max() < 30  # Bright article, dark border.
    ws, meta = load_latent(tmp_path / "shirt.latent.safetensors", weights_id=figures["weights_id"])
    assert ws.shape == (8, 16) and meta["method"] == method and meta["class_index"] == figures["class_index"]
    assert "shirt" in result.stdout  # The table.


def test_bad_and_good_file_together(tiny_weights, photo, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 10)
    result = run_cli("invert", str(bad), str(photo), "-w", str(tiny_weights), "-o", str(tmp_path / "o"),
                     "--method", "optimize", "--steps", "1")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "bad.png" in result.stderr
    assert (tmp_path / "o" / "shirt.latent.safetensors").is_file()


def test_latent_round_trip_and_refusals(tmp_path):
    ws = torch.randn(8, 16)
    save_latent(tmp_path / "a.latent.safetensors", ws, {"weights_id": "abc", "method": "optimize", "steps": 5})
    back, meta = load_latent(tmp_path / "a.latent.safetensors", weights_id="abc", num_ws=8, w_dim=16)
    assert torch.equal(back, ws) and meta["steps"] == 5
    with pytest.raises(UserError, match="other weights"):
        load_latent(tmp_path / "a.latent.safetensors", weights_id="zzz")
    with pytest.raises(UserError, match="does not fit"):
        load_latent(tmp_path / "a.latent.safetensors", num_ws=10)
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(UserError):
        load_latent(tmp_path / "junk.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(UserError, match="not a semdir-edit latent"):
        load_latent(tmp_path / "foreign.safetensors")


def test_evaluate_inversion_reports_every_method(tiny_weights):
    from semdir_edit.config import DataConfig
    from semdir_edit.evaluation.evaluate import evaluate_inversion

    from .conftest import FASHION_MNIST

    if not FASHION_MNIST.exists():
        pytest.skip("Fashion-MNIST not installed")
    figures = evaluate_inversion(tiny_weights, DataConfig(), torch.device("cpu"), n=4,
                                 methods=("optimize", "encoder", "indomain"), steps=2)
    for method in ("optimize", "encoder", "indomain"):
        assert figures[f"{method}_failed"] == 0
        assert 0 <= figures[f"{method}_class_preserved"] <= 1
        assert -1 <= figures[f"{method}_ssim"] <= 1 and figures[f"{method}_psnr"] > 0


def test_inversion_curves_and_plot(tiny_weights, tmp_path):
    from semdir_edit.config import DataConfig
    from semdir_edit.evaluation.evaluate import inversion_curves, plot_curves

    from .conftest import FASHION_MNIST

    if not FASHION_MNIST.exists():
        pytest.skip("Fashion-MNIST not installed")
    figures, curves = inversion_curves(tiny_weights, DataConfig(), torch.device("cpu"), n=3, optimize_steps=6,
                                       indomain_steps=4)
    assert len(curves["optimize"]) == 7 and len(curves["indomain"]) == 5
    steps = figures["indomain_steps_to_match_optimize6"]
    assert steps == -1 or curves["indomain"][steps] >= curves["optimize"][-1]
    assert curves["optimize"][-1] > curves["optimize"][0]  # Optimisation improves the mean PSNR.
    plot_curves(curves, tmp_path / "curve.png", "test")
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
