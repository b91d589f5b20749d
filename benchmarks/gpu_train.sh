#!/usr/bin/env bash
# gpu_train.sh -- the full-width (base 64, 31M parameters) training runs of the README's results,
# on one GPU with --backend cuda, side by side (the GPU has room for all three at once):
#
#   A   --preset gpu64 on cmr/train, scored on cmr/val                         (lr 5e-4)
#   A2  the same with --lr 1e-3
#   B   --preset gpu64 --epochs 30 on cmr/train + the training patients of acdc96, scored on
#       cmr/val and on the held-out acdc96 patients (--split test --transpose)
#
#   A3, A4  (SET=lr) --preset gpu64 --epochs 150 on cmr/train with --lr 2e-4 and 3e-4
#   A5, B2  (SET=long, not run yet) A with 200 epochs, B with 60 epochs (about 7 minutes on an
#           H100 for both side by side: set LIMIT=480)
#   A6, A8, B3  (SET=norm) with instance normalisation (--norm instance), which helped most at
#           width 16 on the CPU (docs/unet.md): A6 = A + norm, A8 = A6 with --augment strong
#           (the best cmr/train-only recipe at width 16), B3 = B + norm
#   A7  (SET=normlong) A8 with 200 epochs, i.e. --preset gpu64-strong (alone on an H200,
#           2026-11-27, run with the flags spelled out: 153 epochs in
#           LIMIT=190 s, 1.2 s per epoch with the validation; LIMIT=330 would let it finish)
#   A9, A10, B4  (SET=confirm, not run yet) --preset gpu64-strong for its full 200 epochs with
#           seeds 0 and 1 (is A7's 0.905 more than one lucky seed?), then both as one ensemble
#           (A9+A10: their probabilities averaged), and B4 = the same recipe with the acdc96
#           training patients for 30 epochs (set LIMIT=400)
#   B4, B5, B6  (SET=acdc3) the acdc96 target alone: B4 of SET=confirm with seeds 0, 1, 2 on one
#           split (--split-seed 0), then the three as one ensemble on the held-out acdc96
#           patients, plain, with --min-confidence 0.6 (the rule of the best CPU ensemble) and
#           with --keep-largest (an H200, 2026-11-27: 235 s of training for the three side by
#           side, 310 s with the evaluations; LIMIT=280)
#   P   (SET=acdcx3, not run yet) the same three as the preset's one command,
#           `cmr.train --preset gpu64-acdc-x3 --jobs 3` (three worker processes), then the run
#           folder (its ensemble.json) scored like SET=acdc3's ensemble (LIMIT=300)
#
#   CMR_DATA=../shared/data OUT=results bash benchmarks/gpu_train.sh          (A, A2, B)
#   CMR_DATA=../shared/data OUT=results SET=lr bash benchmarks/gpu_train.sh   (A3, A4)
#
# Each run is bounded by LIMIT seconds (default 330): a run cut short keeps its best.npz, which
# is then evaluated, and results.json says how many epochs each run completed. Writes to $OUT:
# results.json (every run's per-epoch log and evaluations on cmr/val and the held-out acdc96
# patients), train.log, and two figures per run (image | ground truth | prediction). Checkpoints stay in $RUNS (default /dev/shm/cmr_runs):
# a width-64 checkpoint with Adam's state is 372 MB.
set -u
cd "$(dirname "$0")/.." || exit 1
PYTHON="${PYTHON:-$(command -v python3 || command -v python)}"
CMR_DATA="${CMR_DATA:-shared/data}"
OUT="${OUT:-runs/gpu_train}"
RUNS="${RUNS:-/dev/shm/cmr_runs}"
LIMIT="${LIMIT:-330}"
SET="${SET:-main}"   # main: A, A2, B; lr: A3, A4; long: A5, B2; norm: A6, A8, B3; normlong: A7;
                     # confirm: A9, A10, B4; acdc3: B4, B5, B6; acdcx3: P
