"""Only the "what a person sees" block of `semdir-edit evaluate directions`, on its samples (a few minutes on CPU).

    .venv/bin/python scripts/evaluate_visible.py [--weights weights/fashion_mnist] [--sources ours cpca] [--record]

Same samples, eps and code as `evaluate directions --per-class 50 --visible-per-class 20` (seed 0): every
direction of each sample's set at |eps| = 3, edited as `apply` edits it by default. For re-measuring after a change
to how edits are walked (the class lock), without the hour of predictor training the full command spends.
--record merges the figures into the manifest's `directions` section, with a note saying what was re-measured.
"""

from __future__ import annotations

import argparse
import json

import torch

from semdir_edit.checkpoint import load_model, update_figures
from semdir_edit.directions.baselines import sample_by_class
from semdir_edit.evaluation.evaluate import direction_sources, visible_figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="weights/fashion_mnist")
    parser.add_argument("--sources", nargs="+", default=["ours", "cpca"],
                        help="ours (global and class sets), cpca, voynov, pca, sefa, random")
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--visible-per-class", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    device = torch.device("cpu")
    G = load_model(args.weights, "generator", device)
    C = load_model(args.weights, "classifier", device)
    w_cov = load_model(args.weights, "direction_bank", device).w_cov.cpu()
    sources = {k: v for k, v in direction_sources(args.weights, device).items() if k in args.sources}
    samples = sample_by_class(G, C, args.per_class, args.seed)
    figures = visible_figures(G, C, sources, w_cov, samples.w, samples.labels, args.visible_per_class, args.seed)
    print(json.dumps(figures, indent=1))
    if args.record:
        note = (f"{', '.join(sorted(args.sources))} visible/outline/distinct/class_preserved re-measured with "
                f"scripts/evaluate_visible.py (same samples and code as evaluate directions) after the class lock's "
                f"adaptive steps")
        update_figures(args.weights, "directions", {**figures, "visible_note": note}, merge=True)
        print(f"recorded in {args.weights}/manifest.json")


if __name__ == "__main__":
    main()
