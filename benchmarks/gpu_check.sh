#!/usr/bin/env bash
# The CUDA path on a GPU machine: install what is missing, compile gsplat's kernels, run the CUDA parity tests,
# run the demo recipe with gsplat, and print the distillation cost table (student vs vanilla teacher step time).
#
#   benchmarks/gpu_check.sh [WHEEL_DIR]
#
# WHEEL_DIR: optional folder of wheels for machines without network (nerfstudio, gsplat, tyro, ... built for that
# machine's Python). They are installed with --no-deps into a separate folder, together with this package, and
# benchmarks/gpu_standins/ (see its README) stands in for the two imports that cannot travel. The machine's own
# CUDA torch is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 - <<'PY'
import sys, torch
if not torch.cuda.is_available():
    sys.exit("gpu_check: no CUDA device visible to torch")
print("gpu_check:", torch.cuda.get_device_name(0), "torch", torch.__version__, "CUDA", torch.version.cuda)
PY
if [ $# -ge 1 ]; then
    site=${GPU_CHECK_SITE:-/tmp/distilled-splat-site}
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" "$1"/*.whl
    python3 -m pip install -q --no-index --no-deps --no-build-isolation --target "$site" .
    export PYTHONPATH="$site:$PWD/benchmarks/gpu_standins${PYTHONPATH:+:$PYTHONPATH}"
    export PATH="$site/bin:$PATH"
else
    python3 -m pip install -q --no-deps -e .
fi
export MAX_JOBS=${MAX_JOBS:-$(nproc)}  # gsplat compiles its CUDA kernels on first use
start=$(date +%s)
python3 -c "from gsplat.cuda._backend import _C; assert _C is not None, 'gsplat CUDA build failed'"
echo "gpu_check: gsplat kernels compiled in $(( $(date +%s) - start )) s"
tests_status=0
python3 -m pytest -q -p no:cacheprovider -m cuda tests || tests_status=$?  # the demo and costs still run
start=$(date +%s)
python3 -m distilled_splat demo --device cuda --output outputs/demo-cuda
echo "gpu_check: demo took $(( $(date +%s) - start )) s"
python3 benchmarks/bench_distillation.py --device cuda --output outputs/demo-cuda
exit "$tests_status"
