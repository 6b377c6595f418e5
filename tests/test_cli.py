"""The real CLI in subprocesses: one-line errors with exit code 2, and outputs that exist."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from semdir_edit.checkpoint import register_model
from semdir_edit.config import ClassifierConfig, GeneratorConfig
from semdir_edit.models import Classifier, Generator

from .conftest import ROOT


def run_cli(*args: str, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "semdir_edit", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def assert_user_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0]


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    register_model(path, "generator", Generator(GeneratorConfig(
        z_dim=16, w_dim=16, mapping_layers=2, channels={4: 16, 8: 16, 16: 8, 32: 8})), command="test")
    register_model(path, "classifier", Classifier(ClassifierConfig(channels=[8, 8, 16, 16])).eval(), command="test")
    return path


def test_missing_config(tmp_path):
    assert_user_error(run_cli("train", "gan", "-c", str(tmp_path / "nope.yaml")), "config file not found")


def test_config_with_unknown_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("generator:\n  z_dimm: 3\n")
    assert_user_error(run_cli("train", "gan", "-c", str(bad)), "z_dimm")


def test_missing_dataset(tmp_path):
    result = run_cli("train", "classifier", "-c", "configs/tiny.yaml", "--data-dir", str(tmp_path / "none"),
                     "--out", str(tmp_path / "run"))
    assert_user_error(result, "apt-get install -y dataset-fashion-mnist")


def test_missing_weights(tmp_path):
    assert_user_error(run_cli("generate", "-w", str(tmp_path), "-o", str(tmp_path / "x.png")), "manifest.json")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_gpu(tiny_weights, tmp_path):
    result = run_cli("generate", "-w", str(tiny_weights), "--device", "cuda", "-o", str(tmp_path / "x.png"))
    assert_user_error(result, "no CUDA GPU")


@pytest.mark.parametrize("flag", [[], ["--mix"], ["--noise-variation"]])
def test_generate_writes_png(tiny_weights, tmp_path, flag):
    import cv2

    out = tmp_path / "grid.png"
    result = run_cli("generate", "-w", str(tiny_weights), "--n", "9", "-o", str(out), "--scale", "1", *flag)
    assert result.returncode == 0, result.stderr
    img = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    expected_cols = {(): 3, ("--mix",): 7, ("--noise-variation",): 9}[tuple(flag)]
    assert img.shape[1] == expected_cols * 34 + 2


def test_unwritable_output(tiny_weights, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_user_error(run_cli("generate", "-w", str(tiny_weights), "-o", str(blocker / "x.png")), "cannot write")


@pytest.mark.parametrize("args", [["generate", "--n", "0"], ["apply", "x.latent.safetensors", "--bogus"],
                                  ["evaluate", "generator", "--n", "many"]])
def test_a_bad_option_is_one_line_and_exit_2(args):
    result = run_cli(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--help" in lines[0], result.stderr


def test_flags_show_no_value_placeholder_in_help():
    result = run_cli("train", "directions", "--help")
    assert result.returncode == 0
    assert "--resume " in result.stdout and "<bool>" not in result.stdout
