"""StyleGAN2 training: non-saturating logistic loss, lazy R1, style mixing, EMA of G.

Karras et al., "Analyzing and Improving the Image Quality of StyleGAN" (CVPR 2020); lazy
regularisation and the EMA schedule follow NVlabs/stylegan2-ada-pytorch. Path-length
regularisation is left out: at 32x32 it costs more than it gives.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from semdir_edit.checkpoint import git_commit, load_training_state, register_model, save_training_state
from semdir_edit.config import Config, to_dict
from semdir_edit.data import load_split
from semdir_edit.device import autocast
from semdir_edit.imageio import save_grid
from semdir_edit.models import Discriminator, Generator
from semdir_edit.training.common import RunFolder, TimeBudget, rng_state, seed_everything, set_rng_state


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
    """Computes the G and D losses for one batch; knows nothing of optimisers."""

    def __init__(self, G: Generator, D: Discriminator, augment: torch.nn.Module, r1_gamma: float,
                 mixing_prob: float, device: torch.device) -> None:
        self.G, self.D, self.augment = G, D, augment
        self.r1_gamma, self.mixing_prob, self.device = r1_gamma, mixing_prob, device

    def run_G(self, z: torch.Tensor, update_w_avg: bool) -> torch.Tensor:
        ws = self.G.broadcast(self.G.mapping(z, update_w_avg=update_w_avg))
        # Style mixing regularisation: from a random layer on, styles come from a second code.
        if self.mixing_prob > 0 and torch.rand(()) < self.mixing_prob:
            cutoff = int(torch.randint(1, self.G.num_ws, ()))
            ws2 = self.G.broadcast(self.G.mapping(torch.randn_like(z)))
            ws = self.G.mix_styles(ws, ws2, cutoff)
        return self.G.synthesis(ws)

    def run_D(self, img: torch.Tensor) -> torch.Tensor:
        return self.D(self.augment(img)).float()

    def generator_loss(self, batch_size: int) -> torch.Tensor:
        with autocast(self.device):
            fake = self.run_G(torch.randn(batch_size, self.G.z_dim, device=self.device), update_w_avg=True)
            return F.softplus(-self.run_D(fake)).mean()   # Non-saturating: -log sigmoid(D(G(z))).

    def discriminator_loss(self, real: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), autocast(self.device):
            fake = self.run_G(torch.randn(real.shape[0], self.G.z_dim, device=self.device), update_w_avg=False)
        with autocast(self.device):
            return F.softplus(self.run_D(fake)).mean() + F.softplus(-self.run_D(real)).mean()

    def r1_penalty(self, real: torch.Tensor) -> torch.Tensor:
        """gamma/2 * E ||grad_x D(x)||^2 on real images (Mescheder et al. 2018), in full precision."""
        real = real.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(self.run_D(real).sum(), real, create_graph=True)
        return grad.square().sum(dim=(1, 2, 3)).mean() * (self.r1_gamma / 2)


@torch.no_grad()
def update_ema(G_ema: Generator, G: Generator, beta: float) -> None:
    for p_ema, p in zip(G_ema.parameters(), G.parameters(), strict=True):
        p_ema.lerp_(p, 1 - beta)
    for b_ema, b in zip(G_ema.buffers(), G.buffers(), strict=True):
        b_ema.copy_(b)


def train_gan(cfg: Config, run_dir: str | Path, device: torch.device, *, resume: bool = False,
              data_dir: str | None = None, weights_dir: str | Path | None = None, command: str = "",
              time_limit_min: float = 0.0, max_steps: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Train G and D on the configured dataset; on completion register G (EMA) and D in ``weights_dir``.

    Resumable: a checkpoint (``training-state.pt``) is written every ``checkpoint_every`` steps, on
    Ctrl-C and when the time limit is reached; ``resume=True`` continues from it.
    Returns the last logged stats.
    """
    tc = cfg.train_gan
    run = RunFolder(run_dir)
    seed_everything(tc.seed)
    data = load_split(cfg.data, "train", data_dir)
    images = data.images.to(device)
    G = Generator(cfg.generator).to(device)
    D = Discriminator(cfg.discriminator).to(device)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    opt_G = torch.optim.Adam(G.parameters(), lr=tc.lr, betas=(0.0, 0.99), eps=1e-8)
    # Lazy R1 is applied every r1_interval steps: rescale D's Adam so the effective schedule matches.
    c = tc.r1_interval / (tc.r1_interval + 1) if tc.r1_gamma > 0 else 1.0
    opt_D = torch.optim.Adam(D.parameters(), lr=tc.lr * c, betas=(0.0, 0.99 ** c), eps=1e-8)
    loss = StyleGAN2Loss(G, D, make_augment(tc.augment).to(device), tc.r1_gamma, tc.mixing_prob, device)

    step, seconds = 0, 0.0
    if resume and run.state_path.exists():
        state = load_training_state(run.state_path, device)
        for name, module in (("G", G), ("D", D), ("G_ema", G_ema), ("opt_G", opt_G), ("opt_D", opt_D)):
            module.load_state_dict(state[name])
        step, seconds = int(state["step"]), float(state["seconds"])
        set_rng_state(state["rng"])
    commit = git_commit()
    run.write_options({"config": to_dict(cfg), "command": command, "git_commit": commit, "device": str(device),
                       "resumed_at": step})

    def checkpoint() -> None:
        save_training_state(run.state_path, {
            "G": G.state_dict(), "D": D.state_dict(), "G_ema": G_ema.state_dict(),
            "opt_G": opt_G.state_dict(), "opt_D": opt_D.state_dict(),
            "step": step, "seconds": seconds, "rng": rng_state()})

    total = tc.steps if max_steps is None else min(tc.steps, max_steps)
    sample_z = torch.randn(64, G.z_dim, generator=torch.Generator().manual_seed(tc.seed)).to(device)
    budget = TimeBudget(time_limit_min)
    bar = tqdm(total=total, initial=step, disable=not progress, desc="train gan", dynamic_ncols=True)
    stats: dict[str, Any] = {}
    t0 = time.monotonic()
    try:
        while step < total and not budget.exceeded():
            # D step (logistic loss), with lazy R1 every r1_interval steps.
            real = (images[torch.randint(len(images), (tc.batch_size,), device=device)].float() / 127.5 - 1)
            d_loss = loss.discriminator_loss(real)
            opt_D.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_D.step()
            r1 = None
            if tc.r1_gamma > 0 and step % tc.r1_interval == 0:
                r1 = loss.r1_penalty(real) * tc.r1_interval
                opt_D.zero_grad(set_to_none=True)
                r1.backward()
                opt_D.step()

            # G step (non-saturating loss, style mixing).
            g_loss = loss.generator_loss(tc.batch_size)
            opt_G.zero_grad(set_to_none=True)
            g_loss.backward()
            opt_G.step()

            # Update EMA of G; its half-life ramps up with the images seen.
            ema_nimg = tc.ema_kimg * 1000
            if tc.ema_rampup > 0:
                ema_nimg = min(ema_nimg, (step + 1) * tc.batch_size * tc.ema_rampup)
            update_ema(G_ema, G, 0.5 ** (tc.batch_size / max(ema_nimg, 1e-8)))
            step += 1
            bar.update(1)

            if step % 50 == 0 or step == total:
                now = time.monotonic()
                seconds += now - t0
                t0 = now
                stats = {"step": step, "kimg": step * tc.batch_size / 1000, "seconds": round(seconds, 1),
                         "loss_G": round(g_loss.item(), 4), "loss_D": round(d_loss.item(), 4)}
                if r1 is not None:
                    stats["r1"] = round(r1.item(), 4)
                bar.set_postfix(G=stats["loss_G"], D=stats["loss_D"])
                run.append_stats(stats)
            if step % tc.sample_every == 0 or step == total:
                with torch.no_grad():
                    save_grid(run.path / "samples" / f"step-{step:07d}.png",
                              G_ema(sample_z, noise_mode="const"), nrow=8, scale=2)
            if step % tc.checkpoint_every == 0:
                checkpoint()
    except KeyboardInterrupt:
        checkpoint()
        bar.close()
        raise
    bar.close()
    seconds += time.monotonic() - t0
    checkpoint()
    if step >= tc.steps and weights_dir is not None:
        info = {"steps": step, "kimg": step * tc.batch_size / 1000, "train_seconds": round(seconds),
                "device": str(device)}
        register_model(weights_dir, "generator", G_ema, command=command, extra=info, commit=commit)
        register_model(weights_dir, "discriminator", D, command=command, extra=info, commit=commit)
    return {**stats, "step": step, "seconds": round(seconds, 1), "finished": step >= tc.steps}
