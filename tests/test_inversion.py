"""In-domain GAN inversion on tiny random networks: encoder, perceptual network, the four methods, bad inputs,
reconstruction figures, and both encoder trainings (run, resume exactly, register)."""

from __future__ import annotations

import math

import lpips
import pytest
import torch

from semdir_edit.checkpoint import load_model, load_training_state, read_manifest, register_model
from semdir_edit.config import ClassifierConfig, EncoderConfig, GeneratorConfig
from semdir_edit.core.errors import UserError
from semdir_edit.inversion import PerceptualLoss, invert, invert_encoder, invert_indomain, invert_optimize
from semdir_edit.models import Classifier, Discriminator, Generator
from semdir_edit.models.encoder import Encoder
from semdir_edit.ops import perceptual as perceptual_module
from semdir_edit.ops.reconstruction import psnr, ssim, to_unit_range
from semdir_edit.training.encoder import ConventionalEncoderLoss, train_encoder

from .conftest import requires_dataset

TINY_G = GeneratorConfig(z_dim=16, w_dim=16, mapping_layers=2, channels={4: 16, 8: 16, 16: 8, 32: 8})
TINY_C = ClassifierConfig(channels=[8, 8, 16, 16])


def tiny_encoder(G: Generator) -> Encoder:
    return Encoder(EncoderConfig(channels=[8, 8, 16, 16], num_ws=G.num_ws, w_dim=G.w_dim), w_avg=G.mapping.w_avg)


@pytest.fixture(scope="module")
def nets() -> dict:
    """Tiny G (with its mean w), C, F, an untrained and a briefly trained (conventional) E, and targets G(w)."""
    torch.manual_seed(0)
    G = Generator(TINY_G).eval().requires_grad_(False)
    with torch.no_grad():
        G.mapping.w_avg.copy_(G.mapping(torch.randn(1000, G.z_dim)).mean(0))
    C = Classifier(TINY_C).eval()
    E0 = tiny_encoder(G).eval()
    E = tiny_encoder(G)
    loss = ConventionalEncoderLoss(G, E, torch.device("cpu"))
    opt = torch.optim.Adam(E.parameters(), lr=1e-3)
    for _ in range(100):
        value, _ = loss.encoder_loss(16)
        opt.zero_grad()
        value.backward()
        opt.step()
    E.eval()
    with torch.no_grad():
        ws = G.broadcast(G.mapping(torch.randn(6, G.z_dim)))
        x = G.synthesis(ws, noise_mode="const")
    return {"G": G, "C": C, "F": PerceptualLoss(C), "E0": E0, "E": E, "ws": ws, "x": x}


