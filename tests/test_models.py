"""Shapes, dtypes and semantics of the networks (tiny configs)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from semdir_edit.config import ClassifierConfig, DiscriminatorConfig, GeneratorConfig
from semdir_edit.models import Classifier, Discriminator, Generator
from semdir_edit.models.layers import ModulatedConv2d

TINY_G = GeneratorConfig(z_dim=16, w_dim=16, mapping_layers=2, channels={4: 16, 8: 16, 16: 8, 32: 8})


def tiny_g() -> Generator:
    torch.manual_seed(0)
    G = Generator(TINY_G).eval()
    with torch.no_grad():  # Non-zero noise strengths so that noise semantics are observable.
        for m in G.modules():
            if hasattr(m, "noise_strength"):
                m.noise_strength.fill_(0.5)
    return G


def test_generator_shapes_and_num_ws():
    G = tiny_g()
    z = torch.randn(3, 16)
    w = G.mapping(z)
    assert w.shape == (3, 16) and w.dtype == torch.float32
    ws = G.broadcast(w)
    assert ws.shape == (3, G.num_ws, 16) and G.num_ws == 8  # 1 + 2*3 convs + final toRGB at 32x32.
    img = G.synthesis(ws, noise_mode="const")
    assert img.shape == (3, 1, 32, 32) and img.dtype == torch.float32
    assert torch.isfinite(img).all()


def test_forward_equals_mapping_then_synthesis():
    G = tiny_g()
    z = torch.randn(2, 16)
    a = G(z, noise_mode="const")
    b = G.synthesis(G.broadcast(G.mapping(z)), noise_mode="const")
    assert torch.equal(a, b)


def test_each_wplus_layer_is_used():
    G = tiny_g()
    ws = G.broadcast(G.mapping(torch.randn(1, 16))).clone()
    base = G.synthesis(ws, noise_mode="const")
    for i in range(G.num_ws):
        changed = ws.clone()
        changed[:, i] += 3.0
        assert not torch.allclose(G.synthesis(changed, noise_mode="const"), base), f"layer {i} ignored"


def test_truncation_zero_gives_w_avg_and_one_is_identity():
    G = tiny_g()
    G.mapping.w_avg.normal_()
    z = torch.randn(4, 16)
    assert torch.allclose(G.mapping(z, truncation_psi=0.0), G.mapping.w_avg.expand(4, -1))
    w = G.mapping(z)
    assert torch.allclose(G.mapping(z, truncation_psi=0.5), G.mapping.w_avg + 0.5 * (w - G.mapping.w_avg), atol=1e-6)


def test_w_avg_tracks_running_mean():
    G = tiny_g()
    before = G.mapping.w_avg.clone()
    G.mapping(torch.randn(8, 16), update_w_avg=True)
    assert not torch.equal(before, G.mapping.w_avg)
    G.mapping(torch.randn(8, 16))
    after = G.mapping.w_avg.clone()
    G.mapping(torch.randn(8, 16))
    assert torch.equal(after, G.mapping.w_avg)  # Only updated when asked.


def test_style_mixing_takes_coarse_and_fine_layers_from_each_source():
    G = tiny_g()
    a, b = G.broadcast(torch.zeros(2, 16)), G.broadcast(torch.ones(2, 16))
    mixed = G.mix_styles(a, b, cutoff=3)
    assert torch.equal(mixed[:, :3], a[:, :3]) and torch.equal(mixed[:, 3:], b[:, 3:])


def test_noise_modes():
    G = tiny_g()
    ws = G.broadcast(G.mapping(torch.randn(2, 16)))
    c1, c2 = G.synthesis(ws, noise_mode="const"), G.synthesis(ws, noise_mode="const")
    r1, r2 = G.synthesis(ws, noise_mode="random"), G.synthesis(ws, noise_mode="random")
    assert torch.equal(c1, c2)
    assert not torch.equal(r1, r2)
    assert not torch.equal(G.synthesis(ws, noise_mode="none"), c1)


def test_modulated_conv_matches_grouped_conv_reference():
    """Modulating activations and demodulating outputs equals StyleGAN2's per-sample weights."""
    torch.manual_seed(1)
    conv = ModulatedConv2d(6, 5, 3, w_dim=7)
    x, w = torch.randn(4, 6, 8, 8), torch.randn(4, 7)
    ours = conv(x, w)
    styles = conv.affine(w)
    weight = conv.weight * conv.weight_gain                                       # (O, I, k, k)
    wgt = weight[None] * styles[:, None, :, None, None]                           # (B, O, I, k, k)
    wgt = wgt * torch.rsqrt(wgt.square().sum(dim=(2, 3, 4), keepdim=True) + 1e-8)
    ref = F.conv2d(x.reshape(1, -1, 8, 8), wgt.reshape(-1, 6, 3, 3), padding=1, groups=4).reshape(4, 5, 8, 8)
    assert torch.allclose(ours, ref, atol=1e-5)


def test_discriminator_and_classifier_shapes():
    D = Discriminator(DiscriminatorConfig(channels={32: 8, 16: 8, 8: 16, 4: 16}))
    C = Classifier(ClassifierConfig(channels=[8, 8, 16, 16])).eval()
    x = torch.randn(6, 1, 32, 32)
    assert D(x).shape == (6,)
    assert D(x[:5]).shape == (5,)  # Minibatch-stddev with a batch the group size does not divide.
    assert C(x).shape == (6, 10)
    assert C.features(x).shape == (6, 16)
    assert [m.shape[-1] for m in C.feature_maps(x)] == [32, 16, 8, 4]
    assert torch.allclose(C.fc(C.features(x)), C(x))
