"""`semdir-edit batch` and ``run_batch`` on tiny networks: layout, manifest, bad files, resume, kill, lock."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
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

from semdir_edit.checkpoint import load_model, register_model
from semdir_edit.config import EncoderConfig
from semdir_edit.core.errors import UserError
from semdir_edit.core.images import to_float
from semdir_edit.editing.batch import LOCK, Manifest, find_images, output_stems, read_manifest_lines, run_batch
from semdir_edit.editor import Editor
from semdir_edit.latents import load_latent
from semdir_edit.models.encoder import Encoder

from .conftest import ROOT, make_edit_weights
from .test_cli import assert_user_error

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FAST = ["--method", "optimize", "--steps", "2", "--device", "cpu"]
# One torch thread per CLI process: these networks are tiny, and thread pools only fight over a busy machine's cores.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "semdir_edit", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=ENV)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return make_edit_weights(tmp_path_factory.mktemp("w"), bank_samples=500)


@pytest.fixture(scope="module")
def editor(weights):
    return Editor.from_pretrained(weights, device="cpu")


def domain_image(path: Path, seed: int) -> Path:
    """A 28x28 'article' (bright block on black): used as it is, no photo conversion."""
    rng = np.random.default_rng(seed)
    img = np.zeros((28, 28), np.uint8)
    top, left = rng.integers(2, 8, size=2)
    img[top:top + 18, left:left + 14] = rng.integers(120, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)
    return path


def photo(path: Path) -> Path:
    """A small product photo: a dark article on white (goes through the photo conversion)."""
    img = np.full((60, 40, 3), 250, np.uint8)
    cv2.rectangle(img, (8, 10), (30, 50), (30, 40, 160), -1)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)
    return path


def records_by_path(out: Path) -> dict[str, list[dict]]:
    by_path: dict[str, list[dict]] = {}
    for rec in read_manifest_lines(out / "manifest.jsonl"):
        by_path.setdefault(rec["path"], []).append(rec)
    return by_path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_batch_cli_mirrors_tree_reports_bad_file_and_rerun_skips(weights, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    domain_image(src / "a.png", 0)
    domain_image(src / "sub" / "b.PNG", 1)
    photo(src / "sub" / "deep" / "c.jpg")
    domain_image(src / "sub" / "deep" / "d.png", 2)
    (src / "sub" / "bad.png").write_bytes(np.random.default_rng(0).bytes(200))
    (src / "sub" / "notes.txt").write_text("not an image")
    os.symlink("..", src / "sub" / "loop")  # A symlink loop: must be skipped, not followed forever.
    good = ["a.png", "sub/b.PNG", "sub/deep/c.jpg", "sub/deep/d.png"]

    # Workers > 0: decoding happens in loader processes, and the bad file must not kill them.
    args = ["batch", str(src), str(out), "-d", "pca:0", "--eps", "2", "--recursive", "--batch-size", "2",
            "--workers", "2", "-w", str(weights), *FAST]
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "4 ok, 1 errors" in result.stdout
    bad_lines = [ln for ln in result.stderr.splitlines() if "bad.png" in ln]
    assert len(bad_lines) == 1 and "error: sub/bad.png:" in bad_lines[0]

    by_path = records_by_path(out)
    assert sorted(by_path) == sorted([*good, "sub/bad.png"])
    assert all(len(v) == 1 for v in by_path.values())
    bad = by_path["sub/bad.png"][0]
    assert bad["status"] == "error" and "sub/bad.png" in bad["error"] and bad["outputs"] == []
    assert bad["sha256"] == sha256(src / "sub" / "bad.png")
    options = {rec["options"] for recs in by_path.values() for rec in recs}
    assert len(options) == 1
    for rel in good:
        rec = by_path[rel][0]
        assert rec["status"] == "ok" and rec["error"] is None
        assert rec["sha256"] == sha256(src / rel)
        assert CLASSES[rec["class_index"]] == rec["class_name"] and 0 < rec["confidence"] <= 1
        assert isinstance(rec["psnr"], float) and -1 <= rec["ssim"] <= 1
        stem = rel.rsplit(".", 1)[0]
        assert rec["outputs"] == [f"{stem}.edited.png", f"{stem}.latent.safetensors"]
        edited = cv2.imread(str(out / rec["outputs"][0]), cv2.IMREAD_GRAYSCALE)
        assert edited.shape == (32, 32)
        ws, meta = load_latent(out / rec["outputs"][1], weights_id=Editor.from_pretrained(weights).weights_id)
        assert ws.shape == (8, 16)
        assert (meta["method"], meta["steps"], meta["class_index"], meta["class_name"]) == \
            ("optimize", 2, rec["class_index"], rec["class_name"])
        assert meta["confidence"] == pytest.approx(rec["confidence"]) and meta["source"] == rel
    assert not any(p.name.endswith(".tmp") for p in out.rglob("*"))

    # The same command again (loading in the main process this time): nothing is redone; the bad file is retried
    # and reported again, but the same failure adds no second line (a rerun must not grow the manifest).
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "manifest.jsonl"}
    result = run_cli("batch", str(src), str(out), "-d", "pca:0", "--eps", "2", "--recursive", "--workers", "0",
                     "-w", str(weights), *FAST)
    assert result.returncode == 0, result.stderr
    assert "0 ok, 1 errors, 4 skipped" in result.stdout
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    by_path = records_by_path(out)
    assert all(len(by_path[rel]) == 1 for rel in good) and len(by_path["sub/bad.png"]) == 1


def test_run_batch_api_strip_changed_input_and_options(editor, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    domain_image(src / "x.png", 3)
    domain_image(src / "y.png", 4)
    domain_image(src / "y.bmp", 5)  # Same stem as y.png: both keep their extension in the outputs.
    domain_image(src / "nested" / "z.png", 6)  # Not recursive: left alone.
    kwargs = dict(method="optimize", steps=2, progress=False, log=lambda _: None)

    summary = run_batch(editor, src, out, "random:1", eps="-3:3:3", **kwargs)
    assert (summary["inputs"], summary["ok"], summary["errors"], summary["skipped"]) == (3, 3, 0, 0)
    by_path = records_by_path(out)
    assert sorted(by_path) == ["x.png", "y.bmp", "y.png"]
    assert by_path["y.png"][0]["outputs"] == ["y.png.strip.png", "y.png.latent.safetensors"]
    assert by_path["y.bmp"][0]["outputs"] == ["y.bmp.strip.png", "y.bmp.latent.safetensors"]
    strip = cv2.imread(str(out / "x.strip.png"), cv2.IMREAD_GRAYSCALE)
    assert strip.shape == (36, 3 * 34 + 2)  # Three eps side by side, as `apply` writes a strip.

    # A changed input is redone, the others are skipped.
    domain_image(src / "x.png", 99)
    summary = run_batch(editor, src, out, "random:1", eps="-3:3:3", **kwargs)
    assert (summary["ok"], summary["skipped"]) == (1, 2)
    # A deleted output makes its input due again.
    (out / "y.bmp.latent.safetensors").unlink()
    summary = run_batch(editor, src, out, "random:1", eps="-3:3:3", **kwargs)
    assert (summary["ok"], summary["skipped"]) == (1, 2)
    # Other options that shape the outputs: everything is redone; options that do not (batch size): nothing.
    summary = run_batch(editor, src, out, "random:1", eps=2.0, **kwargs)
    assert (summary["ok"], summary["skipped"]) == (3, 0) and (out / "x.edited.png").is_file()
    summary = run_batch(editor, src, out, "random:1", eps="2", batch_size=1, **kwargs)
    assert (summary["ok"], summary["skipped"]) == (0, 3)
    by_path = records_by_path(out)
    assert len(by_path["x.png"]) == 3 and by_path["x.png"][-1]["outputs"][0] == "x.edited.png"


def test_batch_in_two_processes_writes_what_one_process_writes(editor, tmp_path):
    """Split over two forked processes: the same records and outputs, one manifest (parts merged), and a rerun
    skips what either did."""
    src = tmp_path / "in"
    rels = [f"{'ab'[i % 2]}/img{i:02d}.png" for i in range(7)]
    for i, rel in enumerate(rels):
        domain_image(src / rel, i)
    (src / "a" / "bad.png").write_bytes(b"not a png")
    kwargs = dict(method="optimize", steps=2, progress=False, log=lambda _: None, recursive=True, batch_size=2,
                  eps="-2:2:3")
    one = run_batch(editor, src, tmp_path / "one", "pca:1", processes=1, **kwargs)
    two = run_batch(editor, src, tmp_path / "two", "pca:1", processes=2, **kwargs)
    assert (two["ok"], two["errors"], two["skipped"]) == (one["ok"], one["errors"], one["skipped"]) == (7, 1, 0)
    assert [p.name for p in (tmp_path / "two").glob("manifest*")] == ["manifest.jsonl"]
    by_one, by_two = records_by_path(tmp_path / "one"), records_by_path(tmp_path / "two")
    assert sorted(by_two) == sorted(by_one) == sorted([*rels, "a/bad.png"])
    for rel, (rec,) in by_two.items():
        (ref,) = by_one[rel]
        keys = ("status", "outputs", "class_index")
        assert [rec[k] for k in keys] == [ref[k] for k in keys]
        for name in rec["outputs"]:
            if name.endswith(".png"):
                a = cv2.imread(str(tmp_path / "two" / name), cv2.IMREAD_GRAYSCALE).astype(int)
                b = cv2.imread(str(tmp_path / "one" / name), cv2.IMREAD_GRAYSCALE).astype(int)
                assert np.abs(a - b).max() <= 1
            else:
                assert torch.allclose(load_latent(tmp_path / "two" / name)[0], load_latent(tmp_path / "one" / name)[0],
                                      atol=1e-5)
    again = run_batch(editor, src, tmp_path / "two", "pca:1", processes=2, **kwargs)
    assert (again["ok"], again["errors"], again["skipped"]) == (0, 1, 7)
    assert len(records_by_path(tmp_path / "two")["a/bad.png"]) == 1  # The same failure keeps its one line.
    with pytest.raises(UserError, match="--processes"):
        run_batch(editor, src, tmp_path / "three", "pca:1", processes=0, **kwargs)


def test_an_image_that_cannot_be_edited_is_an_error_record(weights, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    for i in range(3):
        domain_image(src / f"{i}.png", i)
    editor = Editor.from_pretrained(weights, device="cpu")  # Its own networks: the bank is changed below.
    editor.model("direction_bank").boundary_weight.zero_()  # No class boundaries: to:<class> cannot edit.
    messages: list[str] = []
    summary = run_batch(editor, src, out, "to:Coat", method="optimize", steps=1, progress=False, log=messages.append)
    assert (summary["ok"], summary["errors"]) == (0, 3) and len(messages) == 3
    for recs in records_by_path(out).values():
        rec = recs[0]
        assert rec["status"] == "error" and "cannot edit" in rec["error"] and rec["outputs"] == []
        assert rec["class_name"] == CLASSES[rec["class_index"]]  # Inverted and classified, then refused.


def test_user_errors_stop_the_run(editor, weights, tmp_path):
    assert_user_error(run_cli("batch", str(tmp_path / "missing"), str(tmp_path / "out"), "-d", "pca:0",
                              "-w", str(weights), "--device", "cpu"), "input folder not found")
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    domain_image(src / "sub" / "a.png", 0)
    quiet = dict(method="optimize", steps=1, progress=False)
    with pytest.raises(UserError, match="no images found .*--recursive"):
        run_batch(editor, src, tmp_path / "out", "pca:0", **quiet)
    with pytest.raises(UserError, match="invalid --direction"):
        run_batch(editor, src, tmp_path / "out", "bogus:1", recursive=True, **quiet)
    with pytest.raises(UserError, match="out of range"):
        run_batch(editor, src, tmp_path / "out", "pca:7", recursive=True, **quiet)
    with pytest.raises(UserError, match="invalid --eps"):
        run_batch(editor, src, tmp_path / "out", "pca:0", eps="1:2", recursive=True, **quiet)
    with pytest.raises(UserError, match="invalid --layers"):
        run_batch(editor, src, tmp_path / "out", "pca:0", layers="5-2", recursive=True, **quiet)
    with pytest.raises(UserError, match="must differ"):
        run_batch(editor, src, src, "pca:0", recursive=True, **quiet)
    with pytest.raises(UserError, match="encoder"):  # The method's network is missing from the weights.
        run_batch(editor, src, tmp_path / "out", "pca:0", recursive=True, method="encoder", progress=False)
    assert not (tmp_path / "out" / "manifest.jsonl").exists()


def test_second_run_on_the_same_output_is_refused(weights, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    domain_image(src / "a.png", 0)
    out.mkdir()
    with open(out / LOCK, "w") as held:  # Stands for a running batch: it holds the lock for its whole run.
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = run_cli("batch", str(src), str(out), "-d", "pca:0", "-w", str(weights), *FAST)
    assert_user_error(result, "in use by another batch run")
    assert not (out / "manifest.jsonl").exists()


def _manifest_lines(out: Path) -> list[dict]:
    """The manifest's lines and those of its parts (one per process of a run split over processes)."""
    return [rec for path in sorted(out.glob("manifest*.jsonl")) for rec in read_manifest_lines(path)]


