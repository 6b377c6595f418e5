"""The photo classifier: the shared classifier fine-tuned on labelled real photos, with a "none of these" output.

Two networks, two jobs:
- ``classifier`` (shared, frozen): labels generated images for direction training, supplies the FID and
  precision/recall features, the class lock and the perceptual loss, and classifies inputs that are already domain
  images. Photos never change it.
- ``photo_classifier`` (this module): names the class of inputs that came in as photos (after the photo
  conversion) and gives their out-of-domain score. Same architecture with one extra output, K = "none of these",
  trained on the out-of-domain categories of the class map; ``ood_score`` = its softmax probability.

Fine-tuning: the stem and the first stages are the shared classifier's, frozen (their features are computed once
per augmented image, so training takes minutes on a CPU); the last stage, the last batch norm's scale and shift
and the head train on converted photos (categories drawn in proportion to the square root of their size) mixed
1:1 with Fashion-MNIST training images, whose loss counts DOMAIN_WEIGHT times; every batch norm keeps the shared
classifier's running statistics. Both keep the domain accuracy. A photo's loss is the negative log of the
probability summed over its accepted classes (a "longsleeve" may be a Pullover, Shirt, T-shirt or Coat; none of
them is penalised against the others). A tenth of the photos (every tenth of each
category) is held out to set the warning threshold of ``ood_score`` on photos the network has not seen.

Fine-tuning still costs some Fashion-MNIST accuracy, so the trained weights are then blended with the shared
classifier's (weight-space ensembling, Wortsman et al. 2022, "Robust fine-tuning of zero-shot models"): of the
weights of the fine-tuned network in BLEND_GRID whose accuracy on Fashion-MNIST training images not mixed into the
batches is within DOMAIN_TOLERANCE of the shared classifier's, the one that names an accepted class for most
held-out photos.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from semdir_edit.checkpoint import git_commit, load_model, register_model
from semdir_edit.config import ClassifierConfig
from semdir_edit.core.errors import UserError
from semdir_edit.core.images import to_float
from semdir_edit.data import ImageSet
from semdir_edit.data.labelled_photos import LabelledPhotos
from semdir_edit.models import Classifier
from semdir_edit.training.classifier import random_shift_flip
from semdir_edit.training.common import seed_everything

KIND = "photo_classifier"
NONE_OF_THESE = "none of these"
# The blend may cost this much Fashion-MNIST accuracy against the shared classifier (product shots are converted to
# images like the dataset's and go through this network too); within it, the held-out photos choose.
DOMAIN_TOLERANCE = 0.005
BLEND_GRID = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0)  # Weight of the fine-tuned network.
# The Fashion-MNIST images' loss counts this much against the photos': the blend then keeps more of the fine-tuned
# network at the same domain accuracy (validation/: 85.2 % of the photos over seeds 0-2 against 82.9 % at 1, seeds
# 0-1; Fashion-MNIST test 94.51 / 94.48 %).
DOMAIN_WEIGHT = 2.0
DISTILL_TEMPERATURE = 2.0
WARN_QUANTILE = 0.95  # Warn above this quantile of the held-out in-domain photos' ood_score (~5 % warned).


def from_shared(base: Classifier) -> Classifier:
    """A copy of the shared classifier with one more output ("none of these"), initialised to never win."""
    cfg = ClassifierConfig(**{**vars(base.cfg), "num_classes": base.cfg.num_classes + 1})
    model = Classifier(cfg)
    state = {k: v.clone() for k, v in base.state_dict().items()}
    k = base.cfg.num_classes
    weight = torch.zeros(k + 1, base.fc.in_features)
    bias = torch.full((k + 1,), -4.0)
    weight[:k], bias[:k] = state["fc.weight"], state["fc.bias"]
    state["fc.weight"], state["fc.bias"] = weight, bias
    model.load_state_dict(state)
    return model


@torch.no_grad()
def photo_scores(model: Classifier, x: torch.Tensor, batch_size: int = 500, flip: bool = True
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images (B, 1, R, R) in [-1, 1] -> (class index over the domain classes, its confidence, ood_score), all (B,).

    The class is the best of the K domain classes (never "none of these"); its confidence is renormalised over
    them; ``ood_score`` is the probability of "none of these" in [0, 1]. flip: average the probabilities of the
    image and its mirror image (garments are left-right symmetric, a photo's framing is not): on the validation
    photos accepted class 81.4 -> 84.1 %, dresses 59 -> 69 %, OOD AUROC 0.953 -> 0.956; Fashion-MNIST test
    94.45 -> 94.42 %. (Shifts by a pixel, alone or with the flip, were measured beside it and helped less.)
    """
    model.eval()
    device = next(model.parameters()).device
    probs = []
    for i in range(0, len(x), batch_size):
        batch = x[i:i + batch_size].to(device)
        views = (batch, batch.flip(-1)) if flip else (batch,)
        probs.append(torch.stack([model(v).float().softmax(1) for v in views]).mean(0).cpu())
    p = torch.cat(probs) if probs else torch.zeros(0, model.cfg.num_classes)
    domain = p[:, :-1]
    conf, idx = (domain / domain.sum(1, keepdim=True).clamp_min(1e-12)).max(1)
    return idx, conf, p[:, -1]


