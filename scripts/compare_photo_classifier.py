"""Side by side: photo-classifier training settings, each trained on the same photos and measured on the same
validation photos as `semdir-edit evaluate photos` measures the shipped one (nothing is registered).

    .venv/bin/python scripts/compare_photo_classifier.py PHOTOS/train PHOTOS/validation PHOTOS/mapping.json \
        [--weights weights/fashion_mnist] [--balance 0.5 1.0] [--soup 1 4] [--seed 0 1]
        [--domain-loss labels distill] [--domain-weight 1 2] [--tolerance 0.005 0.003]
        [--json out.json]

The converted photos are cached in runs/ (converting thousands of photos takes minutes).
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

from semdir_edit.checkpoint import read_manifest
from semdir_edit.config import FASHION_MNIST_CLASSES, load_config
from semdir_edit.core.images import to_float
from semdir_edit.data import load_split
from semdir_edit.data.labelled_photos import load_labelled_photos, read_class_map
from semdir_edit.evaluation.photos import photo_figures
from semdir_edit.training.photo_classifier import (
    DOMAIN_TOLERANCE,
    DOMAIN_WEIGHT,
    photo_scores,
    train_photo_classifier,
)

KEYS = ("accuracy_in_domain", "ood_auroc", "warned_in_domain", "domain_test_accuracy", "blend_alpha")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("train")
    parser.add_argument("validation")
    parser.add_argument("class_map")
    parser.add_argument("--weights", default="weights/fashion_mnist")
    parser.add_argument("--balance", type=float, nargs="+", default=[0.5, 1.0])
    parser.add_argument("--soup", type=int, nargs="+", default=[1], help="heads averaged (seeds 0, 1, ...)")
    parser.add_argument("--seed", type=int, nargs="+", default=[0])
    parser.add_argument("--domain-loss", nargs="+", default=["labels"], choices=["labels", "distill"])
    parser.add_argument("--domain-weight", type=float, nargs="+", default=[DOMAIN_WEIGHT])
    parser.add_argument("--tolerance", type=float, nargs="+", default=[DOMAIN_TOLERANCE],
                        help="Fashion-MNIST accuracy the blend may lose against the shared classifier")
    parser.add_argument("--json")
    args = parser.parse_args()
    cfg = load_config("fashion_mnist")
    names = read_manifest(args.weights)["models"]["classifier"].get("class_names") or FASHION_MNIST_CLASSES
    mapping = read_class_map(Path(args.class_map), list(names))
    train = load_labelled_photos(args.train, mapping, cache="runs/photos-train.npz", log=print)
    val = load_labelled_photos(args.validation, mapping, cache="runs/photos-validation.npz", log=print)
    domain, test = load_split(cfg.data, "train"), load_split(cfg.data, "test")
    rows = {}
    for balance, soup, seed, loss, weight, tol in itertools.product(args.balance, args.soup, args.seed,
                                                                    args.domain_loss, args.domain_weight,
                                                                    args.tolerance):
        name = f"balance {balance}, soup {soup}, seed {seed}, domain {loss} x {weight}, tolerance {tol}"
        model, trained = train_photo_classifier(args.weights, train, domain, test, register=False, seed=seed,
                                                balance=balance, soup=soup, domain_loss=loss, domain_weight=weight,
                                                tolerance=tol, log=print)
        pred, _, ood = photo_scores(model, to_float(val.images))
        figures = photo_figures(val, pred.numpy(), ood.numpy(), trained["ood_threshold"])
        rows[name] = {**figures, **{k: trained.get(k) for k in ("domain_test_accuracy", "blend_alpha",
                                                                "blend_photo_accuracy")}}
        print(f"{name}: {json.dumps(rows[name])}", flush=True)
    for name, row in rows.items():
        per = {k.removeprefix("accuracy_"): round(v, 3) for k, v in row.items()
               if k.startswith("accuracy_") and k != "accuracy_in_domain"}
        print(f"| {name} | " + " | ".join(str(row.get(k)) for k in KEYS) + f" | {per} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
