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
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from semdir_edit.checkpoint import init_record, load_into, load_model, register_model, weights_id
from semdir_edit.config import Config, EncoderConfig, to_dict
from semdir_edit.core import distributed
from semdir_edit.core.errors import UserError
from semdir_edit.core.images import to_float
from semdir_edit.data import load_split
from semdir_edit.models import Discriminator, Generator
from semdir_edit.models.encoder import Encoder
from semdir_edit.ops.perceptual import PerceptualLoss
from semdir_edit.training.common import RunFolder, seed_everything
from semdir_edit.training.loop import Losses, Schedule, TrainingJob, descend, train

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


class EncoderJob(TrainingJob):
    """Encoder training as a :class:`~semdir_edit.training.loop.TrainingJob`: per step one E step and, domain-guided,
    one D step, at an exponentially decaying learning rate. Samples: 16 fixed inputs above their reconstructions
    G(E(x)); registers E as ``KINDS[kind]`` in ``weights_dir``.

    init_from: a weights folder whose encoder of this kind is the starting point (None = random); ``resuming``:
    not loaded (the checkpoint replaces it), only recorded.
    """

    digits = 5
    postfix = {"E": "loss_E"}
    sample_columns = 16

    def __init__(self, cfg: Config, weights_dir: str | Path, device: torch.device, *, kind: str = "domain_guided",
                 data_dir: str | None = None, init_from: str | Path | None = None,
                 resuming: bool = False) -> None:
        tc = self.tc = cfg.train_encoder
        self.kind, self.weights_dir, self.device, self.init_from = kind, weights_dir, device, init_from
        self.desc = f"train encoder ({kind})"
        self.batch = distributed.per_rank_batch(tc.batch_size, "train_encoder.batch_size")
        self.domain_guided = kind == "domain_guided"
        self.G = G = load_model(weights_dir, "generator", device)                  # Frozen, eval mode.
        self.E = E = Encoder(encoder_config(cfg.encoder, G), w_avg=G.mapping.w_avg).to(device).train()
        if init_from is not None and not resuming:
            load_into(E, init_from, KINDS[kind])
            E.train()
        # Under torchrun: gradients averaged over the ranks; batch-norm running statistics copied from rank 0.
        E_train = distributed.ddp(E, device, broadcast_buffers=True)
        betas = (0.9, 0.99)
        self.opt_E = torch.optim.Adam(E.parameters(), lr=tc.lr, betas=betas, eps=1e-8)
        self.D = self.opt_D = None
        if self.domain_guided:
            self.images = load_split(cfg.data, "train", data_dir).images.to(device)  # uint8 (N, 1, R, R)
            self.D = D = load_model(weights_dir, "discriminator", device).train().requires_grad_(True)
            self.opt_D = torch.optim.Adam(D.parameters(), lr=tc.lr, betas=betas, eps=1e-8)
            C = load_model(weights_dir, "classifier", device) if tc.perceptual == "classifier" else None
            self.loss: ConventionalEncoderLoss | DomainGuidedEncoderLoss = DomainGuidedEncoderLoss(
                G, E_train, D, PerceptualLoss(C, backbone=tc.perceptual).to(device), tc.lambda_perceptual,
                tc.lambda_adv, tc.r1_gamma, D_train=distributed.ddp(D, device))
            self.sample_x = to_float(self.images[:16])                              # Fixed real images.
        else:
            self.loss = ConventionalEncoderLoss(G, E_train, device)
            with torch.no_grad():
                z = torch.randn(16, G.z_dim, generator=torch.Generator().manual_seed(tc.seed)).to(device)
                self.sample_x = G.synthesis(G.broadcast(G.mapping(z)), noise_mode="const")
        self.generator_id = weights_id(weights_dir)
        self.decay_steps = tc.lr_decay_steps or max(tc.steps // 4, 1)
        self.lr = tc.lr

    def state_dict(self) -> dict[str, Any]:
        state = {"kind": self.kind, "generator_id": self.generator_id, "E": self.E.state_dict(),
                 "opt_E": self.opt_E.state_dict()}
        if self.domain_guided:
            state.update(D=self.D.state_dict(), opt_D=self.opt_D.state_dict())
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != self.kind or state.get("generator_id") != self.generator_id:
            raise UserError(f"a '{state.get('kind')}' run for generator {state.get('generator_id')}, not a "
                            f"'{self.kind}' run for {self.generator_id}: use another --out")
        for name in ("E", "opt_E", *(("D", "opt_D") if self.domain_guided else ())):
            getattr(self, name).load_state_dict(state[name])

    def step(self, step: int) -> Losses:
        tc, D = self.tc, self.D
        # Exponential learning-rate decay (TF exponential_decay, not staircase), as idinvert.
        self.lr = tc.lr * tc.lr_decay_rate ** (step / self.decay_steps)
        for opt in (self.opt_E, self.opt_D):
            for group in (opt.param_groups if opt is not None else []):
                group["lr"] = self.lr

        # E step.
        if self.domain_guided:
            real = to_float(self.images[torch.randint(len(self.images), (self.batch,), device=self.device)])
            D.requires_grad_(False)                 # D is only a critic here: no gradients into it.
            e_loss, stats, x_rec = self.loss.encoder_loss(real)
        else:
            e_loss, stats = self.loss.encoder_loss(self.batch)
        descend(e_loss, self.opt_E)

        # D step on the same reals and their reconstructions (from E before its update, to save a forward).
        if self.domain_guided:
            D.requires_grad_(True)
            d_loss, d_stats = self.loss.discriminator_loss(real, x_rec)
            descend(d_loss, self.opt_D)
            stats.update(d_stats)
        return stats

    def stats(self) -> dict[str, Any]:
        return {"lr": self.lr}

    def sample(self) -> torch.Tensor:
        self.E.eval()
        rec = self.G.synthesis(self.E(self.sample_x), noise_mode="const")
        self.E.train()
        return torch.cat([self.sample_x, rec])      # Top row: inputs; bottom row: reconstructions G(E(x)).

    def register(self, info: dict[str, Any], command: str, commit: str | None) -> None:
        self.E.eval()
        info = {**info, "training": self.kind, "generator_id": self.generator_id}
        if self.init_from is not None:
            info["init_from"] = init_record(self.init_from, KINDS[self.kind])
        register_model(self.weights_dir, KINDS[self.kind], self.E, command=command, extra=info, commit=commit)


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
    run = RunFolder(run_dir)
    seed_everything(tc.seed)
    job = EncoderJob(cfg, weights_dir, device, kind=kind, data_dir=data_dir, init_from=init_from,
                     resuming=run.resumes(resume))
    schedule = Schedule(tc.steps, tc.checkpoint_every, tc.seed, tc.sample_every, batch_size=tc.batch_size)
    return train(job, run, device, schedule, options={"config": to_dict(cfg), "kind": kind,
                 "weights_dir": str(weights_dir)}, resume=resume, command=command, time_limit_min=time_limit_min,
                 register_at_limit=register_at_limit, max_steps=max_steps, progress=progress)
