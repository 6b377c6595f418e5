"""Directions a person can see: the change figures behave, the closed-form start is sound, to:<class> arrives."""

from __future__ import annotations

import copy

import pytest
import torch

from semdir_edit.directions.baselines import sample_by_class
from semdir_edit.editor import Editor
from semdir_edit.evaluation.directions import (
    change_map_cosines,
    effective_directions,
    outline_change,
    pixel_change,
    visible_effects,
)
from semdir_edit.ops.class_lock import class_margin, toward_class_codes
from semdir_edit.ops.visible import change_statistics, solve_directions

from .conftest import make_edit_weights


@pytest.fixture(scope="module")
def editor(tmp_path_factory):
    return Editor.from_pretrained(make_edit_weights(tmp_path_factory.mktemp("w")), device="cpu")


def _article() -> torch.Tensor:
    x = torch.zeros(2, 1, 16, 16)
    x[:, :, 4:12, 5:11] = 0.6
    return x


def test_brightness_moves_pixels_but_no_outline_and_a_shape_change_moves_both():
    before = _article()
    brighter = before * 1.5
    assert pixel_change(before, brighter).min() > 0.05
    assert outline_change(before, brighter).abs().max() == 0
    wider = before.clone()
    wider[:, :, 4:12, 2:14] = 0.6
    assert outline_change(before, wider).min() == pytest.approx(1 - 48 / 96)
    assert outline_change(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)).item() == 0


def test_equal_directions_are_not_distinct_and_unrelated_ones_are():
    a, b = torch.zeros(1, 64), torch.zeros(1, 64)
    a[0, :32], b[0, 32:] = 1.0, 1.0
    same = change_map_cosines(torch.stack([a, -a], 1))
    assert 1 - same.mean().item() == pytest.approx(0.0, abs=1e-6)
    apart = change_map_cosines(torch.stack([a, b], 1))
    assert 1 - apart.mean().item() == pytest.approx(1.0)
    nothing = change_map_cosines(torch.stack([a, torch.zeros(1, 64)], 1))
    assert len(nothing) == 0   # A map that changes nothing takes no part.


def test_effective_directions_count_different_visible_changes():
    a, b, c = torch.zeros(1, 64), torch.zeros(1, 64), torch.zeros(1, 64)
    a[0, :20], b[0, 20:40], c[0, 40:] = 1.0, 1.0, 1.0
    c = c * (20 / 24) ** 0.5                                     # As strong as a and b.
    assert effective_directions(torch.stack([a, b, c], 1)).item() == pytest.approx(3.0, abs=1e-4)
    assert effective_directions(torch.stack([a, -a, 2 * a], 1)).item() == pytest.approx(1.0, abs=1e-4)
    # Distinctness counts a faint change as unrelated to the others; the effective count barely counts it.
    faint = torch.stack([a, -a, 0.01 * b, 0.01 * c], 1)
    assert 1 - change_map_cosines(faint).mean().item() > 0.6
    assert effective_directions(faint).item() < 1.01
    assert effective_directions(torch.zeros(2, 3, 64)).tolist() == [0.0, 0.0]


def test_visible_effects_of_a_repeated_direction(editor):
    G, C = editor.G, editor.C
    samples = sample_by_class(G, C, per_class=2, seed=0)
    d = torch.randn(G.w_dim)
    d = d / d.norm()
    sets = torch.stack([d, d], 1)[None]                       # One set whose two directions are the same.
    spreads = torch.ones(1, 2)
    zeros = torch.zeros(len(samples.w), dtype=torch.long)
    fx = visible_effects(G, C, sets, spreads, samples.w, samples.labels, zeros, eps=3.0)
    assert fx["visible"] > 0
    assert fx["distinct"] == pytest.approx(0.0, abs=1e-4)
    assert fx["effective"] == pytest.approx(1.0, abs=1e-3)
    assert 0 <= fx["outline"] <= 1 and 0 <= fx["class_preserved"] <= 1
    still = visible_effects(G, C, sets, torch.zeros(1, 2), samples.w, samples.labels, zeros, eps=3.0)
    assert still["visible"] == 0 and still["outline"] == 0 and still["class_preserved"] == 1


