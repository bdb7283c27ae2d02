#!/usr/bin/env bash
# 003's Table 1 and Table 4 on the embedded model (issue 4), into docs/results/rotation/.
# Table 1: A(Q->P) by bit-width for SparseGPT vs SLEB at one small ratio, on the rotated model with
# weights, activations and KV cache at the same bit-width (003's QuaRot setting). The ratio is one
# decoder block of 30 (0.0333), the nearest whole-block ratio to 003's 5%; SparseGPT prunes the same
# fraction of block weights. Table 4: SparseGPT and SLEB alone with and without rotation; rows shared
# with Table 1 are read from its store. SLEB scores candidates on 4 calibration windows (samples=4) to
# fit the two CPU cores. Compute: bfloat16 autocast, first 16 eval windows of sotu-v1-quick.
set -euo pipefail
OUT=${1:-docs/results/rotation}
mkdir -p "$OUT"
COMMON=(--dtype bfloat16 --eval-windows 16)
STORE="$OUT/rotation.sqlite"
for PRUNE in "sparsegpt:{r}" "sleb:{r},samples=4"; do
  crescendo sweep --prefix rotate --prune "$PRUNE" --ratios 0.0333 --quant "rtn:w{b}a{b}kv{b}" --bits 4,6,8 \
    --store "$STORE" --quiet "${COMMON[@]}"
done
python benchmarks/rotation_pruning.py --methods sparsegpt "sleb:{r},samples=4" --ratios 0.0333 --store "$STORE" \
  --out "$OUT/table4.md" "${COMMON[@]}"
rm -rf "$OUT/report"
crescendo report --store "$STORE" --out "$OUT/report"
