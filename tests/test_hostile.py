"""Every file and request is hostile (issue 21): tampered latents, configs, manifests, direction specs and eps values
give one `error:` line and exit code 2, never a traceback; batch records a bad output path and goes on; outputs
replace only regular files; the browser editor refuses other web pages, huge bodies and huge integers.

The CLI runs in-process here (``main()`` with its stderr captured): the same code as the console script, without a
second of interpreter start-up per hypothesis example.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import struct
import sys
import threading
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save

from semdir_edit.config import load_config
from semdir_edit.core.errors import UserError
from semdir_edit.core.io import atomic_write_bytes
from semdir_edit.core.validate import EPS_LIMIT
from semdir_edit.data.photo import load_image
from semdir_edit.editing.batch import find_images, read_manifest_lines, run_batch
from semdir_edit.editor import Editor
from semdir_edit.latents import CHECKSUM, FORMAT, _decode_value, load_latent, save_latent
from semdir_edit.ops.shift_codes import parse_direction, parse_eps

from .conftest import ROOT, make_edit_weights

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True,  # CI sees the same cases every run.
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
JUNK = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                 st.text(max_size=12), st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3),
                                                                                            st.integers(), max_size=2))


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return make_edit_weights(tmp_path_factory.mktemp("hostile-w"), bank_samples=300)


@pytest.fixture(scope="module")
def editor(weights) -> Editor:
    return Editor.from_pretrained(weights, device="cpu")


def cli(*args: str) -> tuple[int, str]:
    """Run `semdir-edit ARGS` in-process -> (exit code, stderr). An exception that escapes is a traceback: it
    fails the test by propagating."""
    from semdir_edit.cli.main import main

    err, out = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["semdir-edit", *args]
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                main()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = argv
    return code, err.getvalue()


def assert_one_line(code: int, stderr: str, *needles: str) -> None:
    assert code == 2, stderr
    lines = stderr.strip("\n").split("\n")
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def raw_latent(path: Path, ws: torch.Tensor, meta: dict[str, str]) -> Path:
    path.write_bytes(save({"ws": ws.contiguous()}, metadata={"format": FORMAT, **meta}))
    return path


# ------------------------------------------------------------------------------------------------ latents

@SETTINGS
@given(value=JUNK, key=st.sampled_from(["class_index", "steps", "confidence"]),
       direction=st.sampled_from(["cpca:0", "to:Coat", "pca:0"]))
def test_hostile_latent_metadata_is_one_line(editor, weights, tmp_path, value, key, direction):
    ws = editor.sample_code(None, 0)
    meta = {"weights_id": editor.weights_id, "class_index": 3, key: value}
    path = tmp_path / "x.latent.safetensors"
    save_latent(path, ws, meta)
    code, stderr = cli("apply", str(path), "-d", direction, "--eps", "1", "-w", str(weights), "--device", "cpu",
                       "-o", str(tmp_path / "o.png"))
    if isinstance(value, str):
        value = _decode_value(value)  # Numbers are stored as JSON text: "5" is read back as 5.
    fine = {"class_index": lambda v: v is None or (type(v) is int and 0 <= v < 10),
            "steps": lambda v: v is None or (type(v) is int and v >= 0),
            "confidence": lambda v: v is None or (type(v) in (int, float) and 0 <= v <= 1)}[key](value)
    if fine:
        # The edit itself may be refused (to:Coat on a coat, a class without a per-class PCA), in one line.
        assert code == 0 or ("refused" not in stderr and len(stderr.strip().splitlines()) == 1), stderr
    else:
        assert_one_line(code, stderr, "refused", key)


def test_latent_dtypes_nesting_and_checksum(editor, tmp_path):
    ws = editor.sample_code(None, 0)
    wid = editor.weights_id
    args = (wid, editor.G.num_ws, editor.G.w_dim, 10)
    got, _ = load_latent(raw_latent(tmp_path / "bf16.latent.safetensors", ws.bfloat16(), {"weights_id": wid}), *args)
    assert got.dtype == torch.float32 and torch.allclose(got, ws, atol=0.05)
    for name, tensor in (("f8", ws.to(torch.float8_e4m3fn)), ("int", ws.to(torch.int32))):
        with pytest.raises(UserError, match="not a float type"):
            load_latent(raw_latent(tmp_path / f"{name}.latent.safetensors", tensor, {"weights_id": wid}), *args)
    deep = b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    (tmp_path / "deep.latent.safetensors").write_bytes(struct.pack("<Q", len(deep)) + deep)
    with pytest.raises(UserError, match="nested too deeply"):
        load_latent(tmp_path / "deep.latent.safetensors", *args)
    # A flipped byte in the tensor data is caught by the checksum save_latent stores; old files have none.
    path = tmp_path / "ok.latent.safetensors"
    save_latent(path, ws, {"weights_id": wid, "class_index": 1})
    data = bytearray(path.read_bytes())
    assert load_latent(path, *args)[1] == {"format": FORMAT, "weights_id": wid, "class_index": 1}
    data[-5] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="checksum"):
        load_latent(path, *args)
    old = raw_latent(tmp_path / "old.latent.safetensors", ws, {"weights_id": wid, "class_index": "1"})
    assert torch.equal(load_latent(old, *args)[0], ws)
    # A hex id that reads as a JSON number is compared as the text it is.
    numeric = raw_latent(tmp_path / "num.latent.safetensors", ws, {"weights_id": "1234567890123456"})
    assert load_latent(numeric, "1234567890123456")[1]["weights_id"] == "1234567890123456"
    assert CHECKSUM not in load_latent(numeric)[1]


# ------------------------------------------------------------------------------------------------ specs and eps

SPEC_TEXT = st.text(alphabet=st.sampled_from(list("0123456789²³¹٣߀०໐:@-+ .eEaZ\n")), max_size=6)


@SETTINGS
@given(kind=st.sampled_from(["global", "class", "to", "pca", "cpca"]), arg=SPEC_TEXT)
def test_hostile_direction_specs_are_one_line(editor, weights, tmp_path, kind, arg):
    spec = f"{kind}:{arg}"
    try:
        parsed = parse_direction(spec)
    except UserError as exc:
        assert "\n" not in str(exc).replace(spec, "")
    else:
        assert parsed.k is None or str(parsed.k).isascii()
    code, stderr = cli("apply", str(tmp_path / "none.png"), "-d", spec, "-w", str(weights), "--device", "cpu",
                       "-o", str(tmp_path / "o.png"))
    assert_one_line(code, stderr)  # A bad spec, or (a good one) the missing input file: either way one line.


@SETTINGS
@given(value=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=10)),
       strip=st.booleans())
def test_hostile_eps_is_bounded_or_one_line(value, strip):
    text = f"{value}:0:3" if strip else str(value)
    try:
        values = parse_eps(text)
    except UserError as exc:
        assert "\n" not in str(exc).replace(text, "")
    else:
        assert all(math.isfinite(v) and abs(v) <= EPS_LIMIT for v in values)


def test_huge_eps_and_unicode_digits_are_refused_everywhere(editor, weights, tmp_path):
    latent = tmp_path / "x.latent.safetensors"
    save_latent(latent, editor.sample_code(None, 0), {"weights_id": editor.weights_id, "class_index": 0})
    t0 = time.perf_counter()
    code, stderr = cli("apply", str(latent), "-d", "pca:0", "--eps", "1e9", "-w", str(weights), "--device", "cpu")
    assert_one_line(code, stderr, "out of range")
    assert time.perf_counter() - t0 < 30
    for spec in ("global:²", "class:²", "to:²", "class:0@²"):
        code, stderr = cli("apply", str(latent), "-d", spec, "-w", str(weights), "--device", "cpu",
                           "-o", str(tmp_path / "o.png"))
        assert_one_line(code, stderr)
    src = tmp_path / "in"
    src.mkdir()
    quiet = dict(method="optimize", steps=1, progress=False)
    for direction, eps in (("pca:0", "1e9"), ("pca:0", [0.0, -11.0]), ("pca:²", "1"), ("to:²", "1")):
        cv2.imwrite(str(src / "a.png"), np.full((28, 28), 9, np.uint8))
        with pytest.raises(UserError):
            run_batch(editor, src, tmp_path / "out", direction, eps=eps, **quiet)


# ------------------------------------------------------------------------------------------------ configs

@SETTINGS
@given(section=st.sampled_from(["invert", "train_gan", "generator", "data"]),
       key=st.sampled_from(["lr", "steps", "batch_size", "resolution", "channels", "class_names", "path"]),
       value=st.one_of(JUNK, st.sampled_from(["1e30", "abc", "1.5", ".nan", "-1", "null"])))
def test_hostile_config_values_are_one_line(tmp_path, section, key, value):
    base = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    base.setdefault(section, {})[key] = value
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(base))
    try:
        cfg = load_config(path)
    except UserError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("config")
    else:  # Accepted: then of the declared type, finite and not negative.
        got = getattr(getattr(cfg, section), key)
        assert not isinstance(got, float) or (math.isfinite(got) and got >= 0)


def test_config_type_errors_through_invert_and_batch(weights, tmp_path):
    cases = {"lr: abc": "must be a number", "steps: null": "must be an integer", "lr: 1e30": "YAML reads",
             "batch_size: 0": "> 0"}
    for body, needle in cases.items():
        path = tmp_path / "c.yaml"
        path.write_text(f"invert:\n  {body}\n")
        for command in (["invert", str(tmp_path / "x.png")], ["batch", str(tmp_path), str(tmp_path / "out"),
                                                              "-d", "pca:0"]):
            code, stderr = cli(*command, "-c", str(path), "-w", str(weights), "--device", "cpu")
            assert_one_line(code, stderr, needle)


# ------------------------------------------------------------------------------------------------ manifests

MANIFEST_BREAKS = [
    ("models a list", lambda m: m.update(models=[])),
    ("entry without file", lambda m: m["models"]["generator"].pop("file")),
    ("file a path", lambda m: m["models"]["generator"].update(file="../generator.safetensors")),
    ("sha256 a number", lambda m: m["models"]["generator"].update(sha256=5)),
    ("config a list", lambda m: m["models"]["classifier"].update(config=[1])),
    ("class names not text", lambda m: m["models"]["classifier"].update(class_names=list(range(10)))),
    ("entry a string", lambda m: m["models"].update(generator="x")),
    ("figures a list", lambda m: m.update(figures=[1])),
    ("unit gains not numbers", lambda m: m.update(direction_units={"gains": [["2"]]})),
    ("unit gains out of range", lambda m: m.update(direction_units={"gains": [[1.0, -1.0], [1e9, float("nan")]]})),
    ("unit gains a number", lambda m: m.update(direction_units={"gains": 3})),
    ("manifest a list", None),
]


@SETTINGS
@given(breaks=st.lists(st.sampled_from(MANIFEST_BREAKS), min_size=1, max_size=3, unique_by=lambda b: b[0]))
def test_hostile_manifests_are_refused_in_one_line(weights, tmp_path, breaks):
    folder = tmp_path / "w"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(weights, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    for _, brk in breaks:
        if brk is None:
            manifest = [manifest]
            break
        if isinstance(manifest.get("models"), dict) and all(
                isinstance(e, dict) for e in manifest["models"].values()):
            brk(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    code, stderr = cli("generate", "-w", str(folder), "--device", "cpu", "-o", str(tmp_path / "g.png"), "--n", "1")
    assert_one_line(code, stderr, "refused")


# ------------------------------------------------------------------------------------------------ files

def test_outputs_replace_only_regular_files(editor, weights, tmp_path):
    latent = tmp_path / "x.latent.safetensors"
    save_latent(latent, editor.sample_code(None, 0), {"weights_id": editor.weights_id, "class_index": 0})
    fifo, folder, link = tmp_path / "fifo", tmp_path / "folder", tmp_path / "link"
    os.mkfifo(fifo)
    folder.mkdir()
    (tmp_path / "target").write_text("keep")
    os.symlink(tmp_path / "target", link)
    for target in (fifo, folder, link):
        code, stderr = cli("apply", str(latent), "-d", "pca:0", "-w", str(weights), "--device", "cpu",
                           "-o", str(target))
        assert_one_line(code, stderr, "refusing to replace it")
    assert Path(fifo).is_fifo() and folder.is_dir() and link.is_symlink()
    assert (tmp_path / "target").read_text() == "keep"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    # A regular file is replaced; a name near the file system's limit still gets a temp file that fits.
    long = tmp_path / ("n" * 250 + ".png")
    long.write_bytes(b"old")
    atomic_write_bytes(long, b"new")
    assert long.read_bytes() == b"new"


def test_newline_in_a_file_name_stays_one_line(weights, tmp_path):
    bad = tmp_path / "two\nlines.png"
    bad.write_bytes(b"not an image")
    code, stderr = cli("invert", str(bad), "-w", str(weights), "--device", "cpu", "-o", str(tmp_path / "o"))
    assert code == 2 and len(stderr.strip("\n").split("\n")) == 1 and "two\\nlines.png" in stderr, stderr


def test_dark_16_bit_png_is_read_as_16_bit(tmp_path):
    img = np.zeros((28, 28), np.uint16)
    img[5:20, 8:20] = 200  # Every value < 256: nearly black in 16 bits.
    cv2.imwrite(str(tmp_path / "dark16.png"), img)
    assert load_image(tmp_path / "dark16.png").pixels.max() == 1


def test_libtiff_messages_do_not_precede_the_error(capfd, tmp_path):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((28, 28), 100, np.uint8)).save(buf, "TIFF", compression="tiff_lzw")
    (tmp_path / "bad.tif").write_bytes(buf.getvalue()[:-30])
    capfd.readouterr()
    with pytest.raises(UserError) as info:
        load_image(tmp_path / "bad.tif")
    assert "\n" not in str(info.value)
    assert capfd.readouterr().err == ""


# ------------------------------------------------------------------------------------------------ batch

def _domain(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    img = np.zeros((28, 28), np.uint8)
    img[5:22, 8:20] = rng.integers(100, 255, (17, 12))
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)


def test_batch_long_name_and_output_like_folder_fail_alone_and_reruns_add_no_lines(editor, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    long_name = "z" * 242 + ".png"  # 246 characters: a legal input, but its .latent.safetensors would be 261.
    for i, rel in enumerate(["a.png", long_name, "x.png", "x.latent.safetensors/inner.png", "m.png"]):
        _domain(src / rel, i)
    (src / "junk.png").write_bytes(b"junk")
    messages: list[str] = []
    quiet = dict(method="optimize", steps=1, progress=False, recursive=True, log=messages.append)
    for batch_size in (1, 4):
        shutil.rmtree(out, ignore_errors=True)
        summary = run_batch(editor, src, out, "pca:0", batch_size=batch_size, **quiet)
        records = read_manifest_lines(out / "manifest.jsonl")
        status = {r["path"]: r["status"] for r in records}
        assert len(records) == 6 and set(status) == set(find_images(src, recursive=True))
        assert status[long_name] == "error" and status["junk.png"] == "error"
        assert status["a.png"] == status["m.png"] == "ok"
        # x.png and the folder named like its output: one of them is refused, the other is done.
        assert sorted([status["x.png"], status["x.latent.safetensors/inner.png"]]) == ["error", "ok"]
        assert summary["ok"] == 3 and summary["errors"] == 3
        long_record = next(r for r in records if r["path"] == long_name)
        assert "too long" in long_record["error"] and long_record["outputs"] == []
        assert not (out / (long_name[:-4] + ".edited.png")).exists()  # Not one output without the other.
        for _ in range(2):  # Reruns report the same failures, skip the rest and add no lines.
            summary = run_batch(editor, src, out, "pca:0", batch_size=batch_size, **quiet)
            assert summary["errors"] == 3 and summary["skipped"] == 3
            assert len(read_manifest_lines(out / "manifest.jsonl")) == 6
    assert all("\n" not in m for m in messages)


def test_recursive_stays_inside_unless_follow_symlinks(tmp_path):
    outside, src = tmp_path / "outside", tmp_path / "in"
    _domain(outside / "far.png", 0)
    _domain(src / "near.png", 1)
    _domain(src / "sub" / "deep.png", 2)
    os.symlink(outside, src / "away")
    os.symlink(src / "sub", src / "inside")
    assert find_images(src, recursive=True) == ["near.png", "sub/deep.png"]
    assert find_images(src, recursive=True, follow_symlinks=True) == ["away/far.png", "near.png", "sub/deep.png"]


# ------------------------------------------------------------------------------------------------ browser editor

pytest.importorskip("fastapi")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from semdir_edit.ui import server as ui_server  # noqa: E402


@pytest.fixture(scope="module")
def client(editor):
    with TestClient(ui_server.create_app(editor)) as c:
        yield c


@pytest.fixture(scope="module")
def sample(client) -> str:
    response = client.post("/api/sessions/random", params={"source": "sample", "seed": 1})
    assert response.status_code == 200, response.text
    return response.json()["session"]


def test_ui_refuses_other_origins(client, sample):
    png = cv2.imencode(".png", np.full((28, 28), 90, np.uint8))[1].tobytes()
    evil = [{"Origin": "http://evil.example"}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"},
            {"Origin": "http://testserver.evil.example"}]
    for headers in evil:
        for response in (
                client.post("/api/sessions/upload", params={"method": "optimize", "steps": 1}, content=png,
                            headers={**headers, "Content-Type": "text/plain"}),
                client.post(f"/api/sessions/{sample}/edit", json={"shifts": {"pca:0": 1}}, headers=headers),
                client.post("/api/sessions/random", params={"source": "sample"}, headers=headers)):
            assert response.status_code == 403 and "cross-origin" in response.json()["error"], response.text
    same = {"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"}
    assert client.post(f"/api/sessions/{sample}/edit", json={"shifts": {"pca:0": 1}}, headers=same).status_code == 200
    assert client.get("/api/info", headers={"Origin": "http://evil.example"}).status_code == 200  # Reads: CORS.


def test_ui_limits_json_bodies_and_integers(client, sample):
    huge = {"shifts": {"pca:0": 1.0}, "layers": "x" * 200_000}
    for route in ("edit", "strip"):
        response = client.post(f"/api/sessions/{sample}/{route}", json={**huge, "direction": "pca:0"})
        assert response.status_code == 413 and "too large" in response.json()["error"]
        response = client.post(f"/api/sessions/{sample}/{route}", content=b'{"shifts": {}}',
                               headers={"Content-Type": "text/plain"})
        assert response.status_code == 415
    for seed in ("18446744073709551616", str(10**40), "-1"):
        response = client.post("/api/sessions/random", params={"source": "sample", "seed": seed})
        assert response.status_code == 400 and "seed" in response.json()["error"], response.text
    for eps in (1e9, 1e308, -11):
        response = client.post(f"/api/sessions/{sample}/edit", json={"shifts": {"pca:0": eps}})
        assert response.status_code == 400
    for spec in ("pca:²", "to:²", "cpca:0@²"):
        response = client.post(f"/api/sessions/{sample}/edit", json={"shifts": {spec: 1.0}})
        assert response.status_code == 400, response.text
    assert client.post(f"/api/sessions/{sample}/edit", json={"shifts": {"pca:0": 1}}).status_code == 200


def test_ui_edit_during_an_inversion_is_busy_not_queued(client, sample, monkeypatch):
    monkeypatch.setattr(ui_server, "EDIT_WAIT_S", 0.2)
    service = client.app.state.service
    release = threading.Event()

    def long_inversion() -> None:
        with service.models(inference=False):
            release.wait(10)

    holder = threading.Thread(target=long_inversion)
    holder.start()
    try:
        time.sleep(0.05)
        t0 = time.perf_counter()
        response = client.post(f"/api/sessions/{sample}/edit", json={"shifts": {"pca:0": 1}})
        assert response.status_code == 503 and "busy" in response.json()["error"]
        assert time.perf_counter() - t0 < 5
    finally:
        release.set()
        holder.join()
    assert client.post(f"/api/sessions/{sample}/edit", json={"shifts": {"pca:0": 1}}).status_code == 200


def test_loader_processes_do_not_hold_the_batch_lock(tmp_path):
    """kill -9 of a run with --workers: its forked loaders must not keep OUT_DIR locked until they notice."""
    import fcntl

    from semdir_edit.editing.batch import LOCK, _lock, _worker_init

    fd = _lock(tmp_path)
    child = os.fork()
    if child == 0:  # A loader process: what DataLoader runs in each worker, then it lingers.
        try:
            _worker_init(0)
            time.sleep(3)
        finally:
            os._exit(0)
    try:
        time.sleep(0.5)
        os.close(fd)  # The run dies; its loader lives on.
        other = os.open(tmp_path / LOCK, os.O_RDWR)
        try:
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # Raises BlockingIOError while the loader holds it.
        finally:
            os.close(other)
    finally:
        os.kill(child, 9)
        os.waitpid(child, 0)


@pytest.mark.parametrize("seed", ["18446744073709551616", str(10**30), "-1"])
def test_cli_seed_beyond_64_bits_is_one_line(weights, tmp_path, seed):
    code, stderr = cli("generate", "--seed", seed, "--n", "1", "-w", str(weights), "--device", "cpu",
                       "-o", str(tmp_path / "g.png"))
    assert_one_line(code, stderr, "--seed")