def test_closed_form_directions_are_unit_orthogonal_and_visible(editor):
    G, C = editor.G, editor.C
    samples = sample_by_class(G, C, per_class=3, seed=1)
    w_cov = editor.model("direction_bank").w_cov
    stats = change_statistics(G, C, samples.w, samples.labels, w_cov, rank=8)
    n = C.cfg.num_classes
    assert stats.pixel.shape == (n, 8, 8) and stats.basis.shape == (G.w_dim, 8)
    assert stats.counts.sum() == len(samples.w)
    global_dirs, class_dirs = solve_directions(stats, k=2)
    assert global_dirs.shape == (G.w_dim, 2) and class_dirs.shape == (n, G.w_dim, 2)
    assert torch.allclose(global_dirs.norm(dim=0), torch.ones(2), atol=1e-5)
    assert torch.allclose(class_dirs.norm(dim=1), torch.ones(n, 2), atol=1e-5)
    assert (global_dirs.T @ class_dirs).abs().max() < 1e-4   # Class sets orthogonal to the global set.
    # The top direction changes the picture more than a random one of the same spread.
    rand = torch.linalg.qr(torch.randn(G.w_dim, 2, generator=torch.Generator().manual_seed(0)))[0]
    zeros = torch.zeros(len(samples.w), dtype=torch.long)
    ours = visible_effects(G, C, global_dirs[:, :1][None], torch.ones(1, 1), samples.w, samples.labels, zeros)
    other = visible_effects(G, C, rand[:, :1][None], torch.ones(1, 1), samples.w, samples.labels, zeros)
    assert ours["visible"] > other["visible"]
    # Functionals the global set must leave alone: every global direction is orthogonal to them.
    exclude = torch.randn(G.w_dim, 3, generator=torch.Generator().manual_seed(2))
    off, _ = solve_directions(stats, k=2, global_exclude=exclude)
    assert (exclude.T @ off).abs().max() < 1e-4


def test_to_class_walk_raises_the_target_and_stops_on_arrival(editor):
    G, C = editor.G, editor.C
    ws = G.broadcast(G.mapping(torch.randn(8, G.z_dim, generator=torch.Generator().manual_seed(3))))
    source = C(G.render(ws)).argmax(1)
    target = (source + 1) % C.cfg.num_classes
    # A probe whose only boundary is the classifier's own margin gradient for the target: the walk must climb it.
    s = torch.zeros(len(ws), G.w_dim, requires_grad=True)
    (g,) = torch.autograd.grad(class_margin(C(G.render(ws + s[:, None])), target).sum(), s)
    probe = torch.zeros(C.cfg.num_classes, G.w_dim)
    probe[target] = g.mean(0) / g.mean(0).norm()
    w_cov = editor.model("direction_bank").w_cov
    args = (w_cov, range(G.num_ws), target, probe, torch.zeros(C.cfg.num_classes))
    walked = toward_class_codes(G, C, ws, [0.0, 0.5, 1.0], *args, step=0.25)
    assert torch.equal(walked[:, 0], ws)
    margins = [class_margin(C(G.render(walked[:, i])), target) for i in range(3)]
    assert (margins[1] > margins[0]).float().mean() >= 0.75
    # A code already past the arrival margin does not move.
    done = toward_class_codes(G, C, ws, [2.0], *args, arrive_margin=-1e9)
    assert torch.equal(done[:, 0], ws)


def test_to_class_through_the_api_raises_the_targets_probability(editor):
    G, C = editor.G, editor.C
    ws = G.broadcast(G.mapping(torch.randn(4, G.z_dim, generator=torch.Generator().manual_seed(3))))
    source = int(C(G.render(ws[:1])).argmax(1))
    # The tiny random classifier calls every sample one class; the bank's boundaries still lead towards class 0.
    target = 0 if source != 0 else 1
    images = editor.apply(ws, f"to:{editor.class_names[target]}", [0.0, 3.0], class_index=source)
    probs = torch.stack([C(images[:, i]).softmax(1)[:, target] for i in range(2)], 1)
    assert (probs[:, 1] > probs[:, 0]).all()


def test_to_class_walk_heads_for_the_targets_mean_code(editor):
    G, C = editor.G, editor.C
    ws = G.broadcast(G.mapping(torch.randn(6, G.z_dim, generator=torch.Generator().manual_seed(4))))
    target = torch.zeros(len(ws), dtype=torch.long)
    bank = editor.model("direction_bank")
    centroids = torch.zeros(C.cfg.num_classes, G.w_dim)
    centroids[0] = ws[:, 0].mean(0) + 5 * torch.randn(G.w_dim, generator=torch.Generator().manual_seed(5))
    args = (bank.w_cov, range(G.num_ws), target, bank.boundary_weight, bank.boundary_bias)
    # The walk never arrives (arrival margin unreachable), so it takes every step; half of each heads for the mean.
    kw = dict(step=0.5, arrive_margin=1e9, centroids=centroids)
    plain = toward_class_codes(G, C, ws, [2.0], *args, **kw, centroid_share=0.0)[:, 0, 0]
    mixed = toward_class_codes(G, C, ws, [2.0], *args, **kw)[:, 0, 0]
    assert ((mixed - centroids[0]).norm(dim=1) < (plain - centroids[0]).norm(dim=1)).all()
    # A class never drawn (zero mean code) falls back to the margin alone.
    unseen = toward_class_codes(G, C, ws, [2.0], *args, **{**kw, "centroids": torch.zeros_like(centroids)})[:, 0]
    assert torch.allclose(unseen[:, 0], plain)


