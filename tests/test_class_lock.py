"""Class-locked edits: the projected step never lowers the margin, walks compose, and apply/batch/CLI wire it up.
Also: the classifier judges generated images as shown (clamped)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from semdir_edit.core.errors import UserError
from semdir_edit.directions.baselines import sample_by_class
from semdir_edit.editing.batch import resolve_options
from semdir_edit.editor import Editor
from semdir_edit.latents import save_latent
from semdir_edit.ops.class_lock import FREE_MARGIN, _locked_step, class_margin, locked_shift_codes
from semdir_edit.ops.shift_codes import edit_groups, parse_direction, parse_keep

from .conftest import make_edit_weights
from .test_cli import run_cli


@pytest.fixture(scope="module")
def editor(tmp_path_factory):
    return Editor.from_pretrained(make_edit_weights(tmp_path_factory.mktemp("w")), device="cpu")


def _codes(ed: Editor, n: int, seed: int = 0) -> torch.Tensor:
    return ed.G.broadcast(ed.G.mapping(torch.randn(n, ed.G.z_dim, generator=torch.Generator().manual_seed(seed))))


def _margin_grad(ed: Editor, ws: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    s = torch.zeros(ws.shape[0], ws.shape[2], requires_grad=True)
    (g,) = torch.autograd.grad(class_margin(ed.C(ed.G.render(ws + s[:, None])), target).sum(), s)
    return g


def test_margin_is_positive_exactly_for_the_winning_class():
    logits = torch.tensor([[2.0, 1.0, -1.0], [0.0, 3.0, 0.5]])
    assert (class_margin(logits, torch.tensor([0, 1])) > 0).all()
    assert (class_margin(logits, torch.tensor([1, 2])) < 0).all()


def test_locked_step_removes_only_the_margin_lowering_part(editor):
    ws = _codes(editor, 6).detach()
    target = editor.C(editor.G.render(ws)).argmax(1)
    mask = torch.ones(ws.shape[1], 1)
    g = _margin_grad(editor, ws, target)
    # Down the margin's gradient: the lock leaves nothing along it. Up the gradient: the step is untouched.
    for step, lowers in ((-g, True), (g, False)):
        out, _, _ = _locked_step(editor.G, editor.C, ws, mask, torch.zeros(6, ws.shape[2]), step, target, None)
        along = (out * g).sum(1)
        if lowers:
            assert along.abs().max() < 1e-4 * g.square().sum(1).max()
        else:
            assert torch.allclose(out, step)
    # A random step never points down the gradient, and keeps its length (redirected, not shortened).
    step = torch.randn(6, ws.shape[2])
    out, margin, _ = _locked_step(editor.G, editor.C, ws, mask, torch.zeros(6, ws.shape[2]), step, target, None)
    assert ((out * g).sum(1) >= -1e-5).all()
    assert torch.allclose(out.norm(dim=1), step.norm(dim=1), rtol=1e-4)
    # Below the floor, a zero step becomes the move back up to it.
    back, _, _ = _locked_step(editor.G, editor.C, ws, mask, torch.zeros(6, ws.shape[2]), torch.zeros(6, ws.shape[2]),
                           target, margin + 1.0)
    assert ((back * g).sum(1) > 0).all()
    # Well above the floor the lock leaves even a step down the gradient as planned; at the floor, it redirects.
    free, _, _ = _locked_step(editor.G, editor.C, ws, mask, torch.zeros(6, ws.shape[2]), -g, target, margin - 1.0)
    assert torch.allclose(free, -g)
    held, _, _ = _locked_step(editor.G, editor.C, ws, mask, torch.zeros(6, ws.shape[2]), -g, target,
                              margin - FREE_MARGIN + 0.01)
    assert ((held * g).sum(1) >= -1e-4 * g.square().sum(1).max()).all()


def test_locked_walk_keeps_margin_better_than_linear_and_composes(editor):
    ws = _codes(editor, 16, seed=1).detach()
    target = editor.C(editor.G.render(ws)).argmax(1)
    g = _margin_grad(editor, ws, target)
    d = -g.mean(0) / g.mean(0).norm()  # Lowers the margin of most codes: the lock has work to do.
    eps = [1.0, 2.0, 0.0, -1.0]
    locked = locked_shift_codes(editor.G, editor.C, ws, d, eps, 0.5, range(ws.shape[1]), target)
    assert locked.shape == (16, 4, *ws.shape[1:])
    assert torch.equal(locked[:, 2], ws)
    with torch.no_grad():
        m_locked = class_margin(editor.C(editor.G.render(locked[:, 1])), target)
        m_linear = class_margin(editor.C(editor.G.render(ws + 2.0 * 0.5 * d)), target)
    assert m_locked.mean() > m_linear.mean()
    # Walking to 2 directly takes the same steps as walking to 1 and on to 2.
    direct = locked_shift_codes(editor.G, editor.C, ws, d, [2.0], 0.5, range(ws.shape[1]), target)
    assert torch.allclose(direct[:, 0], locked[:, 1], atol=1e-5)
    # Only the chosen layers move.
    partial = locked_shift_codes(editor.G, editor.C, ws, d, [1.0], 0.5, range(1, 3), target)
    assert torch.equal(partial[:, 0, 3:], ws[:, 3:]) and not torch.equal(partial[:, 0, 1:3], ws[:, 1:3])


def test_keep_option_parsing_and_defaults(editor):
    assert parse_keep(None) == (False, None)
    assert parse_keep("class") == (False, True) and parse_keep("none") == (False, False)
    assert parse_keep("Global") == (True, None)
    with pytest.raises(UserError, match="--keep takes"):
        parse_keep("everything")
    # Class-locked edits depend on each image's class: one group per class, like class directions.
    assert edit_groups([0, 1, 0], parse_direction("pca:0")) == [(0, [0, 1, 2])]
    assert edit_groups([0, 1, 0], parse_direction("pca:0"), keep_class=True) == [(0, [0, 2]), (1, [1])]
    ws = _codes(editor, 2).detach()
    plain = editor.apply(ws, "pca:0", [3.0], class_index=0)
    assert torch.equal(plain, editor.apply(ws, "pca:0", [3.0], class_index=0, keep_class=False))
    assert not torch.allclose(plain, editor.apply(ws, "pca:0", [3.0], class_index=0, keep_class=True))
    with pytest.raises(UserError, match="changes the class"):
        editor.apply(ws, "to:Coat", [1.0], class_index=0, keep_class=True)
    # The batch options hash: unchanged for unlocked edits, different when locked.
    plain_opts = resolve_options(editor, "pca:0", "2", "optimize", 0, None)
    assert "keep_class" not in plain_opts.figures()
    assert resolve_options(editor, "pca:0", "2", "optimize", 0, None, keep_class=True).key() != plain_opts.key()


def test_apply_cli_keep_class(editor, tmp_path):
    ws = _codes(editor, 1)[0].detach()
    latent = tmp_path / "a.latent.safetensors"
    save_latent(latent, ws, {"weights_id": editor.weights_id, "class_index": 1})
    weights = str(editor.weights_dir)
    result = run_cli("apply", str(latent), "-d", "pca:0", "--eps", "-2:2:3", "--keep", "class", "-w", weights,
                     "-o", str(tmp_path / "s.png"))
    assert result.returncode == 0, result.stderr
    result = run_cli("apply", str(latent), "-d", "to:Coat", "--keep", "class", "-w", weights, "-o",
                     str(tmp_path / "t.png"))
    assert result.returncode == 2 and "changes the class" in result.stderr and "Traceback" not in result.stderr


def test_classifier_judges_clamped_images(editor):
    ws = _codes(editor, 8).detach()
    raw = editor.G.synthesis(ws, noise_mode="const")
    assert torch.equal(editor.G.render(ws), raw.clamp(-1, 1))
    samples = sample_by_class(editor.G, editor.C, per_class=2, seed=0)
    with torch.no_grad():
        assert torch.equal(editor.C(editor.G.render(editor.G.broadcast(samples.w))).argmax(1), samples.labels)


def test_direction_grid_can_lock(editor):
    ws = _codes(editor, 1)[0].detach()
    plain = editor.direction_grid(ws, "pca", [-3.0, 0.0, 3.0])
    locked = editor.direction_grid(ws, "pca", [-3.0, 0.0, 3.0], keep_class=True, image_class=0)
    assert plain.shape == locked.shape == (3, 3, 1, 32, 32)
    assert torch.equal(plain[:, 1], locked[:, 1]) and not torch.allclose(plain, locked)


def test_apply_without_class_edits_each_code_as_its_own_class(editor, monkeypatch):
    ws = _codes(editor, 12, seed=3).detach()
    classes = torch.tensor([0, 1, 2] * 4)  # The tiny random classifier calls everything one class: say otherwise.
    real = editor.classify
    monkeypatch.setattr(editor, "classify", lambda images: (classes[:len(images)], torch.ones(len(images))))
    together = editor.apply(ws, "pca:0", [2.0], keep_class=True)
    monkeypatch.setattr(editor, "classify", real)
    for c in range(3):
        members = (classes == c).nonzero()[:, 0]
        alone = editor.apply(ws[members], "pca:0", [2.0], class_index=c, keep_class=True)
        assert torch.allclose(together[members], alone, atol=1e-5)
    # A plain edit does not depend on the class: one group, the same images whatever the labels.
    assert torch.allclose(editor.apply(ws, "pca:0", [2.0]), editor.apply(ws, "pca:0", [2.0], class_index=0))


def test_a_walk_resumed_from_its_trail_is_the_fresh_walk_with_fewer_passes(editor, monkeypatch):
    """The slider's cache: every walk resumed from a WalkTrail returns what a fresh walk returns, whatever came
    before (further, back, the other sign, several eps at once), and a move next to the last one costs few passes."""
    import semdir_edit.ops.class_lock as class_lock

    ws = _codes(editor, 4, seed=2).detach()
    target = editor.C(editor.G.render(ws)).argmax(1)
    g = _margin_grad(editor, ws, target)
    down = -g.mean(0) / g.mean(0).norm()   # Lowers the margin: the lock redirects, refuses long steps, corrects.
    # The tiny classifier's margins are small: without headroom the steps would never grow. -down raises the
    # margin, so its steps grow (up to 4 base steps) and some longer ones are refused.
    monkeypatch.setattr(class_lock, "HEADROOM", -100.0)
    passes = []
    real_probe = class_lock._probe
    monkeypatch.setattr(class_lock, "_probe", lambda *a: passes.append(1) or real_probe(*a))
    for i, d in [(i, d) for i in range(len(ws)) for d in (down, -down)]:
        one, t = ws[i:i + 1], target[i:i + 1]
        trail = class_lock.WalkTrail()
        for eps in ([1.0], [2.5], [2.0], [3.0], [-1.5], [0.75], [3.0], [2.75], [0.5, 2.0, -1.0], [4.0]):
            fresh = locked_shift_codes(editor.G, editor.C, one, d, eps, 0.5, range(ws.shape[1]), t)
            del passes[:]
            resumed = locked_shift_codes(editor.G, editor.C, one, d, eps, 0.5, range(ws.shape[1]), t, trail=trail)
            assert torch.allclose(resumed, fresh, atol=1e-6), (i, eps)
        # Back to an eps walked before, and one step further: at most a pass or two each, not the whole walk.
        for eps, most in (([3.0], 3), ([3.25], 4)):
            del passes[:]
            locked_shift_codes(editor.G, editor.C, one, d, eps, 0.5, range(ws.shape[1]), t, trail=trail)
            assert len(passes) <= most, (eps, len(passes))
    with pytest.raises(ValueError, match="one code"):
        locked_shift_codes(editor.G, editor.C, ws, down, [1.0], 0.5, range(ws.shape[1]), target,
                           trail=class_lock.WalkTrail())


def test_apply_cli_edits_several_latent_files_as_one_each(editor, tmp_path):
    """`apply A B C -o DIR`: one PNG per latent file, the same picture `apply A -o a.png` writes; bad uses refused."""
    weights = str(editor.weights_dir)
    latents = []
    for i in range(3):
        latents.append(tmp_path / "lat" / f"im{i}.latent.safetensors")
        latents[-1].parent.mkdir(exist_ok=True)
        save_latent(latents[-1], _codes(editor, 1, seed=10 + i)[0].detach(),
                    {"weights_id": editor.weights_id, "class_index": i})
    common = ["-d", "pca:1", "--keep", "class", "--eps", "-2:2:3", "-w", weights, "--device", "cpu"]
    result = run_cli("apply", *map(str, latents), *common, "-o", str(tmp_path / "many"))
    assert result.returncode == 0, result.stderr
    assert "wrote 3 PNGs" in result.stdout
    for i, latent in enumerate(latents[:2]):
        one = tmp_path / f"one{i}.png"
        assert run_cli("apply", str(latent), *common, "-o", str(one)).returncode == 0
        many = cv2.imread(str(tmp_path / "many" / f"im{i}.png"), cv2.IMREAD_GRAYSCALE)
        assert many is not None and np.abs(many.astype(int) - cv2.imread(str(one), 0).astype(int)).max() <= 1
    image = tmp_path / "photo.png"
    cv2.imwrite(str(image), np.zeros((28, 28), np.uint8))
    for args, message in (([str(latents[0]), str(image)], "use `semdir-edit batch`"),
                          ([*map(str, latents[:2]), "-o", str(tmp_path / "x.png")], "names a folder"),
                          ([str(latents[0]), str(tmp_path / "other" / latents[0].name)], "would both write")):
        result = run_cli("apply", *args, *common)
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_an_ensemble_averages_its_members_log_probabilities():
    from semdir_edit.config import ClassifierConfig
    from semdir_edit.models import Classifier, ClassifierEnsemble

    torch.manual_seed(1)
    a, b = (Classifier(ClassifierConfig(channels=[8, 8, 16, 16])).eval() for _ in range(2))
    x = torch.rand(4, 1, 32, 32) * 2 - 1
    pair = ClassifierEnsemble([a, b])
    expected = (a(x).log_softmax(1) + b(x).log_softmax(1)) / 2
    assert torch.allclose(pair(x), expected, atol=1e-6)
    assert pair.cfg.num_classes == a.cfg.num_classes


def test_the_lock_holds_both_classifiers_when_the_weights_have_a_second(tmp_path):
    from semdir_edit.checkpoint import register_model
    from semdir_edit.config import ClassifierConfig
    from semdir_edit.models import Classifier, ClassifierEnsemble

    weights = make_edit_weights(tmp_path)
    alone = Editor.from_pretrained(weights, device="cpu")
    assert alone.lock_classifier is alone.C
    torch.manual_seed(7)
    register_model(weights, "classifier_lock", Classifier(ClassifierConfig(channels=[8, 8, 16, 16])).eval(),
                   command="test")
    ed = Editor.from_pretrained(weights, device="cpu")
    lock = ed.lock_classifier
    assert isinstance(lock, ClassifierEnsemble) and len(lock.members) == 2
    ws = _codes(ed, 6, seed=3)
    target = lock(ed.G.render(ws)).argmax(1)
    direction = torch.nn.functional.normalize(torch.randn(ed.G.w_dim, generator=torch.Generator().manual_seed(4)),
                                              dim=0)
    walked = locked_shift_codes(ed.G, lock, ws, direction, [4.0, -4.0], 2.0, range(ed.G.num_ws), target)
    for j in range(2):   # The pair's label is kept: the walk held the pair, not C alone.
        assert torch.equal(lock(ed.G.render(walked[:, j])).argmax(1), target)
    # apply's class-locked edit walks the same way (codes of one class, as apply groups them).
    one = target == target[0]
    vector, spread = ed.direction("pca:0", int(target[0]))
    images = ed.apply(ws[one], "pca:0", [2.0], class_index=int(target[0]), keep_class=True)
    expected = locked_shift_codes(ed.G, lock, ws[one], vector, [2.0], spread, range(ed.G.num_ws), target[one])
    assert torch.allclose(images[:, 0], ed.G.render(expected[:, 0]), atol=1e-5)


def test_a_locked_slider_step_shows_its_last_pass_without_rendering_again(tmp_path, monkeypatch):
    """apply_shifts with the lock: the image and label are those of the edited code (as rendered and classified
    afresh, by the shared classifier even when the lock holds two), but the walk's last pass is not run again."""
    from semdir_edit.checkpoint import register_model
    from semdir_edit.config import ClassifierConfig
    from semdir_edit.models import Classifier

    weights = make_edit_weights(tmp_path)
    torch.manual_seed(7)
    register_model(weights, "classifier_lock", Classifier(ClassifierConfig(channels=[8, 8, 16, 16])).eval(),
                   command="test")
    ed = Editor.from_pretrained(weights, device="cpu")
    import semdir_edit.ops.class_lock as class_lock

    renders, passes = [], []
    real_render, real_probe = ed.G.render, class_lock._probe
    monkeypatch.setattr(ed.G, "render", lambda ws: renders.append(len(ws)) or real_render(ws))
    monkeypatch.setattr(class_lock, "_probe", lambda *a: passes.append(1) or real_probe(*a))
    ws = _codes(ed, 1, seed=5)[0].detach()
    label = ed.apply_shifts(ws, {}).class_index
    reused = 0
    for eps in (0.5, 1.0, 1.5, -0.5, -2.0, 1.0):
        del renders[:], passes[:]
        shown = ed.apply_shifts(ws, {"pca:0": eps}, label, keep_class=True)
        walked, probed = len(renders), len(passes)
        code = ed.shifted_code(ws, {"pca:0": eps}, label, keep_class=True)
        image = real_render(code[None])
        index, confidence = ed.classify(image)
        assert torch.allclose(shown.image, image, atol=1e-6), eps
        assert shown.class_index == int(index[0]) and shown.confidence == pytest.approx(float(confidence[0]))
        if probed and torch.equal(ed._last_pass.code, code[None]):
            assert walked == probed, eps   # Only the walk's passes rendered.
            reused += 1
    assert reused >= 3   # Most steps end on their walk's last pass (a corrected or bisected end may not).
