"""What a real folder of user files holds, driven through the real CLI: a one-line error naming the file for each
bad input, never a traceback, nothing half-written; plus fuzzing of the image and latent loaders and a kill during
training.

The corpus is built here; ``CORPUS_COUNTS`` sums what the tests tried (the README quotes it).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import save_file

from semdir_edit.checkpoint import load_training_state, weights_id
from semdir_edit.core.errors import UserError
from semdir_edit.data.photo import load_domain_image
from semdir_edit.latents import _decode_value, load_latent, save_latent

from .conftest import ROOT, make_edit_weights, requires_dataset
from .test_cli import run_cli


def _product_shot(h: int = 120, w: int = 90) -> np.ndarray:
    img = np.full((h, w, 3), 245, np.uint8)
    cv2.rectangle(img, (w // 5, h // 4), (4 * w // 5, 9 * h // 10), (40, 50, 150), -1)
    return img


def _png(img: np.ndarray) -> bytes:
    return cv2.imencode(".png", img)[1].tobytes()


def _pil_bytes(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def build_corpus(root: Path) -> dict[str, str]:
    """Write the corpus into ``root``; returns file name -> expected outcome: "ok", "error" or "any"
    ("any": either is right, e.g. a 1x1 image; what matters is a clean answer)."""
    root.mkdir(parents=True, exist_ok=True)
    shot = _product_shot()
    rgb = Image.fromarray(shot[:, :, ::-1].copy())
    files: dict[str, tuple[bytes, str]] = {
        "photo.jpg": (cv2.imencode(".jpg", shot)[1].tobytes(), "ok"),
        "photo.png": (_png(shot), "ok"),
        "grey.png": (_png(cv2.cvtColor(shot, cv2.COLOR_BGR2GRAY)), "ok"),
        "palette.png": (_pil_bytes(rgb.convert("P"), "PNG"), "ok"),
        "deep16.png": (cv2.imencode(".png", (cv2.cvtColor(shot, cv2.COLOR_BGR2GRAY).astype(np.uint16) * 257))[1]
                       .tobytes(), "ok"),
        "alpha.png": (_pil_bytes(rgb.convert("RGBA"), "PNG"), "ok"),
        "cmyk.jpg": (_pil_bytes(rgb.convert("CMYK"), "JPEG"), "ok"),
        "animated.gif": (_animated_gif(rgb), "ok"),
        "exif-rotated.jpg": (_exif_rotated(rgb), "ok"),
        "élégant 黒.png": (_png(shot), "ok"),
        "domain.png": (_png(np.pad(np.full((20, 12), 200, np.uint8), ((6, 6), (10, 10)))), "ok"),
        "empty.png": (b"", "error"),
        "truncated.jpg": (cv2.imencode(".jpg", shot)[1].tobytes()[:300], "error"),
        "random.png": (np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes(), "error"),
        "text.jpg": (b"this is not an image\n", "error"),
        "blank.png": (_png(np.full((64, 64, 3), 255, np.uint8)), "error"),
        "bomb.png": (_bomb_png(60_000, 60_000), "error"),
        "one-pixel.png": (_png(np.zeros((1, 1, 3), np.uint8)), "any"),
        "sliver.png": (_png(np.pad(np.zeros((2, 900, 3), np.uint8), ((0, 0), (0, 0), (0, 0))) + 30), "any"),
    }
    expected = {}
    for name, (data, outcome) in files.items():
        (root / name).write_bytes(data)
        expected[name] = outcome
    (root / "folder.png").mkdir()                       # A directory with an image name.
    expected["folder.png"] = "error"
    os.symlink("loop.png", root / "loop.png")           # A symlink to itself.
    expected["loop.png"] = "error"
    odd = os.fsdecode(b"latin1-\xe9t\xe9.png")           # A file name that is not UTF-8.
    (root / odd).write_bytes(_png(shot))
    expected[odd] = "ok"
    return expected


def _animated_gif(img: Image.Image) -> bytes:
    frames = [img.convert("P"), Image.new("RGB", img.size, (255, 255, 255)).convert("P")]
    return _pil_bytes(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def _exif_rotated(img: Image.Image) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display.
    return _pil_bytes(img.transpose(Image.Transpose.ROTATE_90), "JPEG", exif=exif.tobytes())


def _bomb_png(w: int, h: int) -> bytes:
    """A valid PNG header declaring w x h pixels, with almost no data."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return make_edit_weights(tmp_path_factory.mktemp("w"), bank_samples=300)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return root, build_corpus(root)


