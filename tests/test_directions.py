"""Direction sets: orthogonality by construction, baselines orthonormal, the predictor learns."""

from __future__ import annotations

import json

import pytest
import torch

from semdir_edit.checkpoint import load_model, register_model
from semdir_edit.config import ClassifierConfig, DeformatorConfig, GeneratorConfig
from semdir_edit.directions.baselines import pca_directions, random_directions, sefa_directions
from semdir_edit.models import Classifier, Generator
from semdir_edit.models.deformator import Deformators
from semdir_edit.training.directions import train_directions

TINY_G = GeneratorConfig(z_dim=16, w_dim=16, mapping_layers=2, channels={4: 16, 8: 16, 16: 8, 32: 8})


def max_cos(directions: torch.Tensor) -> float:
    """Largest |cos| between any global direction and any class direction."""
    g = directions[0] / directions[0].norm(dim=0)
    c = directions[1:] / directions[1:].norm(dim=1, keepdim=True)
    return float((g.T[None] @ c).abs().max().detach())


@pytest.mark.parametrize("normalization", ["unit", "orthonormal"])
def test_class_directions_orthogonal_to_global_by_construction(normalization):
    torch.manual_seed(0)
    d = Deformators(DeformatorConfig(w_dim=16, k=3, num_classes=4, normalization=normalization))
    opt = torch.optim.SGD(d.parameters(), lr=1.0)
    for _ in range(5):  # Arbitrary updates cannot break it.
        loss = -(d.all_directions()[0].T @ d.all_directions()[1]).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    dirs = d.all_directions()
    assert max_cos(dirs) <= 1e-5
    assert torch.allclose(dirs.norm(dim=1), torch.ones(5, 3), atol=1e-5)
    if normalization == "orthonormal":
        assert torch.allclose(dirs[2].T @ dirs[2], torch.eye(3), atol=1e-5)


def test_baselines_are_orthonormal():
    torch.manual_seed(0)
    G = Generator(TINY_G)
    for dirs in (pca_directions(G, 4, n=2000), sefa_directions(G, 4), random_directions(16, 4)):
        assert dirs.shape == (16, 4)
        assert torch.allclose(dirs.T @ dirs, torch.eye(4), atol=1e-5)


@pytest.fixture
def tiny_weights(tmp_path):
    torch.manual_seed(0)
    G = Generator(TINY_G)
    with torch.no_grad():  # A random mapping net's W barely varies; spread it so images differ.
        G.mapping.w_avg.zero_()
    register_model(tmp_path / "w", "generator", G, command="test")
    register_model(tmp_path / "w", "classifier", Classifier(ClassifierConfig(channels=[8, 8, 16, 16])).eval(),
                   command="test")
    return tmp_path / "w"


def test_directions_train_learn_and_register(tiny_config, tiny_weights, tmp_path):
    cfg = tiny_config
    cfg.train_directions.steps = 60
    result = train_directions(cfg, tiny_weights, tmp_path / "run", torch.device("cpu"), progress=False)
    assert result["finished"]
    stats = [json.loads(line) for line in (tmp_path / "run" / "stats.jsonl").read_text().splitlines()]
    chance = 1 / ((cfg.deformator.k) * (10 + 1))
    assert stats[-1]["accuracy"] > 3 * chance, stats[-1]
    assert stats[-1]["ce"] < stats[0]["ce"]
    d = load_model(tiny_weights, "deformators")
    assert max_cos(d.all_directions()) <= 1e-5
    assert not torch.equal(d.w_cov, torch.eye(16))  # The unit of eps was measured.


