"""Beyond one process: `torchrun ... -m semdir_edit batch|train` with gloo and 2 processes on the tiny config,
and the sharding / manifest-merging helpers in-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from semdir_edit.checkpoint import load_model, load_training_state, read_manifest, register_model
from semdir_edit.core import distributed
from semdir_edit.core.errors import UserError
from semdir_edit.editing.batch import MANIFEST, manifest_part, merge_manifest_parts, read_manifest_lines, run_batch
from semdir_edit.editor import Editor
from semdir_edit.training.common import checkpoint_rng, rank_seed, start_rng

from .conftest import ROOT, make_edit_weights, requires_dataset
from .test_batch import domain_image, records_by_path

# One torch thread per process (2 processes share 2 cores); no torchrun variables inherited from the caller.
ENV = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                        "MASTER_PORT")} | {"OMP_NUM_THREADS": "1"}


def torchrun(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node=2 --standalone -m semdir_edit ARGS` (gloo: the tests run on CPU)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
           "-m", "semdir_edit", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=ENV)


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr


# ----------------------------------------------------------------------------------------------- in-process

def test_shard_is_a_stable_partition():
    items = [f"{i:02d}.png" for i in range(11)]
    shards = [distributed.shard(items, r, 3) for r in range(3)]
    assert shards[0] == ["00.png", "03.png", "06.png", "09.png"]
    assert sorted(x for s in shards for x in s) == items
    assert [distributed.shard(items, r, 3) for r in range(3)] == shards  # The same split on every call.
    assert distributed.shard(items) == items  # Not under torchrun: everything.


def test_single_process_helpers_are_no_ops(monkeypatch):
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    distributed.barrier()
    assert distributed.main_first(lambda: 7) == 7
    assert distributed.all_gather_object("x") == ["x"]
    assert distributed.any_true(True) and not distributed.any_true(False)
    assert distributed.mean({"a": 1.5}) == {"a": 1.5}
    module = torch.nn.Linear(2, 2)
    assert distributed.ddp(module, torch.device("cpu")) is module
    with distributed.session("cpu") as device:
        assert device == torch.device("cpu") and not distributed.is_initialized()
    assert distributed.per_rank_batch(8, "b") == 8
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    with pytest.raises(UserError, match="b = 8 is the global batch and must be a multiple of the number of proc"):
        distributed.per_rank_batch(8, "b")


def _collectives_worker(rank: int, init_file: str, out_dir: str) -> None:
    """One of two gloo processes (spawned by the test below): the helpers' answers, written to out_dir/<rank>."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        got: dict = {"rank": distributed.rank(), "main": distributed.is_main(),
                     "value": distributed.main_first(lambda: {"from": distributed.rank()}),
                     "any": distributed.any_true(rank == 1), "mean": distributed.mean({"a": float(rank)}),
                     "gathered": distributed.all_gather_object(rank * 10),
                     "shard": distributed.shard(list("abcde"))}

        def refuse() -> None:
            raise UserError("in use by another batch run")

        try:
            distributed.main_first(refuse)  # Raised on rank 0 only: every rank must stop with it, none wait.
        except UserError as exc:
            got["error"] = str(exc)
        with pytest.raises(UserError, match="must be a multiple"):
            distributed.per_rank_batch(3, "b")
        got["per_rank"] = distributed.per_rank_batch(8, "b")
        Path(out_dir, str(rank)).write_text(json.dumps(got))
    finally:
        dist.destroy_process_group()


