"""The browser editor's API (semdir_edit.ui.server) through FastAPI's TestClient, on tiny random weights.

The tiny weights have no encoder and no learned deformators, so inversions use a few ``optimize`` steps and the
sliders are the PCA directions; the shipped weights are checked by one info test and the browser test.
"""

from __future__ import annotations

import builtins
import subprocess
import sys
import warnings

import cv2
import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
with warnings.catch_warnings():  # Newer Starlette warns that its TestClient's httpx backend is deprecated.
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from semdir_edit.editor import Editor  # noqa: E402
from semdir_edit.latents import load_latent  # noqa: E402
from semdir_edit.ui.server import create_app, measure_edit_ms, safe_name, safe_stem  # noqa: E402
from semdir_edit.ui.sessions import Session, SessionNotFound, SessionStore  # noqa: E402

from .conftest import ROOT, make_edit_weights, requires_dataset  # noqa: E402

FAST = {"method": "optimize", "steps": 2}  # Enough to get a code; quality does not matter here.
SHIPPED = ROOT / "weights" / "fashion_mnist"


@pytest.fixture(scope="module")
def editor(tmp_path_factory) -> Editor:
    return Editor.from_pretrained(make_edit_weights(tmp_path_factory.mktemp("ui-weights")), device="cpu")


@pytest.fixture(scope="module")
def client(editor) -> TestClient:
    with TestClient(create_app(editor)) as c:
        yield c


def article_png(seed: int = 0) -> bytes:
    """A 28x28 domain-like image (bright blob on black) as PNG bytes."""
    rng = np.random.default_rng(seed)
    img = np.zeros((28, 28), np.uint8)
    y, x, h, w = rng.integers(3, 8), rng.integers(3, 8), rng.integers(12, 18), rng.integers(8, 18)
    img[y:y + h, x:x + w] = rng.integers(120, 256, (h, w))
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return buf.tobytes()