BACKEND="${BACKEND:-cuda}"    # BACKEND=numpy EXTRA="--base 4 --epochs 1" checks this script on a CPU
EXTRA="${EXTRA:-}"
mkdir -p "$OUT" "$RUNS"
exec > >(tee "$OUT/train.log") 2>&1
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-4}"
CMR="$CMR_DATA/cmr"
ACDC="$CMR_DATA/acdc96"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
date -u

train() {   # NAME ARGS...: one run, bounded, its console prefixed with the name
    local name="$1"
    shift
    # shellcheck disable=SC2086
    timeout -k 10 "$LIMIT" "$PYTHON" -m cmr.train --backend "$BACKEND" --no-progress \
        --data "$CMR" --out "$RUNS/$name" "$@" $EXTRA 2>&1 | sed -u "s/^/[$name] /"
}
T0=$SECONDS
rm -rf "${RUNS:?}"/*
PIDS=()
start() {   # NAME ARGS...: train in the background
    train "$@" &
    PIDS+=($!)
}
if [ "$SET" = long ]; then     # the next set: the two best recipes, twice as long
    start A5 --preset gpu64 --epochs 200
    start B2 --preset gpu64 --epochs 60 --extra-data "$ACDC" --extra-transpose
elif [ "$SET" = norm ]; then   # instance normalisation after every 3x3 convolution
    start A6 --preset gpu64 --norm instance
    start A8 --preset gpu64 --norm instance --augment strong
    start B3 --preset gpu64 --norm instance --epochs 30 --extra-data "$ACDC" --extra-transpose
elif [ "$SET" = confirm ]; then
    start A9 --preset gpu64-strong
    start A10 --preset gpu64-strong --seed 1
    start B4 --preset gpu64-strong --epochs 30 --extra-data "$ACDC" --extra-transpose
elif [ "$SET" = acdc3 ]; then
    for seed in 0 1 2; do
        start "B$((4 + seed))" --preset gpu64-strong --epochs 30 --extra-data "$ACDC" \
            --extra-transpose --seed "$seed" --split-seed 0
    done
elif [ "$SET" = acdcx3 ]; then
    start P --preset gpu64-acdc-x3 --jobs 3 --extra-data "$ACDC"
elif [ "$SET" = normlong ]; then
    start A7 --preset gpu64-strong      # = gpu64 --norm instance --augment strong --epochs 200
elif [ "$SET" = lr ]; then     # a second set: lower learning rates, longer, on cmr/train only
    start A3 --preset gpu64 --lr 2e-4 --epochs 150
    start A4 --preset gpu64 --lr 3e-4 --epochs 150
else
    start A --preset gpu64
    start A2 --preset gpu64 --lr 1e-3
    start B --preset gpu64 --epochs 30 --extra-data "$ACDC" --extra-transpose
fi
wait "${PIDS[@]}"     # (a bare `wait` would also wait for the tee above, forever)
echo "training took $((SECONDS - T0)) s"

evaluate() {   # RUN TAG ARGS...
    local run="$1" tag="$2"
    shift 2
    echo "== $run on $tag"
    "$PYTHON" -m cmr.evaluate --backend "$BACKEND" --checkpoint "$RUNS/$run/best.npz" \
        --json "$RUNS/$run/eval_$tag.json" --figure "$OUT/figure_${run}_$tag.png" "$@"
}
# every run on cmr/val and on the held-out acdc96 patients (none of them is in any training set)
for dir in "$RUNS"/*/; do
    run=$(basename "$dir")
    [ -f "$dir/best.npz" ] || { echo "$run: no best.npz"; continue; }
    evaluate "$run" cmr_val --data "$CMR"
    evaluate "$run" acdc96_test --data "$ACDC" --split test --transpose
done

