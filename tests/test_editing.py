"""Direction specs, eps and layer ranges (property-based), shifting codes, Editor.apply and `semdir-edit apply`."""

from __future__ import annotations

import cv2
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from semdir_edit.core.errors import UserError
from semdir_edit.editor import Editor
from semdir_edit.latents import save_latent
from semdir_edit.ops.shift_codes import (
    DirectionSpec,
    match_class,
    parse_direction,
    parse_eps,
    parse_layers,
    shift_codes,
)

from .conftest import make_edit_weights
from .test_cli import run_cli

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
names = st.sampled_from(CLASSES)


@given(kind=st.sampled_from(["global", "class", "pca", "sefa", "random"]), k=st.integers(0, 10_000),
       cls=st.none() | names)
def test_direction_spec_round_trip(kind, k, cls):
    spec = DirectionSpec(kind, k, cls if kind == "class" else None)
    assert parse_direction(str(spec)) == spec


@given(name=names)
def test_to_spec_and_class_match(name):
    assert parse_direction(f"to:{name}") == DirectionSpec("to", None, name)
    assert CLASSES[match_class(name.upper(), CLASSES)] == name


@settings(max_examples=200)
@given(text=st.text(max_size=30))
def test_any_direction_text_parses_or_is_a_user_error(text):
    try:
        spec = parse_direction(text)
    except UserError:
        return
    assert spec.kind in ("global", "class", "pca", "sefa", "random", "to")


@settings(max_examples=200)
@given(text=st.text(max_size=20))
def test_any_eps_text_parses_or_is_a_user_error(text):
    try:
        values = parse_eps(text)
    except UserError:
        return
    assert 1 <= len(values) <= 101 and all(v == v for v in values)


@given(start=st.floats(-10, 10), stop=st.floats(-10, 10), count=st.integers(2, 101))
def test_eps_range(start, stop, count):
    values = parse_eps(f"{start}:{stop}:{count}")
    assert len(values) == count
    assert values[0] == pytest.approx(start) and values[-1] == pytest.approx(stop)


def test_symmetric_strip_has_zero_in_the_middle_and_bad_ranges_fail():
    assert parse_eps("-3:3:13")[6] == 0.0
    for bad in ("1:2", "1:2:1", "1:2:2.5", "0:1:1000", "nan", "x"):
        with pytest.raises(UserError):
            parse_eps(bad)


def test_layers():
    assert parse_layers(None, 8) == range(8)
    assert parse_layers("2-5", 8) == range(2, 6)
    assert parse_layers("7", 8) == range(7, 8)
    for bad in ("5-2", "0-8", "a", "-1"):
        with pytest.raises(UserError):
            parse_layers(bad, 8)


def test_shift_codes_touches_only_chosen_layers():
    ws = torch.randn(2, 8, 16)
    d = torch.zeros(16)
    d[3] = 1.0
    out = shift_codes(ws, d, [-1.0, 0.0, 2.0], spread=0.5, layers=range(2, 4))
    assert out.shape == (2, 3, 8, 16)
    assert torch.equal(out[:, 1], ws)
    assert torch.allclose(out[:, 2, 2:4, 3], ws[:, 2:4, 3] + 1.0)
    assert torch.equal(out[:, 2, 4:], ws[:, 4:]) and torch.equal(out[:, 2, :2], ws[:, :2])


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return make_edit_weights(tmp_path_factory.mktemp("w"))


def test_editor_apply(weights):
    ed = Editor.from_pretrained(weights, device="cpu")
    ws = ed.G.broadcast(ed.G.mapping(torch.randn(2, 16)))
    images = ed.apply(ws, "pca:0", [-2.0, 0.0, 2.0], class_index=0)
    assert images.shape == (2, 3, 1, 32, 32)
    assert torch.allclose(images[:, 1], ed.G.synthesis(ws, noise_mode="const").clamp(-1, 1), atol=1e-5)
    assert not torch.allclose(images[:, 0], images[:, 2])
    bank = ed.model("direction_bank")
    bank.boundary_weight.zero_()
    with pytest.raises(UserError, match="no boundary"):
        ed.direction("to:Coat", class_index=0)
    bank.boundary_weight[4, 5] = 2.0  # Coat's logit grows along w[5].
    v, spread = ed.direction("to:Coat", class_index=0)
    assert v[5] == pytest.approx(1.0) and spread == pytest.approx(bank.w_cov[5, 5].sqrt().item(), rel=1e-4)
    with pytest.raises(UserError, match="out of range"):
        ed.apply(ws, "sefa:3", 1.0, class_index=0)
    with pytest.raises(UserError, match="unknown class"):
        ed.apply(ws, "to:Hat", 1.0, class_index=0)


