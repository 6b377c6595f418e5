"""Parts of `semdir-edit evaluate directions`, on its samples, without the hour of fresh-predictor training.

    .venv/bin/python scripts/remeasure_directions.py --parts visible rca [--weights weights/fashion_mnist]
        [--sources ours cpca] [--record]

Same samples, eps and code as `evaluate directions --per-class 50 --visible-per-class 20` (seed 0):
- visible: the "what a person sees" block: every direction of each sample's set at |eps| = 3, edited as `apply`
  edits it by default (for re-measuring after a change to how edits are walked, e.g. the class lock);
- rca: the shipped shift predictor's RCA on our sets (after it trained on).
--record merges the figures into the manifest's `directions` section, with a note per part saying what was
re-measured.
"""

from __future__ import annotations

import argparse
import json

import torch

from semdir_edit.checkpoint import load_model, read_manifest, update_figures
from semdir_edit.config import load_config
from semdir_edit.directions.baselines import sample_by_class
from semdir_edit.evaluation import directions as ed
from semdir_edit.evaluation.evaluate import (
    direction_sources,
    fit_typicality,
    load_judge,
    load_lock_classifier,
    ours_gains,
    rca_figures,
    visible_figures,
)

NOTES = {
    "visible": "{sources} visible/outline/distinct/class_preserved/typical/judged re-measured with "
               "scripts/remeasure_directions.py --parts visible (same samples and code as evaluate directions)",
    "rca": "rca_* re-measured with scripts/remeasure_directions.py --parts rca (same samples and code as evaluate "
           "directions: 50 per class, seed 0) after the predictor's training: {training}",
}


def predictor_training(weights: str) -> str:
    """How the shipped predictor was trained, from the manifest: its steps, and those of the run it started from."""
    record = read_manifest(weights)["models"]["shift_predictor"]
    text = f"{record['steps']:,} steps"
    start = record.get("init_from")
    if start:
        text += f" of `{record['command']}`, on from {start['steps']:,} steps"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", choices=sorted(NOTES), default=["visible"])
    parser.add_argument("--weights", default="weights/fashion_mnist")
    parser.add_argument("--sources", nargs="+", default=["ours", "cpca"],
                        help="visible: ours (global and class sets), cpca, voynov, pca, sefa, random")
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--visible-per-class", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    device = torch.device("cpu")
    G = load_model(args.weights, "generator", device)
    C = load_model(args.weights, "classifier", device)
    w_cov = load_model(args.weights, "direction_bank", device).w_cov.cpu()
    sources = direction_sources(args.weights, device)
    samples = sample_by_class(G, C, args.per_class, args.seed)
    figures, notes = {}, {}
    if "visible" in args.parts:
        chosen = {k: v for k, v in sources.items() if k in args.sources}
        typicality = fit_typicality(C, load_config("fashion_mnist").data, seed=args.seed)
        figures.update(visible_figures(G, C, chosen, w_cov, samples.w, samples.labels, args.visible_per_class,
                                       args.seed, typicality, load_judge(args.weights, device),
                                       load_lock_classifier(args.weights, C, device),
                                       ours_gains(args.weights, sources["ours"])))
        notes["visible_note"] = NOTES["visible"].format(sources=", ".join(sorted(args.sources)))
    if "rca" in args.parts:
        predictor = load_model(args.weights, "shift_predictor", device)
        ours = sources["ours"]
        dc = load_config("fashion_mnist").train_directions  # The eps range `evaluate directions` measures with.
        figures.update(rca_figures(G, predictor, ours, ed.spreads_of(ours, w_cov), samples.w, samples.labels,
                                   (dc.eps_min, dc.eps_max), args.seed))
        notes["rca_note"] = NOTES["rca"].format(training=predictor_training(args.weights))
    print(json.dumps(figures, indent=1))
    if args.record:
        update_figures(args.weights, "directions", {**figures, **notes}, merge=True)
        print(f"recorded in {args.weights}/manifest.json")


if __name__ == "__main__":
    main()
