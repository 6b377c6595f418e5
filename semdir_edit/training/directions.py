"""Joint training of the N+1 deformators and the shift predictor (Kim & Lee; Voynov & Babenko 2020).

Per step: sample w = mapping(z); the frozen classifier names the class c of G(w); sample k and eps
(|eps| ~ U[eps_min, eps_max], random sign, in units of W's spread along the direction); shift w by
A_G(eps e_k) and by A_c(eps e_k); the predictor must tell, from (G(w), G(w + shift)), which of the
(N+1)*K directions moved the image (cross-entropy) and by how much (L1). G and C stay frozen.
With ``class_keep_weight`` > 0 (ours), the classifier's cross-entropy against c on the class-set edits is added,
so class directions learn changes that keep the article in its class. With ``class_strength_weight`` > 0 (ours), a
hinge on the class-set edits' perceptual change per unit eps keeps class directions from settling on edits too
weak to see.

Under torchrun, the deformators and the predictor are wrapped in DistributedDataParallel;
``train_directions.batch_size`` is the global batch, split over the processes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from semdir_edit.checkpoint import init_record, load_into, load_model, register_model
from semdir_edit.config import Config, DirectionsTrainConfig, to_dict
from semdir_edit.core import distributed
from semdir_edit.core.errors import UserError
from semdir_edit.directions.baselines import sample_by_class, sample_w, w_covariance
from semdir_edit.models import Classifier, Generator
from semdir_edit.models.deformator import Deformators
from semdir_edit.models.shift_predictor import INPUTS, ShiftPredictor, grow_state, shift_predictor_loss
from semdir_edit.ops.perceptual import perceptual_distance
from semdir_edit.ops.visible import change_statistics, solve_directions
from semdir_edit.training.common import RunFolder, seed_everything
from semdir_edit.training.loop import Losses, Schedule, TrainingJob, descend, train

DIRECTION_INITS = ("random", "visible")
LR_SCHEDULES = ("constant", "cosine")


class FrozenDirections(nn.Module):
    """A fixed direction set (w_dim, K) seen through the deformators' interface, so a fresh shift predictor
    can be trained on it with :class:`DirectionLoss` (Voynov's protocol for PCA, SeFa and random baselines)."""

    def __init__(self, directions: torch.Tensor, w_cov: torch.Tensor) -> None:
        super().__init__()
        d = directions.float()
        self.register_buffer("directions", d / d.norm(dim=0, keepdim=True).clamp_min(1e-12))
        self.register_buffer("w_cov", w_cov.float())
        self.k = d.shape[1]

    def all_directions(self) -> torch.Tensor:
        return self.directions[None]                                      # (1, w_dim, K): one set.


class AllDirections(nn.Module):
    """``forward()`` = ``deformators.all_directions()``: a forward for DistributedDataParallel to wrap (DDP
    averages the gradients of what goes through its wrapper's forward)."""

    def __init__(self, deformators: Deformators) -> None:
        super().__init__()
        self.deformators = deformators

    def forward(self) -> torch.Tensor:
        return self.deformators.all_directions()


class DirectionLoss:
    """The direction-discovery objective for one batch; knows nothing of optimisers.

    ``all_directions``: how to get the (N+1, w_dim, K) directions (default ``deformators.all_directions``; under
    torchrun the DDP wrapper of :class:`AllDirections`); ``predictor`` may be a DDP wrapper too.
    """

    def __init__(self, G: Generator, C: Classifier, deformators: Deformators | FrozenDirections,
                 predictor: ShiftPredictor | nn.Module, eps_range: tuple[float, float], shift_weight: float,
                 train_global: bool = True, train_class: bool = True,
                 all_directions: Callable[[], torch.Tensor] | None = None, class_keep_weight: float = 0.0,
                 class_strength: tuple[float, float] = (0.0, 0.0)) -> None:
        self.G, self.C, self.deformators, self.predictor = G, C, deformators, predictor
        self.all_directions = all_directions or deformators.all_directions
        self.eps_range, self.shift_weight, self.class_keep_weight = eps_range, shift_weight, class_keep_weight
        self.strength_weight, self.strength_target = class_strength   # (weight, target change per unit eps).
        self.sets = [s for s, on in (("global", train_global), ("class", train_class)) if on]
        if not self.sets:
            raise ValueError("train at least one of the global and the class sets")

    def spread(self, directions: torch.Tensor) -> torch.Tensor:
        """sqrt(d^T Sigma d) for columns d of (..., w_dim, K) -> (..., K); differentiable."""
        cov = self.deformators.w_cov
        return torch.einsum("...ik,ij,...jk->...k", directions, cov, directions).clamp_min(1e-12).sqrt()

    def __call__(self, batch_size: int) -> tuple[torch.Tensor, dict[str, float]]:
        device = self.deformators.w_cov.device
        G, K = self.G, self.deformators.k
        with torch.no_grad():
            w = G.mapping(torch.randn(batch_size, G.z_dim, device=device))
            img = G.render(G.broadcast(w))                                # As shown: clamped to [-1, 1].
            c = self.C(img).argmax(1)                                     # Class of each sample as shown.
        directions = self.all_directions()                                # (N+1, w_dim, K)
        spreads = self.spread(directions)                                 # (N+1, K)
        set_index = torch.cat([torch.zeros_like(c) if s == "global" else c + 1 for s in self.sets])
        n = len(set_index)
        k = torch.randint(0, K, (n,), device=device)
        lo, hi = self.eps_range
        eps = (lo + (hi - lo) * torch.rand(n, device=device)) * (torch.randint(0, 2, (n,), device=device) * 2 - 1)
        shift = directions[set_index, :, k] * (eps * spreads[set_index, k])[:, None]
        w_rep = w.repeat(len(self.sets), 1)
        # The predictor sees the images as shown (clamped), as `evaluate directions` measures it: trained on the
        # unclamped synthesis output (a third of whose pixels overshoot [-1, 1]) it was measured on other inputs.
        shifted = G.render(G.broadcast(w_rep + shift))
        originals = img.repeat(len(self.sets), 1, 1, 1)
        logits, shifts = self.predictor(originals, shifted)
        loss, stats = shift_predictor_loss(logits, shifts, set_index * K + k, eps, self.shift_weight)
        class_part = set_index > 0                                        # The class-set edits.
        if self.class_keep_weight > 0 and "class" in self.sets:
            class_logits, target = self.C(shifted[class_part]), c.repeat(len(self.sets))[class_part]
            keep = F.cross_entropy(class_logits, target)
            loss = loss + self.class_keep_weight * keep
            stats["class_keep_ce"] = keep.item()
            stats["class_kept"] = (class_logits.argmax(1) == target).float().mean().item()
        if self.strength_weight > 0 and "class" in self.sets:
            strength = perceptual_distance(self.C, originals[class_part], shifted[class_part]) / eps[class_part].abs()
            loss = loss + self.strength_weight * F.relu(self.strength_target - strength).mean()
            stats["class_strength"] = strength.mean().item()
        return loss, stats


def cosine_decay(opt: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The optimiser's rate times 0.5 (1 + cos(pi step / steps)): from its rate to 0 at ``steps``."""
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * min(i, steps) / steps)))