def decode(png: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert image is not None, "not a PNG"
    return image


def upload(client: TestClient, data: bytes, name: str = "shirt.png", **params):
    return client.post("/api/sessions/upload", params={"name": name, **FAST, **params}, content=data)


def edit(client: TestClient, session: str, shifts: dict, **body):
    return client.post(f"/api/sessions/{session}/edit", json={"shifts": shifts, **body})


def assert_error(response, status: int, *needles: str) -> None:
    assert response.status_code == status, response.text
    message = response.json()["error"]
    assert "\n" not in message and "Traceback" not in message
    for needle in needles:
        assert needle in message, message


@pytest.fixture(scope="module")
def session(client) -> dict:
    response = upload(client, article_png(0))
    assert response.status_code == 200, response.text
    return response.json()


def test_page_and_info(client, editor):
    page = client.get("/")
    assert page.status_code == 200 and "app.js" in page.text
    assert "sendEdit" in client.get("/app.js").text
    info = client.get("/api/info").json()
    assert info["groups"] == ["pca", "cpca"] and info["k"] == {"pca": 3, "cpca": 3}
    assert info["class_names"] == editor.class_names and info["num_ws"] == editor.G.num_ws


@pytest.mark.skipif(not (SHIPPED / "manifest.json").exists(), reason="shipped weights missing")
def test_info_on_shipped_weights():
    with TestClient(create_app(Editor.from_pretrained(SHIPPED, device="cpu"))) as c:
        info = c.get("/api/info").json()
    assert info["groups"] == ["global", "class"] and info["k"]["global"] == info["k"]["class"] > 0
    assert info["method"] == "indomain" and info["boundary"]
    assert "global:0" in info["descriptions"] and f"class:0@{info['class_names'][0]}" in info["descriptions"]


def test_upload_inverts_once_and_edits_change_the_image(client, session):
    assert session["source"] == "upload" and session["name"] == "shirt" and session["method"] == "optimize"
    assert 0 <= session["class_index"] < 10 and 0 < session["confidence"] <= 1 and session["psnr"] > 0
    assert session["latent_name"] == "shirt.latent.safetensors"
    sid = session["session"]
    unedited = edit(client, sid, {})
    assert unedited.status_code == 200 and unedited.headers["content-type"] == "image/png"
    # No shift = the reconstruction shown on the page, byte for byte.
    assert session["reconstruction"] == "data:image/png;base64," + __import__("base64").b64encode(
        unedited.content).decode()
    moved = edit(client, sid, {"pca:0": 3.0})
    assert moved.status_code == 200
    assert decode(moved.content).shape == (32, 32)
    # Every edit says what the classifier makes of the edited image (the page shows it live).
    from urllib.parse import unquote
    info = client.get("/api/info").json()
    assert unquote(moved.headers["x-edited-class"]) in info["class_names"]
    assert 0 < float(moved.headers["x-edited-confidence"]) <= 1
    assert not np.array_equal(decode(moved.content), decode(unedited.content))
    # Zero shifts and a shift restricted to one layer are accepted too.
    assert edit(client, sid, {"pca:1": 0.0, "pca:2": -2.5}, layers="1-2").status_code == 200
    assert client.get(f"/api/sessions/{sid}").json()["session"] == sid


def test_sum_of_shifts_and_downloads_match_the_cli(client, editor, session, tmp_path):
    sid = session["session"]
    big = edit(client, sid, {"pca:0": 2.0}, scale=4)
    assert decode(big.content).shape == (128, 128)
    latent = client.get(f"/api/sessions/{sid}/latent")
    assert latent.status_code == 200 and "shirt.latent.safetensors" in latent.headers["content-disposition"]
    path = tmp_path / "shirt.latent.safetensors"
    path.write_bytes(latent.content)
    ws, meta = load_latent(path, editor.weights_id, editor.G.num_ws, editor.G.w_dim)
    assert meta["class_index"] == session["class_index"] and meta["method"] == "optimize"
    # The page's edit equals what `semdir-edit apply <latent> --direction pca:0 --eps 2` computes.
    from semdir_edit.core.images import make_grid

    expected = make_grid(editor.apply(ws, "pca:0", 2.0, class_index=meta["class_index"])[0], 1, pad=0)
    small = decode(edit(client, sid, {"pca:0": 2.0}).content)
    assert np.abs(small.astype(int) - expected.astype(int)).max() <= 1
    # Two directions at once = the sum of their shifts (the first alone differs).
    both = decode(edit(client, sid, {"pca:0": 2.0, "pca:1": 2.0}).content)
    assert not np.array_equal(both, small)

    strip = client.post(f"/api/sessions/{sid}/strip", json={"direction": "pca:1", "count": 5, "scale": 1})
    assert strip.status_code == 200
    assert decode(strip.content).shape == (32 + 4, 5 * 34 + 2)


def test_keep_class_walks_the_edit_as_apply_does(client, editor, session, tmp_path):
    """keep_class: one slider = `apply --keep class` (class-locked walk); off = the linear edit; to: stays linear."""
    from semdir_edit.core.images import make_grid

    sid, c = session["session"], session["class_index"]
    latent = client.get(f"/api/sessions/{sid}/latent").content
    path = tmp_path / "a.latent.safetensors"
    path.write_bytes(latent)
    ws, _ = load_latent(path)
    for eps in (2.5, -3.0):
        locked = make_grid(editor.apply(ws, "pca:0", eps, class_index=c, keep_class=True)[0], 1, pad=0)
        linear = make_grid(editor.apply(ws, "pca:0", eps, class_index=c, keep_class=False)[0], 1, pad=0)
        got = decode(edit(client, sid, {"pca:0": eps}, keep_class=True).content)
        assert np.abs(got.astype(int) - locked.astype(int)).max() <= 1
        plain = decode(edit(client, sid, {"pca:0": eps}).content)
        assert np.abs(plain.astype(int) - linear.astype(int)).max() <= 1
        assert not np.array_equal(locked, linear)  # The lock changed this edit: the comparison above means something.
    # A boundary shift on top is added as it is, after the locked walk of the others.
    targets = [name for i, name in enumerate(editor.class_names) if i != c]
    answers = [edit(client, sid, {"pca:0": 2.0, f"to:{t}": 2.0}, keep_class=True) for t in targets]
    assert any(a.status_code == 200 for a in answers)
    strip = client.post(f"/api/sessions/{sid}/strip", json={"direction": "pca:0", "count": 3, "scale": 1,
                                                            "eps_min": -2, "eps_max": 2, "keep_class": True})
    assert strip.status_code == 200
    cells = decode(strip.content)[2:34, 2:]
    right = make_grid(editor.apply(ws, "pca:0", 2.0, class_index=c, keep_class=True)[0], 1, pad=0)
    assert np.abs(cells[:, 2 * 34:2 * 34 + 32].astype(int) - right.astype(int)).max() <= 1


def test_class_boundary_direction(client, session, editor):
    # Random tiny weights may never have drawn some classes (no boundary to them); at least one must work.
    others = [c for i, c in enumerate(editor.class_names) if i != session["class_index"]]
    codes = [edit(client, session["session"], {f"to:{c}": 2.0}).status_code for c in others]
    assert 200 in codes and set(codes) <= {200, 400}
    assert_error(edit(client, session["session"], {f"to:{session['class_name']}": 1.0}), 400, "already classified")


def test_edit_as_another_class(client, editor, session, tmp_path):
    """class_name: the class set and the lock are that class's (as apply with that class); a bad one is a 400."""
    from semdir_edit.core.images import make_grid

    sid, c = session["session"], session["class_index"]
    path = tmp_path / "c.latent.safetensors"
    path.write_bytes(client.get(f"/api/sessions/{sid}/latent").content)
    ws, _ = load_latent(path)
    other = (c + 1) % len(editor.class_names)
    name = editor.class_names[other]
    got = edit(client, sid, {"pca:0": -2.5}, keep_class=True, class_name=name)
    assert got.status_code == 200, got.text
    expected = make_grid(editor.apply(ws, "pca:0", -2.5, class_index=other, keep_class=True)[0], 1, pad=0)
    assert np.abs(decode(got.content).astype(int) - expected.astype(int)).max() <= 1
    # The predicted class by name is the default.
    assert edit(client, sid, {"pca:0": 1.0}, class_name=session["class_name"]).content == \
        edit(client, sid, {"pca:0": 1.0}).content
    strip = client.post(f"/api/sessions/{sid}/strip", json={"direction": "pca:0", "count": 3, "class_name": name})
    assert strip.status_code == 200
    assert_error(edit(client, sid, {"pca:0": 1.0}, class_name="Hat"), 400, "unknown class")
    assert_error(edit(client, sid, {"pca:0": 1.0}, class_name="x" * 100), 422, "class_name")
    assert_error(client.post(f"/api/sessions/{sid}/strip", json={"direction": "pca:0", "class_name": "Hat"}), 400,
                 "unknown class")


def test_inversion_progress(client):
    """The page polls /api/progress/{id} while its upload runs: steps done / total, then a 404 once it is over."""
    import threading
    import time

    service = client.app.state.service
    pid = "progress-test-0001"
    assert_error(client.get(f"/api/progress/{pid}"), 404, "no inversion")
    assert_error(client.get("/api/progress/bad%20id"), 422)
    assert_error(upload(client, article_png(), progress="no"), 422, "progress")
    seen: list[dict] = []
    worker = threading.Thread(target=service.invert_upload, args=(article_png(5), "p.png", "optimize", 60, pid))
    worker.start()
    while worker.is_alive():
        response = client.get(f"/api/progress/{pid}")
        if response.status_code == 200:
            seen.append(response.json())
        time.sleep(0.01)
    worker.join()
    assert any(p["total"] == 60 and 0 < p["done"] <= 60 for p in seen), seen
    assert [p["done"] for p in seen if p["total"]] == sorted(p["done"] for p in seen if p["total"])
    assert client.get(f"/api/progress/{pid}").status_code == 404
    # The id rides along with a real upload without changing its answer.
    assert upload(client, article_png(6), progress=pid).status_code == 200


@pytest.mark.parametrize(("data", "needle"), [
    (b"", "empty"),
    (bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8)), "shirt.png"),
    (b"hello, this is not an image\n" * 10, "not an image"),
    (article_png(1)[:60], "shirt.png"),  # A truncated PNG.
    (b"/etc/passwd", "not an image"),  # A path as the body is only bytes.
])
def test_bad_uploads_are_400_with_a_message(client, data, needle):
    assert_error(upload(client, data), 400, needle)


