#!/usr/bin/env bash
# The vision order study (issue 14) under docs/results/vision/order/: 003's Figure 6 in this setting.
# On both reference models (protocol fmnist-v1, M = top-1 accuracy on the 10,000 test images, float32):
# an unstructured pruner (SparseGPT) and a structured one (whole filters / output neurons, by their
# calibrated output energy: filter:{r},by=act) against RTN and GPTQ (weights only, per output
# channel, asymmetric), over ratio x bit-width, both orders, both singles. The ResNet's batch norms
# are folded into the convs first (prefix foldbn: every compressed ResNet recipe starts with it, so
# the compressed conv weights are the folded ones); the dense row is the unfolded model, which
# computes the same function. Per-block errors through depth are stored for every row (--layerwise).
# The two models run as two single-threaded sweeps into one store; rerunning resumes from the store.
# Run from the repository root: bash benchmarks/vision_order.sh [OUT]
set -euo pipefail
source "$(dirname "$0")/lanes.sh"
OUT=${1:-docs/results/vision/order}
CRESCENDO=${CRESCENDO:-crescendo}
mkdir -p "$OUT"
RESNET=docs/results/vision/models/fmnist-resnet-mini-s0
VIT=docs/results/vision/models/fmnist-vit-mini-s0
COMMON=(--protocol fmnist-v1 --quiet --lanes 1 --no-cache --layerwise --store "$OUT/order.sqlite")
GRID=(--quant rtn gptq --bits 8,4,3,2)
study() {  # model, then the extra options of its sweeps
  local model=$1
  shift
  $CRESCENDO sweep --model "$model" --prune sparsegpt --ratios 0.3,0.5,0.7 "${GRID[@]}" "$@" "${COMMON[@]}"
  $CRESCENDO sweep --model "$model" --prune "filter:{r},by=act" --ratios 0.1,0.2,0.3 "${GRID[@]}" "$@" "${COMMON[@]}"
}
OMP_NUM_THREADS=1 study "$RESNET" --prefix foldbn & first=$!
OMP_NUM_THREADS=1 study "$VIT" & second=$!
wait_all "$first" "$second"
rm -rf "$OUT/report"
$CRESCENDO report --store "$OUT/order.sqlite" --out "$OUT/report"