# SET=confirm: the two seeds as one model (cmr.evaluate averages their probabilities)
if [ "$SET" = confirm ] && [ -f "$RUNS/A9/best.npz" ] && [ -f "$RUNS/A10/best.npz" ]; then
    mkdir -p "$RUNS/A9+A10"
    for post in "" --keep-largest; do
        echo "== A9+A10 (ensemble) on cmr_val $post"
        # shellcheck disable=SC2086
        "$PYTHON" -m cmr.evaluate --backend "$BACKEND" --data "$CMR" $post \
            --checkpoint "$RUNS/A9/best.npz" "$RUNS/A10/best.npz" \
            --json "$RUNS/A9+A10/eval_cmr_val${post:+_keep_largest}.json"
    done
fi

# SET=acdc3 / acdcx3: the three seeds as one model, on both evaluation sets
ensemble=""
members=()
if [ "$SET" = acdc3 ] && [ -f "$RUNS/B4/best.npz" ] && [ -f "$RUNS/B5/best.npz" ] \
        && [ -f "$RUNS/B6/best.npz" ]; then
    ensemble="B4+B5+B6"
    members=("$RUNS/B4/best.npz" "$RUNS/B5/best.npz" "$RUNS/B6/best.npz")
elif [ "$SET" = acdcx3 ] && [ -f "$RUNS/P/ensemble.json" ]; then
    ensemble="P"
    members=("$RUNS/P")                # the run folder: its ensemble.json names the members
elif [ "$SET" = acdcx3 ]; then         # cut by LIMIT before ensemble.json: what the members have
    echo "P: no ensemble.json (stopped by LIMIT?); scoring the members' best.npz"
    ensemble="P"
    members=("$RUNS"/P/member*/best.npz)
fi
if [ -n "$ensemble" ] && [ -e "${members[0]}" ]; then
    mkdir -p "$RUNS/$ensemble"
    "$PYTHON" -m cmr.evaluate --backend "$BACKEND" --data "$CMR" --checkpoint "${members[@]}" \
        --json "$RUNS/$ensemble/eval_cmr_val.json"
    for post in "" "--min-confidence 0.6" --keep-largest; do
        tag=$(echo "$post" | sed 's/--//; s/[ .-]/_/g')
        figure=()
        [ -z "$post" ] && figure=(--figure "$OUT/figure_${ensemble//+/}_ensemble_acdc96_test.png")
        echo "== $ensemble (ensemble) on acdc96_test $post"
        # shellcheck disable=SC2086
        "$PYTHON" -m cmr.evaluate --backend "$BACKEND" --data "$ACDC" --split test --transpose \
            $post --checkpoint "${members[@]}" "${figure[@]}" \
            --json "$RUNS/$ensemble/eval_acdc96_test${tag:+_$tag}.json"
    done
fi

"$PYTHON" - "$RUNS" "$OUT/results.json" <<'PY'
import json, sys
from pathlib import Path
runs, out = Path(sys.argv[1]), Path(sys.argv[2])
result = {}
folders = sorted(p for p in runs.iterdir() if p.is_dir())
folders += sorted(p for f in folders for p in f.glob("member*") if p.is_dir())  # --members
for run in folders:
    log = run / "log.jsonl"
    entry = {"config": json.loads((run / "config.json").read_text()) if (run / "config.json").exists() else None,
             "epochs": [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []}
    for ev in sorted(run.glob("eval_*.json")):
        e = json.loads(ev.read_text())
        entry[ev.stem] = {k: e[k] for k in ("dice", "hd95", "n_images", "all_present")}
    best = max(entry["epochs"], key=lambda r: r["val_dice"]["mean"], default=None)
    trained = (f"{len(entry['epochs'])} epochs, best val mean Dice "
               f"{best['val_dice']['mean']:.3f} (epoch {best['epoch']}); " if best else "")
    name = str(run.relative_to(runs))
    print(f"{name}: {trained}"       # an ensemble's folder holds evaluations only
          + "; ".join(f"{k}: {v['dice']}" for k, v in entry.items() if k.startswith("eval_")))
    result[name] = entry
out.write_text(json.dumps(result, indent=1))
PY
echo "all took $((SECONDS - T0)) s"