def _trunk(model: Classifier, x: torch.Tensor) -> torch.Tensor:
    """The frozen part: stem and all stages but the last."""
    x = model.stem(x)
    for stage in model.stages[:-1]:
        x = stage(x)
    return x


def _head(model: Classifier, h: torch.Tensor) -> torch.Tensor:
    """The trained part: the last stage, batch norm and the linear head."""
    h = model.stages[-1](h)
    return model.fc(model.dropout(F.relu(model.bn(h)).mean(dim=(2, 3))))


@torch.no_grad()
def _trunk_features(model: Classifier, images: torch.Tensor, copies: int, batch_size: int = 256) -> torch.Tensor:
    """Frozen-trunk features (copies * N, C, H, W) float16: copy 0 as is, the others shifted / flipped at random."""
    feats = []
    for c in range(copies):
        for i in range(0, len(images), batch_size):
            x = to_float(images[i:i + batch_size])
            if c > 0:
                x = random_shift_flip(x)
            feats.append(_trunk(model, x).half())
    return torch.cat(feats)


def blend_with_shared(model: Classifier, base: Classifier, alpha: float) -> Classifier:
    """alpha * fine-tuned + (1 - alpha) * shared weights (the shared head extended by :func:`from_shared`)."""
    start = from_shared(base).state_dict()
    state = {k: alpha * v + (1 - alpha) * start[k] if v.is_floating_point() else v
             for k, v in model.state_dict().items()}
    blended = Classifier(model.cfg)
    blended.load_state_dict(state)
    return blended.eval().requires_grad_(False)


@torch.no_grad()
def choose_blend(model: Classifier, base: Classifier, images: torch.Tensor, labels: torch.Tensor,
                 photos: torch.Tensor | None = None, accept: torch.Tensor | None = None,
                 tolerance: float = DOMAIN_TOLERANCE) -> tuple[float, float, float, float | None]:
    """(alpha, its domain accuracy, the shared classifier's, its accuracy on ``photos``): of the alphas of BLEND_GRID
    whose accuracy on the domain ``images`` is within ``tolerance`` of the shared classifier's, the one that names
    an accepted class (``accept`` (N, K) bool) for most held-out ``photos`` (uint8, as :func:`photo_scores` scores
    them), the largest on a tie or without photos. None of them: 0, the shared classifier itself."""
    feats = _trunk_features(model, images, 1).float()  # The trunk is frozen: the same for every blend.
    k = base.cfg.num_classes
    base_acc = (_head(from_shared(base).eval(), feats)[:, :k].argmax(1) == labels).float().mean().item()
    best: tuple[float, float, float, float | None] = (0.0, base_acc, base_acc, None)
    for alpha in BLEND_GRID:
        blended = blend_with_shared(model, base, alpha)
        acc = (_head(blended, feats)[:, :k].argmax(1) == labels).float().mean().item()
        if acc < base_acc - tolerance:
            continue
        if photos is None or accept is None or len(photos) == 0:
            return alpha, acc, base_acc, None
        pred, _, _ = photo_scores(blended, to_float(photos))
        photo_acc = accept[torch.arange(len(pred)), pred].float().mean().item()
        if best[3] is None or photo_acc > best[3]:
            best = (alpha, acc, base_acc, photo_acc)
    return best


def partial_label_loss(logits: torch.Tensor, accept: torch.Tensor) -> torch.Tensor:
    """-log sum_{accepted c} p(c): any accepted class is right, none is pushed against another. accept: (B, K) bool."""
    log_p = logits.float().log_softmax(1)
    return -(log_p.masked_fill(~accept, float("-inf")).logsumexp(1)).mean()


def distill_loss(logits: torch.Tensor, teacher: torch.Tensor, temperature: float = DISTILL_TEMPERATURE) -> torch.Tensor:
    """KL(teacher || student) of the tempered softmaxes, times T² (Hinton et al. 2015)."""
    t = temperature
    return F.kl_div(logits.float().div(t).log_softmax(1), teacher.float().div(t).log_softmax(1), log_target=True,
                    reduction="batchmean") * t * t


def holdout_mask(photos: LabelledPhotos, every: int = 10) -> torch.Tensor:
    """(N,) bool: every ``every``-th photo of each category (in file order), held out for the threshold."""
    held = torch.zeros(len(photos.category), dtype=torch.bool)
    for c in range(len(photos.categories)):
        idx = torch.nonzero(photos.category == c).flatten()
        held[idx[every - 1::every]] = True
    return held