def test_to_class_walk_away_stops_once_plainly_not_the_target(editor):
    G, C = editor.G, editor.C
    ws = G.broadcast(G.mapping(torch.randn(6, G.z_dim, generator=torch.Generator().manual_seed(6))))
    target = torch.zeros(len(ws), dtype=torch.long)
    bank = editor.model("direction_bank")
    args = (bank.w_cov, range(G.num_ws), target, bank.boundary_weight, bank.boundary_bias)
    # Already "plainly not the target" for any margin below +1e9: nothing moves away.
    still = toward_class_codes(G, C, ws, [-2.0], *args, step=0.5, arrive_margin=-1e9)[:, 0]
    assert torch.equal(still, ws)
    moved = toward_class_codes(G, C, ws, [-2.0], *args, step=0.5, arrive_margin=1e9)[:, 0]
    assert not torch.equal(moved, ws)


def _squares(n: int, left: bool, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.full((n, 1, 32, 32), -1.0) + 0.05 * torch.randn(n, 1, 32, 32, generator=gen)
    shift = (torch.rand(n, generator=gen) * 4).long()
    for i in range(n):
        c = (4 if left else 18) + int(shift[i])
        x[i, :, 8:24, c:c + 10] = 0.8
    return x.clamp(-1, 1)


def test_class_typicality_tells_articles_from_broken_images():
    from semdir_edit.config import ClassifierConfig
    from semdir_edit.evaluation.metrics import ClassTypicality
    from semdir_edit.models import Classifier

    torch.manual_seed(0)
    C = Classifier(ClassifierConfig(channels=[8, 8, 16, 16], num_classes=2)).eval()
    fit_x = torch.cat([_squares(200, True, 0), _squares(200, False, 1)])
    fit_y = torch.cat([torch.zeros(200, dtype=torch.long), torch.ones(200, dtype=torch.long)])
    held_x = torch.cat([_squares(100, True, 2), _squares(100, False, 3)])
    held_y = torch.cat([torch.zeros(100, dtype=torch.long), torch.ones(100, dtype=torch.long)])
    judge = ClassTypicality.fit(C, fit_x, fit_y, held_x, held_y, quantile=0.95)
    fresh = _squares(100, True, 4)
    zeros = torch.zeros(100, dtype=torch.long)
    assert judge(C, fresh, zeros).float().mean() > 0.85           # New articles of the class: typical ...
    assert judge(C, fresh, zeros + 1).float().mean() < 0.2        # ... and not of the other class.
    broken = fresh.clone()
    broken[:, :, 12:20, 6:12] = -1.0                               # A dark hole in the article ...
    broken[:, :, 2:6, :] = 1.0                                     # ... and a bright bar across the top.
    assert judge(C, broken, zeros).float().mean() < 0.2
    judge.limits = torch.full((2,), float("inf"))
    assert judge(C, broken, zeros).all()


def test_visible_effects_report_typicality_when_judged(editor):
    from semdir_edit.evaluation.metrics import ClassTypicality

    G, C = editor.G, editor.C
    samples = sample_by_class(G, C, per_class=2, seed=0)
    images = G.render(G.broadcast(samples.w))
    judge = ClassTypicality.fit(C, images, samples.labels, images, samples.labels)
    sets, zeros = torch.eye(G.w_dim)[:, :2][None], torch.zeros(len(samples.w), dtype=torch.long)
    judge.limits = torch.full_like(judge.limits, float("inf"))
    assert visible_effects(G, C, sets, torch.ones(1, 2), samples.w, samples.labels, zeros,
                           typicality=judge)["typical"] == 1.0
    judge.limits = torch.full_like(judge.limits, -1.0)
    assert visible_effects(G, C, sets, torch.ones(1, 2), samples.w, samples.labels, zeros,
                           typicality=judge)["typical"] == 0.0
    assert "typical" not in visible_effects(G, C, sets, torch.ones(1, 2), samples.w, samples.labels, zeros)


def test_visible_effects_ask_the_judge_whether_the_class_was_kept(editor):
    G, C = editor.G, editor.C
    samples = sample_by_class(G, C, per_class=2, seed=0)
    sets, zeros = torch.eye(G.w_dim)[:, :2][None], torch.zeros(len(samples.w), dtype=torch.long)
    # The lock holds C's label, so C as its own judge agrees with every locked edit.
    locked = visible_effects(G, C, sets, torch.ones(1, 2), samples.w, samples.labels, zeros, class_lock=True,
                             judge=C)
    assert locked["judged"] == locked["class_preserved"] == 1.0
    # A judge that names class 0 whatever it sees agrees exactly on the samples of class 0.
    stubborn = copy.deepcopy(C)
    with torch.no_grad():
        stubborn.fc.weight.zero_()
        stubborn.fc.bias.copy_(torch.arange(C.cfg.num_classes, 0, -1).float())
    judged = visible_effects(G, C, sets, torch.ones(1, 2), samples.w, samples.labels, zeros, judge=stubborn)
    assert judged["judged"] == pytest.approx((samples.labels == 0).float().mean().item())
