"""`evaluate` jobs: each loads shipped weights, measures one model as /work/shared/EVALUATION.md says,
and returns one flat dict of figures (also written into the weights manifest by the CLI).

Distribution figures use the project's classifier features, not Inception: compare them within
this project only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from semdir_edit.checkpoint import load_model
from semdir_edit.config import DataConfig
from semdir_edit.data import ImageSet, load_split
from semdir_edit.evaluation.metrics import (
    accuracy,
    class_histogram,
    classifier_features,
    fid_from_features,
    generate_batches,
    linear_separability,
    min_class_share_ratio,
    perceptual_path_length,
    precision_recall,
)
from semdir_edit.training.classifier import predict


def _image_batches(data: ImageSet, n: int, device: torch.device, batch_size: int = 500):
    for start in range(0, min(n, len(data)), batch_size):
        yield data.batch(torch.arange(start, min(start + batch_size, n, len(data))), device)[0]


def evaluate_classifier(weights_dir: str | Path, data_cfg: DataConfig, device: torch.device,
                        data_dir: str | None = None) -> dict[str, Any]:
    """Top-1 accuracy on the whole test split, overall and per class."""
    C = load_model(weights_dir, "classifier", device)
    test = load_split(data_cfg, "test", data_dir)
    preds = predict(C, test, device)
    figures: dict[str, Any] = {"accuracy": accuracy(preds, test.labels), "test_images": len(test)}
    for k in range(len(test.class_names)):
        mask = test.labels == k
        figures[f"accuracy_class_{k}"] = accuracy(preds[mask], test.labels[mask]) if mask.any() else float("nan")
    return figures


def evaluate_generator(weights_dir: str | Path, data_cfg: DataConfig, device: torch.device,
                       data_dir: str | None = None, n: int = 10_000, ppl_samples: int = 5_000,
                       seed: int = 0, batch_size: int = 250) -> dict[str, Any]:
    """FID (and its floor), precision/recall, class histogram, PPL in W and linear separability of W."""
    G = load_model(weights_dir, "generator", device)
    C = load_model(weights_dir, "classifier", device)
    train, test = load_split(data_cfg, "train", data_dir), load_split(data_cfg, "test", data_dir)
    n_test = min(n, len(test))
    test_feats, _ = classifier_features(C, _image_batches(test, n_test, device), device)
    train_feats, _ = classifier_features(C, _image_batches(train, n_test, device), device)

    ws, images = [], []
    for w, img in generate_batches(G, n, batch_size, device, seed):
        ws.append(w.cpu())
        images.append(img)
    fake_feats, fake_labels = classifier_features(C, images, device)
    ws_all = torch.cat(ws)

    num_classes = len(test.class_names)
    hist = class_histogram(fake_labels, num_classes)
    pr = precision_recall(test_feats, fake_feats, k=3)
    sep = linear_separability(ws_all, fake_labels, num_classes, seed=seed)
    figures: dict[str, Any] = {
        "fid": fid_from_features(fake_feats, test_feats),
        "fid_floor": fid_from_features(train_feats, test_feats),
        "precision": pr["precision"],
        "recall": pr["recall"],
        "min_class_share_ratio": min_class_share_ratio(hist),
        "ppl_w": perceptual_path_length(G, C, ppl_samples, device, seed, batch_size=batch_size),
        "separability_accuracy": sep["accuracy"],
        "separability_entropy_bits": sep["conditional_entropy"],
        "samples": n,
    }
    figures["fid_over_floor"] = figures["fid"] / max(figures["fid_floor"], 1e-12)
    for k, share in enumerate(hist):
        figures[f"class_share_{k}"] = share
    return figures


def evaluate_inversion(weights_dir: str | Path, data_cfg: DataConfig, device: torch.device,
                       data_dir: str | None = None, n: int = 1000, methods: tuple[str, ...] = ("indomain", "encoder",
                                                                                              "optimize"),
                       steps: int = 100) -> dict[str, Any]:
    """Reconstruction figures of each inversion method on the first ``n`` test images.

    Keys ``<method>_<figure>``: psnr, ssim, perceptual (means), class_preserved (share where the
    classifier's label of the reconstruction equals that of the original), seconds_per_image, failed.
    """
    from semdir_edit.editor import Editor, Inverted

    editor = Editor.from_pretrained(weights_dir, device)
    test = load_split(data_cfg, "test", data_dir)
    images = test.images[:n]
    figures: dict[str, Any] = {"images": len(images), "steps": steps}
    for method in methods:
        results = editor.invert(images, method=method, steps=steps)
        done = [r for r in results if isinstance(r, Inverted)]
        if not done:
            figures[f"{method}_failed"] = len(results)
            continue
        recon_class, _ = editor.classify(torch.stack([r.reconstruction for r in done]))
        figures.update({
            f"{method}_psnr": sum(r.psnr for r in done) / len(done),
            f"{method}_ssim": sum(r.ssim for r in done) / len(done),
            f"{method}_perceptual": sum(r.perceptual for r in done) / len(done),
            f"{method}_class_preserved": sum(int(c) == r.class_index for c, r in zip(recon_class, done,
                                                                                   strict=True)) / len(done),
            f"{method}_seconds_per_image": done[0].seconds,
            f"{method}_failed": len(results) - len(done),
        })
    return figures