def test_apply_cli_writes_strip(weights, tmp_path):
    ed = Editor.from_pretrained(weights, device="cpu")
    ws = ed.G.broadcast(ed.G.mapping(torch.randn(1, 16)))[0]
    latent = tmp_path / "a.latent.safetensors"
    save_latent(latent, ws, {"weights_id": ed.weights_id, "class_index": 1})
    out = tmp_path / "strip.png"
    result = run_cli("apply", str(latent), "-d", "random:1", "--eps", "-3:3:7", "-w", str(weights), "-o", str(out),
                     "--scale", "1", "--no-labels")
    assert result.returncode == 0, result.stderr
    raw = cv2.imread(str(out), cv2.IMREAD_GRAYSCALE)
    assert raw.shape == (36, 7 * 34 + 2)
    # Labelled (the default): a header naming each eps and a left band naming the direction, tiles unchanged.
    result = run_cli("apply", str(latent), "-d", "random:1", "--eps", "-3:3:7", "-w", str(weights), "-o", str(out),
                     "--scale", "1")
    assert result.returncode == 0, result.stderr
    labelled = cv2.imread(str(out), cv2.IMREAD_GRAYSCALE)
    top, left = labelled.shape[0] - raw.shape[0], labelled.shape[1] - raw.shape[1]
    assert top > 0 and left > 0
    assert (labelled[top:, left:] == raw).all()
    assert labelled[:top].max() > 200 and labelled[top:, :left].max() > 200     # Text was drawn in both bands.
    result = run_cli("apply", str(latent), "-d", "bogus:1", "-w", str(weights), "-o", str(out))
    assert result.returncode == 2 and "invalid --direction" in result.stderr and "Traceback" not in result.stderr


def test_editor_apply_shifts_sums_locks_and_serialises(weights, tmp_path):
    """apply_shifts: one shift = apply (linear and class-locked), several = their sum, an explicit class picks the
    class set and the lock; shift_strip = apply's strip; latent_bytes = what save_latent writes."""
    from semdir_edit.latents import latent_bytes, load_latent

    ed = Editor.from_pretrained(weights, device="cpu")
    ws = ed.sample_code(None, 3)
    c = int(ed.classify(ed.G.render(ws[None]))[0][0])
    none = ed.apply_shifts(ws, {})
    assert torch.allclose(none.image, ed.G.render(ws[None]), atol=1e-6) and none.class_index == c
    for keep in (False, True):
        one = ed.apply_shifts(ws, [("pca:0", 2.5)], c, keep_class=keep)
        assert torch.allclose(one.image[0], ed.apply(ws, "pca:0", 2.5, class_index=c, keep_class=keep)[0, 0],
                              atol=1e-5)
        assert one.class_name == ed.class_names[one.class_index] and 0 < one.confidence <= 1
    both = ed.shifted_code(ws, {"pca:0": 1.0, "pca:1": -2.0}, c)
    expected = ws.clone()
    for spec, eps in (("pca:0", 1.0), ("pca:1", -2.0)):
        vector, spread = ed.direction(spec)
        expected = expected + eps * spread * vector
    assert torch.allclose(both, expected, atol=1e-5)
    # An explicit class (by name) is the class the lock keeps: as apply with that class.
    other = (c + 1) % len(ed.class_names)
    locked = ed.apply_shifts(ws, {"pca:0": -2.0}, c, class_name=ed.class_names[other], keep_class=True)
    assert torch.allclose(locked.image[0], ed.apply(ws, "pca:0", -2.0, class_index=other, keep_class=True)[0, 0],
                          atol=1e-5)
    strip = ed.shift_strip(ws, {"pca:1": 1.0, "pca:0": 3.0}, "pca:0", [-1.0, 0.0, 1.0], c)
    base = ed.shifted_code(ws, {"pca:1": 1.0}, c)
    assert torch.allclose(strip, ed.apply(base, "pca:0", [-1.0, 0.0, 1.0], class_index=c)[0], atol=1e-5)
    for bad, match in (({"pca:0": 11.0}, "out of range"), ({"pca:0": float("nan")}, "out of range"),
                       ({"bogus:0": 1.0}, "invalid --direction"), ({f"pca:{i}": 1.0 for i in range(65)}, "too many")):
        with pytest.raises(UserError, match=match):
            ed.apply_shifts(ws, bad, c)
    with pytest.raises(UserError, match="unknown class"):
        ed.apply_shifts(ws, {"pca:0": 1.0}, c, class_name="Hat")
    meta = {"weights_id": ed.weights_id, "class_index": c, "source": "x"}
    save_latent(tmp_path / "a.latent.safetensors", ws, meta)
    (tmp_path / "b.latent.safetensors").write_bytes(ed.latent_bytes(ws, {"class_index": c, "source": "x"}))
    # safetensors orders the metadata as it likes (a hash map), so the files are compared read back.
    files = [load_latent(tmp_path / f"{n}.latent.safetensors", ed.weights_id) for n in "ab"]
    assert torch.equal(files[0][0], ws) and torch.equal(files[1][0], ws) and files[0][1] == files[1][1]
    assert files[0][1]["class_index"] == c and files[0][1]["source"] == "x"
    assert len(latent_bytes(ws, meta)) == (tmp_path / "a.latent.safetensors").stat().st_size
