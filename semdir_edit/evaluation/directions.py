"""How good a set of latent directions is, measured as docs/EVALUATION.md says.

Sources compared on the same generator: ours (Kim & Lee: a global set and one class set per class),
Voynov & Babenko's global-only set (when trained), GANSpace PCA, SeFa and random orthonormal
directions. Every shift is ``eps * spread(d) * d`` (eps in units of W's spread along d), added to
every W+ layer, as ``apply`` does.

- RCA (reconstructor classification accuracy): the share of shifted pairs whose direction a shift
  predictor names correctly. Ours with its jointly trained predictor over all (N+1)*K directions;
  every source (ours included) also with a *fresh* predictor trained on the frozen directions with
  the same budget (Voynov's protocol for sources that come without one).
- Class preserved: the classifier's label of G(w) unchanged after an edit of |eps| in {1, 2, 3}.
- Edit strength: perceptual distance between G(w) and the edit, per unit |eps| (0 = no direction).
- Specificity (class sets): class c's directions applied to other classes' samples: how much they
  change those images relative to class c's own, and whether the other class survives.
- Descriptions: each direction's strongest correlate among measurable image attributes.
"""

from __future__ import annotations

from typing import Any

import kornia
import torch

from semdir_edit.config import ShiftPredictorConfig
from semdir_edit.core.progress import bar
from semdir_edit.directions.baselines import spread_along
from semdir_edit.evaluation.metrics import ClassTypicality
from semdir_edit.models import Classifier, Generator
from semdir_edit.models.direction_bank import DirectionBank
from semdir_edit.models.shift_predictor import ShiftPredictor
from semdir_edit.ops.class_lock import TO_CENTROID, TO_SCALE, TO_STEP, locked_shift_codes, toward_class_codes
from semdir_edit.ops.perceptual import PerceptualLoss
from semdir_edit.ops.visible import SILHOUETTE
from semdir_edit.training.directions import DirectionLoss, FrozenDirections

EDIT_EPS = (1.0, 2.0, 3.0)


