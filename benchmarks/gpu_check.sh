#!/usr/bin/env bash
# The CUDA path on a GPU machine: install what is missing, compile gsplat's kernels, run the CUDA parity tests,
# run the demo recipe with gsplat, and print the distillation cost table (student vs vanilla teacher step time).
#
#   benchmarks/gpu_check.sh [WHEEL_DIR]
#
# WHEEL_DIR: see benchmarks/gpu_env.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/gpu_env.sh "${1:-}"
tests_status=0
python3 -m pytest -q -p no:cacheprovider -m cuda tests || tests_status=$?  # the demo and costs still run
start=$(date +%s)
python3 -m distilled_splat demo --device cuda --output outputs/demo-cuda
echo "gpu_check: demo took $(( $(date +%s) - start )) s"
python3 benchmarks/bench_distillation.py --device cuda --output outputs/demo-cuda
exit "$tests_status"
