"""Side by side: how often an edit at |eps| = 3 still looks like an article of its class, to a judge the class lock
does not steer by (``ClassTypicality``: the classifier's whole feature vector, not the one margin the lock holds),
for our sets locked and linear and for per-class PCA; and a sheet of the class-locked edits it finds least typical.

    .venv/bin/python scripts/compare_plausible.py [--weights weights/fashion_mnist] [--per-class 10] [--seed 0] \
        [--sheet docs/atypical-edits.png]

Sheet rows: the 16 least typical class-locked edits, 8 around the median, the 8 most typical.
"""

from __future__ import annotations

import argparse
import json

import torch

from semdir_edit.checkpoint import load_model
from semdir_edit.config import load_config
from semdir_edit.core.images import save_grid
from semdir_edit.directions.baselines import sample_by_class
from semdir_edit.evaluation import directions as ed
from semdir_edit.evaluation.evaluate import direction_sources, fit_typicality
from semdir_edit.ops.class_lock import locked_shift_codes

EPS = 3.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="weights/fashion_mnist")
    parser.add_argument("--per-class", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sheet", default="")
    args = parser.parse_args()
    G = load_model(args.weights, "generator", "cpu")
    C = load_model(args.weights, "classifier", "cpu")
    w_cov = load_model(args.weights, "direction_bank", "cpu").w_cov.cpu()
    judge = fit_typicality(C, load_config("fashion_mnist").data, seed=args.seed)
    sources = direction_sources(args.weights, "cpu")
    samples = sample_by_class(G, C, 50, args.seed)        # As `evaluate directions` draws them.
    keep = torch.cat([torch.nonzero(samples.labels == c).flatten()[:args.per_class]
                      for c in range(C.cfg.num_classes)])
    w, labels = samples.w[keep], samples.labels[keep]
    codes = G.broadcast(w)
    print(f"unedited samples: typical {judge(C, G.render(codes), labels).float().mean().item():.3f}", flush=True)

    zeros = torch.zeros_like(labels)
    plan = {"class, locked": (sources["ours"], labels + 1, True), "class, linear": (sources["ours"], labels + 1, False),
            "cpca, linear": (sources["cpca"], labels, False), "global, locked": (sources["ours"], zeros, True),
            "global, linear": (sources["ours"], zeros, False)}
    ratios, tiles = [], []
    for name, (sets, set_index, lock) in plan.items():
        spreads = ed.spreads_of(sets, w_cov)
        typical, kept = [], []
        for j in range(sets.shape[2]):
            unit, spread = sets[set_index, :, j], spreads[set_index, j]
            if lock:
                shifted = locked_shift_codes(G, C, codes, unit, [EPS, -EPS], spread, range(G.num_ws), labels)
            else:
                steps = torch.tensor([EPS, -EPS])[None, :, None] * spread[:, None, None]
                shifted = codes[:, None] + (steps * unit[:, None, :])[:, :, None, :]
            with torch.no_grad():
                images = G.render(shifted.flatten(0, 1))
                target = labels.repeat_interleave(2)
                typical.append(judge(C, images, target))
                kept.append(C(images).argmax(1) == target)
                if name == "class, locked":
                    ratios.append(judge.distance(C, images, target) / judge.limits[target])
                    tiles.append(images)
        typical_all, kept_all = torch.cat(typical), torch.cat(kept)
        row = {"typical": typical_all.float().mean().item(), "class kept": kept_all.float().mean().item(),
               "kept and typical": (typical_all & kept_all).float().mean().item()}
        print(f"{name}: {json.dumps({k: round(v, 3) for k, v in row.items()})}", flush=True)
    if args.sheet:
        ratio, images = torch.cat(ratios), torch.cat(tiles)
        order = ratio.argsort(descending=True)
        mid = len(order) // 2
        save_grid(args.sheet, images[torch.cat([order[:16], order[mid - 4:mid + 4], order[-8:]])], nrow=8, scale=3)
        print(f"wrote {args.sheet}")


if __name__ == "__main__":
    main()