def test_collectives_with_two_gloo_processes(tmp_path):
    torch.multiprocessing.spawn(_collectives_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    got = [json.loads((tmp_path / str(r)).read_text()) for r in (0, 1)]
    for r, g in enumerate(got):
        assert (g["rank"], g["main"], g["per_rank"]) == (r, r == 0, 4)
        assert g["value"] == {"from": 0} and g["any"] is True and g["mean"] == {"a": 0.5}
        assert g["gathered"] == [0, 10] and g["error"] == "in use by another batch run"
    assert got[0]["shard"] == ["a", "c", "e"] and got[1]["shard"] == ["b", "d"]


def test_rng_streams_per_rank_and_from_checkpoints():
    torch.manual_seed(3)
    state = checkpoint_rng()
    assert set(state) == {"rng"}  # A single process stores only its own stream.
    a = torch.rand(3)
    start_rng(0, state)  # A single process continues the checkpoint's stream.
    assert torch.equal(torch.rand(3), a)
    assert len({rank_seed(0, r, s) for r in range(4) for s in (0, 100)}) == 8


def _record(path: str, status: str = "ok") -> dict:
    return {"path": path, "sha256": "0" * 64, "status": status, "outputs": []}


def test_merge_manifest_parts_in_input_order_atomically(tmp_path):
    out = tmp_path
    (out / MANIFEST).write_bytes(json.dumps(_record("old.png")).encode() + b'\n{"path": "torn')
    (out / manifest_part(1)).write_text("".join(json.dumps(_record(p)) + "\n" for p in ("b.png", "d/e.png"))
                                        + '{"path": "half')  # A rank killed mid-line.
    (out / manifest_part(0)).write_text("".join(json.dumps(_record(p, s)) + "\n"
                                                for p, s in (("a.png", "ok"), ("c.png", "error"))))
    assert merge_manifest_parts(out) == 4
    assert [r["path"] for r in read_manifest_lines(out / MANIFEST)] == ["old.png", "a.png", "b.png", "c.png",
                                                                        "d/e.png"]
    assert (out / MANIFEST).read_bytes().endswith(b"\n")
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST]  # Parts deleted, no temp file left.
    assert merge_manifest_parts(out) == 0
    assert merge_manifest_parts(tmp_path / "missing") == 0


def test_a_run_resumes_from_parts_a_killed_distributed_run_left(tmp_path):
    weights = make_edit_weights(tmp_path / "w", bank_samples=200)
    editor = Editor.from_pretrained(weights, device="cpu")
    src, out = tmp_path / "in", tmp_path / "out"
    for i in range(3):
        domain_image(src / f"{i}.png", i)
    quiet = dict(method="optimize", steps=1, progress=False, log=lambda _: None)
    assert run_batch(editor, src, out, "pca:0", **quiet)["ok"] == 3
    # What a killed 2-process run leaves: its records in parts only (rank 1 did 1.png), no merged manifest.
    records = read_manifest_lines(out / MANIFEST)
    (out / MANIFEST).unlink()
    for rank in (0, 1):
        mine = [r for r in records if r["path"] in distributed.shard(["0.png", "1.png", "2.png"], rank, 2)]
        (out / manifest_part(rank)).write_text("".join(json.dumps(r) + "\n" for r in mine))
    summary = run_batch(editor, src, out, "pca:0", **quiet)
    assert (summary["ok"], summary["skipped"]) == (0, 3)
    assert {p: len(v) for p, v in records_by_path(out).items()} == {"0.png": 1, "1.png": 1, "2.png": 1}
    assert not list(out.glob("manifest.rank*"))


# ----------------------------------------------------------------------------------------------- torchrun

