#!/usr/bin/env bash
# Measure a weights folder with every `evaluate` command side by side (the manifest writes are locked), each
# recording its figures (--record) into the manifest and writing its JSON into REPORT_DIR. Extra weights folders
# given after DATA_DIR get `evaluate directions` too (e.g. the orthonormal variant from scripts/train_weights.sh).
#
#   scripts/evaluate_weights.sh WEIGHTS_DIR REPORT_DIR [DATA_DIR [MORE_WEIGHTS_DIRS...]]
# Environment: CFG, DEVICE, N_INV (1000), PER_CLASS (100), FRESH (1000), LIMIT (seconds per job, 0 = none),
# BENCH (1 = also run `semdir-edit bench`), SEMDIR (the command, default "python3 -m semdir_edit").
set -uo pipefail
W=${1:?usage: scripts/evaluate_weights.sh WEIGHTS_DIR REPORT_DIR [DATA_DIR [MORE...]]}
R=${2:?report dir}
DATA=${3:-/usr/share/datasets/fashion-mnist}
shift $(( $# < 3 ? $# : 3 ))
CFG=${CFG:-configs/fashion_mnist.yaml}
DEVICE=${DEVICE:-auto}
N_INV=${N_INV:-1000}
PER_CLASS=${PER_CLASS:-100}
FRESH=${FRESH:-1000}
LIMIT=${LIMIT:-0}
SE=${SEMDIR:-python3 -m semdir_edit}
mkdir -p "$R"
run() {  # run NAME ARGS...: one evaluation in the background, its log in REPORT_DIR/NAME.log
  local name=$1; shift
  if [ "$LIMIT" -gt 0 ]; then
    timeout "$LIMIT" $SE "$@" > "$R/$name.log" 2>&1 &
  else
    $SE "$@" > "$R/$name.log" 2>&1 &
  fi
}
D=(--config "$CFG" --device "$DEVICE" --data-dir "$DATA" --weights "$W")
run classifier evaluate classifier "${D[@]}" --record --json "$R/classifier.json"
run generator evaluate generator "${D[@]}" --record --json "$R/generator.json"
# One process per inversion method (side by side); their figures are merged into one manifest section below.
for m in indomain encoder optimize conventional; do
  run "inversion-$m" evaluate inversion "${D[@]}" --n "$N_INV" --methods "$m" --photo-like --json "$R/inversion-$m.json"
done
run inversion-curve evaluate inversion-curve "${D[@]}" --record -o "$R/inversion-curve.png" --json "$R/inversion-curve.json"
run directions evaluate directions --record --config "$CFG" --device "$DEVICE" --weights "$W" --per-class "$PER_CLASS" \
  --fresh-steps "$FRESH" --json "$R/directions.json"
i=0
for extra in "$@"; do
  i=$((i + 1))
  run "directions-$i" evaluate directions --record --config "$CFG" --device "$DEVICE" --weights "$extra" \
    --per-class "$PER_CLASS" --fresh-steps "$FRESH" --json "$R/directions-$i.json"
done
if [ "${BENCH:-0}" = 1 ]; then
  run bench bench --weights "$W" --device "$DEVICE" --json "$R/bench.json"
fi
wait
${PYTHON:-python3} - "$W" "$R" "$N_INV" <<'PY'
import json, sys
from pathlib import Path
from semdir_edit.checkpoint import update_figures
weights, report, n = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
figures = {}
for f in sorted(report.glob("inversion-*.json")):
    if f.name != "inversion-curve.json":
        figures.update(json.loads(f.read_text()))
if figures:
    cmd = f"scripts/evaluate_weights.sh: semdir-edit evaluate inversion --n {n} --methods <each> --photo-like"
    update_figures(weights, "inversion", {**figures, "command": cmd})
    (report / "inversion.json").write_text(json.dumps(figures, indent=2) + "\n")
PY
for f in "$R"/*.log; do echo "== $f"; tail -n 4 "$f"; done
