"""Side by side: how `to:<class>` walks, on the same samples and targets (what TO_CENTROID was chosen by).

    .venv/bin/python scripts/compare_to.py [--weights weights/fashion_mnist] [--per-class 20] [--eps 3]

Each walk is measured as `evaluate directions` measures `to_reached` / `to_visible`: every sample walked at +eps
towards a random other class; reached = the classifier then names the target. Candidates: the share of each step
that heads for the target class's mean code instead of up the linear classifier's margin (0 = margin only).
"""

from __future__ import annotations

import argparse
import json

import torch

from semdir_edit.checkpoint import load_model
from semdir_edit.directions.baselines import sample_by_class
from semdir_edit.evaluation.directions import target_reached

SHARES = (0.0, 0.25, 0.5, 0.75, 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="weights/fashion_mnist")
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--eps", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    device = torch.device("cpu")
    G = load_model(args.weights, "generator", device)
    C = load_model(args.weights, "classifier", device)
    bank = load_model(args.weights, "direction_bank", device)
    samples = sample_by_class(G, C, args.per_class, args.seed)
    for share in SHARES:
        figures = target_reached(G, C, samples.w, samples.labels, bank, args.seed, eps=args.eps, centroid_share=share)
        print(json.dumps({"centroid_share": share, **{k: round(v, 4) for k, v in figures.items()}}), flush=True)


if __name__ == "__main__":
    main()