def _no_traceback(result: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.stderr[-3000:]


def _run(*args: str) -> subprocess.CompletedProcess:
    """Like run_cli, but arguments may hold non-UTF-8 file names (passed as bytes, as a shell would)."""
    argv = [os.fsencode(sys.executable), b"-m", b"semdir_edit", *(os.fsencode(a) for a in args)]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, timeout=600)


def _text(b: bytes) -> str:
    return b.decode("utf-8", "backslashreplace")


def test_invert_over_the_whole_corpus(weights, corpus, tmp_path):
    root, expected = corpus
    names = sorted(expected)
    result = _run("invert", *(str(root / n) for n in names), "-w", str(weights), "-o", str(tmp_path / "out"),
                  "--method", "optimize", "--steps", "1")
    stderr = _text(result.stderr)
    assert "Traceback" not in stderr, stderr[-3000:]
    assert result.returncode == 2  # Some inputs failed; the others were still written.
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    for name in names:
        shown = _text(os.fsencode(name))
        named = [line for line in errors if shown in line or name in line]
        stem = Path(name).stem
        written = (tmp_path / "out" / f"{stem}.latent.safetensors").exists()
        if expected[name] == "error":
            assert len(named) >= 1 and not written, (name, named)
        elif expected[name] == "ok":
            assert written and not named, (name, named)
        else:
            assert written != bool(named), (name, named)  # Exactly one clean answer.
    leftovers = [p for p in (tmp_path / "out").rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers


def test_single_bad_file_is_one_line_and_exit_2(weights, corpus, tmp_path):
    root, _ = corpus
    for name, needle in (("empty.png", "empty.png"), ("bomb.png", "pixel"), ("folder.png", "folder.png"),
                         ("loop.png", "loop.png"), ("missing.png", "missing.png")):
        result = run_cli("invert", str(root / name), "-w", str(weights), "-o", str(tmp_path), "--method", "optimize",
                         "--steps", "1")
        assert result.returncode == 2, (name, result.stderr)
        _no_traceback(result)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], (name, lines)


def test_batch_over_the_corpus_records_every_file_and_goes_on(weights, corpus, tmp_path):
    root, expected = corpus
    out = tmp_path / "batch"
    result = _run("batch", str(root), str(out), "-d", "pca:0", "--eps", "1", "--method", "optimize", "--steps", "1",
                  "-w", str(weights))
    stderr = _text(result.stderr)
    assert "Traceback" not in stderr, stderr[-3000:]
    assert result.returncode == 0, stderr[-2000:]
    lines = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    status = {Path(r["path"]).name: r["status"] for r in lines}
    for name, outcome in expected.items():
        if name in ("folder.png",):
            continue  # A directory is not an input file; listing it or skipping it are both clean.
        key = name if name in status else _text(os.fsencode(name))
        if outcome == "any":
            assert key in status, name
        elif name == "loop.png":
            assert status.get(key, "error") == "error"
        else:
            assert status.get(key) == outcome, (name, status.get(key))


def test_bad_latent_files_are_refused_cleanly(weights, tmp_path):
    from semdir_edit.editor import Editor

    ed = Editor.from_pretrained(weights, device="cpu")
    ws = ed.G.broadcast(ed.G.mapping(torch.randn(1, 16)))[0]
    cases = {
        "corrupt.latent.safetensors": b"\x00\x01garbage",
        "pickle.latent.safetensors": pickle.dumps({"ws": ws}),
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    save_file({"x": torch.zeros(2)}, str(tmp_path / "foreign.latent.safetensors"))
    save_latent(tmp_path / "other.latent.safetensors", ws, {"weights_id": "0" * 16, "class_index": 0})
    for name, needle in (("corrupt.latent.safetensors", "not a valid latent file"),
                         ("pickle.latent.safetensors", "not a valid latent file"),
                         ("foreign.latent.safetensors", "not a semdir-edit latent file"),
                         ("other.latent.safetensors", "made with other weights")):
        result = run_cli("apply", str(tmp_path / name), "-d", "pca:0", "-w", str(weights), "-o",
                         str(tmp_path / "x.png"))
        assert result.returncode == 2, (name, result.stderr)
        _no_traceback(result)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], (name, lines)
        assert not (tmp_path / "x.png").exists()


