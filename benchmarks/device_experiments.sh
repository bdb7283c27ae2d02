#!/usr/bin/env bash
# The experiments behind docs/results/, run as parallel processes on one GPU machine (every stage
# and evaluation is float32; the GPU only makes the grid affordable). Each process writes its rows
# to the SQLite stores as it goes; rerunning resumes. Usage: benchmarks/device_experiments.sh OUTDIR
set -u
R=${1:?output directory}
mkdir -p "$R"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
CLI="python3 -m crescendo.cli"
LIMIT=${LIMIT:-520}
run() { name=$1; shift; timeout "$LIMIT" "$@" > "$R/$name.log" 2>&1 & }

run quality python3 benchmarks/quality.py --device cuda --json "$R/quality.json"
for r in 0.1 0.2 0.3 0.5; do
  run sweep_wa_$r $CLI sweep --device cuda --quiet --prune sparsegpt --ratios $r --quant rtn --acts --bits 3,4,6,8 \
      --layerwise --store "$R/order.sqlite"
  run sweep_w_$r $CLI sweep --device cuda --quiet --prune sparsegpt --ratios $r --quant rtn --bits 3,4,6,8 \
      --layerwise --store "$R/order.sqlite"
done
run multistage $CLI sweep --device cuda --quiet --prune sparsegpt --ratios 0.3 --quant rtn --acts --bits 4,6 \
    --multistage 0.3 --store "$R/order.sqlite"
run table1_sleb $CLI sweep --device cuda --quiet --prune sleb --ratios 0.1 --quant rtn --acts --bits 3,4,5,6,7,8 \
    --store "$R/table1.sqlite"
run table1_sgpt $CLI sweep --device cuda --quiet --prune sparsegpt --ratios 0.1 --quant rtn --acts --bits 3,4,5,6,7,8 \
    --store "$R/table1.sqlite"
run harma python3 benchmarks/harma.py --device cuda --out "$R/harma"
run table4_sgpt python3 benchmarks/rotation_pruning.py --device cuda --methods sparsegpt --out "$R/table4_sparsegpt.md"
run table4_sleb python3 benchmarks/rotation_pruning.py --device cuda --methods sleb --out "$R/table4_sleb.md"
wait
python3 - "$R" <<'PY'
import glob, sqlite3, sys
for path in glob.glob(sys.argv[1] + "/*.sqlite"):
    con = sqlite3.connect(path)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # fold the WAL into the file before copying it back
    con.close()
PY
