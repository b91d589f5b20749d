#!/usr/bin/env bash
# bench_variants.sh -- the U-Net training step with each build variant of kernels/conv.cu
# (minicnn.backend.cuda.config.VARIANTS: plain, each feature alone, entry 11's default and
# the shipped default), one after the other on
# the same GPU, each in its own processes (bench_train.py: ours, then PyTorch), then one table:
# step and inference times, the ratio to PyTorch, and the speed-up over "plain".
#
#   OUT=results bash benchmarks/bench_variants.sh        (five variants took 2 minutes on an H200)
#   bash benchmarks/bench_variants.sh --table DIR        (only the table, from DIR/<variant>/)
#
# Writes $OUT/variants/<variant>/bench_train.{json,md,png} and $OUT/variants/variants.md.
# Environment: PYTHON (default python3), OUT (default runs/variants), VARIANTS (default: all of
# config.VARIANTS, "+" written "_" in folder names).
set -u
cd "$(dirname "$0")/.." || exit 1
PYTHON="${PYTHON:-$(command -v python3 || command -v python)}"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

table() {   # DIR: the table of DIR/<variant>/bench_train.json, printed and written to DIR/variants.md
    "$PYTHON" - "$1" <<'PY'
import json, sys
from pathlib import Path
from minicnn.backend.cuda import config
folder = Path(sys.argv[1])
rows = []
for name in config.VARIANTS:
    f = folder / name.replace("+", "_") / "bench_train.json"
    if not f.exists():
        continue
    d = json.loads(f.read_text())
    r = {row["metric"]: row for row in d["rows"]}
    rows.append((name, d["meta"], r["training step"], r["forward, no_grad"]))
if not rows:
    sys.exit(f"no bench_train.json under {folder}/<variant>/")
plain_ms = {name: s["ours"] for name, _, s, _ in rows}.get("plain")
lines = ["# Conv build variants: U-Net training step", "",
         "Each row: `MINICNN_CONV_VARIANT=<variant> python3 benchmarks/bench_train.py --device "
         "cuda` (as `bash benchmarks/bench_variants.sh` runs them; table by its `--table`), "
         f"on {rows[0][1].get('gpu')}, "
         f"{rows[0][1]['date'][:10]}, git {rows[0][1]['git']}; U-Net base {rows[0][1]['base']}, "
         f"batch {rows[0][1]['batch']} of {rows[0][1]['size']}x{rows[0][1]['size']}, fp32; "
         "medians of 10 timed steps, PyTorch (cuDNN) timed beside each.", "",
         "| variant | step ms | PyTorch ms | ratio | inference ms | PyTorch ms | ratio "
         "| step speed-up over plain |",
         "|---|---|---|---|---|---|---|---|"]
for name, m, s, fw in rows:
    up = f"{plain_ms / s['ours']:.2f}x" if plain_ms else ""
    lines.append(f"| {name} | {s['ours']:.1f} | {s['theirs']:.1f} | {s['ratio']:.2f} | "
                 f"{fw['ours']:.1f} | {fw['theirs']:.1f} | {fw['ratio']:.2f} | {up} |")
text = "\n".join(lines) + "\n"
(folder / "variants.md").write_text(text)
print(text)
PY
}

if [ "${1:-}" = "--table" ]; then
    table "${2:?usage: bench_variants.sh --table DIR}"
    exit
fi
OUT="${OUT:-runs/variants}"
DIR="$OUT/variants"
mkdir -p "$DIR"
VARIANTS="${VARIANTS:-$("$PYTHON" -c 'from minicnn.backend.cuda import config; print(*config.VARIANTS)')}"
failed=0
for v in $VARIANTS; do
    MINICNN_CONV_VARIANT="$v" timeout 60 "$PYTHON" benchmarks/bench_train.py --device cuda \
        --out "$DIR/${v//+/_}" 2>&1 | grep -E "^step:|^forward|conv kernels" || failed=1
done
table "$DIR" || failed=1
exit $failed