def test_too_big_and_form_uploads(editor):
    with TestClient(create_app(editor, max_upload_bytes=1000)) as c:
        assert c.get("/api/info").json()["max_upload_bytes"] == 1000  # The page checks it before sending.
        assert_error(upload(c, b"\x89PNG" + bytes(5000)), 413, "too large")
        assert_error(c.post("/api/sessions/upload", files={"file": ("a.png", article_png())}), 415, "request body")


def test_path_like_inputs_are_never_opened(client, session, monkeypatch):
    opened: list[str] = []
    real_open = builtins.open

    def spy(file, *args, **kwargs):
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy)
    sid = session["session"]
    responses = [
        upload(client, b"/etc/passwd", name="/etc/passwd"),
        client.post("/api/sessions/upload", params={"name": "/etc/passwd"}, json={"path": "/etc/passwd"}),
        client.post("/api/sessions/upload", params={"name": "/etc/passwd"},
                    files={"file": ("/etc/passwd", b"x")}, data={"path": "/etc/passwd"}),
        edit(client, sid, {"/etc/passwd": 1.0}),
        edit(client, sid, {"pca:0": 1.0}, layers="/etc/passwd"),
        client.post(f"/api/sessions/{sid}/strip", json={"direction": "/etc/passwd"}),
        client.get("/api/sessions/..%2F..%2Fetc%2Fpasswd/latent"),
        client.get("/../../etc/passwd"),
    ]
    for response in responses:
        assert 400 <= response.status_code < 500, response.text
        assert "root:" not in response.text
    assert not any("passwd" in path for path in opened), opened
    # A client's file name is only a label: the last part, sanitised.
    named = upload(client, article_png(2), name="../../etc/passwd")
    assert named.status_code == 200 and named.json()["name"] == "passwd"


