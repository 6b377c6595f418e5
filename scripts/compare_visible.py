"""Side by side: closed-form visible direction sets for several settings, on the same statistics, samples and seeds.

    .venv/bin/python scripts/compare_visible.py [--weights weights/fashion_mnist] [--per-class 6] [--json out.json]

Each candidate is measured as `evaluate directions` measures the shipped sets (|eps| = 3, every direction of the
sample's set, class-locked as `apply` edits class and global directions by default): visible, outline,
distinct, class preserved, for the global set and the class sets, with per-class PCA beside them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os

import torch

from semdir_edit.checkpoint import load_model
from semdir_edit.directions.baselines import sample_by_class
from semdir_edit.evaluation.directions import spreads_of, visible_effects
from semdir_edit.ops.visible import ChangeStatistics, change_statistics, solve_directions

CANDIDATES = [  # (name, keep_global, keep_class, outline_weight, off W's linear class boundaries, global ratio)
    ("keep 4 / 0 (shipped)", 4.0, 0.0, 1.0, False, 0.0),
    ("global: change / (margin + 0.1), class keep 0", 1.0, 0.0, 1.0, False, 0.1),
    ("global: change / (margin + 0.3), class keep 0", 1.0, 0.0, 1.0, False, 0.3),
    ("global: change / (margin + 1), class keep 0", 1.0, 0.0, 1.0, False, 1.0),
    ("global: change / (margin + 3), class keep 0", 1.0, 0.0, 1.0, False, 3.0),
    ("keep 2 / 0", 2.0, 0.0, 1.0, False, 0.0),
    ("keep 4 / 1", 4.0, 1.0, 1.0, False, 0.0),
    ("keep 12 / 4", 12.0, 4.0, 1.0, False, 0.0),
    ("keep 4 / 0, pixels only", 4.0, 0.0, 0.0, False, 0.0),
    ("keep 0 / 0, global set orthogonal to the class boundaries' normals", 0.0, 0.0, 1.0, True, 0.0),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="weights/fashion_mnist")
    parser.add_argument("--stat-per-class", type=int, default=30)
    parser.add_argument("--per-class", type=int, default=6, help="Test samples per class.")
    parser.add_argument("--json")
    parser.add_argument("--only", help="Measure only the candidates whose name contains this text.")
    parser.add_argument("--stats-cache", help="A .pt file for the change statistics (computed once, then read).")
    args = parser.parse_args()
    device = torch.device("cpu")
    G = load_model(args.weights, "generator", device)
    C = load_model(args.weights, "classifier", device)
    bank = load_model(args.weights, "direction_bank", device)
    fit = sample_by_class(G, C, args.stat_per_class, seed=0)
    if args.stats_cache and os.path.exists(args.stats_cache):
        stats = ChangeStatistics(**torch.load(args.stats_cache))
    else:
        stats = change_statistics(G, C, fit.w, fit.labels, bank.w_cov, rank=64, progress=True)
        if args.stats_cache:
            torch.save(dataclasses.asdict(stats), args.stats_cache)
    test = sample_by_class(G, C, args.per_class, seed=999)              # Other samples than the fit's.
    zeros = torch.zeros_like(test.labels)
    rows = {}

    def measure(sets: torch.Tensor, set_index: torch.Tensor, lock: bool) -> dict[str, float]:
        return visible_effects(G, C, sets, spreads_of(sets, bank.w_cov), test.w, test.labels, set_index,
                               class_lock=lock)

    rows["per-class PCA (cpca), linear"] = {"class": measure(bank.cpca, test.labels, False)}
    normals = bank.boundary_weight - bank.boundary_weight.mean(0)     # (N, w_dim): rank N - 1, between classes.
    for name, keep_g, keep_c, outline, off_boundaries, ratio in CANDIDATES:
        if args.only and args.only not in name:
            continue
        g, c = solve_directions(stats, 8, outline_weight=outline, keep_global=keep_g, keep_class=keep_c,
                                global_exclude=normals.T if off_boundaries else None, global_ratio=ratio)
        rows[name] = {"global": measure(g[None], zeros, True), "class": measure(c, test.labels, True)}
        print(name, json.dumps(rows[name]), flush=True)
    print("\n| candidate | global visible / outline / distinct / kept | class visible / outline / distinct / kept |")
    print("|---|---|---|")
    for name, row in rows.items():
        cells = [" / ".join(f"{row[s][k]:.3f}" for k in ("visible", "outline", "distinct", "class_preserved"))
                 if s in row else "" for s in ("global", "class")]
        print(f"| {name} | {cells[0]} | {cells[1]} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