def _children(pid: int) -> list[int]:
    result = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in result.stdout.split()]


@pytest.mark.parametrize("processes", [1, 2])
def test_kill_mid_run_then_resume_does_each_input_once(weights, tmp_path, processes):
    src, out = tmp_path / "in", tmp_path / "out"
    rels = [f"{'ab'[i % 2]}/img{i:02d}.png" for i in range(16)]
    for i, rel in enumerate(rels):
        domain_image(src / rel, i)
    args = ["batch", str(src), str(out), "-d", "pca:1", "--recursive", "--batch-size", "1", "-w", str(weights),
            "--method", "optimize", "--steps", "10", "--device", "cpu", "--processes", str(processes)]
    proc = subprocess.Popen([sys.executable, "-m", "semdir_edit", *args], cwd=ROOT, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if _manifest_lines(out):
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the run ended before it could be killed: use more images"
        workers = _children(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=60)
    # The run's worker processes die with it: none goes on writing beside the rerun.
    assert len(workers) == (processes if processes > 1 else 0)
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]
                   for pid in workers)
    done_before = len(_manifest_lines(out))
    assert 1 <= done_before < len(rels)
    # What a kill at a worse moment leaves: a torn manifest line and an output's temp file.
    with open(out / "manifest.jsonl", "ab") as f:
        f.write(b'{"path": "a/img00.png", "sha256": "')
    (out / "b" / ".img15.edited.png.k1ll3d.tmp").parent.mkdir(exist_ok=True)
    (out / "b" / ".img15.edited.png.k1ll3d.tmp").write_bytes(b"\x89PNG half")

    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert f"{len(rels) - done_before} ok, 0 errors, {done_before} skipped" in result.stdout
    raw = (out / "manifest.jsonl").read_bytes()
    assert raw.endswith(b"\n") and b'"sha256": "\n' not in raw  # The torn line was cut off, not glued onto.
    by_path = records_by_path(out)
    assert sorted(by_path) == sorted(rels)
    assert all(len(recs) == 1 and recs[0]["status"] == "ok" for recs in by_path.values())
    for recs in by_path.values():
        edited, latent = recs[0]["outputs"]
        assert cv2.imread(str(out / edited), cv2.IMREAD_GRAYSCALE).shape == (32, 32)
        load_latent(out / latent)
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_find_images_skips_loops_and_the_output_folder(tmp_path):
    src = tmp_path / "in"
    domain_image(src / "a.PNG", 0)
    domain_image(src / "s" / "b.jpeg", 1)
    domain_image(src / "out" / "old.edited.png", 2)  # An output folder inside the input folder.
    (src / "s" / "c.TIFF").write_bytes(b"x")
    (src / "s" / "readme.md").write_text("x")
    os.symlink(src, src / "s" / "up")
    os.symlink(src / "s", src / "s2")  # The same folder twice: visited once.
    assert find_images(src) == ["a.PNG"]
    # The folder is listed under its real path, not under the link that sorts after it.
    assert find_images(src, recursive=True, exclude=src / "out") == ["a.PNG", "s/b.jpeg", "s/c.TIFF"]
    os.rename(src / "s2", src / "r")  # A link that sorts first: still the real path.
    assert find_images(src, recursive=True, exclude=src / "out") == ["a.PNG", "s/b.jpeg", "s/c.TIFF"]
    with pytest.raises(UserError, match="not found"):
        find_images(tmp_path / "nope")
    assert output_stems(["a/b.png", "a/b.jpg", "a/c.png", "b.png"]) == {
        "a/b.jpg": "a/b.jpg", "a/b.png": "a/b.png", "a/c.png": "a/c", "b.png": "b"}


