"""End-to-end training on the tiny config: runs, resumes exactly, registers weights, learns."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from semdir_edit.checkpoint import load_model, load_training_state, read_manifest
from semdir_edit.core.errors import UserError
from semdir_edit.training.classifier import train_classifier
from semdir_edit.training.gan import train_gan

from .conftest import requires_dataset


@requires_dataset
def test_gan_trains_resumes_bit_exact_and_registers(tiny_config, tmp_path):
    cfg = tiny_config
    cfg.train_gan.steps = 12
    cfg.train_gan.checkpoint_every = 6
    cfg.train_gan.r1_interval = 4
    # Straight run.
    straight = train_gan(cfg, tmp_path / "a", torch.device("cpu"), weights_dir=tmp_path / "wa", progress=False)
    assert straight["finished"] and straight["step"] == 12
    # Interrupted after 6 steps, then resumed.
    part = train_gan(cfg, tmp_path / "b", torch.device("cpu"), weights_dir=tmp_path / "wb", max_steps=6,
                     progress=False)
    assert not part["finished"] and not (tmp_path / "wb").exists()
    train_gan(cfg, tmp_path / "b", torch.device("cpu"), resume=True, weights_dir=tmp_path / "wb", progress=False)
    a = load_training_state(tmp_path / "a" / "training-state.pt")
    b = load_training_state(tmp_path / "b" / "training-state.pt")
    for name in ("G", "D", "G_ema"):
        for key in a[name]:
            assert torch.equal(a[name][key], b[name][key]), f"{name}.{key} differs after resume"
    # Registered weights load, and the run folder has its files.
    G = load_model(tmp_path / "wa", "generator")
    assert G(torch.randn(2, G.z_dim)).shape == (2, 1, 32, 32)
    assert set(read_manifest(tmp_path / "wa")["models"]) == {"generator", "discriminator"}
    assert (tmp_path / "a" / "samples" / "step-0000012.png").exists()
    assert json.loads((tmp_path / "a" / "options.json").read_text())["config"]["name"] == "tiny"


@requires_dataset
def test_classifier_loss_decreases(tiny_config, tmp_path):
    cfg = tiny_config
    cfg.train_classifier.epochs = 3
    cfg.data.max_train = 2048
    train_classifier(cfg, tmp_path / "c", torch.device("cpu"), weights_dir=tmp_path / "w", progress=False)
    stats = [json.loads(line) for line in (tmp_path / "c" / "stats.jsonl").read_text().splitlines()]
    assert len(stats) == 3
    assert stats[-1]["loss"] < 2.2  # Label-smoothed cross-entropy starts at ln(10) = 2.30.
    assert stats[-1]["test_accuracy"] > 0.5  # Chance is 0.1.
    assert load_model(tmp_path / "w", "classifier") is not None
    # The lock's second classifier and the judge register beside it under their own kinds.
    cfg.train_classifier.epochs = 1
    for kind in ("classifier_lock", "classifier_judge"):
        train_classifier(cfg, tmp_path / kind, torch.device("cpu"), weights_dir=tmp_path / "w", progress=False,
                         kind=kind)
    assert set(read_manifest(tmp_path / "w")["models"]) == {"classifier", "classifier_lock", "classifier_judge"}


@requires_dataset
def test_gan_with_differentiable_augmentation_runs(tiny_config, tmp_path):
    cfg = tiny_config
    cfg.train_gan.augment = True
    cfg.train_gan.steps = 3
    result = train_gan(cfg, tmp_path / "r", torch.device("cpu"), progress=False)
    assert result["finished"] and torch.isfinite(torch.tensor(result.get("loss_D", 0.0)))


@requires_dataset
def test_time_limit_registers_only_when_asked(tiny_config, tmp_path):
    cfg = tiny_config
    cfg.train_gan.steps = 10_000  # Far more than the time limit allows.
    limit = 0.002  # Minutes: stops after the first step or so.
    plain = train_gan(cfg, tmp_path / "a", torch.device("cpu"), weights_dir=tmp_path / "wa", time_limit_min=limit,
                      progress=False)
    assert not plain["finished"] and not (tmp_path / "wa").exists()
    cut = train_gan(cfg, tmp_path / "b", torch.device("cpu"), weights_dir=tmp_path / "wb", time_limit_min=limit,
                    register_at_limit=True, progress=False)
    assert not cut["finished"]
    entry = read_manifest(tmp_path / "wb")["models"]["generator"]
    assert entry["steps"] == cut["step"] < entry["planned_steps"] == 10_000
    assert load_model(tmp_path / "wb", "generator") is not None


@requires_dataset
def test_init_from_weights_continues_a_finished_training(tiny_config, tmp_path):
    cfg = tiny_config
    cfg.train_gan.steps = 3
    train_gan(cfg, tmp_path / "a", torch.device("cpu"), weights_dir=tmp_path / "wa", progress=False)
    # A second run from those weights, its run folder elsewhere: step 0 holds the first run's networks.
    cfg.train_gan.steps = 0
    train_gan(cfg, tmp_path / "b", torch.device("cpu"), weights_dir=tmp_path / "wb", progress=False,
              init_from=tmp_path / "wa")
    first = load_training_state(tmp_path / "b" / "training-state.pt")
    for kind, names in (("generator", ("G", "G_ema")), ("discriminator", ("D",))):
        source = load_model(tmp_path / "wa", kind).state_dict()
        for name in names:
            assert all(torch.equal(source[k], first[name][k]) for k in source), f"{name} is not the loaded {kind}"
    entry = read_manifest(tmp_path / "wb")["models"]["generator"]
    assert entry["init_from"]["sha256"] == read_manifest(tmp_path / "wa")["models"]["generator"]["sha256"]
    assert entry["init_from"]["steps"] == 3
    # Trained on from there, it moves away from the start.
    cfg.train_gan.steps = 2
    train_gan(cfg, tmp_path / "c", torch.device("cpu"), progress=False, init_from=tmp_path / "wa")
    moved = load_training_state(tmp_path / "c" / "training-state.pt")["G"]
    assert not all(torch.equal(first["G"][k], moved[k]) for k in moved)

    # Weights of another network size are refused with one line.
    other = copy.deepcopy(cfg)
    other.generator.channels = {res: c * 2 for res, c in cfg.generator.channels.items()}
    with pytest.raises(UserError, match="does not fit this config"):
        train_gan(other, tmp_path / "d", torch.device("cpu"), progress=False, init_from=tmp_path / "wa")


@requires_dataset
def test_path_length_regularisation_trains_and_resumes_bit_exact(tiny_config, tmp_path):
    cfg = tiny_config
    cfg.train_gan.steps = 8
    cfg.train_gan.checkpoint_every = 4
    cfg.train_gan.pl_weight = 2.0
    cfg.train_gan.pl_interval = 2
    straight = train_gan(cfg, tmp_path / "a", torch.device("cpu"), progress=False)
    assert straight["finished"] and straight["pl"] > 0 and straight["pl_mean"] > 0
    train_gan(cfg, tmp_path / "b", torch.device("cpu"), max_steps=4, progress=False)
    train_gan(cfg, tmp_path / "b", torch.device("cpu"), resume=True, progress=False)
    a, b = (load_training_state(tmp_path / r / "training-state.pt") for r in "ab")
    assert torch.equal(a["pl_mean"], b["pl_mean"]) and a["pl_mean"] > 0
    for key in a["G"]:
        assert torch.equal(a["G"][key], b["G"][key]), f"G.{key} differs after resume"
    # The penalty trains G: without it the same run ends elsewhere.
    cfg.train_gan.pl_weight = 0.0
    train_gan(cfg, tmp_path / "c", torch.device("cpu"), progress=False)
    c = load_training_state(tmp_path / "c" / "training-state.pt")
    assert not all(torch.equal(a["G"][k], c["G"][k]) for k in a["G"])


def test_path_length_penalty_pulls_lengths_to_their_mean():
    """The penalty is (|J^T y| - a)^2 around the running mean a; its gradient reaches the synthesis network."""
    from semdir_edit.config import DiscriminatorConfig, GeneratorConfig
    from semdir_edit.models import Discriminator, Generator
    from semdir_edit.training.gan import StyleGAN2Loss

    torch.manual_seed(0)
    G = Generator(GeneratorConfig(z_dim=16, w_dim=16, channels={4: 16, 8: 16, 16: 8, 32: 8}))
    D = Discriminator(DiscriminatorConfig())
    loss = StyleGAN2Loss(G, D, torch.nn.Identity(), 0.0, 0.0, torch.device("cpu"))
    penalty = loss.path_length_penalty(4, decay=1.0)  # decay 1: the mean jumps to this batch's mean length.
    assert penalty.item() >= 0 and loss.pl_mean.item() > 0
    penalty.backward()
    grads = [p.grad for p in G.synthesis.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
