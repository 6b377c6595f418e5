"""Side by side: settings of the photo conversion, each converting the same labelled photos and scored by the same
network as `semdir-edit evaluate photos` scores them (nothing is registered or cached).

    .venv/bin/python scripts/compare_conversion.py PHOTOS/validation PHOTOS/mapping.json \
        [--weights weights/fashion_mnist] [--set STRIPES_LOST=1 STRIPES_LOST=0.1] [--json out.json]

Each ``--set`` value is one row: comma-separated ``NAME=VALUE`` assignments to constants of
``semdir_edit.data.photo`` ("shipped" = as it is).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from semdir_edit.checkpoint import read_manifest
from semdir_edit.config import FASHION_MNIST_CLASSES
from semdir_edit.data import photo
from semdir_edit.data.labelled_photos import load_labelled_photos, read_class_map
from semdir_edit.evaluation.photos import classify_photos, photo_figures


def apply_setting(setting: str, shipped: dict[str, object]) -> None:
    """Restore the shipped constants, then assign the row's."""
    for name, value in shipped.items():
        setattr(photo, name, value)
    if setting == "shipped":
        return
    for part in setting.split(","):
        name, value = part.split("=")
        if not hasattr(photo, name):
            raise SystemExit(f"semdir_edit.data.photo has no constant {name}")
        setattr(photo, name, type(shipped[name])(value))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photos")
    parser.add_argument("class_map")
    parser.add_argument("--weights", default="weights/fashion_mnist")
    parser.add_argument("--set", nargs="+", default=["shipped"], dest="settings")
    parser.add_argument("--json")
    args = parser.parse_args()
    names = read_manifest(args.weights)["models"]["classifier"].get("class_names") or FASHION_MNIST_CLASSES
    mapping = read_class_map(Path(args.class_map), list(names))
    constants = {n for s in args.settings if s != "shipped" for n in (p.split("=")[0] for p in s.split(","))}
    shipped = {n: getattr(photo, n) for n in constants if hasattr(photo, n)}
    rows, preds = {}, {}
    for setting in args.settings:
        apply_setting(setting, shipped)
        t0 = time.perf_counter()
        photos = load_labelled_photos(args.photos, mapping)
        pred, ood, threshold, _ = classify_photos(args.weights, photos)
        rows[setting] = photo_figures(photos, pred, ood, threshold)
        rows[setting]["seconds"] = round(time.perf_counter() - t0, 1)
        preds[setting] = (photos.files, pred, photos)
        print(f"{setting}: {json.dumps(rows[setting])}", flush=True)
    first = args.settings[0]
    for setting in args.settings[1:]:  # Which photos changed their verdict against the first row.
        files, pred, photos = preds[setting]
        base = dict(zip(preds[first][0], preds[first][1], strict=True))
        acc, inside = photos.accept_matrix(len(names)).numpy(), photos.in_domain().numpy()
        for i, f in enumerate(files):
            if f in base and base[f] != pred[i] and inside[i]:
                was, now = bool(acc[i, base[f]]), bool(acc[i, pred[i]])
                if was != now:
                    print(f"  {setting}: {'fixed' if now else 'broken'} {f} ({names[base[f]]} -> {names[pred[i]]})")
    for setting, row in rows.items():
        per = " / ".join(f"{100 * row[k]:.0f}" for k in row if k.startswith("accuracy_")
                         and k not in ("accuracy_in_domain", "accuracy_worst_category"))
        print(f"| {setting} | {100 * row['accuracy_in_domain']:.1f} % | {per} % | {row['ood_auroc']:.3f} "
              f"| {100 * row['warned_in_domain']:.1f} % |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