def soup_of(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The mean of same-shaped state dicts (float tensors); other tensors (step counters) from the first."""
    return {name: torch.stack([state[name].float() for state in states]).mean(0).to(v.dtype)
            if v.is_floating_point() else v for name, v in states[0].items()}


def _fine_tune(model: Classifier, photo_feats: torch.Tensor, photo_accept: torch.Tensor, draw_weight: torch.Tensor,
               dom_feats: torch.Tensor, dom_labels: torch.Tensor, epochs: int, batch_size: int, lr: float,
               dom_teacher: torch.Tensor | None = None, domain_weight: float = DOMAIN_WEIGHT, log=print) -> None:
    """Train ``model``'s head in place on frozen-trunk features: photos (partial labels) 1:1 with domain images.

    dom_teacher: the shared classifier's logits on the domain images (extended by :func:`from_shared`): the domain
    term is then distillation towards them (Li & Hoiem 2016, "Learning without Forgetting") instead of the labels.
    """
    head = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(head, lr=lr, weight_decay=0.05)
    steps_per_epoch = max(1, len(photo_feats) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    loss = torch.zeros(())
    for epoch in range(epochs):
        order = torch.multinomial(draw_weight, len(photo_feats), replacement=True)
        for i in range(steps_per_epoch):
            b = order[i * batch_size:(i + 1) * batch_size]
            d = torch.randint(0, len(dom_feats), (len(b),))
            logits = _head(model, torch.cat([photo_feats[b], dom_feats[d]]).float())
            if dom_teacher is None:
                dom_loss = F.cross_entropy(logits[len(b):], dom_labels[d], label_smoothing=0.1)
            else:
                dom_loss = distill_loss(logits[len(b):], dom_teacher[d])
            loss = partial_label_loss(logits[:len(b)], photo_accept[b]) + domain_weight * dom_loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        log(f"epoch {epoch + 1}/{epochs}: loss {loss.item():.4f}")


def train_photo_classifier(weights_dir: str | Path, photos: LabelledPhotos, domain: ImageSet, test: ImageSet | None,
                           *, epochs: int = 12, batch_size: int = 64, lr: float = 1e-3, copies: int = 4,
                           domain_images: int = 12_000, seed: int = 0, command: str = "", register: bool = True,
                           balance: float = 0.5, soup: int = 1, domain_loss: str = "labels",
                           domain_weight: float = DOMAIN_WEIGHT, tolerance: float = DOMAIN_TOLERANCE,
                           log=print) -> tuple[Classifier, dict[str, Any]]:
    """Fine-tune and (``register``) register ``photo_classifier`` in ``weights_dir``; returns it and its figures.

    domain: Fashion-MNIST training images mixed into every batch (``domain_images`` of them, fixed at random);
    test: the Fashion-MNIST test split, for the accuracy that must not regress (None = not measured).
    balance: categories are drawn with weight count ** -balance per photo (0 = as they come, 1 = equally often).
    soup: how many heads to fine-tune (seeds ``seed``, ``seed + 1``, ...) and average before the blend.
    domain_loss: "labels" (cross-entropy on the domain images' labels) or "distill" (the shared classifier's
    outputs on them); domain_weight: that term's weight against the photos'. tolerance: the Fashion-MNIST accuracy
    the blend may lose against the shared classifier (:func:`choose_blend`).
    """
    if domain_loss not in ("labels", "distill"):
        raise UserError(f"domain_loss must be 'labels' or 'distill', not {domain_loss!r}")
    if len(photos.category) == 0:
        raise UserError("no photos to train on")
    if not any(photos.accepted):
        raise UserError("the class map has no in-domain category (every list is empty)")
    t0 = time.monotonic()
    commit = git_commit()  # The source that trains it, before anything can change the tree.
    seed_everything(seed)
    base = load_model(weights_dir, "classifier")
    model = from_shared(base).train()
    k = base.cfg.num_classes
    for module in (model.stem, *model.stages[:-1]):
        module.eval().requires_grad_(False)
    for module in model.modules():  # Batch norms keep Fashion-MNIST's statistics: the domain accuracy holds.
        if isinstance(module, nn.BatchNorm2d):
            module.eval()

    held = holdout_mask(photos)
    if (~held).sum() == 0:
        held[:] = False  # A tiny folder: train on everything, the threshold then comes from the training photos.
    accept = photos.accept_matrix(k + 1)
    accept[~photos.in_domain(), k] = True  # Out-of-domain categories: "none of these".
    train_idx = torch.nonzero(~held).flatten()
    log(f"photo classifier: {len(train_idx)} training photos, {int(held.sum())} held out; frozen-trunk features")
    photo_feats = _trunk_features(model, photos.images[train_idx], copies)
    photo_accept = accept[train_idx].repeat(copies, 1)
    # Category-balanced draws: a category with a third of the photos must not set the rest.
    counts = torch.bincount(photos.category[train_idx], minlength=len(photos.categories)).float().clamp(min=1)
    draw_weight = counts.pow(-balance)[photos.category[train_idx]].repeat(copies)
    perm = torch.randperm(len(domain))
    pick, unseen = perm[:domain_images], perm[domain_images:domain_images + 5000]
    dom_feats = _trunk_features(model, domain.images[pick], 1)
    dom_labels = domain.labels[pick]
    dom_teacher = None
    if domain_loss == "distill":
        teacher = from_shared(base).eval()
        with torch.no_grad():
            dom_teacher = torch.cat([_head(teacher, dom_feats[i:i + 1024].float())
                                     for i in range(0, len(dom_feats), 1024)])

    # A uniform soup (Wortsman et al. 2022, "Model soups"): heads fine-tuned from the same start in another order
    # each, their weights averaged; one training's accuracy on photos varies by several points with its seed.
    start = {name: v.clone() for name, v in model.state_dict().items()}
    ingredients = []
    for i in range(soup):
        model.load_state_dict(start)
        if i:  # The first ingredient draws on from the state above: soup = 1 is the single training as it was.
            torch.manual_seed(seed + i)
        _fine_tune(model, photo_feats, photo_accept, draw_weight, dom_feats, dom_labels, epochs, batch_size, lr,
                   dom_teacher=dom_teacher, domain_weight=domain_weight,
                   log=lambda text, i=i: log(text if soup == 1 else f"ingredient {i + 1}/{soup}: {text}"))
        ingredients.append({name: v.clone() for name, v in model.state_dict().items()})
    model.load_state_dict(soup_of(ingredients))
    model.eval().requires_grad_(False)
    blend: dict[str, Any] = {}
    if len(unseen):
        judged = held & photos.in_domain()
        alpha, acc, base_acc, photo_acc = choose_blend(model, base.cpu(), domain.images[unseen], domain.labels[unseen],
                                                       photos.images[judged], accept[judged, :k], tolerance)
        model = blend_with_shared(model, base, alpha)
        blend = {"blend_alpha": alpha, "blend_domain_accuracy": round(acc, 4),
                 "shared_domain_accuracy": round(base_acc, 4), "blend_images": len(unseen),
                 "blend_photo_accuracy": None if photo_acc is None else round(photo_acc, 4)}
        log(f"blended with the shared classifier: alpha {alpha} (domain accuracy {acc:.4f}, shared {base_acc:.4f}; "
            f"held-out photos {'-' if photo_acc is None else f'{photo_acc:.4f}'})")

    calib = held if held.any() else torch.ones_like(held)
    _, _, ood = photo_scores(model, to_float(photos.images[calib]))
    inside = photos.in_domain()[calib]
    threshold = float(torch.quantile(ood[inside], WARN_QUANTILE)) if inside.any() else 0.5
    figures: dict[str, Any] = {"ood_threshold": round(threshold, 4), "photos": len(train_idx),
                               "held_out": int(held.sum()), "epochs": epochs, "copies": copies, "soup": soup,
                               "domain_images": len(pick), "domain_loss": domain_loss, "domain_weight": domain_weight,
                               "domain_tolerance": tolerance,
                               **blend,
                               "train_seconds": round(time.monotonic() - t0)}
    if test is not None:
        idx, _, _ = photo_scores(model, to_float(test.images))
        figures["domain_test_accuracy"] = round((idx == test.labels).float().mean().item(), 4)
    log(str(figures))
    if register:
        names = class_names_of(model, _domain_names(weights_dir, k))
        categories = dict(zip(photos.categories, photos.accepted, strict=True))
        register_model(weights_dir, KIND, model, command=command, commit=commit,
                       extra={**figures, "class_names": names, "categories": categories})
    return model, figures


def _domain_names(weights_dir: str | Path, k: int) -> list[str]:
    from semdir_edit.checkpoint import read_manifest
    from semdir_edit.config import FASHION_MNIST_CLASSES

    names = read_manifest(weights_dir)["models"]["classifier"].get("class_names")
    if names and len(names) == k:
        return list(names)
    return list(FASHION_MNIST_CLASSES) if k == 10 else [str(i) for i in range(k)]


def ood_threshold(manifest: dict[str, Any], default: float = 0.5) -> float:
    """The photo classifier's warning threshold recorded in a manifest."""
    return float(manifest.get("models", {}).get(KIND, {}).get("ood_threshold", default))


def class_names_of(model: nn.Module, names: list[str]) -> list[str]:
    """The photo classifier's output names: the domain classes and "none of these"."""
    return [*names, NONE_OF_THESE][: model.cfg.num_classes]
