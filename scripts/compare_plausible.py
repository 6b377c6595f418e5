"""Side by side: how often an edit at |eps| = 3 still looks like an article of its class, judged by networks the
class lock does not steer by.

The class lock holds the classifier's margin, so "class kept" judged by the same classifier cannot see an edit
that fools it (a dress walked into a dark blob with a bright rim that the classifier still calls a dress). Two
other judges:

- *typical*: the classifier's penultimate features of the edited image are within the 99th percentile of real
  test images of the sample's class, by the Mahalanobis distance to the class's mean (shared covariance, fitted
  on training images; Lee et al. 2018). A feature vector of 128 numbers, not the one logit difference the lock
  holds.
- *realistic*: the GAN discriminator's logit on the edited image is above the 5th percentile of its logits on the
  unedited samples.

    .venv/bin/python scripts/compare_plausible.py [--weights weights/fashion_mnist] [--per-class 10] [--seed 0] \
        [--sheet runs/plausible.png]
"""

from __future__ import annotations

import argparse
import json

import torch

from semdir_edit.checkpoint import load_model
from semdir_edit.config import load_config
from semdir_edit.core.images import save_grid
from semdir_edit.data import load_split
from semdir_edit.directions.baselines import sample_by_class
from semdir_edit.evaluation import directions as ed
from semdir_edit.evaluation.evaluate import direction_sources
from semdir_edit.ops.class_lock import locked_shift_codes

EPS = 3.0


@torch.no_grad()
def class_gaussian(C, images: torch.Tensor, labels: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class means (K, F) and the shared precision (F, F) of the classifier's features."""
    feats = torch.cat([C.features(images[i:i + 500]) for i in range(0, len(images), 500)]).double()
    means = torch.stack([feats[labels == c].mean(0) for c in range(k)])
    centred = feats - means[labels]
    cov = centred.T @ centred / len(feats) + 1e-6 * torch.eye(feats.shape[1], dtype=torch.double)
    return means, torch.linalg.inv(cov)


@torch.no_grad()
def mahalanobis(C, images: torch.Tensor, labels: torch.Tensor, means: torch.Tensor, prec: torch.Tensor) -> torch.Tensor:
    feats = torch.cat([C.features(images[i:i + 500]) for i in range(0, len(images), 500)]).double()
    d = feats - means[labels]
    return ((d @ prec) * d).sum(1).float()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="weights/fashion_mnist")
    parser.add_argument("--per-class", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sheet", default="")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    cfg = load_config("fashion_mnist")
    G = load_model(args.weights, "generator", "cpu")
    C = load_model(args.weights, "classifier", "cpu")
    D = load_model(args.weights, "discriminator", "cpu")
    w_cov = load_model(args.weights, "direction_bank", "cpu").w_cov.cpu()
    k = C.cfg.num_classes
    train, test = load_split(cfg.data, "train"), load_split(cfg.data, "test")
    idx = torch.randperm(len(train))[:10_000]
    xt, yt = train.batch(idx, "cpu")
    means, prec = class_gaussian(C, xt, yt, k)
    xs, ys = test.batch(torch.arange(len(test)), "cpu")
    test_d = mahalanobis(C, xs, ys, means, prec)
    limit = torch.stack([torch.quantile(test_d[ys == c], 0.99) for c in range(k)])

    sources = direction_sources(args.weights, "cpu")
    samples = sample_by_class(G, C, 50, args.seed)
    keep = torch.cat([torch.nonzero(samples.labels == c).flatten()[:args.per_class] for c in range(k)])
    w, labels = samples.w[keep], samples.labels[keep]
    codes = G.broadcast(w)
    x0 = G.render(codes)
    d_ref = D(x0)
    d_limit = torch.quantile(d_ref, 0.05)
    ref_typ = (mahalanobis(C, x0, labels, means, prec) <= limit[labels]).float().mean().item()
    print(f"unedited samples: typical {ref_typ:.3f}, real test images: typical 0.990 (by construction)", flush=True)

    zeros = torch.zeros_like(labels)
    plan = {"class, locked": (sources["ours"], labels + 1, True), "class, linear": (sources["ours"], labels + 1, False),
            "cpca, linear": (sources["cpca"], labels, False), "global, locked": (sources["ours"], zeros, True),
            "global, linear": (sources["ours"], zeros, False)}
    rows, worst = {}, []
    for name, (sets, set_index, lock) in plan.items():
        spreads = ed.spreads_of(sets, w_cov)
        typical, realistic, kept, change = [], [], [], []
        for j in range(sets.shape[2]):
            unit, spread = sets[set_index, :, j], spreads[set_index, j]
            if lock:
                shifted = locked_shift_codes(G, C, codes, unit, [EPS, -EPS], spread, range(G.num_ws), labels)
            else:
                steps = torch.tensor([EPS, -EPS])[None, :, None] * spread[:, None, None]
                shifted = codes[:, None] + (steps * unit[:, None, :])[:, :, None, :]
            with torch.no_grad():
                images = G.render(shifted.flatten(0, 1))
                lab = labels.repeat_interleave(2)
                dist = mahalanobis(C, images, lab, means, prec)
                typical.append(dist <= limit[lab])
                realistic.append(D(images) >= d_limit)
                kept.append(C(images).argmax(1) == lab)
                change.append((images - x0.repeat_interleave(2, 0)).abs().mean((1, 2, 3)) / 2)
                if name == "class, locked":
                    worst.append((dist / limit[lab], images))
        row = {"typical": torch.cat(typical).float().mean().item(),
               "realistic": torch.cat(realistic).float().mean().item(),
               "class kept": torch.cat(kept).float().mean().item(),
               "visible": torch.cat(change).mean().item(),
               "kept and typical": (torch.cat(kept) & torch.cat(typical)).float().mean().item()}
        rows[name] = row
        print(f"{name}: {json.dumps({a: round(b, 3) for a, b in row.items()})}", flush=True)
    if args.sheet and worst:
        ratio = torch.cat([r for r, _ in worst])
        images = torch.cat([im for _, im in worst])
        order = ratio.argsort(descending=True)
        pick = torch.cat([order[:16], order[len(order) // 2:len(order) // 2 + 8], order[-8:]])
        save_grid(args.sheet, images[pick], nrow=8, scale=3)
        print(f"wrote {args.sheet}: rows 1-2 the least typical class-locked edits, row 3 the median, row 4 the most")


if __name__ == "__main__":
    main()