def domain_term(E: Encoder, G: Generator, ws: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return (ws - E(G.synthesis(ws, noise_mode="const"))).square().mean(dim=(1, 2))


# ----------------------------------------------------------------------------------------------------------- encoder

def test_encoder_outputs_w_plus_starting_at_the_mean_code(nets, tmp_path):
    G, E0 = nets["G"], nets["E0"]
    out = E0(nets["x"])
    assert out.shape == (6, G.num_ws, G.w_dim)
    # Zero-initialised offset: an untrained encoder returns the generator's mean w at every layer.
    torch.testing.assert_close(out, G.mapping.w_avg.expand_as(out))
    with pytest.raises(ValueError):
        E0(torch.zeros(2, 1, 16, 16))
    with pytest.raises(ValueError):
        Encoder(EncoderConfig(channels=[8, 8, 16, 16]))  # num_ws / w_dim not set from a generator.
    # Both encoder kinds round-trip through the weights folder, w_avg included.
    register_model(tmp_path, "encoder", nets["E"], command="test")
    register_model(tmp_path, "encoder_conventional", E0, command="test")
    loaded = load_model(tmp_path, "encoder")
    torch.testing.assert_close(loaded(nets["x"]), nets["E"](nets["x"]))
    torch.testing.assert_close(load_model(tmp_path, "encoder_conventional").w_avg, G.mapping.w_avg)


# ----------------------------------------------------------------------------------------------------------- methods

def test_encoder_inversion_improves_with_training(nets):
    G, x, ws = nets["G"], nets["x"], nets["ws"]
    before = invert_encoder(nets["E0"], G, x)
    after = invert(method="conventional", G=G, x=x, E=nets["E"], F=nets["F"])
    assert after.method == "conventional" and after.curve.shape == (1, 6) and after.ok.all()
    assert set(after.terms) == {"pixel", "perceptual"}
    assert after.mse_curve[0].mean() < before.mse_curve[0].mean()
    assert (after.ws - ws).square().mean() < 0.5 * (before.ws - ws).square().mean()


def test_optimize_reduces_reconstruction_error_of_every_image(nets):
    G, x = nets["G"], nets["x"]
    calls = []
    res = invert_optimize(G, x, nets["F"], steps=20, lr=0.03, callback=lambda step, loss: calls.append(step))
    assert calls == list(range(20))
    assert res.ws.shape == (6, G.num_ws, G.w_dim) and res.images.shape == x.shape
    assert res.curve.shape == res.mse_curve.shape == (21, 6)
    torch.testing.assert_close(res.losses, res.curve[-1])
    assert (res.mse_curve[-1] < res.mse_curve[0]).all()
    assert (res.psnr_curve()[-1] > res.psnr_curve()[0]).all()
    # The reported reconstruction is G(ws).
    torch.testing.assert_close(res.images, G.synthesis(res.ws, noise_mode="const"))


def test_indomain_reduces_its_objective_and_stays_closer_to_the_domain(nets):
    G, E, F, x = nets["G"], nets["E"], nets["F"], nets["x"]
    indomain = invert_indomain(G, E, x, F, steps=20, lr=0.03, lambda_dom=2.0)
    # It starts from E(x): its first objective is the encoder's reconstruction loss plus lambda_dom * domain term.
    with torch.no_grad():
        start = E(x)
    torch.testing.assert_close(indomain.curve[0], invert_encoder(E, G, x, F).losses + 2.0 * domain_term(E, G, start))
    assert (indomain.curve[-1] < indomain.curve[0]).all()
    assert indomain.mse_curve[-1].mean() < indomain.mse_curve[0].mean()
    assert set(indomain.terms) == {"pixel", "perceptual", "domain"}
    # Plain optimisation has no domain term: its codes are further from what E reads back.
    optimize = invert("optimize", G, x, F=F, steps=20, lr=0.03)
    assert domain_term(E, G, indomain.ws).mean() < domain_term(E, G, optimize.ws).mean()
    torch.testing.assert_close(indomain.terms["domain"], domain_term(E, G, indomain.ws))


def test_dispatcher_checks_what_each_method_needs(nets):
    G, x = nets["G"], nets["x"]
    with pytest.raises(ValueError, match="unknown"):
        invert("pti", G, x)
    with pytest.raises(ValueError, match="encoder"):
        invert("indomain", G, x, F=nets["F"])
    with pytest.raises(ValueError, match="perceptual"):
        invert("optimize", G, x)
    with pytest.raises(ValueError):
        invert("encoder", G, x[:, :, :16, :16], E=nets["E"])


def test_bad_image_is_flagged_and_does_not_touch_the_others(nets):
    G, E, F, x = nets["G"], nets["E"], nets["F"], nets["x"][:3].clone()
    x[1, 0, 5, 5] = math.nan
    res = invert_indomain(G, E, x, F, steps=5)
    assert res.ok.tolist() == [True, False, True]
    assert res.messages[0] == res.messages[2] == "" and "NaN" in res.messages[1]
    assert math.isnan(res.losses[1]) and torch.isfinite(res.losses[[0, 2]]).all()
    assert torch.isfinite(res.ws).all() and torch.isfinite(res.images).all()
    # The good images get exactly what they get without the bad one in the batch.
    alone = invert_indomain(G, E, x[[0, 2]], F, steps=5)
    torch.testing.assert_close(res.ws[[0, 2]], alone.ws, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(res.curve[:, [0, 2]], alone.curve, atol=1e-5, rtol=1e-4)
    # The encoder path flags it too.
    assert invert_encoder(E, G, x).ok.tolist() == [True, False, True]


# ----------------------------------------------------------------------------------------------------------- F

def test_perceptual_loss_is_per_image_and_stays_in_eval_mode(nets):
    F, x = nets["F"], nets["x"]
    d = F(x, x.flip(0))
    assert d.shape == (6,) and (d > 0).all()
    assert torch.equal(F(x, x), torch.zeros(6))
    F.train()
    assert not nets["C"].training
    torch.testing.assert_close(F(x[:2], x.flip(0)[:2]), d[:2])  # Batch statistics never enter.
    with pytest.raises(UserError, match="backbone"):
        PerceptualLoss(backbone="resnet")


def test_lpips_backbone_without_weights_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # An empty hub cache: nothing to load, nothing downloaded.
    for net in ("vgg", "alex"):
        with pytest.raises(UserError, match=f"'{net}' needs the ImageNet weights"):
            PerceptualLoss(backbone=net)


@pytest.mark.filterwarnings("ignore::UserWarning")  # torchvision's deprecation notes on lpips' call.
def test_lpips_backbone_wrapper_gives_per_image_distances(monkeypatch):
    # A randomly initialised SqueezeNet trunk stands in for ImageNet weights, which cannot be fetched here.
    monkeypatch.setattr(perceptual_module, "_build_lpips",
                        lambda net: lpips.LPIPS(net="squeeze", pnet_rand=True, verbose=False))
    F = PerceptualLoss(backbone="squeeze")
    x = torch.rand(3, 1, 32, 32) * 2 - 1
    d = F(x, x.flip(0))
    assert d.shape == (3,) and torch.isfinite(d).all()
    assert F(x, x).abs().max() < 1e-6


# ----------------------------------------------------------------------------------------------------------- figures

def test_psnr_and_ssim():
    torch.manual_seed(0)
    x = torch.rand(4, 1, 32, 32)
    assert torch.isinf(psnr(x, x)).all() and (psnr(x, x) > 0).all()
    torch.testing.assert_close(ssim(x, x), torch.ones(4))
    slightly = (x + 0.02 * torch.randn_like(x)).clamp(0, 1)
    noisier = (x + 0.2 * torch.randn_like(x)).clamp(0, 1)
    assert (psnr(x, noisier) < psnr(x, slightly)).all()
    assert (ssim(x, noisier) < ssim(x, slightly)).all()
    # 0.1 everywhere: MSE 0.01 -> exactly 20 dB.
    torch.testing.assert_close(psnr(torch.zeros(1, 1, 8, 8), torch.full((1, 1, 8, 8), 0.1)), torch.tensor([20.0]))
    assert to_unit_range(torch.tensor([-2.0, 0.0, 1.0])).tolist() == [0.0, 0.5, 1.0]
    with pytest.raises(ValueError):
        psnr(x, x[:2])


# ----------------------------------------------------------------------------------------------------------- training

@requires_dataset
@pytest.mark.parametrize("kind", ["conventional", "domain_guided"])
def test_encoder_training_runs_resumes_exactly_and_registers(tiny_config, tmp_path, kind):
    cfg = tiny_config
    weights = tmp_path / "w"
    torch.manual_seed(0)
    register_model(weights, "generator", Generator(cfg.generator), command="test")
    register_model(weights, "discriminator", Discriminator(cfg.discriminator), command="test")
    register_model(weights, "classifier", Classifier(cfg.classifier).eval(), command="test")
    cpu = torch.device("cpu")
    registered = {"conventional": "encoder_conventional", "domain_guided": "encoder"}[kind]
    # Straight run.
    straight = train_encoder(cfg, weights, tmp_path / "a", cpu, kind=kind, progress=False)
    assert straight["finished"] and straight["step"] == cfg.train_encoder.steps
    assert math.isfinite(straight["loss_E"]) and (kind == "conventional" or math.isfinite(straight["loss_D"]))
    assert registered in read_manifest(weights)["models"]
    E = load_model(weights, registered)
    assert E(torch.zeros(2, 1, 32, 32)).shape == (2, E.num_ws, E.w_dim)
    assert (tmp_path / "a" / "samples" / f"step-{cfg.train_encoder.steps:07d}.png").exists()
    # Interrupted half-way, then resumed: the same networks, bit for bit.
    part = train_encoder(cfg, weights, tmp_path / "b", cpu, kind=kind, max_steps=3, progress=False)
    assert not part["finished"]
    train_encoder(cfg, weights, tmp_path / "b", cpu, kind=kind, resume=True, progress=False)
    a = load_training_state(tmp_path / "a" / "training-state.pt")
    b = load_training_state(tmp_path / "b" / "training-state.pt")
    for name in ("E", "D") if kind == "domain_guided" else ("E",):
        for key in a[name]:
            assert torch.equal(a[name][key], b[name][key]), f"{name}.{key} differs after resume"
    # A run folder of the other kind is refused rather than silently mixed.
    other = "domain_guided" if kind == "conventional" else "conventional"
    with pytest.raises(UserError, match="not a"):
        train_encoder(cfg, weights, tmp_path / "a", cpu, kind=other, resume=True, progress=False)


def test_encoder_init_from_starts_at_the_registered_encoder(tiny_config, tmp_path):
    """--init-from: a fine-tune of 0 steps registers exactly the encoder it started from, and records it."""
    cfg = tiny_config
    first, second = tmp_path / "w1", tmp_path / "w2"
    torch.manual_seed(0)
    register_model(first, "generator", Generator(cfg.generator), command="test")
    train_encoder(cfg, first, tmp_path / "a", torch.device("cpu"), kind="conventional", progress=False)
    torch.manual_seed(1)  # Another generator: the fine-tune's target.
    register_model(second, "generator", Generator(cfg.generator), command="test")
    cfg.train_encoder.steps = 0
    train_encoder(cfg, second, tmp_path / "b", torch.device("cpu"), kind="conventional", progress=False,
                  init_from=first)
    start, tuned = (load_model(w, "encoder_conventional").state_dict() for w in (first, second))
    assert all(torch.equal(start[k], tuned[k]) for k in start)
    entry = read_manifest(second)["models"]["encoder_conventional"]
    assert entry["init_from"]["sha256"] == read_manifest(first)["models"]["encoder_conventional"]["sha256"]
