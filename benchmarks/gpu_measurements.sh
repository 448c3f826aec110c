#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md and docs/experiments/tms_llc_vs_n.md in one go, sized for
# a GPU lent for a few minutes:
#
#   bash benchmarks/gpu_measurements.sh OUT [SECONDS]
#
# 1. benchmarks/gpu_scale.py, alone on the GPU (throughputs, blocks of 16 against accelerator blocks),
#    then benchmarks/refine_batched.py on 64 instances at n = 65,536 (at most REFINE_SECONDS, 150);
# 2. then side by side on the same GPU (each process allocating GPU memory as it goes), each
#    stopped after SECONDS (default 420):
#    - the flagship `reproduce weights-vs-activations --full`;
#    - `reproduce tms-llc-vs-n` at n = 2^18, 2^19 (LOG2_N, a Python tuple) for the three points
#      that still exceeded the symmetry bound at 2^17 (n6_m2 p = 0.05, n20_m5 p = 0.398 and
#      p = 0.05), one process each, on the trained weights of the CPU run (TRAIN_FROM, default
#      results/tms_llc_vs_n: its train_{model}.nc), so the points extend the same instances (skipped,
#      with a line saying so, where that folder does not exist, as in a fresh checkout).
# GPU_SCALE=0, REFINE_BENCH=0, FLAGSHIP=0 skip those parts (e.g. to give the n study the GPU alone).
# The flagship's time is therefore an upper bound on its time alone. FINISH_BY (epoch seconds)
# shortens SECONDS so that everything is packed by then. Logs, reports and figures are
# packed under OUT; the runs themselves write under WORK (default /tmp/gpu_measurements).
# PYTHON (default python3) must import this package and its dependencies; GPU_SCALE_ARGS=--cpu
# for a dry run of the plumbing on a CPU (with a small SECONDS).
set -uo pipefail
OUT=${1:?usage: bash benchmarks/gpu_measurements.sh OUT [SECONDS]}
LIMIT=${2:-420}
PY=${PYTHON:-python3}
TRAIN_FROM=${TRAIN_FROM:-results/tms_llc_vs_n}
WORK=${WORK:-/tmp/gpu_measurements}
mkdir -p "$OUT" "$WORK"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; git rev-parse HEAD; date -u; } \
  > "$OUT/device.txt" 2>&1
"$PY" -c "import slt_superposition, experiments.weights_vs_activations, experiments.tms_llc_vs_n, h5netcdf" \
  || { echo "imports failed"; exit 3; }
cat "$OUT/device.txt"
if [ "${GPU_SCALE:-1}" != 0 ]; then  # skipped with GPU_SCALE=0
  "$PY" -u benchmarks/gpu_scale.py ${GPU_SCALE_ARGS:-} 2>&1 | tee "$OUT/gpu_scale.log"
fi
# the flagship --full's slowest GPU stage: L-BFGS refinement, in sequence against side by side
# (64 n4_m2 instances at --full's n); skipped with REFINE_BENCH=0
if [ "${REFINE_BENCH:-1}" != 0 ]; then
  timeout "${REFINE_SECONDS:-150}" "$PY" -u benchmarks/refine_batched.py --features 4 --probabilities 8 --seeds 8 \
    --n-samples 65536 2>&1 | tee -a "$OUT/gpu_scale.log"
fi

if [ -n "${FINISH_BY:-}" ]; then  # epoch seconds by which everything, packing included, must be done
  LIMIT=$(( FINISH_BY - $(date +%s) - 20 ))
fi
echo "side-by-side runs: ${LIMIT} s each"
export XLA_PYTHON_CLIENT_PREALLOCATE=false TQDM_MININTERVAL=10
run() {  # run NAME ARGS...: reproduce ARGS into $WORK/NAME, log in $OUT/NAME.log
  local name=$1; shift
  ( start=$(date +%s)
    timeout "$LIMIT" "$PY" -u -m slt_superposition.cli reproduce "$@" --out "$WORK/$name" > "$OUT/$name.log" 2>&1
    echo "exit $? after $(( $(date +%s) - start )) s" >> "$OUT/$name.log" ) &
}
[ "${FLAGSHIP:-1}" != 0 ] && run flagship_full weights-vs-activations --full  # skipped with FLAGSHIP=0
if [ -d "$TRAIN_FROM" ]; then
  for point in "n6_m2 0.05" "n20_m5 0.398" "n20_m5 0.05"; do
    set -- $point
    run "llc_vs_n_$1_p$2" tms-llc-vs-n --full --only "$1" --set "sparsities=($2,)" --set "log2_n=${LOG2_N:-(18, 19)}" \
      --set "train_from=$TRAIN_FROM"
  done
else  # a fresh checkout has no CPU run to extend: the n study needs its trained weights
  echo "tms-llc-vs-n skipped: no $TRAIN_FROM (the CPU run's train_{model}.nc; set TRAIN_FROM)" | tee "$OUT/llc_vs_n_skipped.log"
fi
wait
for log in "$OUT"/*.log; do echo "== $log"; grep -v "it/s\]\|s/it\]" "$log" | tail -25; done
# reports, figures and the small datasets in one archive; the flagship's datasets in another
(cd "$WORK" && find . \( -name "*.md" -o -name "*.png" -o -name "*.json" -o -path "*llc_vs_n*.nc" \) -print0 \
  | tar --null -czf "$OUT/results.tgz" -T -)
(cd "$WORK" && find flagship_full -name "*.nc" -print0 2>/dev/null | tar --null -czf "$OUT/flagship_datasets.tgz" -T -)
ls -la "$OUT"