def test_manifest_cuts_a_torn_line_and_reads_complete_ones(tmp_path):
    path = tmp_path / "manifest.jsonl"
    path.write_bytes(b'{"path": "a.png", "status": "ok"}\nnot json\n{"path": "b.png", "sta')
    assert [r["path"] for r in read_manifest_lines(path)] == ["a.png"]
    m = Manifest(path)
    m.append({"path": "c.png", "status": "ok"})
    m.close()
    assert [r["path"] for r in read_manifest_lines(path)] == ["a.png", "c.png"]
    assert json.loads(path.read_bytes().splitlines()[-1])["path"] == "c.png"


def test_config_invert_section_is_used_and_changes_the_options(weights, tmp_path):
    """`batch --config` takes its inversion settings from the config's `invert` section: a different lr is a different
    run (redone, new options hash), the same config again is skipped."""
    src, out = tmp_path / "in", tmp_path / "out"
    domain_image(src / "a.png", 0)
    config = tmp_path / "cfg.yaml"
    cfg = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    cfg.setdefault("invert", {}).update(lr=0.05, lambda_dom=0.5)
    config.write_text(yaml.safe_dump(cfg))
    base = ["batch", str(src), str(out), "-d", "pca:0", "-w", str(weights), *FAST]
    assert "1 ok" in run_cli(*base).stdout
    first = read_manifest_lines(out / "manifest.jsonl")[-1]["options"]
    result = run_cli(*base, "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "1 ok, 0 errors" in result.stdout                 # Not skipped: the inversion settings differ.
    second = read_manifest_lines(out / "manifest.jsonl")[-1]["options"]
    assert second != first
    assert "0 ok, 0 errors, 1 skipped" in run_cli(*base, "--config", str(config)).stdout


def test_classes_come_from_the_reader_thread_and_match_the_classifier(weights, tmp_path):
    """The reader thread classifies each chunk ahead; the manifest's classes are the classifier's on the inputs."""
    shutil.copytree(weights, tmp_path / "w")
    G = load_model(tmp_path / "w", "generator")
    E = Encoder(EncoderConfig(channels=[8, 8, 8, 8], num_ws=G.num_ws, w_dim=G.w_dim), w_avg=G.mapping.w_avg)
    register_model(tmp_path / "w", "encoder", E, command="test")  # Random: only the plumbing is tested.
    editor = Editor.from_pretrained(tmp_path / "w", device="cpu")
    src, out = tmp_path / "in", tmp_path / "out"
    paths = [domain_image(src / f"{i}.png", 20 + i) for i in range(5)]
    summary = run_batch(editor, src, out, "random:1", eps=2.0, method="encoder", batch_size=2, progress=False,
                        log=lambda _: None)
    assert summary["ok"] == 5
    domains = torch.stack([editor.load(p)[0] for p in paths])
    idx, conf = editor.classify(to_float(domains))
    by_path = records_by_path(out)
    for i, p in enumerate(paths):
        rec = by_path[p.name][0]
        assert (rec["class_index"], rec["confidence"]) == (int(idx[i]), pytest.approx(float(conf[i]), abs=1e-6))

    # invert_and_edit takes the given classes (it does not classify again), for every method.
    given = (torch.tensor([7, 1]), torch.tensor([0.25, 0.5]))
    for method in ("encoder", "optimize"):
        results = editor.invert_and_edit(domains[:2], "random:1", [2.0], method=method, steps=1, names=["a", "b"],
                                         classes=given)
        assert [(res.class_index, res.confidence) for res, _, _ in results] == [(7, 0.25), (1, 0.5)]


def test_batch_strips_are_labelled_and_scaled_like_apply_and_raw_with_no_labels(weights, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    domain_image(src / "a.png", 0)
    base = ["batch", str(src), str(out), "-d", "pca:0", "--eps", "-3:3:3", "-w", str(weights), "--quiet", *FAST]
    result = run_cli(*base)  # Defaults: as apply, 4x tiles, columns and row named.
    assert result.returncode == 0 and result.stderr == "", result.stderr
    strip = cv2.imread(str(out / "a.strip.png"), cv2.IMREAD_GRAYSCALE)
    raw = (36 * 4, (3 * 34 + 2) * 4)
    assert strip.shape[0] == raw[0] + 18 and strip.shape[1] > raw[1]  # A header band and a left band of labels.
    assert len(np.unique(strip[:18])) > 2                              # Text in the header, not an empty band.

    result = run_cli(*base, "--scale", "2", "--no-labels")  # Options that change the PNG: redone.
    assert result.returncode == 0 and "1 ok" in result.stdout, result.stderr
    assert cv2.imread(str(out / "a.strip.png"), cv2.IMREAD_GRAYSCALE).shape == (36 * 2, (3 * 34 + 2) * 2)
