"""`semdir-edit bench` in quick mode on tiny weights (every figure present and sane; no speed asserted), and the
pieces the speed work added: the background writer, batched apply from latent files, and the perceptual target."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from semdir_edit.checkpoint import load_model, register_model
from semdir_edit.config import EncoderConfig, load_config
from semdir_edit.core.errors import UserError
from semdir_edit.core.images import make_grid
from semdir_edit.core.writer import BackgroundWriter, read_ahead
from semdir_edit.editing.apply import apply_files
from semdir_edit.editor import Editor
from semdir_edit.evaluation.bench import TASKS, format_table, run_bench, targets_met
from semdir_edit.latents import save_latent
from semdir_edit.models.encoder import Encoder
from semdir_edit.ops.perceptual import PerceptualLoss

from .conftest import ROOT, make_edit_weights

ENV_THREADS = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """The tiny editing weights plus a (random) domain-guided encoder: everything the bench runs."""
    path = make_edit_weights(tmp_path_factory.mktemp("bench-w"), bank_samples=200)
    G = load_model(path, "generator")
    cfg = load_config(ROOT / "configs" / "tiny.yaml")
    E = Encoder(EncoderConfig(channels=cfg.encoder.channels, num_ws=G.num_ws, w_dim=G.w_dim), w_avg=G.mapping.w_avg)
    register_model(path, "encoder", E, command="test")
    return path


def check_figures(figures: dict) -> None:
    for task in TASKS:
        for key in (f"{task}_per_s", f"{task}_floor_per_s", f"{task}_floor_ratio"):
            assert isinstance(figures[key], float) and math.isfinite(figures[key]) and figures[key] > 0, key
        assert figures[f"{task}_floor_ratio"] < 100  # Sane: the project's path is never 100x its floor.
    assert math.isfinite(figures["invert_s_per_image"]) and figures["invert_s_per_image"] > 0
    assert figures["peak_mem_mb"] > 0 and math.isfinite(figures["peak_mem_mb"])
    assert figures["device"] == "cpu" and figures["threads"] >= 1 and figures["torch_version"] == torch.__version__
    assert figures["direction"] == "pca:0"  # The tiny weights have no deformators.
    if "ui_edit_ms" in figures:
        assert figures["ui_edit_ms"] > 0 and figures["ui_edit_locked_ms"] > 0
    else:
        assert figures["ui"] != "measured"


def test_quick_bench_reports_every_figure(weights):
    figures = run_bench(weights, "cpu", quick=True)
    check_figures(figures)
    json.dumps(figures, allow_nan=False)  # Flat and JSON-able.
    table = format_table(figures)
    for task in TASKS:
        assert task in table
    assert set(targets_met(figures)) == {"invert", "apply", "batch"}
    for task in targets_met(figures):   # Quick sizes give no verdict; a full run's table does (below).
        assert "not measured" in next(line for line in table.splitlines() if line.startswith(task))
    full = format_table({**figures, "quick": False})
    for task, met in targets_met(figures).items():
        assert ("met" if met else "NOT MET") in next(line for line in full.splitlines() if line.startswith(task))


def test_bench_cli_writes_json(weights, tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, "-m", "semdir_edit", "bench", "--weights", str(weights), "--device", "cpu",
                             "--quick", "--threads", "1", "--json", str(out)], cwd=ROOT, capture_output=True,
                            text=True, timeout=300, env={**os.environ, **ENV_THREADS})
    assert result.returncode == 0, result.stderr
    figures = json.loads(out.read_text())
    check_figures(figures)
    assert figures["threads"] == 1
    assert "batch" in result.stdout and "ratio" in result.stdout
    # Tiny sizes measure nothing, so the table gives no verdict on the targets.
    assert "not measured" in result.stdout and " met" not in result.stdout and "NOT MET" not in result.stdout


def test_bench_refuses_a_missing_direction(weights):
    with pytest.raises(UserError, match="deformators"):
        run_bench(weights, "cpu", quick=True, direction="global:0")


# ----------------------------------------------------------------------------------------------- what the fixes added

def test_background_writer_keeps_order_and_reports_the_first_failure():
    done: list[int] = []

    def job(i: int) -> None:
        time.sleep(0.001 * (i % 3))
        done.append(i)

    with BackgroundWriter(max_pending=4) as writer:
        for i in range(20):
            writer.submit(job, i)
    assert done == list(range(20))

    ran: list[int] = []

    def failing(i: int) -> None:
        if i == 3:
            raise UserError("disk full")
        ran.append(i)

    writer = BackgroundWriter(max_pending=2)
    with pytest.raises(UserError, match="disk full"):
        for i in range(10):
            writer.submit(failing, i)
        writer.close()
    writer.close()  # Idempotent once failed.
    assert ran == [0, 1, 2]  # Nothing after the failed job ran.
    assert not any(t.name.startswith("semdir-writer") and t.is_alive() for t in threading.enumerate())


def test_background_writer_with_several_workers_runs_every_job_and_reports_a_failure():
    done: list[int] = []
    with BackgroundWriter(max_pending=4, workers=3) as writer:
        for i in range(30):
            writer.submit(done.append, i)
    assert sorted(done) == list(range(30))  # Every job, in no set order.

    def failing(i: int) -> None:
        if i == 5:
            raise UserError("disk full")

    writer = BackgroundWriter(max_pending=2, workers=3)
    with pytest.raises(UserError, match="disk full"):
        for i in range(40):
            writer.submit(failing, i)
        writer.close()
    writer.close()
    assert not any(t.name.startswith("semdir-writer") and t.is_alive() for t in threading.enumerate())


@pytest.mark.parametrize("processes", [1, 2])
def test_apply_files_writes_what_editor_apply_gives(weights, tmp_path, processes):
    """In this process or split over forked ones: the same PNGs, and a bad file in any share is the error."""
    editor = Editor.from_pretrained(weights, "cpu")
    gen = torch.Generator().manual_seed(0)
    ws = editor.G.broadcast(editor.G.mapping(torch.randn(5, editor.G.z_dim, generator=gen))).detach()
    paths = []
    for i in range(5):
        paths.append(tmp_path / "lat" / f"im{i}.latent.safetensors")
        save_latent(paths[-1], ws[i], {"weights_id": editor.weights_id, "class_index": i % 2})
    written = apply_files(editor, paths, tmp_path / "out", "pca:1", eps=[-1.0, 2.0], batch_size=2, scale=1,
                          processes=processes)
    assert written == [tmp_path / "out" / f"im{i}.png" for i in range(5)]
    expected = editor.apply(ws, "pca:1", [-1.0, 2.0], class_index=0)
    for i, path in enumerate(written):
        png = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        # One torch thread per process may round a last bit differently from this process's threads.
        assert np.abs(png.astype(int) - make_grid(expected[i], nrow=2, pad=2).astype(int)).max() <= 1
    # The missing file is in the second chunk: a forked process's share when there are two.
    with pytest.raises(UserError, match="not found"):
        apply_files(editor, [paths[0], tmp_path / "missing.latent.safetensors"], tmp_path / "out", "pca:0",
                    batch_size=1, processes=processes)


def test_fork_map_returns_in_order_and_raises_what_a_worker_raised():
    import os

    from semdir_edit.core.parallel import fork_map

    pid = os.getpid()
    assert fork_map(lambda x: (x * 2, os.getpid() == pid, torch.get_num_threads()), [1, 2, 3]) == \
        [(2, True, 1), (4, False, 1), (6, False, 1)]

    def fail(x: int) -> int:
        if x == 2:
            raise UserError(f"bad share {x}")
        return x

    with pytest.raises(UserError, match="bad share 2"):
        fork_map(fail, [1, 2])
    with pytest.raises(RuntimeError, match="died"):
        fork_map(lambda x: os._exit(3) if x else x, [0, 1])


def test_perceptual_target_gives_exactly_the_distance(weights):
    C = load_model(weights, "classifier")
    F = PerceptualLoss(C)
    torch.manual_seed(0)
    x0, x1 = torch.rand(4, 1, 32, 32) * 2 - 1, (torch.rand(4, 1, 32, 32) * 2 - 1).requires_grad_(True)
    target = F.target(x0)
    assert all(not t.requires_grad for t in target)
    d = F.distance(target, x1)
    assert torch.equal(d, F(x0, x1))
    (grad,) = torch.autograd.grad(d.sum(), x1)
    (expected,) = torch.autograd.grad(F(x0, x1).sum(), x1)
    assert torch.equal(grad, expected)
    with pytest.raises(ValueError, match="target"):
        F.distance(target, x1[:2])


@pytest.mark.parametrize("direction", ["pca:0", "to:Coat"])
def test_fused_encoder_path_matches_invert_then_apply(weights, direction):
    """invert_and_edit renders reconstructions and edits in one G call for the encoders: same results as the
    separate calls (up to float rounding of a different batch size), same refusals."""
    from semdir_edit.editor import Failed, Inverted

    ed = Editor.from_pretrained(weights, device="cpu")
    domains = torch.randint(0, 256, (6, 1, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    names = [f"img{i}" for i in range(6)]
    fused = ed.invert_and_edit(domains, direction, [-2.0, 1.5], method="encoder", steps=0, names=names)
    separate = ed.invert(domains, method="encoder", names=names, perceptual=False)
    assert len(fused) == 6
    for (res, images, error), ref in zip(fused, separate, strict=True):
        assert isinstance(res, Inverted) and isinstance(ref, Inverted) and not isinstance(res, Failed)
        assert torch.allclose(res.ws, ref.ws) and torch.allclose(res.reconstruction, ref.reconstruction, atol=1e-5)
        assert res.class_index == ref.class_index and abs(res.psnr - ref.psnr) < 1e-3
        try:
            want = ed.apply(ref.ws, direction, [-2.0, 1.5], class_index=ref.class_index)[0]
        except UserError as exc:  # to:Coat on an image the classifier already calls a coat.
            assert images is None and error == str(exc)
            continue
        assert error is None and images.shape == (2, 1, 32, 32) and torch.allclose(images, want, atol=1e-5)


def test_read_ahead_keeps_order_raises_in_order_and_stops_with_the_consumer():
    assert list(read_ahead(iter(range(50)), depth=3)) == list(range(50))

    def failing():
        yield 1
        yield 2
        raise UserError("bad file")

    got: list[int] = []
    with pytest.raises(UserError, match="bad file"):
        for item in read_ahead(failing()):
            got.append(item)
    assert got == [1, 2]  # The items made before the failure arrive first.

    made: list[int] = []

    def counting():
        for i in range(1000):
            made.append(i)
            yield i

    items = read_ahead(counting(), depth=2)
    assert [next(items) for _ in range(3)] == [0, 1, 2]
    items.close()  # The consumer stops early (an error, Ctrl-C): the helper stops too, it does not read on.
    deadline = time.monotonic() + 5
    while any(t.name == "semdir-reader" and t.is_alive() for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the reader thread kept running"
        time.sleep(0.01)
    assert len(made) <= 3 + 2 + 1  # What was consumed, the queue's depth, and the item in hand.


def test_read_ahead_runs_without_autograd():
    w = torch.ones(3, requires_grad=True)
    assert next(w * k for k in (2,)).requires_grad  # Made on this thread: autograd on.
    (z,) = list(read_ahead(w * k for k in (2,)))  # Made on the helper thread: off.
    assert not z.requires_grad and torch.equal(z, torch.full((3,), 2.0))