@pytest.mark.parametrize(("body", "status", "needle"), [
    ({"shifts": {"pca:7": 1.0}}, 400, "out of range"),
    ({"shifts": {"pca:0": 11.0}}, 400, "out of range"),
    ({"shifts": {"pca:0": -1e30}}, 400, "out of range"),
    ({"shifts": {"to:Nope": 1.0}}, 400, "unknown class"),
    ({"shifts": {"bogus:1": 1.0}}, 400, "invalid --direction"),
    ({"shifts": {"pca:0": 1.0}, "layers": "3-99"}, 400, "layers"),
    ({"shifts": {"pca:0": "a lot"}}, 422, "shifts"),
    ({"shifts": {f"pca:{i % 3}@x{i}": 1.0 for i in range(100)}}, 400, "too many"),
    ({"scale": 0}, 422, "scale"),
])
def test_invalid_edits_are_4xx(client, session, body, status, needle):
    response = client.post(f"/api/sessions/{session['session']}/edit", json=body)
    assert_error(response, status, needle)


def test_invalid_requests_are_4xx(client, session):
    assert_error(edit(client, "no-such-session", {"pca:0": 1.0}), 404, "expired")
    assert_error(client.get("/api/sessions/no-such-session/latent"), 404, "expired")
    assert_error(client.post("/api/sessions/random", params={"source": "disk"}), 422, "source")
    assert_error(upload(client, article_png(), steps=5000), 422, "steps")
    assert_error(upload(client, article_png(), method="magic"), 400, "unknown method")
    assert_error(upload(client, article_png(), method="encoder"), 400, "encoder")  # The tiny weights have none.
    strip = client.post(f"/api/sessions/{session['session']}/strip", json={"direction": "pca:0", "count": 500})
    assert_error(strip, 422, "count")
    assert_error(client.get("/api/nothing"), 404)


