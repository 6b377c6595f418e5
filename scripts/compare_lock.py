"""Side by side: the class lock's FREE_MARGIN (how far above its floor the margin must be for a step to go as
planned) and FLOOR_MARGIN (the floor is min(the image's own margin, this)), measured as `evaluate directions`
measures what a person sees, on the same samples; and what the lock holds (the shared classifier alone, or both
classifiers).

    .venv/bin/python scripts/compare_lock.py [--weights weights/fashion_mnist] [--per-class 10] [--seed 0] \
        [--free inf 1 0.5 0] [--floor 1 0.5] [--hold shared both]

free inf: every step is redirected away from lowering the margin (the lock before FREE_MARGIN existed).
"""

from __future__ import annotations

import argparse
import itertools
import json

import semdir_edit.ops.class_lock as class_lock
from semdir_edit.checkpoint import load_model
from semdir_edit.config import load_config
from semdir_edit.directions.baselines import sample_by_class
from semdir_edit.evaluation.evaluate import (
    direction_sources,
    fit_typicality,
    load_judge,
    load_lock_classifier,
    ours_gains,
    visible_figures,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="weights/fashion_mnist")
    parser.add_argument("--per-class", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--free", type=float, nargs="+", default=[class_lock.FREE_MARGIN])
    parser.add_argument("--floor", type=float, nargs="+", default=[class_lock.FLOOR_MARGIN])
    parser.add_argument("--hold", nargs="+", choices=["shared", "both"], default=["both"],
                        help="what the lock holds: the shared classifier alone, or both it and classifier_lock (as "
                             "apply does when the weights have one)")
    args = parser.parse_args()
    G = load_model(args.weights, "generator", "cpu")
    C = load_model(args.weights, "classifier", "cpu")
    w_cov = load_model(args.weights, "direction_bank", "cpu").w_cov.cpu()
    ours = {"ours": direction_sources(args.weights, "cpu")["ours"]}
    samples = sample_by_class(G, C, 50, args.seed)   # As remeasure_directions.py draws them.
    typicality = fit_typicality(C, load_config("fashion_mnist").data, seed=args.seed)
    judge = load_judge(args.weights, "cpu")
    holds = {"shared": C, "both": load_lock_classifier(args.weights, C, "cpu")}
    for free, floor, hold in itertools.product(args.free, args.floor, args.hold):
        class_lock.FREE_MARGIN, class_lock.FLOOR_MARGIN = free, floor
        figures = visible_figures(G, C, ours, w_cov, samples.w, samples.labels, args.per_class, args.seed,
                                  typicality, judge, holds[hold], ours_gains(args.weights, ours["ours"]))
        rounded = {k: round(v, 4) for k, v in figures.items()}
        print(f"FREE_MARGIN {free}, FLOOR_MARGIN {floor}, holding {hold}:", json.dumps(rounded), flush=True)


if __name__ == "__main__":
    main()
