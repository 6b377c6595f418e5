"""StyleGAN2 training: non-saturating logistic loss, lazy R1, style mixing, EMA of G.

Karras et al., "Analyzing and Improving the Image Quality of StyleGAN" (CVPR 2020); lazy
regularisation (R1 for D, path length for G) and the EMA schedule follow NVlabs/stylegan2-ada-pytorch.
Path-length regularisation is off unless ``train_gan.pl_weight`` > 0 (the shipped generator was trained without).

Under torchrun, G's mapping and synthesis networks and D are each wrapped in DistributedDataParallel (as
stylegan2-ada-pytorch does); ``train_gan.batch_size`` is the global batch, split over the processes.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from semdir_edit.checkpoint import init_record, load_into, register_model
from semdir_edit.config import Config, to_dict
from semdir_edit.core import distributed
from semdir_edit.core.device import autocast
from semdir_edit.data import load_split
from semdir_edit.models import Discriminator, Generator
from semdir_edit.training.common import RunFolder, seed_everything
from semdir_edit.training.loop import Losses, Schedule, TrainingJob, descend, train


def make_augment(enabled: bool) -> torch.nn.Module:
    """Differentiable augmentation applied to both real and fake images before D (kornia)."""
    if not enabled:
        return torch.nn.Identity()
    import kornia.augmentation as K

    return K.AugmentationSequential(
        K.RandomHorizontalFlip(),
        K.RandomAffine(degrees=0, translate=(0.125, 0.125), p=0.5),
        K.ColorJitter(brightness=0.2, contrast=0.2, p=0.5),
    )


class StyleGAN2Loss:
    """Computes the G and D losses for one batch; knows nothing of optimisers.

    ``mapping``, ``synthesis``, ``D_train``: what the forwards that train G and D go through - under torchrun the
    DDP wrappers of ``G.mapping``, ``G.synthesis`` and ``D`` (default: the networks themselves). G's loss runs the
    bare ``D``, which the trainer freezes for that step.
    """

    def __init__(self, G: Generator, D: Discriminator, augment: torch.nn.Module, r1_gamma: float,
                 mixing_prob: float, device: torch.device, *, mapping: torch.nn.Module | None = None,
                 synthesis: torch.nn.Module | None = None, D_train: torch.nn.Module | None = None) -> None:
        self.G, self.D, self.augment = G, D, augment
        self.r1_gamma, self.mixing_prob, self.device = r1_gamma, mixing_prob, device
        self.mapping = mapping or G.mapping
        self.synthesis = synthesis or G.synthesis
        self.D_train = D_train or D
        self.pl_mean = torch.zeros((), device=device)  # Running mean of the path lengths (checkpointed).

    def run_G(self, z: torch.Tensor, update_w_avg: bool) -> torch.Tensor:
        ws = self.G.broadcast(self.mapping(z, update_w_avg=update_w_avg))
        # Style mixing regularisation: with probability mixing_prob the styles from a random layer on come from a
        # second code. That code is mapped on every step, mixed or not (as stylegan2-ada-pytorch does): under DDP
        # every rank must run the same forwards, whatever its own random draws.
        if self.mixing_prob > 0:
            cutoff = int(torch.randint(1, self.G.num_ws, ()))
            if torch.rand(()) >= self.mixing_prob:
                cutoff = self.G.num_ws  # No mixing this time.
            ws2 = self.G.broadcast(self.mapping(torch.randn_like(z)))
            ws = self.G.mix_styles(ws, ws2, cutoff)
        return self.synthesis(ws)

    def run_D(self, img: torch.Tensor, train: bool = False) -> torch.Tensor:
        """D's logits for ``img`` (augmented); ``train``: through ``D_train``, for a loss that trains D."""
        return (self.D_train if train else self.D)(self.augment(img)).float()

    def generator_loss(self, batch_size: int) -> torch.Tensor:
        with autocast(self.device):
            fake = self.run_G(torch.randn(batch_size, self.G.z_dim, device=self.device), update_w_avg=True)
            return F.softplus(-self.run_D(fake)).mean()   # Non-saturating: -log sigmoid(D(G(z))).

    def discriminator_loss(self, real: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), autocast(self.device):
            fake = self.run_G(torch.randn(real.shape[0], self.G.z_dim, device=self.device), update_w_avg=False)
        with autocast(self.device):
            return F.softplus(self.run_D(fake, train=True)).mean() + F.softplus(-self.run_D(real, train=True)).mean()

    def path_length_penalty(self, batch_size: int, decay: float) -> torch.Tensor:
        """E (|J_w^T y| - a)^2, y ~ N(0, I) / sqrt(pixels): the image's response to a random pixel-space
        direction should have the same length for every w (a = running mean of those lengths). Full precision."""
        ws = self.G.broadcast(self.mapping(torch.randn(batch_size, self.G.z_dim, device=self.device)))
        img = self.synthesis(ws)
        y = torch.randn_like(img) / (img.shape[2] * img.shape[3]) ** 0.5
        (grad,) = torch.autograd.grad((img * y).sum(), ws, create_graph=True)
        lengths = grad.square().sum(2).mean(1).sqrt()                      # (B,)
        # The running mean is the same on every rank (averaged over them), so a checkpoint of rank 0's resumes all.
        mean_now = distributed.mean({"pl": lengths.mean().item()})["pl"]
        self.pl_mean = self.pl_mean.lerp(torch.tensor(mean_now, device=self.device), decay)
        # + 0 * img: under DDP every parameter of synthesis must receive a gradient (cf. r1_penalty).
        return (lengths - self.pl_mean).square().mean() + img[:, 0, 0, 0].sum() * 0

    def r1_penalty(self, real: torch.Tensor) -> torch.Tensor:
        """gamma/2 * E ||grad_x D(x)||^2 on real images (Mescheder et al. 2018), in full precision."""
        real = real.detach().requires_grad_(True)
        logits = self.run_D(real, train=True)
        (grad,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
        # + 0 * logits: the penalty alone gives D's last bias no gradient, and DDP waits for every parameter's.
        return grad.square().sum(dim=(1, 2, 3)).mean() * (self.r1_gamma / 2) + logits.sum() * 0


@torch.no_grad()
def update_ema(G_ema: Generator, G: Generator, beta: float) -> None:
    for p_ema, p in zip(G_ema.parameters(), G.parameters(), strict=True):
        p_ema.lerp_(p, 1 - beta)
    for b_ema, b in zip(G_ema.buffers(), G.buffers(), strict=True):
        b_ema.copy_(b)


def start_from_weights(weights_dir: str | Path, G: Generator, G_ema: Generator, D: Discriminator) -> dict[str, Any]:
    """Copy a weights folder's generator (into G and G_ema) and discriminator (into D); returns where they came
    from (recorded with the run). UserError when that folder's networks have another shape than the config's."""
    load_into(G, weights_dir, "generator")
    G_ema.load_state_dict(G.state_dict())
    load_into(D, weights_dir, "discriminator")
    return {"init_from": init_record(weights_dir, "generator")}


class GANJob(TrainingJob):
    """StyleGAN2 training as a :class:`~semdir_edit.training.loop.TrainingJob`: per step one D step (lazy R1), one
    G step (lazy path length), then the EMA of G. Samples: G_ema on 64 fixed codes; registers G_ema and D.

    init_from: a weights folder whose G (into G and G_ema) and D a fresh run starts from (None = random);
    ignored when ``resuming`` (the checkpoint replaces it).
    """

    desc = "train gan"
    postfix = {"G": "loss_G", "D": "loss_D"}

    def __init__(self, cfg: Config, device: torch.device, *, data_dir: str | None = None,
                 weights_dir: str | Path | None = None, init_from: str | Path | None = None,
                 resuming: bool = False) -> None:
        tc = self.tc = cfg.train_gan
        self.device, self.weights_dir = device, weights_dir
        self.batch = distributed.per_rank_batch(tc.batch_size, "train_gan.batch_size")
        self.images = load_split(cfg.data, "train", data_dir).images.to(device)
        self.G = G = Generator(cfg.generator).to(device)
        self.D = D = Discriminator(cfg.discriminator).to(device)
        self.G_ema = copy.deepcopy(G).eval().requires_grad_(False)
        # Lazy regularisation (R1 every r1_interval D steps, path length every pl_interval G steps): rescale each
        # Adam so the effective schedule matches.
        c = tc.pl_interval / (tc.pl_interval + 1) if tc.pl_weight > 0 else 1.0
        self.opt_G = torch.optim.Adam(G.parameters(), lr=tc.lr * c, betas=(0.0, 0.99 ** c), eps=1e-8)
        c = tc.r1_interval / (tc.r1_interval + 1) if tc.r1_gamma > 0 else 1.0
        self.opt_D = torch.optim.Adam(D.parameters(), lr=tc.lr * c, betas=(0.0, 0.99 ** c), eps=1e-8)
        self.init_info: dict[str, Any] = {}             # Where G and D started from, recorded with the run.
        if init_from is not None and not resuming:
            self.init_info = start_from_weights(init_from, G, self.G_ema, D)
        # Under torchrun: gradients averaged over the ranks. The mapping network's w_avg (a running mean that each
        # rank updates from its own codes) is copied from rank 0 before each of its forwards.
        self.loss = StyleGAN2Loss(G, D, make_augment(tc.augment).to(device), tc.r1_gamma, tc.mixing_prob, device,
                                  mapping=distributed.ddp(G.mapping, device, broadcast_buffers=True),
                                  synthesis=distributed.ddp(G.synthesis, device), D_train=distributed.ddp(D, device))
        self.pl: torch.Tensor | None = None       # The latest path-length penalty (lazy: not every step).
        self.sample_z = torch.randn(64, G.z_dim, generator=torch.Generator().manual_seed(tc.seed)).to(device)

    def state_dict(self) -> dict[str, Any]:
        return {"G": self.G.state_dict(), "D": self.D.state_dict(), "G_ema": self.G_ema.state_dict(),
                "opt_G": self.opt_G.state_dict(), "opt_D": self.opt_D.state_dict(), "pl_mean": self.loss.pl_mean}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in ("G", "D", "G_ema", "opt_G", "opt_D"):
            getattr(self, name).load_state_dict(state[name])
        if "pl_mean" in state:
            self.loss.pl_mean = state["pl_mean"].to(self.device)

    def step(self, step: int) -> Losses:
        tc, loss, batch = self.tc, self.loss, self.batch
        # D step (logistic loss), with lazy R1 every r1_interval steps.
        real = (self.images[torch.randint(len(self.images), (batch,), device=self.device)].float() / 127.5 - 1)
        d_loss = loss.discriminator_loss(real)
        descend(d_loss, self.opt_D)
        r1 = None
        if tc.r1_gamma > 0 and step % tc.r1_interval == 0:
            r1 = loss.r1_penalty(real) * tc.r1_interval
            descend(r1, self.opt_D)

        # G step (non-saturating loss, style mixing); D is only a critic here.
        self.D.requires_grad_(False)
        g_loss = loss.generator_loss(batch)
        descend(g_loss, self.opt_G)
        if tc.pl_weight > 0 and step % tc.pl_interval == 0:
            self.pl = loss.path_length_penalty(max(batch // tc.pl_batch_shrink, 1), tc.pl_decay)
            descend(self.pl * (tc.pl_weight * tc.pl_interval), self.opt_G)
        self.D.requires_grad_(True)

        # Update EMA of G (from the bare G, identical on every rank); its half-life ramps up with the images
        # seen (tc.batch_size: the global batch).
        ema_nimg = tc.ema_kimg * 1000
        if tc.ema_rampup > 0:
            ema_nimg = min(ema_nimg, (step + 1) * tc.batch_size * tc.ema_rampup)
        update_ema(self.G_ema, self.G, 0.5 ** (tc.batch_size / max(ema_nimg, 1e-8)))

        losses: Losses = {"loss_G": g_loss.detach(), "loss_D": d_loss.detach()}
        if r1 is not None:
            losses["r1"] = r1.detach()
        if self.pl is not None:
            losses.update(pl=self.pl.detach(), pl_mean=loss.pl_mean)
        return losses

    def sample(self) -> torch.Tensor:
        return self.G_ema(self.sample_z, noise_mode="const")

    def register(self, info: dict[str, Any], command: str, commit: str | None) -> None:
        if self.weights_dir is None:
            return
        for kind, net in (("generator", self.G_ema), ("discriminator", self.D)):
            register_model(self.weights_dir, kind, net, command=command, extra={**info, **self.init_info},
                           commit=commit)


def train_gan(cfg: Config, run_dir: str | Path, device: torch.device, *, resume: bool = False,
              data_dir: str | None = None, weights_dir: str | Path | None = None, command: str = "",
              time_limit_min: float = 0.0, register_at_limit: bool = False, max_steps: int | None = None,
              progress: bool = True, init_from: str | Path | None = None) -> dict[str, Any]:
    """Train G and D on the configured dataset; on completion register G (EMA) and D in ``weights_dir``.

    Resumable: a checkpoint (``training-state.pt``) is written every ``checkpoint_every`` steps, on
    Ctrl-C and when the time limit is reached; ``resume=True`` continues from it.
    init_from: a weights folder whose generator (EMA) and discriminator a fresh run starts from (new optimisers,
    step 0): continues a finished training when its run folder is gone. Ignored when resuming a checkpoint.
    Under torchrun, call it on every rank (see :mod:`semdir_edit.training.common`). Returns the last logged stats.
    """
    tc = cfg.train_gan
    run = RunFolder(run_dir)
    seed_everything(tc.seed)
    job = GANJob(cfg, device, data_dir=data_dir, weights_dir=weights_dir, init_from=init_from,
                 resuming=run.resumes(resume))
    schedule = Schedule(tc.steps, tc.checkpoint_every, tc.seed, tc.sample_every, batch_size=tc.batch_size)
    return train(job, run, device, schedule, options={"config": to_dict(cfg), **job.init_info}, resume=resume,
                 command=command, time_limit_min=time_limit_min, register_at_limit=register_at_limit,
                 max_steps=max_steps, progress=progress)
