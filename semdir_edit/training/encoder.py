"""Encoder training for GAN inversion: the domain-guided encoder and the conventional baseline.

Zhu, Shen, Zhao, Zhou, "In-Domain GAN Inversion for Real Image Editing", ECCV 2020, section 3.1:

- conventional (Eq. 1): on generated pairs, min_E ||w - E(G(w))||^2 with w = mapping(z) broadcast to W+;
- domain-guided (Eq. 2/3): on *real* images x, with G frozen,
  min_E ||x - G(E(x))||^2 + lambda_vgg ||F(x) - F(G(E(x)))|| - lambda_adv E_x[D(G(E(x)))]
  min_D E_x[D(G(E(x)))] - E_x[D(x)] + gamma/2 E_x[||grad_x D(x)||^2],
  in the logistic (softplus) form of the authors' code, D initialised from the GAN's discriminator.

Hyper-parameters of genforce/idinvert (``train_encoder.py``, ``training/loss_encoder.py``): Adam(0.9, 0.99) for E
and D, lr 1e-4 with exponential decay (rate 0.8 every steps/4, not staircase), lambda_adv = 0.08, R1 gamma = 10 every
step, one E step then one D step per iteration; lambda_vgg rescaled for our F (see ``EncoderTrainConfig``).
Everything runs in full precision: the reconstruction loss is what this network is for.

Under torchrun, E and D are wrapped in DistributedDataParallel; ``train_encoder.batch_size`` is the global batch,
split over the processes (so E's batch-norm statistics are per process, as usual with DDP).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from semdir_edit.checkpoint import (
    git_commit,
    init_record,
    load_into,
    load_model,
    load_training_state,
    register_model,
    save_training_state,
    weights_id,
)
from semdir_edit.config import Config, EncoderConfig, to_dict
from semdir_edit.core import distributed
from semdir_edit.core.errors import UserError
from semdir_edit.core.images import save_grid, to_float
from semdir_edit.data import load_split
from semdir_edit.models import Discriminator, Generator
from semdir_edit.models.encoder import Encoder
from semdir_edit.ops.perceptual import PerceptualLoss
from semdir_edit.training.common import (
    RunFolder,
    TimeBudget,
    checkpoint_rng,
    rng_state,
    seed_everything,
    start_rng,
)

KINDS = {"domain_guided": "encoder", "conventional": "encoder_conventional"}  # Training kind -> registered model kind.
Stats = dict[str, torch.Tensor]  # Detached scalars, read (synchronising with the GPU) only when logged.


class ConventionalEncoderLoss:
    """Eq. 1 on generated pairs: ||w - E(G(w))||^2 (mean over elements); knows nothing of optimisers."""

    def __init__(self, G: Generator, E: Encoder, device: torch.device) -> None:
        self.G, self.E, self.device = G, E, device

    def encoder_loss(self, batch_size: int) -> tuple[torch.Tensor, Stats]:
        # Sample z -> w -> G(w) (W+ by broadcast, fixed noise): the pair (G(w), w) is the training example.
        with torch.no_grad():
            z = torch.randn(batch_size, self.G.z_dim, device=self.device)
            ws = self.G.broadcast(self.G.mapping(z))                          # (B, num_ws, w_dim)
            x = self.G.synthesis(ws, noise_mode="const")                       # (B, C, R, R)
        loss = (self.E(x) - ws).square().mean()
        return loss, {"loss_E": loss.detach()}


class DomainGuidedEncoderLoss:
    """Eq. 2/3 on real images: the encoder's and the discriminator's losses; knows nothing of optimisers.

    F: the perceptual network (per-image distances, averaged over the batch). G is frozen; D is trained.
    ``E`` and ``D_train`` (default ``D``): what the forwards that train E and D go through (DDP wrappers under
    torchrun); the encoder's loss runs the bare ``D``, which the trainer freezes for that step.
    """

    def __init__(self, G: Generator, E: Encoder | torch.nn.Module, D: Discriminator, F: PerceptualLoss,
                 lambda_perceptual: float, lambda_adv: float, r1_gamma: float,
                 D_train: torch.nn.Module | None = None) -> None:
        self.G, self.E, self.D, self.F = G, E, D, F
        self.D_train = D_train or D
        self.lambda_perceptual, self.lambda_adv, self.r1_gamma = lambda_perceptual, lambda_adv, r1_gamma

    def encoder_loss(self, real: torch.Tensor) -> tuple[torch.Tensor, Stats, torch.Tensor]:
        """Returns (loss, stats, x_rec detached for the D step)."""
        x_rec = self.G.synthesis(self.E(real), noise_mode="const")             # x_rec = G(E(x)), (B, C, R, R)
        pixel = (x_rec - real).square().mean()
        perceptual = self.F(real, x_rec).mean()
        adv = F.softplus(-self.D(x_rec)).mean()                                 # Non-saturating: -log sigmoid(D).
        loss = pixel + self.lambda_perceptual * perceptual + self.lambda_adv * adv
        stats = {"loss_E": loss, "pixel": pixel, "perceptual": perceptual, "adv": adv}
        return loss, {k: v.detach() for k, v in stats.items()}, x_rec.detach()

    def discriminator_loss(self, real: torch.Tensor, x_rec: torch.Tensor) -> tuple[torch.Tensor, Stats]:
        """Logistic loss softplus(D(x_rec)) + softplus(-D(x)) + gamma/2 ||grad_x D(x)||^2 on real x (every step)."""
        real = real.detach().requires_grad_(self.r1_gamma > 0)
        real_logits = self.D_train(real)
        loss = F.softplus(self.D_train(x_rec)).mean() + F.softplus(-real_logits).mean()
        stats = {"loss_D": loss.detach()}
        if self.r1_gamma > 0:
            (grad,) = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
            r1 = grad.square().sum(dim=(1, 2, 3)).mean() * (self.r1_gamma / 2)
            loss = loss + r1
            stats["r1"] = r1.detach()
        return loss, stats


def encoder_config(cfg: EncoderConfig, G: Generator) -> EncoderConfig:
    """The configured encoder, its W+ shape taken from G (0 = take it); a mismatch is a ``UserError``."""
    out = dataclasses.replace(cfg, num_ws=cfg.num_ws or G.num_ws, w_dim=cfg.w_dim or G.w_dim)
    mine = (out.num_ws, out.w_dim, out.img_channels, out.resolution)
    theirs = (G.num_ws, G.w_dim, G.cfg.img_channels, G.cfg.resolution)
    if mine != theirs:
        raise UserError(f"encoder config (num_ws, w_dim, img_channels, resolution) = {mine} does not match the "
                        f"generator's {theirs}")
    return out


def train_encoder(cfg: Config, weights_dir: str | Path, run_dir: str | Path, device: torch.device, *,
                  kind: str = "domain_guided", resume: bool = False, data_dir: str | None = None,
                  command: str = "", time_limit_min: float = 0.0,
                  register_at_limit: bool = False, max_steps: int | None = None,
                  progress: bool = True, init_from: str | Path | None = None) -> dict[str, Any]:
    """Train an encoder for the generator in ``weights_dir``; on completion register it there.

    kind: "domain_guided" (Eq. 2/3, real images, adversarial; needs the generator, discriminator and, for the
        default perceptual network, the classifier in ``weights_dir``; registered as "encoder") or "conventional"
        (Eq. 1, generated pairs; needs the generator; registered as "encoder_conventional").
    Resumable like ``train_gan``: ``training-state.pt`` in ``run_dir`` every ``checkpoint_every`` steps, on Ctrl-C
    and at the time limit; ``resume=True`` continues from it. ``max_steps`` stops early (no registration).
    init_from: a weights folder whose encoder of this kind is the starting point (fine-tuning, e.g. for a generator
    trained further from the one that encoder was made for); ignored when resuming from a checkpoint.
    Under torchrun, call it on every rank (see :mod:`semdir_edit.training.common`). Returns the last logged stats.
    """
    if kind not in KINDS:
        raise UserError(f"unknown encoder training kind '{kind}' (use {', '.join(KINDS)})")
    tc = cfg.train_encoder
    main = distributed.is_main()
    run = RunFolder(run_dir, writer=main)
    batch = distributed.per_rank_batch(tc.batch_size, "train_encoder.batch_size")
    seed_everything(tc.seed)
    domain_guided = kind == "domain_guided"
    G = load_model(weights_dir, "generator", device)                           # Frozen, eval mode.
    E = Encoder(encoder_config(cfg.encoder, G), w_avg=G.mapping.w_avg).to(device).train()
    if init_from is not None and not (resume and run.state_path.exists()):
        load_into(E, init_from, KINDS[kind])
        E.train()
    # Under torchrun: gradients averaged over the ranks; batch-norm running statistics copied from rank 0.
    E_train = distributed.ddp(E, device, broadcast_buffers=True)
    betas = (0.9, 0.99)
    opt_E = torch.optim.Adam(E.parameters(), lr=tc.lr, betas=betas, eps=1e-8)
    D = opt_D = None
    if domain_guided:
        images = load_split(cfg.data, "train", data_dir).images.to(device)    # uint8 (N, 1, R, R)
        D = load_model(weights_dir, "discriminator", device).train().requires_grad_(True)
        opt_D = torch.optim.Adam(D.parameters(), lr=tc.lr, betas=betas, eps=1e-8)
        C = load_model(weights_dir, "classifier", device) if tc.perceptual == "classifier" else None
        loss: ConventionalEncoderLoss | DomainGuidedEncoderLoss = DomainGuidedEncoderLoss(
            G, E_train, D, PerceptualLoss(C, backbone=tc.perceptual).to(device), tc.lambda_perceptual, tc.lambda_adv,
            tc.r1_gamma, D_train=distributed.ddp(D, device))
        sample_x = to_float(images[:16])                                       # Fixed real images to reconstruct.
    else:
        loss = ConventionalEncoderLoss(G, E_train, device)
        with torch.no_grad():
            z = torch.randn(16, G.z_dim, generator=torch.Generator().manual_seed(tc.seed)).to(device)
            sample_x = G.synthesis(G.broadcast(G.mapping(z)), noise_mode="const")
    generator_id = weights_id(weights_dir)

    step, seconds, state = 0, 0.0, None
    if resume and run.state_path.exists():
        state = load_training_state(run.state_path, device)
        if state.get("kind") != kind or state.get("generator_id") != generator_id:
            raise UserError(f"{run.state_path} is a '{state.get('kind')}' run for generator "
                            f"{state.get('generator_id')}, not a '{kind}' run for {generator_id}: use another --out")
        E.load_state_dict(state["E"])
        opt_E.load_state_dict(state["opt_E"])
        if domain_guided:
            D.load_state_dict(state["D"])
            opt_D.load_state_dict(state["opt_D"])
        step, seconds = int(state["step"]), float(state["seconds"])
    start_rng(tc.seed, state, step)
    commit = git_commit()
    if main:
        run.write_options({"config": to_dict(cfg), "kind": kind, "weights_dir": str(weights_dir),
                           "command": command, "git_commit": commit, "device": str(device),
                           "processes": distributed.world_size(), "resumed_at": step})

    def checkpoint(gather: bool = True) -> None:
        # gather=False (Ctrl-C, when the ranks may be anywhere): rank 0's stream only; the ranks restart theirs.
        rng = checkpoint_rng() if gather else {"rng": rng_state()}
        if not main:
            return
        state = {"kind": kind, "generator_id": generator_id, "E": E.state_dict(), "opt_E": opt_E.state_dict(),
                 "step": step, "seconds": seconds, **rng}
        if domain_guided:
            state.update(D=D.state_dict(), opt_D=opt_D.state_dict())
        save_training_state(run.state_path, state)

    def save_samples() -> None:
        E.eval()
        with torch.no_grad():
            rec = G.synthesis(E(sample_x), noise_mode="const")
        E.train()
        # Top row: inputs; bottom row: reconstructions G(E(x)).
        save_grid(run.path / "samples" / f"step-{step:07d}.png", torch.cat([sample_x, rec]), nrow=16, scale=2)

    total = tc.steps if max_steps is None else min(tc.steps, max_steps)
    decay_steps = tc.lr_decay_steps or max(tc.steps // 4, 1)
    budget = TimeBudget(time_limit_min)
    bar = tqdm(total=total, initial=step, disable=not (progress and main), desc=f"train encoder ({kind})",
               dynamic_ncols=True)
    stats: dict[str, Any] = {}
    t0 = time.monotonic()
    try:
        while step < total and not budget.exceeded():
            # Exponential learning-rate decay (TF exponential_decay, not staircase), as idinvert.
            lr = tc.lr * tc.lr_decay_rate ** (step / decay_steps)
            for opt in (opt_E, opt_D):
                for group in (opt.param_groups if opt is not None else []):
                    group["lr"] = lr

            # E step.
            if domain_guided:
                real = to_float(images[torch.randint(len(images), (batch,), device=device)])
                D.requires_grad_(False)                 # D is only a critic here: no gradients into it.
                e_loss, step_stats, x_rec = loss.encoder_loss(real)
            else:
                e_loss, step_stats = loss.encoder_loss(batch)
            opt_E.zero_grad(set_to_none=True)
            e_loss.backward()
            opt_E.step()

            # D step on the same reals and their reconstructions (from E before its update, to save a forward).
            if domain_guided:
                D.requires_grad_(True)
                d_loss, d_stats = loss.discriminator_loss(real, x_rec)
                opt_D.zero_grad(set_to_none=True)
                d_loss.backward()
                opt_D.step()
                step_stats.update(d_stats)
            step += 1
            bar.update(1)

            if step % 50 == 0 or step == total:
                now = time.monotonic()
                seconds += now - t0
                t0 = now
                losses = distributed.mean({k: v.item() for k, v in step_stats.items()})  # Over all ranks.
                stats = {"step": step, "kimg": step * tc.batch_size / 1000, "seconds": round(seconds, 1),
                         "lr": lr, **{k: round(v, 5) for k, v in losses.items()}}
                bar.set_postfix(E=stats["loss_E"])
                if main:
                    run.append_stats(stats)
            if main and (step % tc.sample_every == 0 or step == total):
                save_samples()
            if step % tc.checkpoint_every == 0:
                checkpoint()
    except KeyboardInterrupt:
        checkpoint(gather=False)
        bar.close()
        raise
    bar.close()
    seconds += time.monotonic() - t0
    checkpoint()
    if main and (step >= tc.steps or (register_at_limit and step > 0)):
        E.eval()
        info = {"planned_steps": tc.steps, "training": kind, "steps": step, "kimg": step * tc.batch_size / 1000,
                "train_seconds": round(seconds), "device": str(device), "generator_id": generator_id,
                "processes": distributed.world_size()}
        if init_from is not None:
            info["init_from"] = init_record(init_from, KINDS[kind])
        register_model(weights_dir, KINDS[kind], E, command=command, extra=info, commit=commit)
    return {**stats, "step": step, "seconds": round(seconds, 1), "finished": step >= tc.steps}