def test_torchrun_batch_shards_merges_and_resumes(tmp_path):
    weights = make_edit_weights(tmp_path / "w", bank_samples=200)
    src, out = tmp_path / "in", tmp_path / "out"
    good = ["a.png", "b.png", "sub/c.png", "sub/d.png", "sub/deep/e.png"]
    for i, rel in enumerate(good):
        domain_image(src / rel, i)
    (src / "sub" / "bad.png").write_bytes(np.random.default_rng(0).bytes(200))
    args = ["batch", str(src), str(out), "-d", "pca:0", "--recursive", "--batch-size", "2", "-w", str(weights),
            "--method", "optimize", "--steps", "2", "--device", "cpu"]

    result = torchrun(*args)
    assert_ok(result)
    assert result.stdout.count("5 ok, 1 errors;") == 1  # One summary, for all ranks.
    assert len([ln for ln in result.stderr.splitlines() if "error: sub/bad.png" in ln]) == 1
    lines = read_manifest_lines(out / MANIFEST)
    assert [r["path"] for r in lines] == sorted([*good, "sub/bad.png"])  # Each once, in input order.
    by_path = records_by_path(out)
    assert by_path["sub/bad.png"][0]["status"] == "error"
    for rel in good:
        rec = by_path[rel][0]
        assert rec["status"] == "ok" and all((out / o).is_file() for o in rec["outputs"])
    assert not list(out.glob("manifest.rank*")) and not [p for p in out.rglob("*") if p.name.endswith(".tmp")]

    # The same command again: nothing is redone, the bad file is retried (its unchanged failure adds no line).
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != MANIFEST}
    result = torchrun(*args)
    assert_ok(result)
    assert "0 ok, 1 errors, 5 skipped" in result.stdout
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    by_path = records_by_path(out)
    assert all(len(by_path[rel]) == 1 for rel in good) and len(by_path["sub/bad.png"]) == 1
    assert not list(out.glob("manifest.rank*"))


@requires_dataset
def test_torchrun_train_gan_writes_once_and_resumes(tmp_path):
    run, weights = tmp_path / "run", tmp_path / "w"
    args = ["train", "gan", "--config", "configs/tiny.yaml", "--out", str(run), "--weights", str(weights),
            "--device", "cpu"]
    result = torchrun(*args, "--steps", "4")
    assert_ok(result)
    assert result.stdout.count("step 4: finished") == 1
    state = load_training_state(run / "training-state.pt")
    assert state["step"] == 4 and len(state["rng_ranks"]) == 2
    assert not torch.equal(state["rng_ranks"][0]["torch"], state["rng_ranks"][1]["torch"])  # Own batches.
    assert json.loads((run / "options.json").read_text())["processes"] == 2
    assert len((run / "stats.jsonl").read_text().splitlines()) == 1  # Written by rank 0 only.
    assert [p.name for p in (run / "samples").iterdir()] == ["step-0000004.png"]
    models = read_manifest(weights)["models"]
    assert set(models) == {"generator", "discriminator"} and models["generator"]["processes"] == 2
    G = load_model(weights, "generator")
    assert G(torch.randn(2, G.z_dim)).shape == (2, 1, 32, 32)

    # Every rank continues from the same checkpoint, with its own random stream.
    result = torchrun(*args, "--steps", "6", "--resume")
    assert_ok(result)
    assert result.stdout.count("step 6: finished") == 1
    stats = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert [s["step"] for s in stats] == [4, 6] and stats[-1]["kimg"] == 6 * 8 / 1000  # kimg of the global batch.
    assert load_training_state(run / "training-state.pt")["step"] == 6


@requires_dataset
def test_torchrun_train_encoder_and_directions(tiny_config, tmp_path):
    from semdir_edit.models import Classifier, Discriminator, Generator

    cfg, weights = tiny_config, tmp_path / "w"
    torch.manual_seed(0)
    register_model(weights, "generator", Generator(cfg.generator), command="test")
    register_model(weights, "discriminator", Discriminator(cfg.discriminator), command="test")
    register_model(weights, "classifier", Classifier(cfg.classifier).eval(), command="test")

    result = torchrun("train", "encoder", "--config", "configs/tiny.yaml", "--weights", str(weights),
                      "--out", str(tmp_path / "enc"), "--steps", "2", "--device", "cpu")
    assert_ok(result)
    assert result.stdout.count("step 2: finished") == 1
    assert len(load_training_state(tmp_path / "enc" / "training-state.pt")["rng_ranks"]) == 2

    result = torchrun("train", "directions", "--config", "configs/tiny.yaml", "--weights", str(weights),
                      "--out", str(tmp_path / "dir"), "--steps", "2", "--device", "cpu")
    assert_ok(result)
    assert result.stdout.count("step 2: finished") == 1
    models = read_manifest(weights)["models"]
    for kind in ("encoder", "deformators", "shift_predictor"):
        assert models[kind]["processes"] == 2
        load_model(weights, kind)
