"""Side by side: shift-predictor settings trained on the same cached pairs, measured as `evaluate directions`
measures the shipped predictor's RCA (50 samples per class, seed 0).

    .venv/bin/python scripts/compare_predictors.py [--weights weights/fashion_mnist] [--codes 80000] [--epochs 3]
        [--candidates grown-change fresh-change] [--json out.json]

The pairs are drawn as `train directions` draws them (for every code a global edit and an edit of its class's set,
|eps| ~ U[0.5, 6]) once and cached in runs/predictor-pairs-<codes>.pt (rendering them is most of the cost), then
every candidate trains on them for the same epochs, batch 128, Adam, the rate falling along half a cosine. Candidates:
- grown-<inputs>[-pool<p>]: the shipped predictor grown into ``inputs`` / ``pool`` (same function at the start,
  see ``grow_state``), from 3e-4 (as configs/fashion_mnist-predictor-3.yaml);
- fresh-<inputs>[-pool<p>]: a new predictor, from 1e-3.
After each epoch: RCA global / class median.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

import torch

from semdir_edit.checkpoint import load_model
from semdir_edit.directions.baselines import sample_by_class
from semdir_edit.evaluation import directions as ed
from semdir_edit.evaluation.evaluate import direction_sources, rca_figures
from semdir_edit.models.shift_predictor import ShiftPredictor, grow_state, shift_predictor_loss

EPS_RANGE = (0.5, 6.0)


@torch.no_grad()
def build_pairs(G, C, sets: torch.Tensor, spreads: torch.Tensor, codes: int, seed: int = 123, chunk: int = 500
                ) -> dict[str, torch.Tensor]:
    """Originals (codes, 1, R, R) and, per code, a global and a class-set edit (2 * codes), float16."""
    g = torch.Generator().manual_seed(seed)
    K = sets.shape[2]
    parts: dict[str, list[torch.Tensor]] = {"orig": [], "shifted": [], "index": [], "eps": [], "owner": []}
    for start in range(0, codes, chunk):
        w = G.mapping(torch.randn(chunk, G.z_dim, generator=g))
        img = G.render(G.broadcast(w))
        c = C(img).argmax(1)
        set_index = torch.cat([torch.zeros_like(c), c + 1])
        k = torch.randint(0, K, (len(set_index),), generator=g)
        lo, hi = EPS_RANGE
        eps = (lo + (hi - lo) * torch.rand(len(k), generator=g)) * (torch.randint(0, 2, (len(k),), generator=g) * 2 - 1)
        shift = sets[set_index, :, k] * (eps * spreads[set_index, k])[:, None]
        parts["orig"].append(img.half())
        parts["shifted"].append(G.render(G.broadcast(w.repeat(2, 1) + shift)).half())
        parts["index"].append(set_index * K + k)
        parts["eps"].append(eps)
        parts["owner"].append(torch.arange(start, start + chunk).repeat(2))
        print(f"pairs: {start + chunk} of {codes} codes", flush=True)
    return {name: torch.cat(values) for name, values in parts.items()}


def candidate(name: str, shipped: ShiftPredictor) -> tuple[ShiftPredictor, float]:
    """A predictor for ``name`` (see the module doc) and its starting rate."""
    kind, inputs, *rest = name.split("-")
    pool = int(rest[0].removeprefix("pool")) if rest else shipped.cfg.pool
    cfg = dataclasses.replace(shipped.cfg, inputs={"change": "pair_change", "pair": "pair"}[inputs], pool=pool)
    torch.manual_seed(0)
    predictor = ShiftPredictor(cfg)
    if kind == "grown":
        predictor.load_state_dict(grow_state(shipped.state_dict(), cfg))
        return predictor, 3e-4
    return predictor, 1e-3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="weights/fashion_mnist")
    parser.add_argument("--codes", type=int, default=80_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--candidates", nargs="+", default=["grown-change", "fresh-change"])
    parser.add_argument("--json")
    args = parser.parse_args()
    device = torch.device("cpu")
    G = load_model(args.weights, "generator", device)
    C = load_model(args.weights, "classifier", device)
    w_cov = load_model(args.weights, "direction_bank", device).w_cov.cpu()
    sets = direction_sources(args.weights, device)["ours"]
    spreads = ed.spreads_of(sets, w_cov)
    shipped = load_model(args.weights, "shift_predictor", device)
    cache = Path("runs") / f"predictor-pairs-{args.codes}.pt"
    if cache.is_file():
        pairs = torch.load(cache)
    else:
        pairs = build_pairs(G, C, sets, spreads, args.codes)
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(pairs, cache)
    samples = sample_by_class(G, C, 50, 0)

    def rca(predictor: ShiftPredictor) -> tuple[float, float]:
        f = rca_figures(G, predictor, sets, spreads, samples.w, samples.labels, EPS_RANGE, 0)
        return round(f["rca_global"], 3), round(f["rca_class_median"], 3)

    rows: dict[str, list] = {}
    batch, n = 128, len(pairs["index"])
    for name in args.candidates:
        predictor, lr = candidate(name, shipped)
        steps = args.epochs * (n // batch)
        opt = torch.optim.Adam(predictor.parameters(), lr=lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i, s=steps: 0.5 * (1 + math.cos(math.pi * min(i, s) / s)))
        rows[name] = [rca(predictor)]
        print(f"{name}: start {rows[name][0]}", flush=True)
        order = torch.Generator().manual_seed(0)
        t0 = time.monotonic()
        for epoch in range(args.epochs):
            predictor.train()
            perm = torch.randperm(n, generator=order)
            for start in range(0, n - batch + 1, batch):
                b = perm[start:start + batch]
                logits, shifts = predictor(pairs["orig"][pairs["owner"][b]].float(), pairs["shifted"][b].float())
                loss, _ = shift_predictor_loss(logits, shifts, pairs["index"][b], pairs["eps"][b])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
            rows[name].append(rca(predictor))
            print(f"{name}: epoch {epoch + 1} RCA global / class median {rows[name][-1]} "
                  f"({time.monotonic() - t0:.0f} s)", flush=True)
    for name, figures in rows.items():
        print(f"| {name} | " + " | ".join(f"{g:.3f} / {c:.3f}" for g, c in figures) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
