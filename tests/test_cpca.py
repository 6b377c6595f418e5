"""Per-class PCA directions (``cpca:k``, ``cpca:k@<class>``): specs, Editor resolution, `directions show`, the UI."""

from __future__ import annotations

import cv2
import pytest
import torch

from semdir_edit.core.errors import UserError
from semdir_edit.editor import Editor
from semdir_edit.latents import save_latent
from semdir_edit.ops.shift_codes import DirectionSpec, edit_groups, parse_direction

from .conftest import make_edit_weights
from .test_cli import assert_user_error, run_cli


@pytest.mark.parametrize("text", ["cpca:0", "cpca:2@Sneaker", "cpca:7@T-shirt/top", "class:1@Coat"])
def test_cpca_spec_round_trip(text):
    assert str(parse_direction(text)) == text
    assert parse_direction(f" {text} ") == parse_direction(text)


def test_cpca_spec_fields_and_needs_class():
    assert parse_direction("cpca:2@Sneaker") == DirectionSpec("cpca", 2, "Sneaker")
    assert parse_direction("cpca:2") == DirectionSpec("cpca", 2, None)
    assert parse_direction("cpca:2").needs_class and parse_direction("class:2").needs_class
    assert not parse_direction("cpca:2@Sneaker").needs_class and not parse_direction("pca:2").needs_class


@pytest.mark.parametrize("text", ["cpca:x", "cpca:-1", "cpca:", "cpca:1.5", "pca:0@Sneaker", "sefa:1@Coat",
                                  "cpca:0@ ", "cpcb:0"])
def test_invalid_cpca_specs_are_user_errors(text):
    with pytest.raises(UserError):
        parse_direction(text)


def test_invalid_kind_message_lists_cpca_and_voynov():
    with pytest.raises(UserError, match=r"voynov:K.*cpca:K, cpca:K@<class>"):
        parse_direction("bogus:0")
    with pytest.raises(UserError, match="only class and cpca directions take @<class>"):
        parse_direction("random:0@Bag")


def test_edit_groups_split_cpca_by_class_unless_named():
    assert edit_groups([0, 1, 0], parse_direction("cpca:0")) == [(0, [0, 2]), (1, [1])]
    assert edit_groups([0, 1, 0], parse_direction("cpca:0@Bag")) == [(0, [0, 1, 2])]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return make_edit_weights(tmp_path_factory.mktemp("cpca-weights"))


@pytest.fixture(scope="module")
def editor(weights) -> Editor:
    return Editor.from_pretrained(weights, device="cpu")


def drawn_classes(editor: Editor) -> tuple[int, int]:
    """A class with a per-class PCA set and one without (the tiny random classifier favours few classes)."""
    has = editor.model("direction_bank").cpca.flatten(1).any(1).tolist()
    assert any(has) and not all(has), has
    return has.index(True), has.index(False)


def test_direction_set_is_orthonormal_for_a_drawn_class(editor):
    c, _ = drawn_classes(editor)
    directions = editor.direction_set("cpca", c)
    assert directions.shape == (editor.G.w_dim, 3)
    assert torch.allclose(directions.T @ directions, torch.eye(3), atol=1e-4)
    vector, spread = editor.direction("cpca:1", class_index=c)
    assert torch.allclose(vector, directions[:, 1]) and spread > 0
    named, _ = editor.direction(f"cpca:1@{editor.class_names[c]}", class_index=None)
    assert torch.equal(named, vector)


def test_undrawn_or_missing_class_is_a_one_line_user_error(editor):
    c, empty = drawn_classes(editor)
    name = editor.class_names[empty]
    for call in (lambda: editor.direction_set("cpca", empty), lambda: editor.direction("cpca:0", empty),
                 lambda: editor.direction(f"cpca:0@{name}", c)):
        with pytest.raises(UserError, match=f"no per-class PCA for {name}") as info:
            call()
        assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="needs the image's class"):
        editor.direction("cpca:0")
    with pytest.raises(UserError, match="need a class"):
        editor.direction_set("cpca")
    with pytest.raises(UserError, match="out of range"):
        editor.direction("cpca:3", c)


def test_apply_cpca(editor):
    c, _ = drawn_classes(editor)
    ws = editor.G.broadcast(editor.G.mapping(torch.randn(2, 16, generator=torch.Generator().manual_seed(0))))
    images = editor.apply(ws, "cpca:0", [1.0], class_index=c)
    assert images.shape == (2, 1, 1, 32, 32)
    assert torch.allclose(images, editor.apply(ws, f"cpca:0@{editor.class_names[c]}", [1.0]), atol=1e-6)
    unedited = editor.G.synthesis(ws, noise_mode="const").clamp(-1, 1)
    assert not torch.allclose(images[:, 0], unedited)


def test_directions_show_cpca_cli(weights, editor, tmp_path):
    c, empty = drawn_classes(editor)
    out = tmp_path / "cpca.png"
    result = run_cli("directions", "show", "--source", "cpca", "--class", editor.class_names[c], "--eps", "-2:2:5",
                     "--scale", "1", "--no-labels", "-w", str(weights), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert f"cpca@{editor.class_names[c]}: 3 directions x 5 eps" in result.stdout
    assert cv2.imread(str(out), cv2.IMREAD_GRAYSCALE).shape == (3 * 34 + 2, 5 * 34 + 2)
    assert_user_error(run_cli("directions", "show", "--source", "cpca", "-w", str(weights), "-o", str(out)),
                      "--source cpca needs a class")
    assert_user_error(run_cli("directions", "show", "--source", "cpca", "--class", editor.class_names[empty],
                              "-w", str(weights), "-o", str(out)), "no per-class PCA")


def test_ui_offers_cpca_for_the_session_class(editor):
    pytest.importorskip("fastapi")
    from semdir_edit.ui.server import EditorService

    c, _ = drawn_classes(editor)
    service = EditorService(editor)
    info = service.info()
    assert info["groups"] == ["pca", "cpca"] and info["k"] == {"pca": 3, "cpca": 3}
    assert info["cpca_classes"] == [editor.class_names[c]]
    # A cpca slider of the session's class: its shift is eps * spread along that class's direction.
    ws = editor.sample_code(None, 0)
    vector, spread = editor.direction("cpca:0", c)
    assert torch.allclose(vector, editor.direction_set("cpca", c)[:, 0]) and spread > 0
    shifted = editor.shifted_code(ws, {"cpca:0": 1.5}, c)
    assert torch.allclose(shifted.cpu() - ws, (1.5 * spread * vector).expand_as(ws), atol=1e-5)


def test_another_class_set_on_an_image_says_so(weights, editor, tmp_path):
    c, _ = drawn_classes(editor)
    other = (c + 1) % len(editor.class_names)
    ws = editor.G.broadcast(editor.G.mapping(torch.randn(1, editor.G.z_dim)))[0]
    latent = tmp_path / "a.latent.safetensors"
    save_latent(latent, ws, {"weights_id": editor.weights_id, "class_index": other})
    spec = f"cpca:0@{editor.class_names[c]}"
    result = run_cli("apply", str(latent), "-d", spec, "-w", str(weights), "-o", str(tmp_path / "e.png"))
    assert result.returncode == 0, result.stderr
    assert f"is the set of {editor.class_names[c]}; the image is {editor.class_names[other]}" in result.stderr
