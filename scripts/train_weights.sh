#!/usr/bin/env bash
# Train every network of a weights folder from scratch, in dependency order, running independent jobs side by
# side (at 32x32 one job leaves a GPU mostly idle):
#   stage 1: classifier | generator + discriminator
#   stage 2: domain-guided encoder | conventional encoder | directions (unit columns) | directions (orthonormal,
#            written to OUT-orthonormal for comparison) | Voynov global-only | closed-form baselines
# Each stage-2 job registers into its own copy of the folder (the manifest is read-modify-written); the copies
# are merged at the end. Long jobs stop at their time limit and register what they reached (--register-at-limit).
#
#   scripts/train_weights.sh OUT_DIR [DATA_DIR]
# Environment: CFG (config), DEVICE (auto), GAN_MIN / STAGE2_MIN (time limits, minutes), RUNS (run folders),
# SEMDIR (the command, default "python3 -m semdir_edit"), STAGES ("1 2"; "2" = stage 2 only, on an OUT_DIR that
# already holds classifier, generator and discriminator, e.g. a new generator trained with --init-from),
# PREDICTOR_CFG (the configs of the predictor's fine-tuning cycles after stage 2, in order; empty = none).
# The class lock's second classifier and the judge of edits use configs/fashion_mnist-lock.yaml and -judge.yaml.
set -uo pipefail
OUT=${1:?usage: scripts/train_weights.sh OUT_DIR [DATA_DIR]}
DATA=${2:-/usr/share/datasets/fashion-mnist}
CFG=${CFG:-configs/fashion_mnist.yaml}
DEVICE=${DEVICE:-auto}
GAN_MIN=${GAN_MIN:-5}
STAGE2_MIN=${STAGE2_MIN:-3.5}
PREDICTOR_CFG=${PREDICTOR_CFG-configs/fashion_mnist-predictor.yaml configs/fashion_mnist-predictor-2.yaml configs/fashion_mnist-predictor-3.yaml configs/fashion_mnist-predictor-4.yaml configs/fashion_mnist-predictor-5.yaml configs/fashion_mnist-predictor-6.yaml configs/fashion_mnist-predictor-7.yaml configs/fashion_mnist-predictor-8.yaml configs/fashion_mnist-predictor-8.yaml}
RUNS=${RUNS:-runs/train-weights}
SE=${SEMDIR:-python3 -m semdir_edit}
STAGES=${STAGES:-1 2}
COMMON=(--config "$CFG" --device "$DEVICE")
mkdir -p "$OUT" "$RUNS"

log() { echo "[$(date +%T)] $*"; }
merge() {  # merge DST SRC KIND...: copy SRC's files and manifest entries of KIND into DST.
  $SE weights merge "$@" || echo "NOT registered in $2: some of ${*:3}"
}

if [[ " $STAGES " == *" 1 "* ]]; then
log "stage 1: classifier | gan"
$SE train classifier "${COMMON[@]}" --data-dir "$DATA" --weights "$OUT.s1c" --out "$RUNS/classifier" \
  > "$RUNS/classifier.log" 2>&1 &
for role in lock judge; do
  $SE train classifier --role $role --config "configs/fashion_mnist-$role.yaml" --device "$DEVICE" --data-dir "$DATA" \
    --weights "$OUT.s1$role" --out "$RUNS/classifier-$role" > "$RUNS/classifier-$role.log" 2>&1 &
done
$SE train gan "${COMMON[@]}" --data-dir "$DATA" --weights "$OUT.s1g" --out "$RUNS/gan" \
  --time-limit "$GAN_MIN" --register-at-limit > "$RUNS/gan.log" 2>&1 &
wait
tail -n 3 "$RUNS/classifier.log" "$RUNS/classifier-lock.log" "$RUNS/classifier-judge.log" "$RUNS/gan.log"
merge "$OUT" "$OUT.s1c" classifier
merge "$OUT" "$OUT.s1lock" classifier_lock
merge "$OUT" "$OUT.s1judge" classifier_judge
merge "$OUT" "$OUT.s1g" generator discriminator
fi

if [[ " $STAGES " == *" 2 "* ]]; then
log "stage 2: encoders | directions | baselines"
sed 's/normalization: unit/normalization: orthonormal/' "$CFG" > "$RUNS/config-orthonormal.yaml"
for job in enc conv dir ortho voynov base; do rm -rf "$OUT.$job"; cp -r "$OUT" "$OUT.$job"; done
T=(--time-limit "$STAGE2_MIN" --register-at-limit)
$SE train encoder "${COMMON[@]}" --data-dir "$DATA" --weights "$OUT.enc" --out "$RUNS/encoder" "${T[@]}" \
  > "$RUNS/encoder.log" 2>&1 &
$SE train encoder "${COMMON[@]}" --kind conventional --data-dir "$DATA" --weights "$OUT.conv" \
  --out "$RUNS/encoder-conventional" "${T[@]}" > "$RUNS/encoder-conventional.log" 2>&1 &
$SE train directions "${COMMON[@]}" --weights "$OUT.dir" --out "$RUNS/directions" "${T[@]}" \
  > "$RUNS/directions.log" 2>&1 &
$SE train directions --config "$RUNS/config-orthonormal.yaml" --device "$DEVICE" --weights "$OUT.ortho" \
  --out "$RUNS/directions-orthonormal" "${T[@]}" > "$RUNS/directions-orthonormal.log" 2>&1 &
$SE train directions "${COMMON[@]}" --global-only --weights "$OUT.voynov" --out "$RUNS/directions-voynov" "${T[@]}" \
  > "$RUNS/directions-voynov.log" 2>&1 &
$SE train baselines "${COMMON[@]}" --weights "$OUT.base" > "$RUNS/baselines.log" 2>&1 &
wait
for f in encoder encoder-conventional directions directions-orthonormal directions-voynov baselines; do
  tail -n 2 "$RUNS/$f.log"
done
merge "$OUT" "$OUT.enc" encoder
merge "$OUT" "$OUT.conv" encoder_conventional
merge "$OUT" "$OUT.voynov" deformators_voynov shift_predictor_voynov
merge "$OUT" "$OUT.base" direction_bank
rm -rf "$OUT-orthonormal" && cp -r "$OUT" "$OUT-orthonormal"
merge "$OUT" "$OUT.dir" deformators shift_predictor
merge "$OUT-orthonormal" "$OUT.ortho" deformators shift_predictor
cycle=0
for pcfg in $PREDICTOR_CFG; do
  cycle=$((cycle + 1))
  log "stage 2b: the shift predictor trained on with a decaying rate ($pcfg; directions frozen)"
  name=predictor-cycle-$cycle
  $SE train directions --config "$pcfg" --device "$DEVICE" --init-from "$OUT" --weights "$OUT" \
    --out "$RUNS/$name" > "$RUNS/$name.log" 2>&1
  tail -n 2 "$RUNS/$name.log"
done
fi
log "stage 3: our directions' eps unit calibrated (apply's unit; the predictor keeps spreads)"
$SE directions calibrate --device "$DEVICE" --weights "$OUT" --record -q
rm -rf "$OUT".s1c "$OUT".s1g "$OUT".enc "$OUT".conv "$OUT".dir "$OUT".ortho "$OUT".voynov "$OUT".base
log "done: $OUT (and $OUT-orthonormal)"