def test_class_keep_term_adds_the_classifier_loss_on_class_edits(tiny_weights):
    """loss(weight) - loss(0) = weight * CE(C(G(w + class shift)), c), on the same draws."""
    from semdir_edit.config import ShiftPredictorConfig
    from semdir_edit.models.shift_predictor import ShiftPredictor
    from semdir_edit.training.directions import DirectionLoss

    G, C = load_model(tiny_weights, "generator"), load_model(tiny_weights, "classifier")
    torch.manual_seed(0)
    deformators = Deformators(DeformatorConfig(w_dim=16, k=3, num_classes=10))
    predictor = ShiftPredictor(ShiftPredictorConfig(k=3, num_sets=11, width=8)).eval()
    losses = {}
    for weight in (0.0, 2.0):
        torch.manual_seed(1)
        losses[weight] = DirectionLoss(G, C, deformators, predictor, (0.5, 6.0), 0.25, class_keep_weight=weight)(16)
    (plain, plain_stats), (kept, kept_stats) = losses[0.0], losses[2.0]
    assert "class_keep_ce" not in plain_stats
    assert 0.0 <= kept_stats["class_kept"] <= 1.0
    assert kept.item() == pytest.approx(plain.item() + 2.0 * kept_stats["class_keep_ce"], rel=1e-5)
    kept.backward()  # The term reaches the class deformators through G (and C, both frozen).
    assert deformators.class_raw.grad is not None and deformators.class_raw.grad.abs().sum() > 0


def test_class_strength_term_is_a_hinge_on_the_class_edits_change(tiny_weights):
    """loss(weight) - loss(0) = weight * mean(relu(target - change / |eps|)) over the class-set edits; a target no
    edit reaches adds the whole shortfall, a target of 0 adds nothing."""
    from semdir_edit.config import ShiftPredictorConfig
    from semdir_edit.models.shift_predictor import ShiftPredictor
    from semdir_edit.training.directions import DirectionLoss

    G, C = load_model(tiny_weights, "generator"), load_model(tiny_weights, "classifier")
    torch.manual_seed(0)
    deformators = Deformators(DeformatorConfig(w_dim=16, k=3, num_classes=10))
    predictor = ShiftPredictor(ShiftPredictorConfig(k=3, num_sets=11, width=8)).eval()

    def loss_with(strength: tuple[float, float]):
        torch.manual_seed(1)
        return DirectionLoss(G, C, deformators, predictor, (0.5, 6.0), 0.25, class_strength=strength)(16)

    (plain, plain_stats), (zero, _) = loss_with((0.0, 0.0)), loss_with((3.0, 0.0))
    assert "class_strength" not in plain_stats
    assert zero.item() == pytest.approx(plain.item(), rel=1e-6)      # Every edit already changes more than 0.
    target = 1e3                                                        # Far above any edit's change.
    pushed, stats = loss_with((3.0, target))
    assert stats["class_strength"] > 0
    assert pushed.item() == pytest.approx(plain.item() + 3.0 * (target - stats["class_strength"]), rel=1e-5)
    deformators.zero_grad()
    pushed.backward()  # The term reaches the class deformators through G and C (both frozen).
    assert deformators.class_raw.grad is not None and deformators.class_raw.grad.abs().sum() > 0


def test_the_predictor_trains_on_the_images_as_shown(tiny_weights):
    """Both images the shift predictor sees in training are clamped to [-1, 1], as evaluate directions shows them
    (the synthesis output overshoots: here made to, by scaling it)."""
    from semdir_edit.config import ShiftPredictorConfig
    from semdir_edit.models.shift_predictor import ShiftPredictor
    from semdir_edit.training.directions import DirectionLoss

    G, C = load_model(tiny_weights, "generator"), load_model(tiny_weights, "classifier")
    synthesis = G.synthesis.forward
    G.synthesis.forward = lambda ws, **kw: 5 * synthesis(ws, **kw)  # Overshoots [-1, 1] by far.
    assert G.synthesis(G.broadcast(G.mapping(torch.randn(4, G.z_dim))), noise_mode="const").abs().max() > 1
    seen = []
    predictor = ShiftPredictor(ShiftPredictorConfig(k=3, num_sets=11, width=8))
    predictor.register_forward_pre_hook(lambda module, inputs: seen.append(inputs))
    deformators = Deformators(DeformatorConfig(w_dim=16, k=3, num_classes=10))
    DirectionLoss(G, C, deformators, predictor, (0.5, 6.0), 0.25)(8)
    (original, shifted), = seen
    assert original.abs().max() <= 1 and shifted.abs().max() <= 1
    assert original.abs().max() == 1  # Clamped, not rescaled.


