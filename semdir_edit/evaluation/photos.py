"""``evaluate photos``: how the photo path does on a labelled folder of real photos.

Each photo goes through the ``invert`` conversion and is classified by the network ``invert`` uses for photos: the
``photo_classifier`` when the weights have one (its class over the domain classes and its ``ood_score``), else the
shared ``classifier`` (``ood_score`` = 1 - confidence). Figures: per-category accepted-class accuracy, the accuracy
over all in-domain photos, the out-of-domain AUROC of ``ood_score`` (out-of-domain categories vs in-domain ones),
the share of in-domain photos that ``invert`` would warn about, and a confusion matrix PNG.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch

from semdir_edit.checkpoint import load_model, read_manifest
from semdir_edit.core.errors import UserError
from semdir_edit.core.images import to_float
from semdir_edit.core.io import atomic_write_bytes
from semdir_edit.data.labelled_photos import LabelledPhotos
from semdir_edit.training.photo_classifier import KIND, ood_threshold, photo_scores

SHARED_WARN = 0.5  # Without a photo classifier: warn when the shared classifier's confidence is below 0.5.


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Area under the ROC curve of scores (positives should score higher); ties count half. NaN if a side is empty."""
    if len(positive) == 0 or len(negative) == 0:
        return float("nan")
    scores = np.concatenate([positive, negative])
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # Average ranks of tied scores.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2
    ranks[order] = np.repeat(avg, counts)
    n_pos = len(positive)
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * len(negative)))


def classify_photos(weights_dir: str | Path, photos: LabelledPhotos, device: torch.device | str = "cpu",
                    network: str = "auto") -> tuple[np.ndarray, np.ndarray, float, str]:
    """(predicted class (N,), ood_score (N,), warning threshold, network used) for converted photos.

    network: "auto" (the photo classifier when registered, else the shared one), "photo" or "shared".
    """
    has_photo = KIND in read_manifest(weights_dir).get("models", {})
    use_photo = network == "photo" or (network == "auto" and has_photo)
    x = to_float(photos.images)
    if use_photo:
        model = load_model(weights_dir, KIND, device)
        idx, _, ood = photo_scores(model, x)
        return idx.numpy(), ood.numpy(), ood_threshold(read_manifest(weights_dir)), KIND
    model = load_model(weights_dir, "classifier", device)
    with torch.no_grad():
        probs = torch.cat([model(x[i:i + 500].to(device)).float().softmax(1).cpu() for i in range(0, len(x), 500)]
                          ) if len(x) else torch.zeros(0, model.cfg.num_classes)
    conf, idx = probs.max(1) if len(x) else (torch.zeros(0), torch.zeros(0, dtype=torch.long))
    return idx.numpy(), (1 - conf).numpy(), 1 - SHARED_WARN, "classifier"


def photo_figures(photos: LabelledPhotos, pred: np.ndarray, ood: np.ndarray, threshold: float) -> dict[str, Any]:
    """Per-category and overall figures (flat dict, JSON-able)."""
    cat = photos.category.numpy()
    inside = photos.in_domain().numpy()
    correct = np.array([pred[i] in photos.accepted[cat[i]] for i in range(len(cat))], bool)
    figures: dict[str, Any] = {"photos": int(len(cat)), "in_domain_photos": int(inside.sum()),
                               "out_of_domain_photos": int((~inside).sum()), "failed_conversions": len(photos.failed)}
    for ci, name in enumerate(photos.categories):
        sel = cat == ci
        if not sel.any():
            continue
        if photos.accepted[ci]:
            figures[f"accuracy_{name}"] = round(float(correct[sel].mean()), 4)
        else:
            figures[f"flagged_{name}"] = round(float((ood[sel] > threshold).mean()), 4)
    figures["accuracy_in_domain"] = round(float(correct[inside].mean()), 4) if inside.any() else float("nan")
    per_cat = [figures[f"accuracy_{n}"] for n in photos.categories if f"accuracy_{n}" in figures]
    figures["accuracy_worst_category"] = round(min(per_cat), 4) if per_cat else float("nan")
    figures["ood_auroc"] = round(auroc(ood[~inside], ood[inside]), 4)
    figures["warned_in_domain"] = round(float((ood[inside] > threshold).mean()), 4) if inside.any() else float("nan")
    figures["ood_threshold"] = round(float(threshold), 4)
    return figures