def init_visible(deformators: Deformators, G: Generator, C: Classifier, dc: DirectionsTrainConfig,
                 progress: bool = False) -> None:
    """Start the deformators at :mod:`~semdir_edit.ops.visible`'s closed-form directions (same seed on every
    rank, so every process starts alike)."""
    samples = sample_by_class(G, C, dc.init_samples_per_class, dc.seed)
    stats = change_statistics(G, C, samples.w, samples.labels, deformators.w_cov, rank=dc.init_rank,
                              progress=progress)
    global_dirs, class_dirs = solve_directions(stats, deformators.k, outline_weight=dc.init_outline_weight,
                                               keep_global=dc.init_keep_global, keep_class=dc.init_keep_class,
                                               specificity=dc.init_specificity)
    with torch.no_grad():
        deformators.global_raw.copy_(global_dirs)
        if deformators.num_classes:
            deformators.class_raw.copy_(class_dirs)


class DirectionsJob(TrainingJob):
    """Direction discovery as a :class:`~semdir_edit.training.loop.TrainingJob`: per step one joint step of the
    deformators and the shift predictor on :class:`DirectionLoss`. No samples; registers both networks (with the
    suffix ``_voynov`` for the global-only baseline).

    init_from: a weights folder whose registered deformators and predictor are the starting point; else
        ``train_directions.init`` says which (random or :func:`init_visible`). ``resuming``: no starting point
        (the checkpoint replaces it).
    """

    desc = "train directions"
    postfix = {"acc": "accuracy", "ce": "ce"}

    def __init__(self, cfg: Config, weights_dir: str | Path, device: torch.device, *, global_only: bool = False,
                 init_from: str | Path | None = None, resuming: bool = False, progress: bool = False) -> None:
        dc = self.dc = cfg.train_directions
        self.weights_dir, self.init_from = weights_dir, init_from
        self.batch = distributed.per_rank_batch(dc.batch_size, "train_directions.batch_size")
        G = load_model(weights_dir, "generator", device)
        C = load_model(weights_dir, "classifier", device)
        # Sizes left at 0 in the config come from the networks they serve.
        dcfg = dataclasses.replace(cfg.deformator, w_dim=cfg.deformator.w_dim or G.w_dim,
                                   num_classes=0 if global_only else cfg.deformator.num_classes or C.cfg.num_classes)
        pcfg = dataclasses.replace(cfg.shift_predictor, k=cfg.shift_predictor.k or dcfg.k,
                                   num_sets=cfg.shift_predictor.num_sets or dcfg.num_classes + 1,
                                   img_channels=G.cfg.img_channels)
        self.deformators = deformators = Deformators(dcfg).to(device)
        deformators.w_cov.copy_(w_covariance(sample_w(G, dc.spread_samples, dc.seed)).float())
        self.predictor = predictor = ShiftPredictor(pcfg).to(device)
        self.suffix = "_voynov" if global_only else ""
        self.predictor_from = None if dc.fresh_predictor else init_from   # Where the predictor started, if not afresh.
        if init_from is not None and not resuming:
            load_into(deformators, init_from, "deformators" + self.suffix)
            if self.predictor_from is not None:
                # A stored predictor goes on as a larger one (another input, a finer grid) from where it was.
                load_into(predictor, init_from, "shift_predictor" + self.suffix,
                          adapt=lambda state: grow_state(state, pcfg))
        elif dc.init == "visible" and not global_only and not resuming:
            init_visible(deformators, G, C, dc, progress=progress)
        # The Voynov baseline is Voynov & Babenko's own method whatever the config says of ours (a random start,
        # trained); freezing applies to it only when fine-tuning one (--init-from).
        freezes = not global_only or init_from is not None
        if dc.freeze_global and freezes:
            deformators.global_raw.requires_grad_(False)
        if dc.freeze_class and freezes:
            deformators.class_raw.requires_grad_(False)
        trainable = [p for p in deformators.parameters() if p.requires_grad]
        self.opt_d = torch.optim.Adam(trainable, lr=dc.lr_deformator or dc.lr) if trainable else None
        self.opt_p = torch.optim.Adam(predictor.parameters(), lr=dc.lr)
        self.schedulers = [cosine_decay(opt, dc.steps) for opt in (self.opt_d, self.opt_p)
                           if opt is not None and dc.lr_schedule == "cosine"]
        # Under torchrun: gradients averaged over the ranks; the predictor's batch-norm statistics copied from rank 0.
        self.loss = DirectionLoss(G, C, deformators, distributed.ddp(predictor, device, broadcast_buffers=True),
                                  (dc.eps_min, dc.eps_max), dc.shift_weight, train_class=not global_only,
                                  all_directions=distributed.ddp(AllDirections(deformators), device) if trainable
                                  else deformators.all_directions,  # DDP refuses a module with nothing to train.
                                  # With the class sets frozen their extra terms move nothing: skip computing them.
                                  class_keep_weight=0.0 if dc.freeze_class else dc.class_keep_weight,
                                  class_strength=(0.0 if dc.freeze_class else dc.class_strength_weight,
                                                  dc.class_strength_target))

    def state_dict(self) -> dict[str, Any]:
        return {"deformators": self.deformators.state_dict(), "predictor": self.predictor.state_dict(),
                "opt_d": self.opt_d.state_dict() if self.opt_d is not None else None,
                "opt_p": self.opt_p.state_dict(), "schedulers": [s.state_dict() for s in self.schedulers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in ("deformators", "predictor", "opt_d", "opt_p"):
            if getattr(self, name) is not None:
                getattr(self, name).load_state_dict(state[name])
        saved = state.get("schedulers", [])
        if len(saved) != len(self.schedulers):
            raise UserError("the checkpoint was trained with another train_directions.lr_schedule; resume with "
                            "the config it was started with")
        for scheduler, scheduler_state in zip(self.schedulers, saved, strict=True):
            scheduler.load_state_dict(scheduler_state)

    def step(self, step: int) -> Losses:
        self.predictor.train()
        loss, stats = self.loss(self.batch)
        descend(loss, self.opt_d, self.opt_p)
        for scheduler in self.schedulers:
            scheduler.step()
        return {"loss": loss.detach(), **stats}

    def stats(self) -> dict[str, Any]:
        return {"lr": self.opt_p.param_groups[0]["lr"]}

    def register(self, info: dict[str, Any], command: str, commit: str | None) -> None:
        for kind, module, origin in (("deformators" + self.suffix, self.deformators, self.init_from),
                                     ("shift_predictor" + self.suffix, self.predictor, self.predictor_from)):
            start = {"init_from": init_record(origin, kind)} if origin is not None else {}
            register_model(self.weights_dir, kind, module, command=command, extra={**info, **start}, commit=commit)


def train_directions(cfg: Config, weights_dir: str | Path, run_dir: str | Path, device: torch.device, *,
                     resume: bool = False, command: str = "", time_limit_min: float = 0.0,
                     register_at_limit: bool = False, max_steps: int | None = None, progress: bool = True,
                     global_only: bool = False, init_from: str | Path | None = None) -> dict[str, Any]:
    """Train deformators + predictor against the shipped G and classifier in ``weights_dir``.

    global_only: Voynov & Babenko's original method (one deformator, one predictor head), the baseline of
    Kim & Lee; registered as ``deformators_voynov`` / ``shift_predictor_voynov``.
    init_from: a weights folder whose registered deformators and predictor are the starting point (fine-tuning,
    e.g. with another objective); a fresh run otherwise. Ignored when resuming from a checkpoint.
    Under torchrun, call it on every rank (see :mod:`semdir_edit.training.common`).
    """
    dc = cfg.train_directions
    if dc.init not in DIRECTION_INITS:
        raise UserError(f"train_directions.init must be one of {', '.join(DIRECTION_INITS)}, not '{dc.init}'")
    if dc.lr_schedule not in LR_SCHEDULES:
        raise UserError(f"train_directions.lr_schedule must be one of {', '.join(LR_SCHEDULES)}, "
                        f"not '{dc.lr_schedule}'")
    if cfg.shift_predictor.inputs not in INPUTS:
        raise UserError(f"shift_predictor.inputs must be one of {', '.join(INPUTS)}, "
                        f"not '{cfg.shift_predictor.inputs}'")
    if cfg.shift_predictor.pool < 1:
        raise UserError(f"shift_predictor.pool must be at least 1, not {cfg.shift_predictor.pool}")
    run = RunFolder(run_dir)
    seed_everything(dc.seed)
    job = DirectionsJob(cfg, weights_dir, device, global_only=global_only, init_from=init_from,
                        resuming=run.resumes(resume), progress=progress and distributed.is_main())
    schedule = Schedule(dc.steps, dc.checkpoint_every, dc.seed)
    return train(job, run, device, schedule, options={"config": to_dict(cfg)}, resume=resume, command=command,
                 time_limit_min=time_limit_min, register_at_limit=register_at_limit, max_steps=max_steps,
                 progress=progress)