def fine_tune(cfg, trained, tmp_path, **settings):
    """Train 5 steps into ``trained``, then fine-tune a copy of it (``--init-from trained``) with ``settings`` (on
    ``cfg.train_directions``); returns the copy's folder."""
    import shutil

    cfg.train_directions.steps = 5
    train_directions(cfg, trained, tmp_path / "run-a", torch.device("cpu"), progress=False)
    shutil.copytree(trained, tmp_path / "w2")
    for name, value in settings.items():
        setattr(cfg.train_directions, name, value)
    train_directions(cfg, tmp_path / "w2", tmp_path / "run-b", torch.device("cpu"), progress=False,
                     init_from=trained)
    return tmp_path / "w2"


def test_init_from_starts_at_the_registered_directions(tiny_config, tiny_weights, tmp_path):
    tuned = fine_tune(tiny_config, tiny_weights, tmp_path, steps=0)  # 0 steps: register the starting point.
    first = load_model(tiny_weights, "deformators").state_dict()
    second = load_model(tuned, "deformators").state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    manifest = json.loads((tuned / "manifest.json").read_text())
    started = json.loads((tiny_weights / "manifest.json").read_text())["models"]
    for kind in ("deformators", "shift_predictor"):  # Each records the model it started from.
        assert manifest["models"][kind]["init_from"]["sha256"] == started[kind]["sha256"]


def test_freeze_global_fine_tunes_the_class_sets_only(tiny_config, tiny_weights, tmp_path):
    folder = fine_tune(tiny_config, tiny_weights, tmp_path, freeze_global=True, class_keep_weight=1.0)
    start = load_model(tiny_weights, "deformators").all_directions()
    tuned = load_model(folder, "deformators").all_directions()
    assert torch.equal(tuned[0], start[0])            # The global set did not move...
    assert not torch.allclose(tuned[1:], start[1:])   # ...the class sets did,
    assert max_cos(tuned) <= 1e-5                     # and stayed orthogonal to it.


def test_freezing_both_sets_trains_the_predictor_only(tiny_config, tiny_weights, tmp_path):
    folder = fine_tune(tiny_config, tiny_weights, tmp_path, freeze_global=True, freeze_class=True)
    before, after = (load_model(w, "deformators").all_directions() for w in (tiny_weights, folder))
    assert torch.equal(before, after)
    p_before, p_after = (load_model(w, "shift_predictor").state_dict() for w in (tiny_weights, folder))
    assert any(not torch.equal(p_before[k], p_after[k]) for k in p_before)