def plot_misses(photos: LabelledPhotos, pred: np.ndarray, class_names: list[str], path: str | Path,
                limit: int = 60, tile: int = 96, columns: int = 6) -> int:
    """A sheet of the in-domain photos given a class their category does not accept (up to ``limit``, in folder
    order): each as the photo beside the domain image the tool made of it, captioned "category > predicted class".
    Most misses show where the conversion went wrong (a stripe of a shirt, a print, a pale article lost on a pale
    floor). Written atomically (UserError when it cannot be); returns how many photos missed (0: nothing written)."""
    import cv2

    from semdir_edit.core.images import write_png
    from semdir_edit.data.photo import load_image

    cat = photos.category.numpy()
    misses = [i for i in range(len(cat)) if photos.accepted[cat[i]] and int(pred[i]) not in photos.accepted[cat[i]]]
    tiles = []
    for i in misses[:limit]:
        try:
            image = load_image(photos.files[i]).pixels
        except UserError:  # Changed since it was converted: the domain image alone.
            image = np.zeros((tile, tile), np.uint8)
        image = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        h, w = image.shape
        f = tile / max(h, w)
        thumb = np.zeros((tile, tile), np.uint8)
        small = cv2.resize(image, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
        y, x = (tile - small.shape[0]) // 2, (tile - small.shape[1]) // 2
        thumb[y:y + small.shape[0], x:x + small.shape[1]] = small
        domain = cv2.resize(photos.images[i, 0].numpy(), (tile, tile), interpolation=cv2.INTER_NEAREST)
        cell = np.concatenate([thumb, domain], 1)
        caption = f"{photos.categories[cat[i]]} > {class_names[int(pred[i])]}"
        cv2.rectangle(cell, (0, tile - 13), (2 * tile, tile), 0, -1)
        cv2.putText(cell, caption[:30], (2, tile - 3), cv2.FONT_HERSHEY_SIMPLEX, 0.35, 255, 1, cv2.LINE_AA)
        tiles.append(np.pad(cell, 2))
    if not tiles:
        return 0
    tiles += [np.zeros_like(tiles[0])] * (-len(tiles) % columns)
    sheet = np.concatenate([np.concatenate(tiles[r:r + columns], 1) for r in range(0, len(tiles), columns)], 0)
    write_png(path, sheet)
    return len(misses)


def plot_confusion(photos: LabelledPhotos, pred: np.ndarray, ood: np.ndarray, threshold: float,
                   class_names: list[str], path: str | Path, title: str) -> None:
    """Categories (rows) x predicted classes plus "warned" (columns), each row as shares; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(class_names)
    counts = np.zeros((len(photos.categories), k + 1))
    for c, p, o in zip(photos.category.numpy(), pred, ood, strict=True):
        counts[c, p] += 1
        counts[c, k] += o > threshold
    rows = counts[:, :k].sum(1, keepdims=True).clip(min=1)
    share = counts / rows
    fig, ax = plt.subplots(figsize=(1.0 + 0.62 * (k + 1), 1.0 + 0.42 * len(photos.categories)), dpi=110)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    for r in range(share.shape[0]):
        for c in range(share.shape[1]):
            accepted = c < k and c in photos.accepted[r]
            if share[r, c] >= 0.005 or accepted:
                ax.text(c, r, f"{share[r, c]:.0%}", ha="center", va="center", fontsize=7,
                        color="white" if share[r, c] > 0.55 else "black", fontweight="bold" if accepted else None)
    ax.set_xticks(range(k + 1), [*class_names, "warned"], rotation=45, ha="right", fontsize=8)
    labels = [f"{n} ({int(rows[i, 0])})" + ("" if photos.accepted[i] else " [OOD]")
              for i, n in enumerate(photos.categories)]
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