@torch.no_grad()
def render_shifted(G: Generator, w: torch.Tensor, shift: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """G(w + shift) for (n, w_dim) codes and shifts, in batches, fixed noise -> (n, C, R, R) on the CPU."""
    device = G.mapping.w_avg.device
    out = []
    for start in range(0, len(w), batch_size):
        ws = (w[start:start + batch_size] + shift[start:start + batch_size]).to(device)
        out.append(G.render(G.broadcast(ws)).cpu())
    return torch.cat(out)


def _random_shifts(n: int, k: int, eps_range: tuple[float, float], gen: torch.Generator
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Direction indices and signed |eps| ~ U[eps_range], as in training."""
    index = torch.randint(0, k, (n,), generator=gen)
    lo, hi = eps_range
    eps = (lo + (hi - lo) * torch.rand(n, generator=gen)) * (torch.randint(0, 2, (n,), generator=gen) * 2 - 1)
    return index, eps


@torch.no_grad()
def reconstructor_logits(G: Generator, predictor: ShiftPredictor, sets: torch.Tensor, spreads: torch.Tensor,
                         w: torch.Tensor, set_index: torch.Tensor, eps_range: tuple[float, float], seed: int,
                         batch_size: int = 250) -> tuple[torch.Tensor, torch.Tensor]:
    """``predictor``'s logits (n, S*K) for the edit of each sample and the index (n,) of the direction that made it.

    sets: (S, w_dim, K) directions; spreads: (S, K); set_index: (n,) which set moves each sample; each sample moves
    along a random direction of its set by a random |eps| in ``eps_range`` (seeded).
    """
    device = G.mapping.w_avg.device
    predictor.eval()
    K = sets.shape[2]
    k, eps = _random_shifts(len(w), K, eps_range, torch.Generator().manual_seed(seed))
    shift = sets[set_index, :, k] * (eps * spreads[set_index, k])[:, None]
    logits = []
    for start in range(0, len(w), batch_size):
        sl = slice(start, start + batch_size)
        original = render_shifted(G, w[sl], torch.zeros_like(w[sl])).to(device)
        shifted = render_shifted(G, w[sl], shift[sl]).to(device)
        logits.append(predictor(original, shifted)[0].float().cpu())
    return torch.cat(logits), set_index * K + k


def reconstructor_accuracy(G: Generator, predictor: ShiftPredictor, sets: torch.Tensor, spreads: torch.Tensor,
                           w: torch.Tensor, set_index: torch.Tensor, eps_range: tuple[float, float], seed: int,
                           batch_size: int = 250) -> torch.Tensor:
    """(n,) bool: did ``predictor`` name the direction (over all S*K) that moved each sample? (see
    :func:`reconstructor_logits`)."""
    logits, target = reconstructor_logits(G, predictor, sets, spreads, w, set_index, eps_range, seed, batch_size)
    return logits.argmax(1) == target


def train_fresh_predictor(G: Generator, C: Classifier, directions: torch.Tensor, w_cov: torch.Tensor, steps: int,
                          seed: int, width: int = 32, batch_size: int = 32, lr: float = 1e-4,
                          eps_range: tuple[float, float] = (0.5, 6.0), shift_weight: float = 0.25,
                          progress: bool = False) -> ShiftPredictor:
    """A new shift predictor trained on frozen (w_dim, K) directions with the training objective (``progress``: a
    bar over the steps, cleared when done)."""
    device = G.mapping.w_avg.device
    torch.manual_seed(seed)
    source = FrozenDirections(directions, w_cov).to(device)
    predictor = ShiftPredictor(ShiftPredictorConfig(img_channels=G.cfg.img_channels, k=source.k, num_sets=1,
                                                    width=width)).to(device)
    opt = torch.optim.Adam(predictor.parameters(), lr=lr)
    loss_fn = DirectionLoss(G, C, source, predictor, eps_range, shift_weight, train_class=False)
    predictor.train()
    for _ in bar(range(steps), desc="fresh predictor", unit="step", progress=progress, leave=False):
        loss, _ = loss_fn(batch_size)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return predictor.eval()


@torch.no_grad()
def edit_effects(G: Generator, C: Classifier, F: PerceptualLoss, sets: torch.Tensor, spreads: torch.Tensor,
                 w: torch.Tensor, labels: torch.Tensor, set_index: torch.Tensor, seed: int,
                 eps_values: tuple[float, ...] = EDIT_EPS, batch_size: int = 250, class_lock: bool = False,
                 lock_by: torch.nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Edit every sample along one random direction of its set at +-each eps.

    class_lock: walk each edit class-locked (:mod:`~semdir_edit.ops.class_lock`, keeping ``labels``), as
    ``apply`` edits along class directions by default; False = the plain linear edit. lock_by: the classifier the
    lock holds (default ``C``; ``apply``'s: :func:`~semdir_edit.evaluation.evaluate.load_lock_classifier`).
    Returns ``kept`` (n, 2E) bool (classifier label unchanged), ``change`` (n, 2E) perceptual distance
    per unit |eps|, and ``abs_eps`` (2E,), ordered +e1, -e1, +e2, -e2, ...
    """
    device = G.mapping.w_avg.device
    K = sets.shape[2]
    k = torch.randint(0, K, (len(w),), generator=torch.Generator().manual_seed(seed))
    signed = torch.tensor([s * e for e in eps_values for s in (1.0, -1.0)])
    unit, spread = sets[set_index, :, k], spreads[set_index, k]
    d = unit * spread[:, None]                                                        # (n, w_dim), one spread long.
    kept, change = [], []
    for start in range(0, len(w), batch_size):
        sl = slice(start, start + batch_size)
        original = render_shifted(G, w[sl], torch.zeros_like(w[sl])).to(device)
        if class_lock:
            codes = locked_shift_codes(G, lock_by or C, G.broadcast(w[sl].to(device)), unit[sl].to(device),
                                       signed.tolist(), spread[sl].to(device), range(G.num_ws), labels[sl])
        kept_b, change_b = [], []
        for j, e in enumerate(signed):
            if class_lock:
                edited = G.render(codes[:, j])
            else:
                edited = render_shifted(G, w[sl], e * d[sl]).to(device)
            kept_b.append(C(edited).argmax(1).cpu() == labels[sl])
            change_b.append(F(original, edited).cpu() / e.abs())
        kept.append(torch.stack(kept_b, 1))
        change.append(torch.stack(change_b, 1))
    return {"kept": torch.cat(kept), "change": torch.cat(change), "abs_eps": signed.abs()}


@torch.no_grad()
def visible_effects(G: Generator, C: Classifier, sets: torch.Tensor, spreads: torch.Tensor, w: torch.Tensor,
                    labels: torch.Tensor, set_index: torch.Tensor, eps: float = 3.0, class_lock: bool = False,
                    batch_size: int = 100, typicality: ClassTypicality | None = None,
                    judge: Classifier | None = None, lock_by: torch.nn.Module | None = None) -> dict[str, float]:
    """What a person sees of a direction set: every direction of each sample's set at +-``eps``, on images in [0, 1].

    - ``visible``: mean absolute pixel change;
    - ``outline``: 1 - IoU of the article's silhouette (pixels > 0.25) before and after (0 = only the ink moved);
    - ``distinct``: 1 - the mean |cosine| between the change maps (at +eps) of two directions of the set on the
      same sample (0 = the directions make the same change; 1 = unrelated changes);
    - ``effective``: how many different visible edits the set offers, 1..K (:func:`effective_directions` of the
      same change maps): ``distinct`` alone counts a direction that changes next to nothing as unrelated to the
      others, so a set of one visible edit, two near-copies of it and five invisible ones reads as distinct;
    - ``class_preserved``: the classifier's label unchanged;
    - ``typical`` (with ``typicality``): the edited image is still a typical article of the sample's class, by a
      judge the class lock does not steer by (:class:`~semdir_edit.evaluation.metrics.ClassTypicality`);
    - ``judged`` (with ``judge``, a classifier trained apart from ``C``): it names the sample's class. The lock holds
      ``C``'s margin and can end where only ``C`` is fooled; a network trained apart is rarely fooled the same way.
    class_lock: walk the edits class-locked, as ``apply`` does for class directions, holding ``lock_by`` (default
    ``C``). ``class_preserved`` is ``C``'s label either way.
    """
    device = G.mapping.w_avg.device
    K = sets.shape[2]
    visible, outline, kept, distinct, effective, typical, judged = [], [], [], [], [], [], []
    for start in range(0, len(w), batch_size):
        sl = slice(start, start + batch_size)
        codes = G.broadcast(w[sl].to(device))
        x0 = (G.render(codes).float() + 1) / 2
        maps = []
        for k in range(K):
            unit, spread = sets[set_index[sl], :, k].to(device), spreads[set_index[sl], k].to(device)
            if class_lock:
                shifted = locked_shift_codes(G, lock_by or C, codes, unit, [eps, -eps], spread, range(G.num_ws),
                                             labels[sl])
            else:
                steps = torch.tensor([eps, -eps], device=device)[None, :, None] * spread[:, None, None]
                shifted = codes[:, None] + (steps * unit[:, None, :])[:, :, None, :]
            images = G.render(shifted.flatten(0, 1))
            same = C(images).argmax(1).cpu().reshape(-1, 2) == labels[sl, None]
            x = ((images.float() + 1) / 2).reshape(len(codes), 2, *x0.shape[1:])
            before = x0[:, None].expand_as(x)
            visible.append(pixel_change(before, x).cpu().flatten())
            outline.append(outline_change(before, x).cpu().flatten())
            kept.append(same.flatten())
            if typicality is not None:
                typical.append(typicality(C, images, labels[sl].repeat_interleave(2)).cpu())
            if judge is not None:
                judged.append(judge(images).argmax(1).cpu() == labels[sl].repeat_interleave(2))
            maps.append((x[:, 0] - x0).flatten(1))
        if K > 1:
            distinct.append(change_map_cosines(torch.stack(maps, 1)).cpu())
        effective.append(effective_directions(torch.stack(maps, 1)).cpu())
    return {"visible": torch.cat(visible).mean().item(), "outline": torch.cat(outline).mean().item(),
            "distinct": 1 - torch.cat(distinct).mean().item() if distinct else 0.0,
            "effective": torch.cat(effective).mean().item(),
            "class_preserved": torch.cat(kept).float().mean().item(),
            **({"typical": torch.cat(typical).float().mean().item()} if typical else {}),
            **({"judged": torch.cat(judged).float().mean().item()} if judged else {})}


def pixel_change(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """Mean absolute pixel change of images (..., C, R, R) in [0, 1] -> (...)."""
    return (after - before).abs().mean((-3, -2, -1))


def outline_change(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """1 - IoU of the silhouettes (pixels > 0.25) of images (..., C, R, R) in [0, 1] -> (...); 0 when both are
    empty. An edit that only brightens or darkens the article inside its outline scores 0."""
    a, b = before > SILHOUETTE, after > SILHOUETTE
    union = (a | b).sum((-3, -2, -1)).float()
    iou = (a & b).sum((-3, -2, -1)).float() / union.clamp_min(1)
    return torch.where(union > 0, 1 - iou, torch.zeros_like(iou))


def change_map_cosines(maps: torch.Tensor) -> torch.Tensor:
    """|cosine| between every two change maps of the same sample, (B, K, P) -> (n,), leaving out maps that change
    nothing. Distinctness = 1 - their mean (0: the directions all make the same change)."""
    K = maps.shape[1]
    norms = maps.norm(dim=2, keepdim=True)
    unit = maps / norms.clamp_min(1e-8)
    cos = (unit @ unit.transpose(1, 2)).abs()
    moved = norms > 1e-6
    pairs = moved & moved.transpose(1, 2) & ~torch.eye(K, dtype=torch.bool, device=maps.device)
    return cos[pairs]


@torch.no_grad()
def calibrate_gains(G: Generator, C: Classifier, sets: torch.Tensor, spreads: torch.Tensor, w: torch.Tensor,
                    labels: torch.Tensor, target: float, max_gain: float, eps: float = 3.0,
                    lock_by: torch.nn.Module | None = None, progress: bool = False) -> torch.Tensor:
    """(S, K) gains in [1, max_gain] for our sets (S, w_dim, K) (global first, then one per class): how much
    longer than W's spread along it each direction's eps unit must be for its class-locked edit at |eps| = ``eps``
    to change the picture by ``target`` (mean absolute pixel change, images in [0, 1]). A spread-sized step along a
    direction W barely varies along moves the picture little; the lock keeps its class however far it goes. Never
    shorter than the spread; set 0 is measured on every sample of ``w``, set s >= 1 on those of class s - 1. The
    change grows more slowly than the step, so a direction short of ``target`` is measured twice: at its spread and
    at the first estimate (target / change), which is then scaled once more."""
    S, _, K = sets.shape
    gains = torch.ones(S, K)
    for s in bar(range(S), desc="calibrate", unit="set", progress=progress):
        members = torch.arange(len(w)) if s == 0 else (labels == s - 1).nonzero()[:, 0]
        if not len(members):
            continue
        for k in range(K):
            one = (sets[s:s + 1, :, k:k + 1], spreads[s:s + 1, k:k + 1], w[members], labels[members])
            seen = _locked_change(G, C, *one, 1.0, eps, lock_by)
            if seen >= target:
                continue
            gain = min(max_gain, target / max(seen, 1e-6))
            if gain < max_gain:   # Measured there, then scaled once more (either way, within [1, max_gain]).
                gain = min(max_gain, max(1.0, gain * target / max(_locked_change(G, C, *one, gain, eps, lock_by),
                                                                  1e-6)))
            gains[s, k] = gain
    return gains


def _locked_change(G: Generator, C: Classifier, direction: torch.Tensor, spread: torch.Tensor, w: torch.Tensor,
                   labels: torch.Tensor, gain: float, eps: float, lock_by: torch.nn.Module | None) -> float:
    """Mean pixel change of one direction (1, w_dim, 1) walked class-locked to +-eps in units of gain x spread."""
    zeros = torch.zeros(len(w), dtype=torch.long)
    return visible_effects(G, C, direction, spread * gain, w, labels, zeros, eps=eps, class_lock=True,
                           lock_by=lock_by)["visible"]


def effective_directions(maps: torch.Tensor) -> torch.Tensor:
    """How many different changes K change maps of one sample make, (B, K, P) -> (B,) in [1, K] (0 where none
    changes anything): the participation ratio (sum of l)^2 / sum of l^2 of the eigenvalues l of their Gram matrix.
    K equally strong unrelated changes count K; copies of one change (either sign) count once; a change much weaker
    than the others counts for little, as it does to a person looking at the grid."""
    gram = maps.double() @ maps.double().transpose(1, 2)
    eigvals = torch.linalg.eigvalsh(gram).clamp_min(0)
    total = eigvals.sum(1)
    return torch.where(total > 0, total.square() / eigvals.square().sum(1).clamp_min(1e-300), 0.0).float()


@torch.no_grad()
def target_reached(G: Generator, C: Classifier, w: torch.Tensor, labels: torch.Tensor, bank: DirectionBank,
                   seed: int, eps: float = 3.0, batch_size: int = 100, centroid_share: float = TO_CENTROID
                   ) -> dict[str, float]:
    """``to:<class>`` at +``eps`` towards a random other class present among ``labels``, walked as ``apply`` walks it
    (``centroid_share``: see :func:`~semdir_edit.ops.class_lock.toward_class_codes`).

    ``to_reached``: the share the classifier then names the target; ``to_visible``: the mean pixel change.
    """
    device = G.mapping.w_avg.device
    present = labels.unique()
    if len(present) < 2:
        return {}
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randint(0, len(present) - 1, labels.shape, generator=gen)
    others = torch.stack([present[present != c] for c in present])               # (P, P - 1)
    row = (labels[:, None] == present[None]).float().argmax(1)
    target = others[row, pick]
    reached, change = [], []
    for start in range(0, len(w), batch_size):
        sl = slice(start, start + batch_size)
        codes = G.broadcast(w[sl].to(device))
        x0 = G.render(codes)
        walked = toward_class_codes(G, C, codes, [TO_SCALE * eps], bank.w_cov, range(G.num_ws), target[sl],
                                    bank.boundary_weight, bank.boundary_bias, step=TO_STEP,
                                    centroids=bank.class_mean, centroid_share=centroid_share)[:, 0]
        images = G.render(walked)
        reached.append(C(images).argmax(1).cpu() == target[sl])
        change.append(((images - x0).abs() / 2).mean((1, 2, 3)).cpu())
    return {"to_reached": torch.cat(reached).float().mean().item(), "to_visible": torch.cat(change).mean().item()}


def same_label_share(descriptions: dict[str, dict], prefix: str) -> float:
    """The largest share of one set's directions (keys ``<prefix><k>...``) described by the same attribute (faint
    directions, whatever they correlate with, as one: to a person they all look like no change)."""
    labels = ["faint" if d.get("faint") else d["label"].rsplit(" ", 1)[0]
              for key, d in descriptions.items() if key.startswith(prefix)]
    return max(labels.count(x) for x in set(labels)) / len(labels) if labels else 0.0


def summarize_effects(effects: dict[str, torch.Tensor], prefix: str) -> dict[str, float]:
    """Class preserved (overall and per |eps|) and edit strength as flat figures named ``<prefix>_…``."""
    kept, abs_eps = effects["kept"].float(), effects["abs_eps"]
    out = {f"{prefix}class_preserved": kept.mean().item(),
           f"{prefix}edit_strength": effects["change"].mean().item()}
    for e in sorted(set(abs_eps.tolist())):
        out[f"{prefix}class_preserved_eps{e:g}"] = kept[:, abs_eps == e].mean().item()
    return out


def max_abs_cos(global_dirs: torch.Tensor, class_dirs: torch.Tensor) -> float:
    """max |cos| between any global direction (w_dim, K) and any class direction (N, w_dim, K)."""
    g = global_dirs / global_dirs.norm(dim=0, keepdim=True)
    c = class_dirs / class_dirs.norm(dim=1, keepdim=True)
    return torch.einsum("ik,nij->nkj", g.double(), c.double()).abs().max().item()


# ----------------------------------------------------------------------------------------------- descriptions

def image_attributes(images: torch.Tensor, logits: torch.Tensor, class_names: list[str]) -> dict[str, torch.Tensor]:
    """Measurable attributes of (B, 1, R, R) images in [-1, 1] (bright article on dark): name -> (B,)."""
    ink = (images.float().mean(1) + 1) / 2                                          # (B, R, R) in [0, 1]
    B, R, _ = ink.shape
    mass = ink.sum((1, 2)).clamp_min(1e-6)
    coords = torch.arange(R, dtype=ink.dtype) / (R - 1)
    on = ink > 0.25
    rows, cols = on.any(2), on.any(1)                                               # (B, R) each

    def extent(mask: torch.Tensor) -> torch.Tensor:
        idx = torch.arange(R).expand(B, R)
        first = torch.where(mask, idx, R).min(1).values
        last = torch.where(mask, idx, -1).max(1).values
        return ((last - first + 1).clamp_min(0)).float() / R

    width, height = extent(cols), extent(rows)
    edges = kornia.filters.sobel(ink[:, None]).mean((1, 2, 3))
    area = on.float().sum((1, 2))
    attrs = {
        # The mean pixel mixes two things a person tells apart: how much of the picture the article covers, and
        # how light the article itself is.
        "size": area / (R * R),
        "brightness": (ink * on).sum((1, 2)) / area.clamp_min(1),
        "width": width,
        "height": height,
        "aspect (w/h)": width / height.clamp_min(1 / R),
        "x-position": (ink.sum(1) * coords).sum(1) / mass,
        "y-position": (ink.sum(2) * coords).sum(1) / mass,
        "left-right symmetry": 1 - (ink - ink.flip(2)).abs().sum((1, 2)) / (2 * mass),
        "edge density": edges,
    }
    for c, name in enumerate(class_names):
        attrs[f"logit {name}"] = logits[:, c].float()
    return attrs


def _pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    denom = (x.norm() * y.norm()).item()
    return (x @ y).item() / denom if denom > 1e-12 else 0.0


# A direction whose edit at the largest |eps| described changes the picture by less than this (mean absolute change,
# images in [0, 1]: 5 grey levels of 255 a pixel, about 10 on the article's own pixels) is described as faint: side
# by side with the image it looks unchanged, whatever attribute it correlates with.
FAINT_CHANGE = 0.02


@torch.no_grad()
def describe_direction(G: Generator, C: Classifier, direction: torch.Tensor, spread: float, w: torch.Tensor,
                       class_names: list[str], eps_values: tuple[float, ...] = (-3, -2, -1, 1, 2, 3),
                       min_r: float = 0.3, lock: torch.Tensor | None = None, lock_by: torch.nn.Module | None = None
                       ) -> dict[str, Any]:
    """Correlate eps with the change of each attribute over samples ``w``; label = the strongest (|r| >= min_r).

    ``change``: the mean absolute pixel change (images in [0, 1]) at the largest |eps|; below FAINT_CHANGE the
    direction is ``faint`` and its label says so first.

    lock: (n,) the classes of ``w``: describe the edit walked class-locked (holding ``lock_by``, default ``C``), as
    ``apply`` makes it by default for our sets (None = the linear edit, as ``apply`` makes it for the baselines).
    """
    device = G.mapping.w_avg.device
    base = render_shifted(G, w, torch.zeros_like(w))
    base_attrs = image_attributes(base, C(base.to(device)).cpu(), class_names)
    eps_all, deltas = [], {name: [] for name in base_attrs}
    largest = max(abs(e) for e in eps_values)
    changes = []
    walked = None
    if lock is not None:
        codes = G.broadcast(w.to(device))
        walked = locked_shift_codes(G, lock_by or C, codes, direction.to(device), list(eps_values), spread,
                                    range(G.num_ws), lock).cpu()
    for j, e in enumerate(eps_values):
        if walked is not None:
            edited = torch.cat([G.render(chunk.to(device)).cpu() for chunk in walked[:, j].split(500)])
        else:
            edited = render_shifted(G, w, (e * spread * direction)[None].expand_as(w))
        attrs = image_attributes(edited, C(edited.to(device)).cpu(), class_names)
        if abs(e) == largest:
            changes.append(pixel_change((base.float() + 1) / 2, (edited.float() + 1) / 2))
        eps_all.append(torch.full((len(w),), float(e)))
        for name, value in attrs.items():
            deltas[name].append(value - base_attrs[name])
    eps_cat = torch.cat(eps_all)
    r = {name: _pearson(eps_cat, torch.cat(values)) for name, values in deltas.items()}
    ranked = sorted(r.items(), key=lambda kv: -abs(kv[1]))
    top = [{"attribute": name, "r": round(value, 3)} for name, value in ranked[:3]]
    name, value = ranked[0]
    label = f"{name} {'+' if value > 0 else '-'}" if abs(value) >= min_r else "no measured attribute (|r| < 0.3)"
    change = torch.cat(changes).mean().item()
    faint = change < FAINT_CHANGE
    return {"label": f"faint: {label}" if faint else label, "r": round(value, 3), "top": top,
            "change": round(change, 4), "faint": faint}


def spreads_of(sets: torch.Tensor, w_cov: torch.Tensor) -> torch.Tensor:
    """(S, K) spread of W along every direction of (S, w_dim, K) sets."""
    return torch.stack([spread_along(s, w_cov) for s in sets])
