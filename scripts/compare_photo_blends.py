"""Side by side: ways of mixing the shipped photo classifier's fine-tuned network with the shared classifier.

    .venv/bin/python scripts/compare_photo_blends.py PHOTOS/validation PHOTOS/train PHOTOS/mapping.json \
        [--weights weights/fashion_mnist]

The shipped photo classifier is ``a * fine-tuned + (1 - a) * shared`` in weight space (``blend_alpha`` in its
manifest entry); the fine-tuned weights are recovered from it exactly (the blend is linear and the batch norms'
statistics are the shared classifier's). Then, on Fashion-MNIST's test set and the labelled photo folders (each
with the mirror-image average :func:`photo_scores` uses): weight blends at other ``a``; output ensembles
``b * p(network) + (1 - b) * p(shared)``; and a gate that takes the shared classifier's answer where it is sure
(its top probability >= tau). The out-of-domain score always comes from the photo network. Nothing is registered.
The converted photos are cached in runs/ (converting thousands of photos takes minutes).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from semdir_edit.checkpoint import load_model, read_manifest
from semdir_edit.config import FASHION_MNIST_CLASSES, load_config
from semdir_edit.core.images import to_float
from semdir_edit.data import load_split
from semdir_edit.data.labelled_photos import LabelledPhotos, load_labelled_photos, read_class_map
from semdir_edit.evaluation.photos import photo_figures
from semdir_edit.models import Classifier
from semdir_edit.training.photo_classifier import KIND, blend_with_shared, from_shared

K = len(FASHION_MNIST_CLASSES)


@torch.no_grad()
def probabilities(model: Classifier, x: torch.Tensor) -> torch.Tensor:
    """Softmax of the image and its mirror image, averaged (as photo_scores scores photos)."""
    return torch.cat([(model(b).float().softmax(1) + model(b.flip(3)).float().softmax(1)) / 2 for b in x.split(500)])


def figures(p: torch.Tensor, ood: torch.Tensor, labels: torch.Tensor, photos: LabelledPhotos | None) -> str:
    pred = p[:, :K].argmax(1)
    if photos is None:
        return f"test {(pred == labels).float().mean() * 100:.2f}"
    f = photo_figures(photos, pred.numpy(), ood.numpy(), threshold=1.0)
    return (f"{f['accuracy_in_domain'] * 100:.1f} (worst {f['accuracy_worst_category'] * 100:.1f}, dress "
            f"{f.get('accuracy_dress', float('nan')) * 100:.1f}) AUROC {f['ood_auroc']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", help="labelled photo folders, then the class map")
    parser.add_argument("--weights", default="weights/fashion_mnist")
    args = parser.parse_args()
    *folders, class_map = args.folders
    cfg = load_config("fashion_mnist")
    shared = load_model(args.weights, "classifier", "cpu")
    shipped = load_model(args.weights, KIND, "cpu")
    alpha = read_manifest(args.weights)["models"][KIND]["blend_alpha"]
    start, blended = from_shared(shared).state_dict(), shipped.state_dict()
    tuned = Classifier(shipped.cfg)
    tuned.load_state_dict({k: (v - (1 - alpha) * start[k]) / alpha if v.is_floating_point() else v
                           for k, v in blended.items()})
    tuned.eval()
    mapping = read_class_map(class_map, list(FASHION_MNIST_CLASSES))
    test = load_split(cfg.data, "test")
    sets: dict[str, tuple[torch.Tensor, LabelledPhotos | None]] = {"Fashion-MNIST": (to_float(test.images), None)}
    for folder in folders:
        cache = Path("runs") / f"photos-{Path(folder).name}.npz"
        photos = load_labelled_photos(folder, mapping, cfg.data.resolution, cache=cache)
        sets[Path(folder).name] = (to_float(photos.images), photos)
    networks = {"shared": from_shared(shared).eval(), "tuned": tuned}
    networks.update({f"blend {a}": blend_with_shared(tuned, shared, a) for a in (alpha, 0.65, 0.6, 0.5)})
    probs = {name: {s: probabilities(m, x) for s, (x, _) in sets.items()} for name, m in networks.items()}

    def row(label: str, mix) -> None:
        cells = []
        for s, (_, photos) in sets.items():
            p, ood = mix(s)
            cells.append(f"{s} {figures(p, ood, test.labels, photos)}")
        print(f"{label}: " + " | ".join(cells), flush=True)

    for name in networks:
        if name != "shared":
            row(f"weights: {name}", lambda s, n=name: (probs[n][s], probs[n][s][:, K]))
    for base in ("tuned", f"blend {alpha}"):
        for beta in (0.9, 0.7, 0.5):
            row(f"outputs: {beta} x {base} + {1 - beta:.1f} x shared",
                lambda s, b=base, beta=beta: (beta * probs[b][s] + (1 - beta) * probs["shared"][s], probs[b][s][:, K]))
        for tau in (0.6, 0.8, 0.9):
            row(f"gate: shared where sure (>= {tau}), else {base}",
                lambda s, b=base, tau=tau: (torch.where(probs["shared"][s][:, :K].max(1).values[:, None] >= tau,
                                                        probs["shared"][s], probs[b][s]), probs[b][s][:, K]))


if __name__ == "__main__":
    main()
