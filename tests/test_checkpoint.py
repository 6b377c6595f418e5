"""Weights and training-state I/O: bit-exact round trips; tampered or foreign files refused."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from semdir_edit.checkpoint import (
    load_model,
    load_training_state,
    merge_models,
    read_manifest,
    register_model,
    save_training_state,
)
from semdir_edit.config import GeneratorConfig
from semdir_edit.core.errors import UserError
from semdir_edit.models import Generator

CFG = GeneratorConfig(z_dim=16, w_dim=16, mapping_layers=2, channels={4: 16, 8: 16, 16: 8, 32: 8})


@pytest.fixture
def weights_dir(tmp_path):
    torch.manual_seed(0)
    G = Generator(CFG)
    G.mapping.w_avg.normal_()
    register_model(tmp_path, "generator", G, command="test")
    return tmp_path, G


def test_weights_round_trip_is_bit_exact(weights_dir):
    path, G = weights_dir
    loaded = load_model(path, "generator")
    for (k, a), (k2, b) in zip(G.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b), k
    z = torch.randn(3, 16)
    assert torch.equal(G.eval()(z, noise_mode="const"), loaded(z, noise_mode="const"))
    entry = read_manifest(path)["models"]["generator"]
    assert entry["command"] == "test" and len(entry["sha256"]) == 64


def test_tampered_weights_refused(weights_dir):
    path, _ = weights_dir
    f = path / "generator.safetensors"
    raw = bytearray(f.read_bytes())
    raw[-3] ^= 0xFF
    f.write_bytes(bytes(raw))
    with pytest.raises(UserError, match="sha256"):
        load_model(path, "generator")


def test_config_mismatch_refused(weights_dir):
    path, _ = weights_dir
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["models"]["generator"]["config"]["w_dim"] = 32
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="config"):
        load_model(path, "generator")


def test_pickle_presented_as_weights_is_never_unpickled(weights_dir, tmp_path):
    path, _ = weights_dir
    marker = tmp_path / "executed"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    f = path / "generator.safetensors"
    f.write_bytes(pickle.dumps(Evil()))
    manifest = json.loads((path / "manifest.json").read_text())
    import hashlib

    manifest["models"]["generator"]["sha256"] = hashlib.sha256(f.read_bytes()).hexdigest()
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="not a valid safetensors"):
        load_model(path, "generator")
    # A pickle given as a training state is refused by torch.load(weights_only=True).
    state = tmp_path / "training-state.pt"
    state.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(UserError, match="not a valid training checkpoint"):
        load_training_state(state)
    assert not marker.exists()


def test_missing_manifest_and_kind(tmp_path, weights_dir):
    with pytest.raises(UserError, match="manifest.json"):
        load_model(tmp_path / "nothing", "generator")
    path, _ = weights_dir
    with pytest.raises(UserError, match="classifier"):
        load_model(path, "classifier")


def test_training_state_round_trip(tmp_path):
    state = {"x": torch.randn(5), "step": 7, "nested": {"y": torch.arange(3)}}
    save_training_state(tmp_path / "s.pt", state)
    back = load_training_state(tmp_path / "s.pt")
    assert torch.equal(back["x"], state["x"]) and back["step"] == 7
    assert torch.equal(back["nested"]["y"], torch.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["s.pt"]  # No temp files left behind.


def _record(args):
    weights, section = args
    from semdir_edit.checkpoint import update_figures

    for i in range(15):
        update_figures(weights, section, {"i": i})


def test_manifest_updates_from_parallel_processes_are_not_lost(weights_dir):
    """Evaluations run side by side (scripts/evaluate_weights.sh): each section must survive the others' writes."""
    import multiprocessing

    weights_dir, _ = weights_dir
    sections = [f"s{k}" for k in range(4)]
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        pool.map(_record, [(str(weights_dir), s) for s in sections])
    figures = read_manifest(weights_dir)["figures"]
    assert all(figures[s] == {"i": 14} for s in sections)
    assert "generator" in read_manifest(weights_dir)["models"]


def test_shipped_manifest_names_no_local_folders():
    """Every command in the shipped manifest can be rerun from a checkout: no run, temp or per-job folders."""
    text = (Path(__file__).resolve().parent.parent / "weights" / "fashion_mnist" / "manifest.json").read_text()
    for local in ("runs/", "/tmp", "candidates/", ".gpu/", "--no-record"):
        assert local not in text, local


def test_weights_are_found_by_path_then_environment_then_checkout(tmp_path, monkeypatch):
    from semdir_edit import config

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(config.WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(config, "CHECKOUT", tmp_path / "not-a-checkout")
    with pytest.raises(UserError, match="no weights found: pass --weights DIR or set SEMDIR_WEIGHTS"):
        config.find_weights()
    monkeypatch.setenv(config.WEIGHTS_ENV, "from-env")
    assert config.find_weights() == Path("from-env")
    assert config.find_weights("given") == Path("given")


def test_merge_copies_files_and_entries_and_keeps_the_destination_s_own(weights_dir, tmp_path):
    src, G = weights_dir
    dst = tmp_path / "merged"
    register_model(dst, "discriminator_stand_in", Generator(CFG), command="other job")
    assert merge_models(dst, src, ["generator", "encoder"]) == ["encoder"]
    manifest = read_manifest(dst)
    assert set(manifest["models"]) == {"generator", "discriminator_stand_in"}
    loaded = load_model(dst, "generator")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), G.state_dict().values(), strict=True))
    (src / "generator.safetensors").write_bytes(b"not the recorded file")
    with pytest.raises(UserError, match="sha256"):
        merge_models(tmp_path / "again", src, ["generator"])
