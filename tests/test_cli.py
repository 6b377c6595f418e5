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


def test_classifier_roles_and_photos_are_different_trainings(tmp_path):
    result = run_cli("train", "classifier", "-c", "configs/tiny.yaml", "--role", "judge", "--photos", str(tmp_path),
                     "--class-map", str(tmp_path / "map.json"))
    assert_user_error(result, "--role and --photos")
    assert_user_error(run_cli("train", "classifier", "-c", "configs/tiny.yaml", "--role", "referee"), "--role")


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


def run_on_terminal(*args: str, timeout: float = 300) -> tuple[int, str, str]:
    """The CLI with stderr on a pseudo-terminal (as in a shell, where bars are drawn) and stdout on a pipe (as in
    ``semdir-edit ... > out.txt``): (exit code, stdout, stderr)."""
    import fcntl
    import os
    import pty
    import select
    import struct
    import termios
    import time

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # A new pty is 0 columns wide.
    proc = subprocess.Popen([sys.executable, "-m", "semdir_edit", *args], cwd=ROOT, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=slave, env={**os.environ, "OMP_NUM_THREADS": "1"})
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        # Drain the terminal as the process writes (a full one would block it), until its side is closed.
        while time.monotonic() < deadline:
            if not select.select([master], [], [], 0.5)[0]:
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the process (the last holder of the terminal) has exited.
                break
            if not data:
                break
            chunks.append(data)
        stdout = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))[0].decode()
    finally:
        proc.kill()
        os.close(master)
    return proc.returncode, stdout, b"".join(chunks).decode(errors="replace")


def test_progress_on_a_terminal_only_on_stderr_and_quiet_turns_it_off(tiny_weights, tmp_path):
    import cv2
    import numpy as np

    img = np.full((60, 40, 3), 250, np.uint8)  # A product photo: a dark article on white.
    cv2.rectangle(img, (8, 10), (30, 50), (30, 40, 160), -1)
    cv2.imwrite(str(tmp_path / "a.png"), img)
    args = ["invert", str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "-w", str(tiny_weights), "--method",
            "optimize", "--steps", "20", "--device", "cpu"]
    code, stdout, stderr = run_on_terminal(*args)
    assert code == 0, stderr
    assert "invert" in stderr and "20/20" in stderr   # The bar counts the optimisation's steps.
    lines = stdout.splitlines()                       # stdout: the table alone, no bar in it.
    assert lines[0].startswith("image") and lines[-1].startswith("wrote 1 inversion") and "\r" not in stdout
    assert "step" not in stdout and "%|" not in stdout

    code, stdout, stderr = run_on_terminal(*args, "--quiet")
    assert code == 0 and stderr == "" and stdout.startswith("image")

    result = run_cli(*args)  # stderr not a terminal (a pipe, a log file): no bar either.
    assert result.returncode == 0 and result.stderr == "", result.stderr