HEADERS = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"BM", b"RIFF\x00\x00\x00\x00WEBP", b"II*\x00"]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(header=st.sampled_from(HEADERS), body=st.binary(max_size=2000))
def test_fuzz_image_loader(header, body):
    try:
        img, notes = load_domain_image(header + body, 32, name="fuzz")
    except UserError as exc:
        assert "\n" not in str(exc) and str(exc)
    else:
        assert img.dtype == torch.uint8 and img.shape == (1, 32, 32) and isinstance(notes, list)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=600), prefix=st.sampled_from([b"", b"\x40\x00\x00\x00\x00\x00\x00\x00{"]))
def test_fuzz_latent_loader(tmp_path, data, prefix):
    path = tmp_path / "fuzz.latent.safetensors"
    path.write_bytes(prefix + data)
    with pytest.raises(UserError) as info:
        load_latent(path, "0" * 16, 8, 16)
    assert "\n" not in str(info.value)


@requires_dataset
def test_kill_during_training_loses_nothing(tmp_path):
    """SIGKILL a GAN run mid-way, twice; every checkpoint left behind loads, and --resume finishes the run."""
    cfg = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    cfg["train_gan"].update(steps=60, checkpoint_every=2, sample_every=1000)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(cfg))
    run, weights_dir = tmp_path / "run", tmp_path / "weights"
    argv = [sys.executable, "-m", "semdir_edit", "train", "gan", "--config", str(config), "--out", str(run),
            "--weights", str(weights_dir), "--device", "cpu"]
    for attempt in range(2):
        proc = subprocess.Popen(argv + (["--resume"] if attempt else []), cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        deadline = time.monotonic() + 240
        start_mtime = (run / "training-state.pt").stat().st_mtime_ns if (run / "training-state.pt").exists() else 0
        while time.monotonic() < deadline and proc.poll() is None:
            state = run / "training-state.pt"
            if state.exists() and state.stat().st_mtime_ns != start_mtime:
                time.sleep(0.3)  # Let it get into the middle of the next steps (or of a write).
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state = load_training_state(run / "training-state.pt")  # Complete, never half-written.
        assert 0 < int(state["step"]) < 60
    result = subprocess.run(argv + ["--resume"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert weights_id(weights_dir)  # The finished run registered its weights.
    assert not list(run.glob(".*.tmp"))  # Temp files of killed writes were cleared when the run resumed.


def _domain_articles(folder: Path, n: int) -> None:
    """``n`` small 28x28 'articles' (a bright block on black, used as domain images): img00.png, img01.png, ..."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = np.zeros((28, 28), np.uint8)
        img[3 + i % 7:24, 5:18 + i % 6] = 90 + (4 * i) % 160
        cv2.imwrite(str(folder / f"img{i:02d}.png"), img)


@pytest.fixture
def small_disk(tmp_path):
    """A 96 KiB tmpfs (root only): what a full disk does to a run, for real rather than mocked.

    tmpfs counts whole 4 KiB pages: an input's strip and latent take 12 KiB, a chunk of two 24 KiB. With two
    processes writing their first chunks side by side, 48 KiB could fill before either chunk (and its manifest line)
    was complete; 96 KiB always lets one chunk through, and never all twelve inputs."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@pytest.mark.parametrize("processes", ["1", "2"])
def test_full_disk_stops_batch_cleanly_and_the_rerun_resumes(weights, small_disk, tmp_path, processes):
    src, out = tmp_path / "in", small_disk / "out"
    _domain_articles(src, 12)
    args = ("batch", str(src), str(out), "-d", "pca:0", "--eps", "-2:2:5", "--method", "optimize", "--steps", "1",
            "--batch-size", "2", "-w", str(weights), "--processes", processes)
    full = _run(*args)
    stderr = _text(full.stderr)
    assert full.returncode == 2, stderr[-2000:]
    assert "Traceback" not in stderr
    assert "No space left on device" in stderr.strip().splitlines()[-1]
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    # Split over processes, the lines may still be in the processes' parts (no room to merge them): the rerun
    # merges them first.
    done = [json.loads(line) for part in out.glob("manifest*.jsonl") for line in part.read_text().splitlines()]
    assert 0 < len(done) < 12  # Some fitted, not all.
    for rec in done:  # Each line written means its outputs are complete.
        strip, latent = rec["outputs"]
        assert cv2.imread(str(out / strip), cv2.IMREAD_GRAYSCALE) is not None
        load_latent(out / latent)

    subprocess.run(["mount", "-o", "remount,size=4m", str(small_disk)], check=True)  # Space freed.
    again = _run(*args)
    assert again.returncode == 0, _text(again.stderr)[-2000:]
    assert f"{12 - len(done)} ok, 0 errors, {len(done)} skipped" in _text(again.stdout)
    lines = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["path"] for r in lines) == [f"img{i:02d}.png" for i in range(12)]  # Nothing done twice.


@pytest.mark.parametrize("command", ["invert", "batch", "batch-2-processes"])
def test_ctrl_c_mid_run_is_one_line_and_leaves_only_complete_outputs(weights, command, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    # invert writes after each batch of 64: with 400 inputs the first outputs appear while five batches remain (with
    # 40, all of them came at the very end and SIGINT could land while the process was already exiting; with 150,
    # once the networks ran channels-last, the last two batches sometimes finished inside the 0.2 s wait).
    _domain_articles(src, 400 if command == "invert" else 40)
    inputs = sorted(str(p) for p in src.iterdir())
    args = (["invert", *inputs, "-o", str(out)] if command == "invert" else
            ["batch", str(src), str(out), "-d", "pca:0", "--batch-size", "2",
             "--processes", "2" if command.endswith("processes") else "1"])
    proc = subprocess.Popen([sys.executable, "-m", "semdir_edit", *args, "-w", str(weights), "--method", "optimize",
                             "--steps", "30", "--device", "cpu"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            # A shell started in the background (CI, nohup) hands its children SIGINT ignored.
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None and not (out.exists() and any(out.iterdir())):
        time.sleep(0.02)
    time.sleep(0.2)
    assert proc.poll() is None, "the run ended before Ctrl-C: give it more work"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    stderr = _text(err)
    assert proc.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1] == "interrupted"
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    for path in out.rglob("*.latent.safetensors"):  # Whatever was written is complete.
        load_latent(path)
    for path in out.rglob("*.png"):
        assert cv2.imread(str(path)) is not None, path
    if command.startswith("batch"):
        assert [p.name for p in out.glob("manifest*")] == ["manifest.jsonl"]   # The processes' parts merged.
        lines = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
        assert all((out / o).is_file() for rec in lines for o in rec["outputs"])


def _json_or_text(value: str):
    """How latent metadata values were always read: JSON when it parses, else the text itself."""
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), st.sampled_from(["t-shirt.png", "true", "nan.png", "NaN", "Infinity", " 3", "[x", "{}",
                                             "-", "null", "f", "\"q\"", "1e5", "Sandal", ""])))
def test_latent_metadata_values_read_as_before(value):
    """The fast reader (JSON tried only on text that can start JSON) reads every value as json-or-text did."""
    got, want = _decode_value(value), _json_or_text(value)
    assert got == want or (got != got and want != want)  # NaN equals nothing, itself included.
    assert type(got) is type(want)


def test_latent_file_round_trip_keeps_metadata(tmp_path):
    meta = {"weights_id": "abc", "method": "indomain", "steps": 100, "class_index": 7, "class_name": "Sneaker",
            "confidence": 0.875, "source": "photos/t-shirt 1.jpg", "notes": ["cropped"]}
    ws = torch.randn(10, 256)
    save_latent(tmp_path / "a.latent.safetensors", ws, meta)
    got, got_meta = load_latent(tmp_path / "a.latent.safetensors", "abc", 10, 256)
    assert torch.equal(got, ws) and got_meta == {**meta, "format": "semdir-edit latent v1"}
    with pytest.raises(UserError, match="latent file not found"):
        load_latent(tmp_path / "missing.latent.safetensors")
    with pytest.raises(UserError, match="latent file not found"):
        load_latent(tmp_path)
    bad = tmp_path / "inf.latent.safetensors"
    save_latent(bad, torch.full((10, 256), float("inf")), meta)
    with pytest.raises(UserError, match="NaN or Inf"):
        load_latent(bad)
