#!/usr/bin/env bash
# 003's Table 1 and Table 4 on the embedded model (issue 4), into docs/results/rotation/.
# Table 1: A(Q->P) by bit-width for SparseGPT vs SLEB at one small ratio, on the rotated model with
# weights, activations and KV cache at the same bit-width (003's QuaRot setting). The ratio is one
# decoder block of 30 (0.0333), the nearest whole-block ratio to 003's 5%; SparseGPT prunes the same
# fraction of block weights. Table 4: SparseGPT (1/30, 2/30, 0.1) and SLEB (one, two and three blocks) alone,
# with and without rotation; rows shared with Table 1 are read from its store. SLEB scores candidates
# on 4 calibration windows (samples=4) to fit the two CPU cores. Compute: bfloat16 autocast, first 16
# eval windows of sotu-v1-quick. Each step runs two single-threaded processes (one per pruning
# method) into the one store; rerunning resumes from it.
set -euo pipefail
source "$(dirname "$0")/lanes.sh"
OUT=${1:-docs/results/rotation}
mkdir -p "$OUT"
COMMON=(--dtype bfloat16 --eval-windows 16)
STORE="$OUT/rotation.sqlite"
SPARSEGPT="sparsegpt:{r}"
SLEB="sleb:{r},samples=4"
pids=()
for PRUNE in "$SPARSEGPT" "$SLEB"; do
  OMP_NUM_THREADS=1 crescendo sweep --prefix rotate --prune "$PRUNE" --ratios 0.0333 --quant "rtn:w{b}a{b}kv{b}" \
    --bits 4,6,8 --store "$STORE" --quiet "${COMMON[@]}" & pids+=($!)
done
wait_all "${pids[@]}"
TABLE4=("$SPARSEGPT@0.0333,0.0667,0.1" "$SLEB@0.0333,0.0667,0.1")
SCRATCH=$(mktemp -d)  # the per-method tables; only the store and the final table are kept
trap 'rm -rf "$SCRATCH"' EXIT
pids=()
for i in "${!TABLE4[@]}"; do  # fill the store, one method per process
  OMP_NUM_THREADS=1 python benchmarks/rotation_pruning.py --methods "${TABLE4[$i]}" --store "$STORE" \
    --out "$SCRATCH/table4_$i.md" "${COMMON[@]}" & pids+=($!)
done
wait_all "${pids[@]}"
python benchmarks/rotation_pruning.py --methods "${TABLE4[@]}" --store "$STORE" --out "$OUT/table4.md" "${COMMON[@]}"
rm -rf "$OUT/report"
crescendo report --store "$STORE" --out "$OUT/report"
