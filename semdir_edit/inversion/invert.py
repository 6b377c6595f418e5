"""Batched GAN inversion in W+: x (B, C, R, R) in [-1, 1] -> codes w (B, num_ws, w_dim) with G(w) close to x.

Methods (Zhu, Shen, Zhao, Zhou, "In-Domain GAN Inversion for Real Image Editing", ECCV 2020, and its baselines):

- ``encoder``: w = E(x) with the domain-guided encoder (the paper's Eq. 2/3), no optimisation.
- ``conventional``: w = E(x) with an encoder trained on generated pairs in latent space (Eq. 1) — baseline.
- ``optimize``: Image2StyleGAN-style (Abdal, Qin, Wonka, ICCV 2019) optimisation from the mean code,
  min_w ||x - G(w)||^2 + lambda_vgg ||F(x) - F(G(w))|| — baseline without a domain term.
- ``indomain`` (Eq. 4, the default): start from w = E(x) and minimise
  ||x - G(w)||^2 + lambda_vgg ||F(x) - F(G(w))|| + lambda_dom ||w - E(G(w))||^2.

Hyper-parameters follow genforce/idinvert_pytorch (``utils/inverter.py``): Adam with lr 0.01 on the code, 100 steps,
lambda_dom = 2.0 (0.25 here, scaled to our W: the defaults are :class:`~semdir_edit.config.InversionConfig`'s), noise
fixed (``noise_mode="const"``), each squared norm a mean over its elements. Unlike their one-image-at-a-time loop, a
whole batch is inverted at once: every objective is computed per image and the gradient is that of the *sum* over
images, and Adam is element-wise, so the images never influence each other (no batch-mean
normalisation; G, E and F run in eval mode). An image whose input or objective turns NaN / Inf is flagged not ok,
frozen at its last finite code and excluded from the gradient; the rest of the batch is unaffected.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from semdir_edit.config import InversionConfig
from semdir_edit.core.progress import StepCallback as ProgressCallback
from semdir_edit.models.encoder import Encoder
from semdir_edit.models.generator import Generator
from semdir_edit.ops.perceptual import PerceptualLoss
from semdir_edit.ops.reconstruction import mse_to_psnr

# The inversion methods, each named once; METHODS is the registry every option and check reads.
INDOMAIN, ENCODER, OPTIMIZE, CONVENTIONAL = "indomain", "encoder", "optimize", "conventional"
METHODS = (INDOMAIN, ENCODER, OPTIMIZE, CONVENTIONAL)
ENCODER_KIND = {INDOMAIN: "encoder", ENCODER: "encoder", CONVENTIONAL: "encoder_conventional"}  # Its E's model.
NEEDS_ENCODER = tuple(ENCODER_KIND)                # Methods that take an encoder E.
ENCODING = (ENCODER, CONVENTIONAL)                 # Methods that only encode: one E pass, no steps.
OPTIMIZING = (INDOMAIN, OPTIMIZE)                  # Methods that optimise the code (steps, lr, F required).
_DEFAULTS = InversionConfig()  # Keyword defaults below: the config's (one place for them).

# Called once per optimisation step, before the update: (step, per-image objective (B,), detached).
StepCallback = Callable[[int, torch.Tensor], None]
Terms = dict[str, torch.Tensor]  # Name of an objective's term -> its per-image values (B,).


@dataclass
class InversionResult:
    """What an inversion returns; every tensor is detached, on the input's device.

    ws: (B, num_ws, w_dim) the inverted W+ codes.
    images: (B, C, R, R) reconstructions G.synthesis(ws, noise_mode="const"), unclamped.
    losses: (B,) the method's objective at ``ws`` (NaN for images that are not ok).
    terms: the objective's parts at ``ws``, each (B,): "pixel" (MSE on [-1, 1] images), "perceptual" (F's
        distance, when F was given), "domain" (mean of (w - E(G(w)))^2, in-domain only); unweighted.
    curve: (steps + 1, B) the objective before each update; row k = after k updates, the last row = ``losses``.
    mse_curve: (steps + 1, B) pixel MSE of the *clamped* reconstruction on [-1, 1] at the same points, so that
        :meth:`psnr_curve` gives the PSNR the evaluation reports at every step.
    ok: (B,) bool, False where the input or the objective was not finite.
    messages: per image, "" when ok, else why not.
    """

    method: str
    steps: int
    ws: torch.Tensor
    images: torch.Tensor
    losses: torch.Tensor
    terms: dict[str, torch.Tensor]
    curve: torch.Tensor
    mse_curve: torch.Tensor
    ok: torch.Tensor
    messages: list[str]

    def psnr_curve(self) -> torch.Tensor:
        """(steps + 1, B) PSNR in dB on [0, 1] images after each number of updates (an MSE of 4 on [-1, 1] = 0 dB)."""
        return mse_to_psnr(self.mse_curve / 4)


@contextmanager
def _frozen(*modules: nn.Module | None) -> Iterator[None]:
    """Eval mode and no parameter gradients for the duration; the modules' own flags are restored afterwards."""
    modules_ = [m for m in modules if m is not None]
    training = [[m.training for m in module.modules()] for module in modules_]
    grads = [[p.requires_grad for p in module.parameters()] for module in modules_]
    for module in modules_:
        module.eval().requires_grad_(False)
    try:
        yield
    finally:
        for module, flags, grad_flags in zip(modules_, training, grads, strict=True):
            for m, flag in zip(module.modules(), flags, strict=True):
                m.training = flag
            for p, flag in zip(module.parameters(), grad_flags, strict=True):
                p.requires_grad_(flag)


