# Sourced by the GPU scripts: check CUDA, install this package (and, with a wheel folder, what the machine lacks)
# and compile gsplat's kernels once.
#
# WHEEL_DIR (first argument of the calling script): optional folder of wheels for machines without network
# (benchmarks/gpu_wheels.txt lists them and says how to download them for that machine's Python). They are
# installed with --no-deps into a separate folder, together with this package, and benchmarks/gpu_standins/ (see
# its README) stands in for the three imports that cannot travel. The machine's own CUDA torch is kept. Sourcing
# it again in the same shell (or below one that did) does nothing.
if [ -n "${GPU_ENV_READY:-}" ]; then return 0; fi
python3 - <<'PY' || return 1  # sourced: stop the calling script here, whatever its shell options
import sys, torch
if not torch.cuda.is_available():
    sys.exit("gpu: no CUDA device visible to torch")
print("gpu:", torch.cuda.get_device_name(0), "torch", torch.__version__, "CUDA", torch.version.cuda)
PY
if [ -n "${1:-}" ]; then
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
echo "gpu: gsplat kernels compiled in $(( $(date +%s) - start )) s"
export GPU_ENV_READY=1
