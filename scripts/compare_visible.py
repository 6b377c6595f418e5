"""Side by side: closed-form visible direction sets for several settings, on the same statistics, samples and seeds.

    .venv/bin/python scripts/compare_visible.py [--weights weights/fashion_mnist] [--per-class 6] [--json out.json]

Each candidate is measured as `evaluate directions` measures the shipped sets (|eps| = 3, every direction of the
sample's set, class-locked as `apply` edits class and global directions by default): visible, outline,
distinct, class preserved, for the global set and the class sets, with per-class PCA beside them.
"""

from __future__ import annotations

import argparse
import json

import torch

from semdir_edit.checkpoint import load_model
from semdir_edit.directions.baselines import sample_by_class
from semdir_edit.evaluation.directions import spreads_of, visible_effects
from semdir_edit.ops.visible import change_statistics, solve_directions

CANDIDATES = [  # (name, keep_global, keep_class, outline_weight, global set off W's linear class boundaries)
    ("keep 4 / 0 (shipped)", 4.0, 0.0, 1.0, False),
    ("keep 2 / 0", 2.0, 0.0, 1.0, False),
    ("keep 4 / 1", 4.0, 1.0, 1.0, False),
    ("keep 12 / 4", 12.0, 4.0, 1.0, False),
    ("keep 4 / 0, pixels only", 4.0, 0.0, 0.0, False),
    ("keep 0 / 0, global set orthogonal to the class boundaries' normals", 0.0, 0.0, 1.0, True),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="weights/fashion_mnist")
    parser.add_argument("--stat-per-class", type=int, default=30)
    parser.add_argument("--per-class", type=int, default=6, help="Test samples per class.")
    parser.add_argument("--json")
    args = parser.parse_args()
    device = torch.device("cpu")
    G = load_model(args.weights, "generator", device)
    C = load_model(args.weights, "classifier", device)
    bank = load_model(args.weights, "direction_bank", device)
    fit = sample_by_class(G, C, args.stat_per_class, seed=0)
    stats = change_statistics(G, C, fit.w, fit.labels, bank.w_cov, rank=64, progress=True)
    test = sample_by_class(G, C, args.per_class, seed=999)              # Other samples than the fit's.
    zeros = torch.zeros_like(test.labels)
    rows = {}

    def measure(sets: torch.Tensor, set_index: torch.Tensor, lock: bool) -> dict[str, float]:
        return visible_effects(G, C, sets, spreads_of(sets, bank.w_cov), test.w, test.labels, set_index,
                               class_lock=lock)

    rows["per-class PCA (cpca), linear"] = {"class": measure(bank.cpca, test.labels, False)}
    normals = bank.boundary_weight - bank.boundary_weight.mean(0)     # (N, w_dim): rank N - 1, between classes.
    for name, keep_g, keep_c, outline, off_boundaries in CANDIDATES:
        g, c = solve_directions(stats, 8, outline_weight=outline, keep_global=keep_g, keep_class=keep_c,
                                global_exclude=normals.T if off_boundaries else None)
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
