#!/usr/bin/env bash
# The order-study results under docs/results/order/, on the embedded model, on two CPU cores.
# One sweep measures SparseGPT ratios 0.1, 0.2, 0.3, 0.5 x RTN at 3, 4, 6, 8 bits, both orders and
# both singles, with weights and activations at the same bit-width (003's setup) and weight-only,
# sharing every SparseGPT-first run between the two quantizers; plus 003's Figure 7 (P(p1) > Q >
# P(p2), p1 + p2 = 0.3 in steps of 0.1, weight-only 4 bits). It computes with bfloat16 autocast
# (weights stay float32) on the first 16 eval windows of sotu-v1-quick; every row records that
# protocol id: sotu-v1-quick[n_eval_windows=16]@bfloat16.
# LANES=2 (the default) runs the ratios as two single-threaded sweeps into the one store (SQLite WAL,
# one transaction per row): on two cores that is about 1.4x the throughput of one two-thread sweep.
# LANES=1 runs one sweep. ZEROS=1 adds the quantize-first rows with zeros=pruned (pruning on top of
# the weights RTN rounded to zero) at 3 and 4 bits. Rerunning resumes from the store.
set -euo pipefail
source "$(dirname "$0")/lanes.sh"
OUT=${1:-docs/results/order}
mkdir -p "$OUT"
COMMON=(--dtype bfloat16 --eval-windows 16 --quiet --layerwise --store "$OUT/order.sqlite")
GRID=(--prune sparsegpt --quant "rtn:w{b}a{b}" "rtn:w{b}" --bits 3,4,6,8)
STAGED=(--multistage 0.3 --multistage-step 0.1 --multistage-bits 4 --multistage-quant "rtn:w{b}")
if [ "${LANES:-2}" = 1 ]; then
  crescendo sweep "${GRID[@]}" --ratios 0.1,0.2,0.3,0.5 "${STAGED[@]}" "${COMMON[@]}"
else
  OMP_NUM_THREADS=1 crescendo sweep "${GRID[@]}" --ratios 0.1,0.5 "${COMMON[@]}" & first=$!
  OMP_NUM_THREADS=1 crescendo sweep "${GRID[@]}" --ratios 0.2,0.3 "${STAGED[@]}" "${COMMON[@]}" & second=$!
  wait_all "$first" "$second"
fi
if [ "${ZEROS:-0}" = 1 ]; then
  crescendo sweep --prune "sparsegpt:{r},zeros=pruned" --ratios 0.1,0.2 --quant "rtn:w{b}" --bits 3,4 "${COMMON[@]}"
fi
rm -rf "$OUT/report"
crescendo report --store "$OUT/order.sqlite" --out "$OUT/report"
