#!/usr/bin/env bash
# The order-study results under docs/results/order/, on the embedded model, on two CPU cores.
# One sweep measures SparseGPT ratios 0.1, 0.2, 0.3, 0.5 x RTN at 3, 4, 6, 8 bits, both orders and
# both singles, with weights and activations at the same bit-width (003's setup) and weight-only,
# sharing every SparseGPT-first run between the two quantizers; plus 003's Figure 7 (P(p1) > Q >
# P(p2), p1 + p2 = 0.5, weight-only 4 bits). It computes with bfloat16 autocast (weights stay
# float32) on the first 16 eval windows of sotu-v1-quick, so that it fits in under an hour; every
# row records that protocol id: sotu-v1-quick[n_eval_windows=16]@bfloat16.
# ZEROS=1 adds the quantize-first rows with zeros=pruned (pruning on top of the weights RTN rounded
# to zero) at 3 and 4 bits. Rerunning resumes from the store.
set -euo pipefail
OUT=${1:-docs/results/order}
mkdir -p "$OUT"
COMMON=(--dtype bfloat16 --eval-windows 16 --quiet --layerwise --store "$OUT/order.sqlite")
crescendo sweep --prune sparsegpt --ratios 0.1,0.2,0.3,0.5 --quant "rtn:w{b}a{b}" "rtn:w{b}" --bits 3,4,6,8 \
  --multistage 0.5 --multistage-step 0.1 --multistage-bits 4 --multistage-quant "rtn:w{b}" "${COMMON[@]}"
if [ "${ZEROS:-0}" = 1 ]; then
  crescendo sweep --prune "sparsegpt:{r},zeros=pruned" --ratios 0.1,0.2 --quant "rtn:w{b}" --bits 3,4 "${COMMON[@]}"
fi
rm -rf "$OUT/report"
crescendo report --store "$OUT/order.sqlite" --out "$OUT/report"
