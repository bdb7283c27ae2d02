#!/usr/bin/env bash
# The order-study results under docs/results/order/, on the embedded model, on two CPU cores.
# The grid (4 ratios x 4 bit-widths x 2 orders + singles) is measured with bfloat16 autocast compute
# (weights stay float32) and the first 16 eval windows of sotu-v1-quick, so that it fits in about
# half an hour; every row records that protocol id: sotu-v1-quick[n_eval_windows=16]@bfloat16.
# Rerunning resumes from the store.
set -euo pipefail
OUT=${1:-docs/results/order}
mkdir -p "$OUT"
COMMON=(--dtype bfloat16 --eval-windows 16 --quiet)
crescendo sweep --prune sparsegpt --ratios 0.1,0.2,0.3,0.5 --quant rtn --acts --bits 3,4,6,8 --layerwise \
  --store "$OUT/order.sqlite" "${COMMON[@]}"
if [ "${WEIGHT_ONLY:-0}" = 1 ]; then
  crescendo sweep --prune sparsegpt --ratios 0.1,0.2,0.3,0.5 --quant rtn --bits 3,4,6,8 --layerwise \
    --store "$OUT/order.sqlite" "${COMMON[@]}"
fi
rm -rf "$OUT/report"
crescendo report --store "$OUT/order.sqlite" --out "$OUT/report"