NONFINITE_INPUT = "input image contains NaN or Inf values"


def check_images(G: Generator, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate the batch; returns (x with non-finite images zeroed, per-image finite flags (B,))."""
    c, r = G.cfg.img_channels, G.cfg.resolution
    if x.ndim != 4 or x.shape[1:] != (c, r, r) or x.shape[0] < 1:
        raise ValueError(f"images must be (B >= 1, {c}, {r}, {r}) in [-1, 1], got {tuple(x.shape)}")
    finite = torch.isfinite(x).flatten(1).all(dim=1)
    # Zeroed so that a bad image costs nothing downstream; it is reported, not inverted.
    return torch.where(finite[:, None, None, None], x, torch.zeros_like(x)).float(), finite


def _objective(G: Generator, x: torch.Tensor, ws: torch.Tensor, F: PerceptualLoss | None, E: Encoder | None,
               lambda_perceptual: float, lambda_dom: float, F_target: list[torch.Tensor] | torch.Tensor | None = None
               ) -> tuple[torch.Tensor, Terms, torch.Tensor]:
    """Per-image objective (B,), its unweighted terms, and the reconstruction G(w) (B, C, R, R).

    ||x - G(w)||^2 + lambda_perceptual * F(x, G(w)) [+ lambda_dom * ||w - E(G(w))||^2 when E is given].
    F_target: ``F.target(x)``, so that x's features are not recomputed at every step (None = compute them).
    """
    rec = G.synthesis(ws, noise_mode="const")                                   # (B, C, R, R)
    terms = {"pixel": (rec - x).square().mean(dim=(1, 2, 3))}
    loss = terms["pixel"]
    if F is not None:
        terms["perceptual"] = F.distance(F_target if F_target is not None else F.target(x), rec)
        loss = loss + lambda_perceptual * terms["perceptual"]
    if E is not None:
        # The domain regulariser: w must be what the domain-guided encoder reads back from G(w).
        terms["domain"] = (ws - E(rec)).square().mean(dim=(1, 2))
        loss = loss + lambda_dom * terms["domain"]
    return loss, terms, rec


def _run(method: str, G: Generator, x: torch.Tensor, finite_input: torch.Tensor, start: torch.Tensor,
         F: PerceptualLoss | None, E_dom: Encoder | None, steps: int, lr: float, lambda_perceptual: float,
         lambda_dom: float, callback: StepCallback | None, on_step: ProgressCallback | None = None
         ) -> InversionResult:
    """Adam on the W+ code from ``start`` for ``steps`` updates (0 = just evaluate the objective at ``start``).

    on_step: called after each update with (updates done, ``steps``).
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    expected = (x.shape[0], G.num_ws, G.w_dim)
    if start.shape != expected:
        raise ValueError(f"start must be {expected}, got {tuple(start.shape)}")
    ws = start.detach().float().clone().requires_grad_(steps > 0)
    opt = torch.optim.Adam([ws], lr=lr) if steps > 0 else None
    ok = finite_input & torch.isfinite(ws).flatten(1).all(dim=1)
    fail_step = torch.where(ok, -1, 0)                  # The step at which an image went bad; -1 = never.
    last_good = ws.detach().clone()
    curve, mse_curve = [], []
    F_target = F.target(x) if F is not None else None  # x is fixed: its features are computed once.
    for step in range(steps + 1):
        last = step == steps
        with torch.set_grad_enabled(not last):
            loss, terms, rec = _objective(G, x, ws, F, E_dom, lambda_perceptual, lambda_dom, F_target)
        # Flag images whose objective or code stopped being finite; keep their last finite code.
        finite = torch.isfinite(loss.detach()) & torch.isfinite(ws.detach()).flatten(1).all(dim=1)
        fail_step = torch.where(ok & ~finite, step, fail_step)
        ok = ok & finite
        last_good = torch.where(ok[:, None, None], ws.detach(), last_good)
        with torch.no_grad():
            curve.append(torch.where(ok, loss, torch.nan))
            mse_curve.append(torch.where(ok, (rec.clamp(-1, 1) - x).square().mean(dim=(1, 2, 3)), torch.nan))
        if last:
            break
        if callback is not None:
            callback(step, curve[-1])
        # Gradient of the sum over images: each image's code gets exactly its own objective's gradient.
        (grad,) = torch.autograd.grad(torch.where(ok, loss, 0).sum(), ws)
        ws.grad = torch.where(ok[:, None, None], torch.nan_to_num(grad), 0)
        opt.step()
        if on_step is not None:
            on_step(step + 1, steps)

    ws_final = torch.where(ok[:, None, None], ws.detach(), last_good)
    if not bool(ok.all()):
        with torch.no_grad():
            rec = G.synthesis(ws_final, noise_mode="const")     # Bad images: the reconstruction of the kept code.
    nan = torch.tensor(torch.nan, device=x.device)
    messages = []
    for i, s in enumerate(fail_step.tolist()):
        if s < 0:
            messages.append("")
        elif not bool(finite_input[i]):
            messages.append(NONFINITE_INPUT)
        else:
            messages.append(f"objective became NaN or Inf at step {s}; kept the last finite code")
    return InversionResult(
        method=method, steps=steps, ws=ws_final, images=rec.detach(),
        losses=torch.where(ok, loss.detach(), nan),
        terms={k: torch.where(ok, v.detach(), nan) for k, v in terms.items()},
        curve=torch.stack(curve), mse_curve=torch.stack(mse_curve), ok=ok, messages=messages)


def mean_start(G: Generator, batch_size: int) -> torch.Tensor:
    """The mean code broadcast to W+: (batch_size, num_ws, w_dim) from ``G.mapping.w_avg``."""
    return G.broadcast(G.mapping.w_avg[None].expand(batch_size, -1)).clone()


def invert_encoder(E: Encoder, G: Generator, x: torch.Tensor, F: PerceptualLoss | None = None, *,
                   lambda_perceptual: float = _DEFAULTS.lambda_perceptual, method: str = ENCODER) -> InversionResult:
    """w = E(x) (B, num_ws, w_dim), no optimisation; works for the domain-guided and the conventional encoder.

    ``losses`` = pixel MSE (+ ``lambda_perceptual`` * F when F is given). ``method`` only labels the result.
    """
    x, finite = check_images(G, x)
    with _frozen(E, G, F):  # One context: walking the modules' flags costs ~1 ms a time.
        with torch.no_grad():
            start = E(x)
        return _run(method, G, x, finite, start, F, None, 0, 0.0, lambda_perceptual, 0.0, None)


def invert_optimize(G: Generator, x: torch.Tensor, F: PerceptualLoss, steps: int = _DEFAULTS.steps,
                    lr: float = _DEFAULTS.lr, start: torch.Tensor | None = None, *,
                    lambda_perceptual: float = _DEFAULTS.lambda_perceptual,
                    callback: StepCallback | None = None, on_step: ProgressCallback | None = None
                    ) -> InversionResult:
    """Image2StyleGAN-style: min_w ||x - G(w)||^2 + lambda_perceptual * F(x, G(w)) with Adam, from ``start``.

    start: (B, num_ws, w_dim) first code; None = the mean code (:func:`mean_start`).
    on_step: progress, called after each update with (updates done, ``steps``).
    """
    x, finite = check_images(G, x)
    start = mean_start(G, x.shape[0]) if start is None else start
    with _frozen(G, F):
        return _run(OPTIMIZE, G, x, finite, start, F, None, steps, lr, lambda_perceptual, 0.0, callback, on_step)


def invert_indomain(G: Generator, E: Encoder, x: torch.Tensor, F: PerceptualLoss, steps: int = _DEFAULTS.steps,
                    lr: float = _DEFAULTS.lr, lambda_dom: float = _DEFAULTS.lambda_dom, *,
                    lambda_perceptual: float = _DEFAULTS.lambda_perceptual,
                    callback: StepCallback | None = None, on_step: ProgressCallback | None = None
                    ) -> InversionResult:
    """In-domain inversion (Eq. 4): from w = E(x), min_w ||x - G(w)||^2 + lambda_perceptual * F(x, G(w))
    + lambda_dom * ||w - E(G(w))||^2 with Adam. E must be the domain-guided encoder. on_step: as
    :func:`invert_optimize`."""
    x, finite = check_images(G, x)
    with _frozen(E, G, F):
        with torch.no_grad():
            start = E(x)
        return _run(INDOMAIN, G, x, finite, start, F, E, steps, lr, lambda_perceptual, lambda_dom, callback,
                    on_step)


def invert(method: str, G: Generator, x: torch.Tensor, *, E: Encoder | None = None, F: PerceptualLoss | None = None,
           steps: int = _DEFAULTS.steps, lr: float = _DEFAULTS.lr,
           lambda_perceptual: float = _DEFAULTS.lambda_perceptual, lambda_dom: float = _DEFAULTS.lambda_dom,
           callback: StepCallback | None = None, on_step: ProgressCallback | None = None) -> InversionResult:
    """Invert ``x`` with one of :data:`METHODS`.

    E: the encoder the method needs — the domain-guided one for "indomain" and "encoder", the conventional one for
        "conventional"; unused by "optimize".
    F: the perceptual network; required by "indomain" and "optimize", optional (reported only) for the encoders.
    steps, lr, lambda_dom: optimisation methods only.
    on_step: progress of the optimisation methods, called after each update with (updates done, ``steps``).
    """
    if method not in METHODS:
        raise ValueError(f"unknown inversion method '{method}' (use {', '.join(METHODS)})")
    if method in NEEDS_ENCODER and E is None:
        raise ValueError(f"method '{method}' needs an encoder E")
    if method in OPTIMIZING and F is None:
        raise ValueError(f"method '{method}' needs a perceptual network F")
    if method == INDOMAIN:
        return invert_indomain(G, E, x, F, steps, lr, lambda_dom, lambda_perceptual=lambda_perceptual,
                               callback=callback, on_step=on_step)
    if method == OPTIMIZE:
        return invert_optimize(G, x, F, steps, lr, lambda_perceptual=lambda_perceptual, callback=callback,
                               on_step=on_step)
    return invert_encoder(E, G, x, F, lambda_perceptual=lambda_perceptual, method=method)