def test_two_sessions_are_independent(client):
    a = upload(client, article_png(3), name="a.png").json()
    b = upload(client, article_png(4), name="b.png").json()
    assert a["session"] != b["session"] and a["reconstruction"] != b["reconstruction"]
    ea, eb = (edit(client, s["session"], {"pca:0": 1.5}).content for s in (a, b))
    assert ea != eb
    # Editing one does not disturb the other: each still reproduces its own image.
    assert edit(client, a["session"], {"pca:0": 1.5}).content == ea
    assert client.get(f"/api/sessions/{b['session']}").json()["name"] == "b"


def test_random_sample_needs_no_inversion(client):
    first = client.post("/api/sessions/random", params={"source": "sample", "seed": 5})
    again = client.post("/api/sessions/random", params={"source": "sample", "seed": 5})
    assert first.status_code == again.status_code == 200
    assert first.json()["psnr"] is None and first.json()["method"] == "sample"
    assert first.json()["reconstruction"] == again.json()["reconstruction"]
    assert first.json()["session"] != again.json()["session"]


@requires_dataset
def test_random_test_image(client):
    response = client.post("/api/sessions/random", params={"source": "test", "seed": 7, **FAST})
    assert response.status_code == 200, response.text
    assert response.json()["name"] == "test-7" and "test image #7" in " ".join(response.json()["notes"])


def test_missing_dataset_is_a_message(editor, tmp_path):
    with TestClient(create_app(editor, data_dir=tmp_path / "none")) as c:
        assert_error(c.post("/api/sessions/random", params={"source": "test"}), 400, "dataset")


def test_session_store_is_bounded_and_expires():
    now = [0.0]
    store = SessionStore(max_sessions=2, ttl_s=10, clock=lambda: now[0])

    def new() -> Session:
        return store.add(Session(name="x", source="sample", ws=torch.zeros(2, 2), class_index=0, class_name="c",
                                 confidence=1.0, psnr=None, ssim=None, method="sample", steps=0, seconds=0.0,
                                 notes=[], domain_png=b"", reconstruction_png=b"", latent_meta={}))

    a, b = new(), new()
    store.get(a.id)  # a is now the most recently used ...
    c = new()        # ... so b is evicted.
    assert store.get(a.id) is a and store.get(c.id) is c
    with pytest.raises(SessionNotFound):
        store.get(b.id)
    now[0] = 11.0
    with pytest.raises(SessionNotFound):
        store.get(a.id)
    assert len(store) == 0


def test_safe_names():
    assert safe_name("C:\\photos\\my shirt.JPG") == "my_shirt.JPG"
    assert safe_stem("C:\\photos\\my shirt.JPG") == "my_shirt"
    assert safe_stem("../../etc/passwd") == "passwd"
    assert safe_stem("") == "image" and safe_stem("...") == "image"


def test_measure_edit_ms(editor):
    ms = measure_edit_ms(editor, repeats=3, warmup=1)
    assert 0 < ms < 10_000


def test_cli_without_fastapi_is_one_line(tmp_path):
    code = ("import sys; sys.modules['fastapi'] = None; sys.argv = ['semdir-edit', 'ui']; "
            "from semdir_edit.cli.main import main; main()")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: the browser editor needs fastapi: install with pip install -e '.[ui]'"
