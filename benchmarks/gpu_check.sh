#!/usr/bin/env bash
# The CUDA path on a GPU machine: install what is missing, run the CUDA parity tests, run the demo recipe with
# gsplat, and print the distillation cost table (student vs vanilla teacher step time, quality).
#
#   benchmarks/gpu_check.sh [WHEEL_DIR]
#
# WHEEL_DIR: optional folder of wheels to install with --no-deps first, for machines without network (nerfstudio,
# gsplat, tyro, ... built for that machine's Python). The machine's own CUDA torch is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
python - <<'PY'
import sys, torch
if not torch.cuda.is_available():
    sys.exit("gpu_check: no CUDA device visible to torch")
print("gpu_check:", torch.cuda.get_device_name(0), "torch", torch.__version__)
PY
if [ $# -ge 1 ]; then
    python -m pip install -q --no-deps "$1"/*.whl
fi
python -m pip install -q --no-deps -e .
export MAX_JOBS=${MAX_JOBS:-$(nproc)}  # gsplat compiles its CUDA kernels on first use
python -m pytest -q -m cuda tests
distilled-splat demo --device cuda --output outputs/demo-cuda
python benchmarks/bench_distillation.py --device cuda --output outputs/demo-cuda