def test_a_pair_predictor_goes_on_seeing_the_change_or_starts_afresh(tiny_config, tiny_weights, tmp_path):
    import shutil

    from semdir_edit.core.errors import UserError

    cfg = tiny_config
    cfg.train_directions.steps = 5
    train_directions(cfg, tiny_weights, tmp_path / "run-a", torch.device("cpu"), progress=False)  # A "pair" one.
    cfg.shift_predictor.inputs, cfg.shift_predictor.pool = "pair_change", 4   # A pair predictor on a 2 x 2 grid.
    cfg.train_directions.freeze_global = cfg.train_directions.freeze_class = True
    folders = {}
    for fresh in (False, True):
        folders[fresh] = tmp_path / f"w-{fresh}"
        shutil.copytree(tiny_weights, folders[fresh])
        cfg.train_directions.fresh_predictor = fresh
        cfg.train_directions.steps = 0 if not fresh else 5   # 0 steps: register the starting point.
        train_directions(cfg, folders[fresh], tmp_path / f"run-{fresh}", torch.device("cpu"), progress=False,
                         init_from=tiny_weights)
        before, after = (load_model(w, "deformators").all_directions() for w in (tiny_weights, folders[fresh]))
        assert torch.equal(before, after)
    stored, widened, fresh = (load_model(w, "shift_predictor").eval()
                              for w in (tiny_weights, folders[False], folders[True]))
    assert widened.cfg.inputs == fresh.cfg.inputs == "pair_change" and widened.trunk[0].in_channels == 3
    assert widened.cfg.pool == 4 and stored.cfg.pool == 2
    x, x_shifted = torch.rand(2, 4, 1, 32, 32) * 2 - 1
    with torch.no_grad():  # Grown: the stored predictor's answers at the start.
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(stored(x, x_shifted), widened(x, x_shifted),
                                                                   strict=True))
    models = json.loads((folders[True] / "manifest.json").read_text())["models"]
    assert "init_from" in models["deformators"] and "init_from" not in models["shift_predictor"]
    cfg.shift_predictor.width *= 2
    cfg.train_directions.fresh_predictor = False
    with pytest.raises(UserError, match="does not fit"):  # Another width cannot go on from the stored one.
        train_directions(cfg, folders[True], tmp_path / "run-w", torch.device("cpu"), progress=False,
                         init_from=tiny_weights)


def test_the_change_input_shows_a_small_edit_as_a_large_one():
    from semdir_edit.config import ShiftPredictorConfig
    from semdir_edit.models.shift_predictor import ShiftPredictor, unit_change

    x = torch.rand(2, 1, 32, 32) * 2 - 1
    d = torch.randn(2, 1, 32, 32)
    assert torch.allclose(unit_change(x, x + 0.01 * d), unit_change(x, x + 5 * d), atol=1e-4)
    assert torch.equal(unit_change(x, x), torch.zeros_like(x))  # No edit: no change, no division by zero.
    predictor = ShiftPredictor(ShiftPredictorConfig(k=3, num_sets=11, width=8, inputs="pair_change")).eval()
    logits, shifts = predictor(x, x)
    assert logits.shape == shifts.shape == (2, 33) and torch.isfinite(logits).all()


def test_cosine_schedule_decays_to_zero_and_resumes_bit_exact(tiny_config, tiny_weights, tmp_path):
    from semdir_edit.checkpoint import load_training_state
    from semdir_edit.core.errors import UserError

    cfg = tiny_config
    cfg.train_directions.steps, cfg.train_directions.checkpoint_every = 6, 3
    cfg.train_directions.lr_schedule = "cosine"
    train_directions(cfg, tiny_weights, tmp_path / "a", torch.device("cpu"), progress=False)
    train_directions(cfg, tiny_weights, tmp_path / "b", torch.device("cpu"), max_steps=3, progress=False)
    train_directions(cfg, tiny_weights, tmp_path / "b", torch.device("cpu"), resume=True, progress=False)
    a, b = (load_training_state(tmp_path / r / "training-state.pt") for r in "ab")
    for key in a["predictor"]:
        assert torch.equal(a["predictor"][key], b["predictor"][key]), f"predictor.{key} differs after resume"
    rates = [json.loads(line)["lr"] for line in (tmp_path / "a" / "stats.jsonl").read_text().splitlines()]
    assert rates[0] < cfg.train_directions.lr and rates[-1] == pytest.approx(0, abs=1e-12)
    assert all(x >= y for x, y in zip(rates, rates[1:], strict=False))
    cfg.train_directions.lr_schedule = "constant"   # A checkpoint of the other schedule is refused in one line.
    with pytest.raises(UserError, match="lr_schedule"):
        train_directions(cfg, tiny_weights, tmp_path / "b", torch.device("cpu"), resume=True, progress=False)
