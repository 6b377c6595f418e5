"""A sheet of class-locked edits at |eps| = 3 ranked by the class-typicality judge of `evaluate directions`
(``<source>_typical``): what it flags, and what it passes.

    .venv/bin/python scripts/compare_plausible.py [--weights weights/fashion_mnist] [--per-class 10] [--seed 0] \
        [--sheet docs/atypical-edits.png]

Rows: the 16 least typical edits, 8 around the median, the 8 most typical. The figures themselves (every source):
`scripts/remeasure_directions.py --parts visible`.
"""

from __future__ import annotations

import argparse

import torch

from semdir_edit.checkpoint import load_model
from semdir_edit.config import load_config
from semdir_edit.core.images import save_grid
from semdir_edit.directions.baselines import sample_by_class
from semdir_edit.evaluation import directions as ed
from semdir_edit.evaluation.evaluate import (
    VISIBLE_EPS,
    direction_sources,
    fit_typicality,
    load_lock_classifier,
    ours_gains,
)
from semdir_edit.ops.class_lock import locked_shift_codes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="weights/fashion_mnist")
    parser.add_argument("--per-class", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sheet", default="docs/atypical-edits.png")
    args = parser.parse_args()
    G = load_model(args.weights, "generator", "cpu")
    C = load_model(args.weights, "classifier", "cpu")
    w_cov = load_model(args.weights, "direction_bank", "cpu").w_cov.cpu()
    judge = fit_typicality(C, load_config("fashion_mnist").data, seed=args.seed)
    ours = direction_sources(args.weights, "cpu")["ours"]
    samples = sample_by_class(G, C, 50, args.seed)        # As `evaluate directions` draws them.
    keep = torch.cat([torch.nonzero(samples.labels == c).flatten()[:args.per_class]
                      for c in range(C.cfg.num_classes)])
    codes, labels = G.broadcast(samples.w[keep]), samples.labels[keep]
    spreads = ed.spreads_of(ours, w_cov) * ours_gains(args.weights, ours)   # apply's unit.
    target = labels.repeat_interleave(2)
    lock = load_lock_classifier(args.weights, C, "cpu")      # What apply's lock holds.
    ratios, tiles = [], []
    for j in range(ours.shape[2]):
        shifted = locked_shift_codes(G, lock, codes, ours[labels + 1, :, j], [VISIBLE_EPS, -VISIBLE_EPS],
                                     spreads[labels + 1, j], range(G.num_ws), labels)
        with torch.no_grad():
            images = G.render(shifted.flatten(0, 1))
        ratios.append(judge.distance(C, images, target) / judge.limits[target])
        tiles.append(images)
    ratio, images = torch.cat(ratios), torch.cat(tiles)
    order = ratio.argsort(descending=True)
    mid = len(order) // 2
    save_grid(args.sheet, images[torch.cat([order[:16], order[mid - 4:mid + 4], order[-8:]])], nrow=8, scale=3)
    print(f"wrote {args.sheet}: {(ratio > 1).float().mean().item():.3f} of the class-locked edits atypical")


if __name__ == "__main__":
    main()
